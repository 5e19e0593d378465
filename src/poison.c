/*-------------------------------------------------------------------------
 *
 * poison.c
 *		Quarantine of an intent whose result kills the dispatcher.
 *
 * Every error of the apply is caught (outbox.c applies one result at a time
 * when a batch fails, and marks dead the one that cannot be recorded), so
 * the dispatcher should never die applying a result.  Should it die anyway
 * (a crash, an out-of-memory kill, a FATAL), the next dispatcher would send
 * the intents left in flight again, get the same answers, and die again:
 * the crash loop of issue 12.  To break it, the ids of the results being
 * applied are written to a small file, pg_shipsync/applying.<database
 * oid> in the data directory, before the apply transaction starts, and the
 * record is cleared once it has committed (two pwrite() calls per batch, no
 * fsync: the file survives a crash of the server, not one of the machine).
 *
 * A dispatcher that starts and finds a record died while applying those
 * results.  Each carries how many deaths in a row it had been applied in:
 * at the second, the intent is quarantined (dead, error class poison, a
 * ticket) instead of being sent a third time; after the first, it is a
 * suspect, and its next result is applied alone, so that a second death
 * names it and not the rest of a batch.  A shutdown (SIGTERM, the
 * postmaster gone) during an apply is not a death: the exit callback
 * clears the record.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/array.h"
#include "utils/memutils.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define POISON_DIR "pg_shipsync"
#define POISON_MAGIC 0x53485053		/* "SHPS" */
#define POISON_DEATHS 2				/* deaths in a row that quarantine */

/* The record: a header, then one entry per result being applied */
typedef struct PoisonHeader
{
	uint32		magic;
	uint32		n;
} PoisonHeader;

typedef struct PoisonEntry
{
	int64		id;
	int32		deaths;			/* deaths in a row it was applied in, before */
	int32		pad;
} PoisonEntry;

static int	poison_fd = -1;
static bool poison_dirty = false;	/* a record is written and not cleared */

/* intents applied when an earlier dispatcher died (once each) */
static int64 *suspects = NULL;
static int	nsuspects = 0;

static void
poison_clear(void)
{
	PoisonHeader h = {POISON_MAGIC, 0};

	if (poison_fd < 0 || !poison_dirty)
		return;
	if (pwrite(poison_fd, &h, sizeof(h), 0) != sizeof(h))
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not clear the record of results being applied: %m")));
	poison_dirty = false;
}

/* A shutdown while applying is no death of the dispatcher: forget it */
static void
poison_exit(int code, Datum arg)
{
	if (ProcDiePending || ShutdownRequestPending || !PostmasterIsAlive())
		poison_clear();
}

/* Open (creating) this database's record; returns what it held */
static PoisonEntry *
poison_open(int *n)
{
	char		path[MAXPGPATH];
	PoisonHeader h;
	PoisonEntry *entries = NULL;

	*n = 0;
	if (MakePGDirectory(POISON_DIR) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", POISON_DIR)));
	snprintf(path, sizeof(path), "%s/applying.%u", POISON_DIR, MyDatabaseId);
	poison_fd = BasicOpenFile(path, O_RDWR | O_CREAT | PG_BINARY);
	if (poison_fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	if (pread(poison_fd, &h, sizeof(h), 0) == sizeof(h) &&
		h.magic == POISON_MAGIC && h.n > 0 && h.n <= 1000000)
	{
		entries = palloc(sizeof(PoisonEntry) * h.n);
		if (pread(poison_fd, entries, sizeof(PoisonEntry) * h.n, sizeof(h)) ==
			(ssize_t) (sizeof(PoisonEntry) * h.n))
			*n = (int) h.n;
	}
	poison_dirty = true;
	poison_clear();
	before_shmem_exit(poison_exit, 0);
	return entries;
}

/*
 * Quarantine the intents ids[0..n) that are still in flight: dead with
 * error class poison, a ticket each and a NOTIFY.  Returns how many.
 */
static uint64
poison_quarantine(Datum *ids, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1];
	int			rc;

	args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	shipsync_begin_tx("quarantining intents", true);
	rc = SPI_execute_with_args(
		"WITH q AS (UPDATE shipsync.outbox o SET state = 'dead', error_class = 'poison',"
		"   last_error = 'quarantined: the dispatcher died twice in a row while applying"
		" the result of this intent; it is not sent again',"
		"   lease_until = NULL, done_at = pg_catalog.now(), updated_at = pg_catalog.now()"
		"   WHERE o.id = ANY ($1) AND o.state = 'in_flight'"
		"   RETURNING o.id, o.binding_id, o.order_key, o.provider_id, o.last_error)"
		" INSERT INTO shipsync.exception_ticket (kind, binding_id, order_key, provider_id,"
		"   outbox_id, detail)"
		" SELECT 'poison', q.binding_id, q.order_key, q.provider_id, q.id, q.last_error FROM q"
		/* kinds and ids only: any role may LISTEN (docs/security.md) */
		" RETURNING pg_catalog.pg_notify('shipsync', pg_catalog.json_build_object("
		"   'event', kind, 'outbox_id', outbox_id, 'ticket_id', ticket_id,"
		"   'binding_id', binding_id, 'order_key', order_key)::text), outbox_id",
		1, types, args, NULL, false, 0);
	if (rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "quarantining intents failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ereport(LOG,
				(errmsg("pg_shipsync: intent %lld quarantined: the dispatcher died twice in a row while applying its result",
						(long long) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
																SPI_tuptable->tupdesc, 2, &isnull))),
				 errhint("See its exception ticket of kind poison; shipsync.retry() sends it again.")));
	}
	rc = (int) SPI_processed;
	shipsync_end_tx();
	return (uint64) rc;
}

/*
 * Of the intents ids[0..n), those still in flight, into ids (in place);
 * returns how many.  The others' results were recorded (the death came
 * after the apply's commit, before its record was cleared) or they were
 * settled otherwise: they will not be applied again, so they are neither
 * suspects nor to be quarantined.  Kept as suspects, their ids outlived
 * them: after a TRUNCATE ... RESTART IDENTITY of the queue, a new intent
 * that got one of them was applied as a suspect and quarantined at the
 * next death (TAP 002 caught it, TAP 021 checks it).
 */
static int
poison_in_flight(Datum *ids, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		args[1];
	int			kept = 0;

	args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	shipsync_begin_tx("reading what the previous dispatcher was applying", true);
	if (SPI_execute_with_args("SELECT o.id FROM shipsync.outbox o"
							  " WHERE o.id = ANY ($1) AND o.state = 'in_flight'",
							  1, types, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the intents in flight failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids[kept++] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
	}
	shipsync_end_tx();
	return kept;
}

/*
 * At the start of a dispatcher, before the intents in flight are sent
 * again: read what the previous one was applying when it died; of those
 * still in flight, quarantine the intents at their second death in a row,
 * remember the others as suspects.
 */
void
poison_startup(void)
{
	int			n;
	PoisonEntry *entries = poison_open(&n);
	Datum	   *ids;
	Datum	   *poisoned;
	int			nlive;
	int			npoisoned = 0;
	MemoryContext old;

	if (n == 0)
		return;
	ids = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		ids[i] = Int64GetDatum(entries[i].id);
	nlive = poison_in_flight(ids, n);
	ereport(LOG,
			(errmsg("pg_shipsync: the previous dispatcher died while applying %d results, %d of them still in flight; those are applied one by one",
					n, nlive)));
	poisoned = palloc(sizeof(Datum) * Max(nlive, 1));
	old = MemoryContextSwitchTo(TopMemoryContext);
	suspects = palloc(sizeof(int64) * Max(nlive, 1));
	MemoryContextSwitchTo(old);
	for (int i = 0; i < n; i++)
	{
		bool		live = false;

		for (int k = 0; k < nlive && !live; k++)
			live = DatumGetInt64(ids[k]) == entries[i].id;
		if (!live)
			continue;
		if (entries[i].deaths + 1 >= POISON_DEATHS)
			poisoned[npoisoned++] = Int64GetDatum(entries[i].id);
		else
			suspects[nsuspects++] = entries[i].id;
	}
	if (npoisoned > 0)
		(void) poison_quarantine(poisoned, npoisoned);
	pfree(poisoned);
	pfree(ids);
	pfree(entries);
}

/* Whether intent id was being applied when the previous dispatcher died */
bool
poison_is_suspect(int64 id)
{
	for (int i = 0; i < nsuspects; i++)
		if (suspects[i] == id)
			return true;
	return false;
}

/*
 * The results of intents ids[0..n) are about to be applied (here or by the
 * applier, applier.c): write their record.  A failure to write is a
 * WARNING: quarantine is a safety net, not a condition of delivery.
 */
void
poison_applying(const int64 *ids, int n)
{
	Size		len = sizeof(PoisonHeader) + sizeof(PoisonEntry) * n;
	char	   *buf;
	PoisonHeader *h;
	PoisonEntry *e;

	if (poison_fd < 0)
		return;
	buf = palloc0(len);
	h = (PoisonHeader *) buf;
	e = (PoisonEntry *) (buf + sizeof(PoisonHeader));
	h->magic = POISON_MAGIC;
	h->n = (uint32) n;
	for (int i = 0; i < n; i++)
	{
		e[i].id = ids[i];
		e[i].deaths = poison_is_suspect(ids[i]) ? 1 : 0;
	}
	poison_dirty = true;
	if (pwrite(poison_fd, buf, len, 0) != (ssize_t) len)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not record the results being applied: %m")));
	pfree(buf);
}

/* The results of intents ids[0..n) are applied (committed): clear the record */
void
poison_applied(const int64 *ids, int n)
{
	poison_clear();
	for (int i = 0; i < n && nsuspects > 0; i++)
		for (int k = 0; k < nsuspects; k++)
			if (suspects[k] == ids[i])
			{
				suspects[k] = suspects[--nsuspects];
				break;
			}
}
