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
 * A restricted operation may not leave deferred trigger events behind
 * (afterTriggerMarkEvents: "cannot fire deferred trigger within
 * security-restricted operation"), and a Django table makes every foreign
 * key DEFERRABLE INITIALLY DEFERRED.  PostgreSQL's own comment there says
 * how it could be allowed: a SET CONSTRAINTS ... IMMEDIATE in effect before
 * the end of the restricted operation.  So before a write onto such a
 * table, shipsync_constraints_immediate() sets the deferrable constraints
 * whose triggers are on that table IMMEDIATE (by name, as SET CONSTRAINTS
 * does; never ALL, which would also fire the extension's own deferred
 * trigger on shipsync.shipment ahead of its turn): their checks then run at
 * the end of the write, as the owner, inside the restricted operation.  The
 * SET CONSTRAINTS itself runs as the owner in a restricted operation too:
 * events of those constraints that the caller's transaction had deferred
 * fire at that moment, and they run the table's own constraint code, which
 * must never run as the privileged caller.  shipsync_constraints_restore()
 * sets them back to their declared default for the rest of the
 * transaction (a SET CONSTRAINTS of the caller's own on them is not
 * restored).  A constraint in a schema the owner may not use (a foreign
 * key of another owner's table referencing this one) is left alone.
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
 * The workers connected to a database pin more than that
 * (shipsync_pin_worker_session): the settings of a database or a role
 * that change how their transactions behave.  default_transaction_read_only
 * or a serializable default failed every pass of the dispatcher (it
 * exited and was started again, every second, sending again what was in
 * flight), a lock_timeout made the write-back of an order another session
 * held for a moment give up for good (writeback_failed; the write-back
 * has a wait of its own, shipsync.order_lock_timeout, writeback.c), and
 * session_replication_role = replica kept the extension's own triggers
 * (ticket history and folding, parked events, fee pulls) from firing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "rewrite/rowsecurity.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "pg_shipsync.h"

/* the search_path of every statement of the extension */
#define SHIPSYNC_SEARCH_PATH "pg_catalog, pg_temp"

/*
 * Become the role owner for a statement that may run its code.  The caller
 * must call shipsync_restore_user(save) after it, on success and on error
 * (PG_FINALLY): an error that reaches transaction or subtransaction abort is
 * also cleaned up there.
 */
/*
 * The owner shipsync_become_owner() runs as now, whose code runs: what
 * that code changes is that owner's doing, whoever's session it runs in.
 */
static Oid	acting_owner = InvalidOid;

void
shipsync_become_owner(Oid owner, ShipsyncUserSave *save)
{
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	save->acting = acting_owner;
	acting_owner = owner;
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
	acting_owner = save->acting;
}

/*
 * The table owner whose code runs now (inside shipsync_become_owner()), or
 * InvalidOid: the role the audit records as acting (shipsync._caller()),
 * also inside the extension's SECURITY DEFINER functions that code calls.
 * Only inside the restricted operation the switch started: one an error
 * ended before shipsync_restore_user() is not taken for a later one.
 */
Oid
shipsync_acting_owner(void)
{
	return InSecurityRestrictedOperation() ? acting_owner : InvalidOid;
}

/*
 * The deferrable constraints with a trigger on table relid, as the
 * RangeVars SET CONSTRAINTS takes (their schema and name), with the
 * default of each in *initdeferred (booleans as integers).  Only those in
 * a schema owner may use.  Takes the lock the write is about to take.
 */
static List *
constraints_deferrable_on(Oid relid, Oid owner, List **initdeferred)
{
	Relation	rel = try_table_open(relid, RowExclusiveLock);
	List	   *seen = NIL;
	List	   *names = NIL;

	*initdeferred = NIL;
	if (rel == NULL)
		return NIL;
	for (int i = 0; rel->trigdesc != NULL && i < rel->trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &rel->trigdesc->triggers[i];
		HeapTuple	tup;
		Form_pg_constraint con;

		if (!tg->tgdeferrable || !OidIsValid(tg->tgconstraint) ||
			list_member_oid(seen, tg->tgconstraint))
			continue;
		seen = lappend_oid(seen, tg->tgconstraint);
		tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(tg->tgconstraint));
		if (!HeapTupleIsValid(tup))
			continue;
		con = (Form_pg_constraint) GETSTRUCT(tup);
		if (pg_namespace_aclcheck(con->connamespace, owner, ACL_USAGE) == ACLCHECK_OK)
		{
			names = lappend(names, makeRangeVar(get_namespace_name(con->connamespace),
												pstrdup(NameStr(con->conname)), -1));
			*initdeferred = lappend_int(*initdeferred, con->condeferred);
		}
		ReleaseSysCache(tup);
	}
	table_close(rel, NoLock);
	list_free(seen);
	return names;
}

/* SET CONSTRAINTS names IMMEDIATE or DEFERRED, as owner, restricted */
static void
constraints_set(List *names, bool deferred, Oid owner)
{
	ConstraintsSetStmt stmt = {.type = T_ConstraintsSetStmt};
	ShipsyncUserSave save;

	stmt.constraints = names;
	stmt.deferred = deferred;
	shipsync_become_owner(owner, &save);
	PG_TRY();
	{
		AfterTriggerSetState(&stmt);
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
}

/*
 * Before writing table relid as its owner (shipsync_become_owner()): make
 * its deferrable constraints IMMEDIATE, so that their checks run at the end
 * of the write, inside the restricted operation (see the file header).
 * Returns what shipsync_constraints_restore() takes after the write.
 * Nothing for a table without such a constraint, or one that no longer
 * exists.
 */
ShipsyncConstraints *
shipsync_constraints_immediate(Oid relid, Oid owner)
{
	ShipsyncConstraints *c = palloc0(sizeof(ShipsyncConstraints));

	c->owner = owner;
	c->names = constraints_deferrable_on(relid, owner, &c->initdeferred);
	if (c->names != NIL)
		constraints_set(c->names, false, owner);
	return c;
}

/*
 * After the write: the constraints shipsync_constraints_immediate() set
 * IMMEDIATE are back to their declared default for the rest of the
 * transaction.  Not needed on error: the (sub)transaction's abort restores
 * the state.
 */
void
shipsync_constraints_restore(ShipsyncConstraints *c)
{
	List	   *deferred = NIL;
	ListCell   *ln,
			   *ld;

	forboth(ln, c->names, ld, c->initdeferred)
		if (lfirst_int(ld))
			deferred = lappend(deferred, lfirst(ln));
	if (deferred != NIL)
		constraints_set(deferred, true, c->owner);
	list_free(deferred);
}

/* Whether a policy's USING or WITH CHECK expression e is the constant true
 * (or, when absent_ok, absent) */
static bool
rls_expr_is_true(Expr *e, bool absent_ok)
{
	if (e == NULL)
		return absent_ok;
	return IsA(e, Const) && !((Const *) e)->constisnull &&
		DatumGetBool(((Const *) e)->constvalue);
}

/* Whether policy p applies to role's commands cmd (as check_role_for_policy) */
static bool
rls_policy_applies(RowSecurityPolicy *p, Oid role, char cmd)
{
	Oid		   *roles = (Oid *) ARR_DATA_PTR(p->roles);
	int			n = ARR_DIMS(p->roles)[0];

	if (p->polcmd != '*' && p->polcmd != cmd)
		return false;
	if (n > 0 && roles[0] == ACL_ID_PUBLIC)
		return true;
	for (int i = 0; i < n; i++)
		if (has_privs_of_role(role, roles[i]))
			return true;
	return false;
}

/*
 * Whether the row security policies of relid let owner read every row
 * (SELECT) and write every row back (UPDATE, its new row included): a
 * permissive policy with USING (true) for each, the UPDATE one's WITH
 * CHECK true or absent, and no restrictive policy for either that says
 * anything but true.  Only constant true is taken: an expression that is
 * true of every row today (tenant IS NOT NULL) may not be tomorrow.
 */
static bool
rls_owner_policies_see_all(Oid relid, Oid owner)
{
	Relation	rel = table_open(relid, AccessShareLock);
	RowSecurityDesc *rsdesc = rel->rd_rsdesc;
	bool		reads_all = false;
	bool		writes_all = false;
	bool		restricted = false;
	ListCell   *lc;

	if (rsdesc != NULL)
		foreach(lc, rsdesc->policies)
		{
			RowSecurityPolicy *p = (RowSecurityPolicy *) lfirst(lc);
			bool		sel = rls_policy_applies(p, owner, ACL_SELECT_CHR);
			bool		upd = rls_policy_applies(p, owner, ACL_UPDATE_CHR);

			if (!sel && !upd)
				continue;
			if (!p->permissive)
			{
				if (!rls_expr_is_true(p->qual, true) ||
					!rls_expr_is_true(p->with_check_qual, true))
					restricted = true;
				continue;
			}
			if (sel && rls_expr_is_true(p->qual, false))
				reads_all = true;
			if (upd && rls_expr_is_true(p->qual, false) &&
				rls_expr_is_true(p->with_check_qual, true))
				writes_all = true;
		}
	table_close(rel, AccessShareLock);
	return reads_all && writes_all && !restricted;
}

/*
 * ERROR unless the owner of order table relid sees every row of it.
 * Orders are read and written as the table's owner, and an order its row
 * security hides from the owner reads as an order deleted: its create
 * would end as "nothing to send", its write-back would write nothing, and
 * reconciliation would not see it, all without a word.  The owner is
 * exempt from the table's policies unless the table has FORCE ROW LEVEL
 * SECURITY and the owner is no superuser and has no BYPASSRLS; then its
 * policies must let it read and write every row.
 */
void
shipsync_check_owner_sees_all(Oid relid, Oid owner)
{
	char	   *owner_name;
	char	   *tbl;

	if (check_enable_rls(relid, owner, true) != RLS_ENABLED)
		return;
	if (rls_owner_policies_see_all(relid, owner))
		return;
	owner_name = GetUserNameFromId(owner, false);
	tbl = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									 get_rel_name(relid));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("row-level security may hide orders of table %s from its owner %s",
					tbl, owner_name),
			 errdetail("pg_shipsync reads and writes the orders as the table's owner, and the table has FORCE ROW LEVEL SECURITY, without a policy that lets the owner read and write every row: an order hidden from the owner would be taken for a deleted one, and never sent."),
			 errhint("CREATE POLICY shipsync_owner ON %s TO %s USING (true) (and no restrictive policy for the owner), ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, or give role %s the BYPASSRLS attribute.",
					 tbl, quote_identifier(owner_name), tbl, quote_identifier(owner_name))));
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
 * Print dates, times and intervals as ISO 8601 (DateStyle ISO, the order
 * of day and month kept for reading; IntervalStyle postgres; TimeZone UTC),
 * floats in their shortest exact form (extra_float_digits 1) and bytea in
 * hex until the current GUC nest level ends: the caller has made one.  An
 * order key of such a type is its text as written this way, whatever the
 * session's settings: "07/12/2026" of a session of SQL, DMY was read back
 * by the dispatcher, of ISO, MDY, as July 12th, another order's key; one
 * timestamptz was two keys in sessions of two time zones; a real 1234567
 * of a session of extra_float_digits 0 was "1.23457e+06", no row's key
 * (the order taken for deleted, never sent); and a bytea key of a session
 * of bytea_output escape was another key than the same order's in hex.
 */
void
shipsync_keys_as_iso(void)
{
	(void) set_config_option("datestyle", "ISO", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("timezone", "UTC", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "1", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("bytea_output", "hex", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Print order bodies as the dispatcher sends them, whatever the session's
 * settings, until the current GUC nest level ends (the caller has made
 * one): dates, times, intervals, floats and bytea as shipsync_keys_as_iso()
 * prints keys (a timestamptz in UTC, floats in their shortest exact form,
 * bytea in hex), and money by the lc_monetary the
 * session started with (the database's).  render_request() previews the
 * body in the caller's session, the dispatcher prints it in its own: both
 * print it this way, so that what is previewed is what is sent.
 */
void
shipsync_body_settings(void)
{
	shipsync_keys_as_iso();

	/*
	 * money prints by lc_monetary, and its amount means what that locale's
	 * fraction digits say: no setting prints every database's money right.
	 * The dispatcher prints it by the database's (its session never sets
	 * one); a caller's SET lc_monetary is undone here, so that
	 * render_request() shows what is sent.
	 */
	(void) set_config_option("lc_monetary", GetConfigOptionResetString("lc_monetary"),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
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

/*
 * Pin, for a background worker connected to a database, the search_path,
 * the settings its transactions depend on and jit (off), whatever ALTER DATABASE or
 * ALTER ROLE ... SET gave the session.  At PGC_S_OVERRIDE, as the
 * search_path: above every database and role setting, and what RESET
 * returns to; a SET of our own (a function's SET clause, the receiver's
 * lock timeout) still applies.  The receiver (writer false) keeps the
 * server's default_transaction_read_only, which its /healthz reports, and
 * lock_timeout, which shipsync.receiver_lock_timeout = 0 leaves to the
 * server.
 */
void
shipsync_pin_worker_session(bool writer)
{
	shipsync_pin_search_path();
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("session_replication_role", "origin", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Our triggers take a superuser session with check_function_bodies off
	 * for a restore (the ledger's fold, the audit): ours never is one, and
	 * a database's owner may turn it off for every session of it.
	 */
	SetConfigOption("check_function_bodies", "on", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Our statements are small and run again and again: JIT never pays
	 * for them, and a database's jit = on with low thresholds (set for its
	 * reports) compiled every claim, apply and write-back, each time.  The
	 * dispatcher then left the network unread for seconds at a time, its
	 * requests timing out and its breaker opening: 100 orders were not
	 * delivered in five minutes.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	if (writer)
	{
		SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
		SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	}
}

/*
 * SIGINT while a bounded lock wait is in force (shipsync_lock_wait_begin()):
 * the lock timeout's own signal (LockTimeoutHandler() sends SIGINT to the
 * process once its indicator is set) is a cancel; another's
 * pg_cancel_backend() is not.
 */
static void
lock_wait_sigint(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (get_timeout_indicator(LOCK_TIMEOUT, false))
	{
		QueryCancelPending = true;
		InterruptPending = true;
		SetLatch(MyLatch);
	}
	errno = save_errno;
}

/*
 * Limit the waits of the statements that follow for a lock to ms (none:
 * 0), until shipsync_lock_wait_end(), over the workers' pinned lock_timeout
 * of 0 (shipsync_pin_worker_session()), at a GUC nest level of its own and
 * at PGC_S_SESSION, above the pin (PGC_S_OVERRIDE would make it the
 * session's default, which no nest level undoes).
 * The workers' reads and writes of the user's order tables go through it
 * (shipsync.order_lock_timeout): a row or a table another session
 * holds then fails that statement with lock_not_available, where it held
 * every order of every table behind it.  A lock timeout is raised as a
 * cancel is: the timeout signals SIGINT, which the applier ignores, and
 * the apply holds cancels off (outbox_apply(): a pg_cancel_backend() must
 * not fail a write-back).  So meanwhile SIGINT is lock_wait_sigint(), which
 * takes the lock timeout's alone, and cancels are let through (a cancel
 * already held off is held again after it).
 */
void
shipsync_lock_wait_begin(ShipsyncLockWait *w, int ms)
{
	char		value[16];

	w->nest = -1;
	if (ms <= 0)
		return;
	snprintf(value, sizeof(value), "%d", ms);
	w->nest = NewGUCNestLevel();
	(void) set_config_option("lock_timeout", value,
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	w->sigint = pqsignal(SIGINT, lock_wait_sigint);
	w->cancel_pending = QueryCancelPending;
	QueryCancelPending = false;
	w->holdoff = QueryCancelHoldoffCount;
	QueryCancelHoldoffCount = 0;
}

/* Undo shipsync_lock_wait_begin(), whether the statements went through or not */
void
shipsync_lock_wait_end(ShipsyncLockWait *w)
{
	if (w->nest < 0)
		return;
	QueryCancelHoldoffCount = w->holdoff;
	if (w->cancel_pending)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	pqsignal(SIGINT, w->sigint);
	AtEOXact_GUC(true, w->nest);
	w->nest = -1;
}
