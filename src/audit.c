/*-------------------------------------------------------------------------
 *
 * audit.c
 *		Who did it: the actor of a change, the role a session acts as,
 *		and the dispatcher's pruning of shipsync.audit_log.
 *
 * Every change of a provider, secret, binding, field map or status map
 * row, and every state-changing call (attach, pause, retry, acknowledge,
 * ...), leaves a row in shipsync.audit_log; the "who" columns of
 * providers, field maps and tickets are set by triggers, never taken from
 * the caller.  The SQL side (install/80_security.sql) does the writing;
 * this file answers what SQL cannot:
 *
 *	 _actor()	the session user for a user's session; for the extension's
 *				own background workers a fixed name ("dispatcher"), since
 *				their session user is merely the bootstrap superuser
 *	 _caller()	the role the session acts as (after SET ROLE), which is
 *				current_user outside any SECURITY DEFINER function: inside
 *				one, current_user is only the function's owner; while the
 *				code of a table's owner runs (its triggers, fired by a
 *				worker's write-back or by one of the extension's
 *				functions: shipsync_become_owner()), that owner
 *	 _restoring()	whether the session is a restore's (pg_dump's script,
 *				pg_restore): a superuser's with check_function_bodies off,
 *				never one of the extension's workers nor a table owner's
 *				code, whatever that code turns off
 *	 _in_extension_script()	whether CREATE EXTENSION or ALTER EXTENSION
 *				UPDATE is running: what the scripts seed is not audited
 *
 * The audit log is pruned by the dispatcher of each database: rows older
 * than shipsync.audit_retention go at the first idle check after start,
 * after the setting changes, and then once an hour; 10,000 at a time, the
 * rest at the next idle checks, so that a long log never holds the
 * dispatcher's loop for long.  The DELETE runs in
 * shipsync._prune_audit(), a SECURITY DEFINER function, so that it runs as
 * the extension's owner, the only role its guard trigger lets delete.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

PG_FUNCTION_INFO_V1(shipsync_actor);
PG_FUNCTION_INFO_V1(shipsync_caller);
PG_FUNCTION_INFO_V1(shipsync_in_extension_script);
PG_FUNCTION_INFO_V1(shipsync_restoring);

#define AUDIT_PRUNE_INTERVAL_MS (3600 * 1000)
#define AUDIT_PRUNE_STEP 10000	/* rows _prune_audit() deletes at most a call */

static Datum
name_datum(const char *s)
{
	Name		n = (Name) palloc0(NAMEDATALEN);

	namestrcpy(n, s);
	return NameGetDatum(n);
}

/*
 * The name of this process as an actor: for one of pg_shipsync's
 * background workers, its kind (shipsync_dispatcher_main: "dispatcher"; the
 * applier, which applies the dispatcher's results, too);
 * NULL for any other process.
 */
static const char *
worker_actor(void)
{
	const char *f;
	size_t		len;

	if (MyBgworkerEntry == NULL ||
		strcmp(MyBgworkerEntry->bgw_library_name, "pg_shipsync") != 0)
		return NULL;
	f = MyBgworkerEntry->bgw_function_name;
	/* the applier applies the dispatcher's results: it acts for it */
	if (strcmp(f, "shipsync_applier_main") == 0)
		return "dispatcher";
	if (strncmp(f, "shipsync_", 9) == 0)
		f += 9;
	len = strlen(f);
	if (len > 5 && strcmp(f + len - 5, "_main") == 0)
		return pnstrdup(f, len - 5);
	return f;
}

/* shipsync._actor(): who a change is recorded as made by */
Datum
shipsync_actor(PG_FUNCTION_ARGS)
{
	const char *w = worker_actor();

	if (w != NULL)
		return name_datum(w);
	return name_datum(GetUserNameFromId(GetSessionUserId(), false));
}

/*
 * shipsync._caller(): the role the session acts as, whatever function
 * runs; while a table owner's code runs, that owner, whose change it is
 * (the worker or the caller of the extension's function only ran it).
 */
Datum
shipsync_caller(PG_FUNCTION_ARGS)
{
	Oid			owner = shipsync_acting_owner();

	return name_datum(GetUserNameFromId(OidIsValid(owner) ? owner : GetOuterUserId(), false));
}

/*
 * shipsync._restoring(): the session is a restore's, whose rows are loaded
 * as they were, unaudited and unfolded: a superuser's with
 * check_function_bodies off, as pg_dump's scripts and pg_restore set it.
 * Never a worker of ours, and never while a table owner's code runs: the
 * workers' sessions are a superuser's, as is a DBA's who takes a CRM push
 * by hand, and that code (a trigger with SET check_function_bodies = off)
 * would make them pass for one.
 */
Datum
shipsync_restoring(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(!check_function_bodies && worker_actor() == NULL &&
				   !OidIsValid(shipsync_acting_owner()) &&
				   superuser_arg(GetSessionUserId()));
}

/* shipsync._in_extension_script(): CREATE or ALTER EXTENSION is running */
Datum
shipsync_in_extension_script(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(creating_extension);
}

/*
 * Prune shipsync.audit_log if it is due (see the file header).  Called by
 * the dispatcher between transactions; runs one of its own and leaves the
 * caller's memory context current.
 */
void
audit_prune_if_due(TimestampTz now)
{
	static TimestampTz last_prune = 0;
	static int	last_retention = -1;
	MemoryContext cxt = CurrentMemoryContext;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1];
	int			rc;
	int64		pruned;
	bool		isnull;

	if (shipsync_audit_retention <= 0)
		return;
	if (shipsync_audit_retention == last_retention &&
		!TimestampDifferenceExceeds(last_prune, now, AUDIT_PRUNE_INTERVAL_MS))
		return;

	shipsync_begin_tx("pruning the audit log", false);
	args[0] = Int32GetDatum(shipsync_audit_retention);
	rc = SPI_execute_with_args("SELECT shipsync._prune_audit(pg_catalog.make_interval(mins => $1))",
							   1, argtypes, args, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "pruning the audit log failed: %s", SPI_result_code_string(rc));
	pruned = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	shipsync_end_tx();
	MemoryContextSwitchTo(cxt);
	/* a full step: more are due, at the next idle check */
	if (isnull || pruned < AUDIT_PRUNE_STEP)
		last_prune = now;
	last_retention = shipsync_audit_retention;
}
