/*-------------------------------------------------------------------------
 *
 * recon_worker.c
 *		The comparison of one reconciliation run, in a short-lived
 *		background worker.
 *
 * Comparing both sides of a million orders is a few seconds of set-based
 * SQL: the dispatcher must not spend them, or deliveries would wait.  When
 * the pulls of a run are over, the dispatcher (reconcile.c) registers this
 * worker for it (at most one per database at a time; bgw_extra holds the
 * database OID and the run id) and goes on; the worker's exit wakes the
 * dispatcher (bgw_notify_pid).
 *
 * In one transaction the worker:
 *	1. joins the run's snapshots with our shipments
 *	   (shipsync._reconcile_prepare), which returns, per provider, the
 *	   statuses the carrier is ahead with, as a generic tracking payload;
 *	2. applies each payload like pulled tracking (tracking.c): events
 *	   stored and deduplicated, statuses folded by the rank rules, written
 *	   back onto the order rows as the table's owner, announced -- each in
 *	   a subtransaction, so that one payload that cannot be applied stays a
 *	   status_mismatch and costs nothing else;
 *	3. compares everything and merges the findings into the ledger
 *	   (shipsync._reconcile_compare), which records the run's outcome.
 * An error fails the run with its message.  The worker runs without JIT
 * and with work_mem at least 128 MB, so that its hash joins of a million
 * rows stay in memory.  It shows as "pg_shipsync reconcile" (its
 * application_name), and shipsync._actor() (audit.c) names it reconcile
 * after its entry point: the ledger records the tickets it opens, resolves
 * and reopens as by reconcile.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

/*
 * The least work_mem of the comparison (kB): a hash of a million shipments
 * or snapshot rows is about 100 MB.
 */
#define RECONCILE_WORK_MEM_KB 131072

/* One payload of statuses to apply */
typedef struct AheadBatch
{
	char	   *provider;
	char	   *body;
} AheadBatch;

/* One payload, for shipsync_subxact() */
static void
apply_one(void *arg)
{
	AheadBatch *b = (AheadBatch *) arg;

	(void) tracking_apply_pulled(b->provider, b->body, strlen(b->body));
}

/*
 * Apply the statuses the carriers are ahead with: one subtransaction per
 * payload (one open at a time); a payload that fails is logged and left to
 * the comparison, which then reports status_mismatch.  SPI connected.
 */
static void
apply_ahead(AheadBatch *b, int n)
{
	for (int i = 0; i < n; i++)
	{
		ErrorData  *edata = shipsync_subxact(apply_one, &b[i]);

		if (edata == NULL)
			continue;
		ereport(LOG,
				(errmsg("pg_shipsync: statuses of provider \"%s\" found by reconciliation could not be applied",
						b[i].provider),
				 errdetail("%s", edata->message)));
		FreeErrorData(edata);
	}
}

/* Compare run, in one transaction. */
static void
compare_run(int64 run)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			t[1] = {INT8OID};
	Datum		arg = Int64GetDatum(run);
	AheadBatch *batches;
	int			n;

	shipsync_begin_tx("comparing a reconciliation run", true);
	if (SPI_execute_with_args("SELECT provider, body FROM shipsync._reconcile_prepare($1)",
							  1, t, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "preparing reconciliation run " INT64_FORMAT " failed", run);
	n = (int) SPI_processed;
	batches = MemoryContextAlloc(cxt, sizeof(AheadBatch) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		batches[i].provider = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		batches[i].body = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
	}
	apply_ahead(batches, n);
	if (SPI_execute_with_args("SELECT shipsync._reconcile_compare($1)", 1, t, &arg, NULL,
							  false, 0) != SPI_OK_SELECT)
		elog(ERROR, "comparing reconciliation run " INT64_FORMAT " failed", run);
	shipsync_end_tx();
	MemoryContextSwitchTo(cxt);
}

/* The run failed: say why in its row (qualified, whatever the path). */
static void
record_failure(int64 run, const char *message)
{
	Oid			t[2] = {INT8OID, TEXTOID};
	Datum		a[2];

	shipsync_begin_tx("recording a failed reconciliation run", true);
	a[0] = Int64GetDatum(run);
	a[1] = CStringGetTextDatum(message);
	if (SPI_execute_with_args("UPDATE shipsync.reconcile_run SET state = 'failed', error = $2,"
							  " finished_at = pg_catalog.now() WHERE run_id OPERATOR(pg_catalog.=) $1"
							  " AND state OPERATOR(pg_catalog.=) 'comparing'",
							  2, t, a, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording a failed reconciliation run failed");
	shipsync_end_tx();
}

void
shipsync_reconcile_main(Datum main_arg)
{
	Oid			dbid;
	int64		run;
	char	   *end;
	MemoryContext cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	dbid = (Oid) strtoul(MyBgworkerEntry->bgw_extra, &end, 10);
	run = (int64) strtoll(end, NULL, 10);
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	/* a superuser session: no ALTER DATABASE ... SET search_path steers it */
	shipsync_pin_worker_session(true);
	pgstat_report_appname("pg_shipsync reconcile");
	SetConfigOption("application_name", "pg_shipsync reconcile", PGC_USERSET, PGC_S_SESSION);
	/* a few big hash joins: compiling them would cost more than it saves */
	SetConfigOption("jit", "off", PGC_USERSET, PGC_S_SESSION);
	/* ... and each of a million rows fits in memory, unless set higher */
	if (work_mem < RECONCILE_WORK_MEM_KB)
		SetConfigOption("work_mem", CppAsString2(RECONCILE_WORK_MEM_KB), PGC_USERSET, PGC_S_SESSION);

	cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync reconcile worker",
								ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		compare_run(run);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		ereport(LOG,
				(errmsg("pg_shipsync: reconciliation run " INT64_FORMAT " failed: %s",
						run, edata->message)));
		record_failure(run, edata->message);
	}
	PG_END_TRY();
	proc_exit(0);
}
