/*-------------------------------------------------------------------------
 *
 * security.c
 *		Running a user's code with the user's rights, and the search path
 *		the extension's own statements see.
 *
 * The dispatcher is a superuser session, and shipsync.ingest_tracking(),
 * render_request() and attach() run as the extension's owner: whenever they
 * read or write a CRM table (rendering, cancel_when, write-back and the
 * table's own triggers), the code of that table's owner runs inside them.
 * shipsync_become_owner() switches to the owner as PostgreSQL does for
 * maintenance commands (REFRESH MATERIALIZED VIEW, CREATE INDEX):
 * SECURITY_RESTRICTED_OPERATION, so the owner's code cannot leave temporary
 * objects, cursors or prepared statements behind for the privileged
 * session, and a new GUC nest level that shipsync_restore_user() rolls
 * back, so a set_config('search_path', ..., false) made by a trigger ends
 * with the statement instead of steering the extension's next statements.
 *
 * The extension's own statements rely on search_path = pg_catalog, pg_temp:
 * every SECURITY DEFINER function pins it in its proconfig, and every
 * background worker (launcher, dispatcher, applier, reconcile worker,
 * receiver) pins it for its session right after it connects
 * (shipsync_pin_search_path), so that ALTER DATABASE or ALTER ROLE ... SET
 * search_path by a database owner cannot put operators of theirs in front
 * of pg_catalog's.  The temporary schema, last in that path, is never
 * searched for functions or operators.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/syscache.h"

#include "pg_shipsync.h"

/* the search_path of every statement of the extension */
#define SHIPSYNC_SEARCH_PATH "pg_catalog, pg_temp"

/*
 * Become the role owner for a statement that may run its code.  The caller
 * must call shipsync_restore_user(save) after it, on success and on error
 * (PG_FINALLY): an error that reaches transaction or subtransaction abort is
 * also cleaned up there.
 */
void
shipsync_become_owner(Oid owner, ShipsyncUserSave *save)
{
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	SetUserIdAndSecContext(owner, save->sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	save->nestlevel = NewGUCNestLevel();
}

/* Undo shipsync_become_owner(): the owner's GUC changes, then the user. */
void
shipsync_restore_user(const ShipsyncUserSave *save)
{
	AtEOXact_GUC(false, save->nestlevel);
	SetUserIdAndSecContext(save->userid, save->sec_context);
}

/* The owner of a relation; ERROR when it does not exist. */
Oid
shipsync_table_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("order table with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Pin this session's search_path for good, whatever ALTER DATABASE or
 * ALTER ROLE ... SET gave it: for a background worker, right after it
 * connects.
 * PGC_S_OVERRIDE also makes it the value RESET returns to.
 */
void
shipsync_pin_search_path(void)
{
	SetConfigOption("search_path", SHIPSYNC_SEARCH_PATH, PGC_SUSET, PGC_S_OVERRIDE);
}
