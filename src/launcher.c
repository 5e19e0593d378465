/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher: one dispatcher per database of shipsync.databases,
 *		the receiver of pushes when shipsync.receiver_listen is set, and
 *		the WAL flushes the dispatchers ask for (flush.c).
 *
 * The launcher is a static background worker connected to no database (it
 * reads only the shared catalog pg_database).  Once a second, and whenever
 * one of its dispatchers changes state (bgw_notify_pid) or the
 * configuration is reloaded, it compares the list of databases with the
 * dispatchers it has started: a listed database that exists and has no
 * running dispatcher gets one; a dispatcher whose database left the list is
 * terminated.  A database that does not exist yet is simply looked for again
 * at the next pass, so CREATE DATABASE needs no server restart.  Why a
 * listed database is not served (it does not exist, was renamed or
 * dropped, allows no connections) is said in the log once per reason.
 *
 * Dispatchers are registered with BGW_NEVER_RESTART: the launcher restarts
 * them itself, at most once a second per database, so a dispatcher that
 * fails at once does not spin.  A launcher started again (terminated, or
 * failed) has no handle on the workers of the one before it: it adopts
 * those it finds in shared memory (the dispatchers' slots, the receiver's
 * pid), and stops an adopted dispatcher whose database leaves the list.
 *
 * A database that a DBA's command holds (DROP DATABASE, ALTER DATABASE ...
 * RENAME, CREATE DATABASE ... TEMPLATE: each locks the database and then
 * waits up to 5 s for its other sessions to leave) is let go: the launcher
 * looks at each served database's lock once a second, stops our workers
 * connected to it (the dispatcher, its applier, a comparison, the
 * receiver) and starts none there until the command is over.
 *
 * The receiver of pushes (receiver.c) is started the same way when
 * shipsync.receiver_listen is set, for shipsync.receiver_database once it
 * exists.  The launcher starts as soon as the server accepts read-only
 * connections, so that on a hot standby the receiver runs too and answers
 * 503 (a load balancer's health check sees it); dispatchers are registered
 * to start only once recovery is over.
 *
 * Whenever its latch is set, the launcher first flushes the WAL for the
 * dispatchers that asked (flush.c): with requests on the wire, a
 * dispatcher hands it the flush of its claims rather than sleep through
 * it.  Nothing else the launcher does takes long, except reading
 * pg_database when a dispatcher is to be started; a dispatcher whose
 * answer is late flushes itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_database_listed);

/* Why a listed database is not served, as the log last said it */
typedef enum LauncherUnserved
{
	UNSERVED_NOT = 0,			/* served, or not looked for yet */
	UNSERVED_MISSING,			/* no database of that name, ever seen */
	UNSERVED_RENAMED,			/* the one served has another name now */
	UNSERVED_DROPPED,			/* the one served is gone */
	UNSERVED_NO_CONNECTIONS		/* ALTER DATABASE ... ALLOW_CONNECTIONS false */
} LauncherUnserved;

/* What the launcher knows about one listed database */
typedef struct LauncherEntry
{
	char		dbname[NAMEDATALEN];
	Oid			dbid;			/* InvalidOid until the database is found */
	Oid			found_dbid;		/* the database last found under that name */
	LauncherUnserved said;		/* why it is not served, as the log said */
	BackgroundWorkerHandle *handle;
	TimestampTz last_start;
	int			no_slot;		/* starts refused in a row: no worker slot */
	TimestampTz no_slot_said;	/* when the log last said so */
	bool		listed;			/* still in shipsync.databases */
	bool		stopped;		/* just terminated through its handle */
	bool		let_go;			/* its workers were stopped for a DBA's command */
} LauncherEntry;

static LauncherEntry launcher_entries[SHIPSYNC_MAX_DISPATCHERS];
static int	launcher_nentries = 0;
static LauncherEntry launcher_receiver;

/*
 * Say in the log, once per reason, why e's database is not served: a DBA
 * who renamed a served database, or closed it to connections, had no word
 * of it, while its orders were captured and never sent.  A database not
 * created yet is only noted: listing it beforehand is allowed.
 */
static void
launcher_say_unserved(LauncherEntry *e, LauncherUnserved why, const char *renamed_to,
					  bool receiver)
{
	const char *guc = receiver ? "shipsync.receiver_database" : "shipsync.databases";
	const char *worker = receiver ? "receiver of pushes" : "dispatcher";

	if (why == e->said)
		return;
	e->said = why;
	if (why == UNSERVED_MISSING)
		ereport(LOG,
				(errmsg("pg_shipsync: database \"%s\" of %s does not exist; its %s starts once it is created",
						e->dbname, guc, worker)));
	else if (why == UNSERVED_DROPPED)
		ereport(LOG,
				(errmsg("pg_shipsync: database \"%s\" of %s was dropped; a %s starts if one of that name is created",
						e->dbname, guc, worker)));
	else if (why == UNSERVED_RENAMED)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("database \"%s\" of %s was renamed to \"%s\": no pg_shipsync %s serves it",
						e->dbname, guc, renamed_to, worker),
				 receiver ?
				 errdetail("Pushes are refused until the receiver runs again.") :
				 errdetail("Its orders are captured and not sent until %s names it.", guc),
				 errhint("Put \"%s\" in %s in place of \"%s\"%s.", renamed_to, guc, e->dbname,
						 receiver ? " and restart the server" :
						 " (ALTER SYSTEM SET shipsync.databases, then SELECT pg_reload_conf())")));
	else if (why == UNSERVED_NO_CONNECTIONS)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("database \"%s\" of %s does not allow connections: no pg_shipsync %s serves it",
						e->dbname, guc, worker),
				 receiver ?
				 errdetail("Pushes are refused until it does.") :
				 errdetail("Its orders are captured and not sent until it does."),
				 errhint("Run ALTER DATABASE %s ALLOW_CONNECTIONS true, or take it out of %s.",
						 quote_identifier(e->dbname), guc)));
}

/*
 * Does e's database exist under its name and accept connections?  Sets
 * e->dbid, and says why not in the log (launcher_say_unserved).  Connected
 * to no database, we may read shared catalogs only by heap scan: an index
 * scan would need the opclass catalogs of some database.
 */
static bool
launcher_database_exists(LauncherEntry *e, bool receiver)
{
	LauncherUnserved why = UNSERVED_MISSING;
	char		renamed_to[NAMEDATALEN] = "";
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext caller = CurrentMemoryContext;

	e->dbid = InvalidOid;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), e->dbname) == 0)
		{
			why = db->datallowconn ? UNSERVED_NOT : UNSERVED_NO_CONNECTIONS;
			e->dbid = e->found_dbid = db->oid;
			break;
		}
		if (OidIsValid(e->found_dbid) && db->oid == e->found_dbid)
			strlcpy(renamed_to, NameStr(db->datname), NAMEDATALEN);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);	/* the commit left TopMemoryContext */
	if (why == UNSERVED_MISSING && renamed_to[0] != '\0')
		why = UNSERVED_RENAMED;
	else if (why == UNSERVED_MISSING && OidIsValid(e->found_dbid))
		why = UNSERVED_DROPPED;
	if (why == UNSERVED_NOT)
		e->said = UNSERVED_NOT;
	else
		launcher_say_unserved(e, why, renamed_to, receiver);
	return why == UNSERVED_NOT;
}

/*
 * How long after its last start a worker is started again: a second, or,
 * while no background worker slot is free, twice as long at each refusal,
 * up to a minute.
 */
#define LAUNCHER_NO_SLOT_MAX_MS 60000

static int
launcher_retry_ms(const LauncherEntry *e)
{
	if (e->no_slot == 0)
		return 1000;
	return Min(1000 << Min(e->no_slot, 6), LAUNCHER_NO_SLOT_MAX_MS);
}

static bool
launcher_worker_alive(LauncherEntry *e)
{
	pid_t		pid;
	BgwHandleStatus st;

	if (e->handle == NULL)
		return false;
	st = GetBackgroundWorkerPid(e->handle, &pid);
	return st == BGWH_STARTED || st == BGWH_NOT_YET_STARTED;
}

/*
 * May the role complete a command that drops, renames or copies the
 * database: a superuser, a member of its owner, or a role with CREATEDB
 * when it is a template (any such role may copy it)?  Needs a transaction
 * (shared catalogs only).
 */
static bool
launcher_role_may_hold(Oid roleid, Oid dbid)
{
	HeapTuple	tup;
	Form_pg_database db;
	bool		may;

	if (superuser_arg(roleid))
		return true;
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dbid));
	if (!HeapTupleIsValid(tup))
		return true;			/* gone: dropped */
	db = (Form_pg_database) GETSTRUCT(tup);
	may = has_privs_of_role(roleid, db->datdba);
	if (!may && db->datistemplate)
	{
		HeapTuple	role = SearchSysCache1(AUTHOID, ObjectIdGetDatum(roleid));

		if (HeapTupleIsValid(role))
		{
			may = ((Form_pg_authid) GETSTRUCT(role))->rolcreatedb;
			ReleaseSysCache(role);
		}
	}
	ReleaseSysCache(tup);
	return may;
}

/*
 * Does a DBA's command hold the database?  DROP DATABASE and ALTER DATABASE
 * ... RENAME lock it in AccessExclusiveLock, CREATE DATABASE ... TEMPLATE
 * in ShareLock, before they wait for its sessions to leave; a session
 * connecting takes RowExclusiveLock, which conflicts with both.  A session
 * lock tried without waiting.
 *
 * Each of these commands takes the lock before it checks that its role may
 * run it: any role that may connect somewhere takes it, for an instant, by
 * trying (DROP DATABASE shop, refused "must be owner").  Only a holder
 * whose role may complete the command counts (launcher_role_may_hold; the
 * role a session logged in as), else trying in a loop stopped our workers
 * again and again.
 */
static bool
launcher_database_held(Oid dbid)
{
	LOCKTAG		tag;
	VirtualTransactionId *holders;
	bool		held = false;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, dbid, 0);
	if (LockAcquireExtended(&tag, RowExclusiveLock, true, true, false, NULL) !=
		LOCKACQUIRE_NOT_AVAIL)
	{
		LockRelease(&tag, RowExclusiveLock, true);
		return false;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	holders = GetLockConflicts(&tag, RowExclusiveLock, NULL);
	for (int i = 0; !held && VirtualTransactionIdIsValid(holders[i]); i++)
	{
		PGPROC	   *proc = BackendIdGetProc(holders[i].backendId);

		held = proc != NULL && launcher_role_may_hold(proc->roleId, dbid);
	}
	CommitTransactionCommand();
	return held;
}

/*
 * Stop every pg_shipsync worker connected to the database (those the
 * dispatcher started too: its applier, a comparison), as
 * pg_terminate_backend() would; returns how many were signalled.
 */
static int
launcher_stop_workers(Oid dbid)
{
	int			n = 0;
	int			nbackends = pgstat_fetch_stat_numbackends();

	for (int i = 1; i <= nbackends; i++)
	{
		LocalPgBackendStatus *l = pgstat_fetch_stat_local_beentry(i);
		const char *type;

		if (l == NULL || l->backendStatus.st_databaseid != dbid ||
			l->backendStatus.st_backendType != B_BG_WORKER)
			continue;
		type = GetBackgroundWorkerTypeByPid(l->backendStatus.st_procpid);
		if (type != NULL && strncmp(type, "pg_shipsync ", 12) == 0 &&
			kill(l->backendStatus.st_procpid, SIGTERM) == 0)
			n++;
	}
	pgstat_clear_backend_activity_snapshot();
	return n;
}

/*
 * Let go of e's database while a DBA's command holds it; true while it
 * does (nothing is to be started there).
 */
static bool
launcher_let_go(LauncherEntry *e)
{
	int			n;

	if (!OidIsValid(e->dbid) || !launcher_database_held(e->dbid))
	{
		e->let_go = false;
		return false;
	}
	n = launcher_stop_workers(e->dbid);
	if (n > 0 && !e->let_go)
		ereport(LOG,
				(errmsg("pg_shipsync: database \"%s\" is held by a DBA's command (dropped, renamed or copied): its %d pg_shipsync workers stop until it is over",
						e->dbname, n)));
	e->let_go = true;
	return true;
}

/*
 * The pid of the dispatcher running in database dbid, or with InvalidOid
 * of the receiver, as they publish it in shared memory; 0 when none runs.
 * A launcher that was terminated or failed leaves its workers running, and
 * the one started after it has no handle on them: it adopts them, rather
 * than starting a second one every second (which exited at once, the
 * dispatcher finding its database taken, the receiver its port).
 */
static pid_t
launcher_running_pid(Oid dbid)
{
	pid_t		pid = 0;

	SpinLockAcquire(&shipsync_shared->mutex);
	if (!OidIsValid(dbid))
		pid = shipsync_shared->receiver_pid;
	else
		for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
			if (shipsync_shared->slots[i].dbid == dbid)
				pid = shipsync_shared->slots[i].pid;
	SpinLockRelease(&shipsync_shared->mutex);
	return pid;
}

/*
 * Terminate the dispatchers that run in a database no longer listed and
 * that we have no handle on (started by the launcher before us); ours are
 * terminated through their handles (stopped).
 */
static void
launcher_stop_unlisted(void)
{
	pid_t		stop[SHIPSYNC_MAX_DISPATCHERS];
	int			nstop = 0;

	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
	{
		ShipsyncSlot *slot = &shipsync_shared->slots[i];
		bool		ours = false;

		if (!OidIsValid(slot->dbid) || slot->pid == 0)
			continue;
		for (int j = 0; j < launcher_nentries && !ours; j++)
			ours = (launcher_entries[j].listed || launcher_entries[j].stopped) &&
				launcher_entries[j].dbid == slot->dbid;
		if (!ours)
			stop[nstop++] = slot->pid;
	}
	SpinLockRelease(&shipsync_shared->mutex);

	for (int i = 0; i < nstop; i++)
	{
		ereport(LOG,
				(errmsg("pg_shipsync launcher: stopping the dispatcher with PID %d, whose database is not in shipsync.databases",
						(int) stop[i])));
		(void) kill(stop[i], SIGTERM);
	}
}

/*
 * Start a dispatcher for e's database, or with receiver the receiver of
 * pushes (which runs during recovery too, answering 503).
 */
static void
launcher_start_worker(LauncherEntry *e, bool receiver)
{
	BackgroundWorker worker;
	MemoryContext old;
	bool		ok;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = receiver ? BgWorkerStart_ConsistentState :
		BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "pg_shipsync", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name,
			receiver ? "shipsync_receiver_main" : "shipsync_dispatcher_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_shipsync %s %s",
			 receiver ? "receiver" : "dispatcher", e->dbname);
	strlcpy(worker.bgw_type, receiver ? "pg_shipsync receiver" : "pg_shipsync dispatcher",
			BGW_MAXLEN);
	strlcpy(worker.bgw_extra, e->dbname, BGW_EXTRALEN);
	worker.bgw_notify_pid = MyProcPid;

	if (e->handle)
		pfree(e->handle);
	e->handle = NULL;
	e->last_start = GetCurrentTimestamp();

	/* the handle outlives the loop context */
	old = MemoryContextSwitchTo(TopMemoryContext);
	ok = RegisterDynamicBackgroundWorker(&worker, &e->handle);
	MemoryContextSwitchTo(old);
	if (ok)
	{
		e->no_slot = 0;
		return;
	}

	/*
	 * Every slot of max_worker_processes is taken: try again after 2, 4, 8
	 * ... seconds, up to a minute, and say so at the first refusal and then
	 * at most once a minute.
	 */
	e->no_slot++;
	if (e->no_slot == 1 ||
		TimestampDifferenceExceeds(e->no_slot_said, e->last_start, LAUNCHER_NO_SLOT_MAX_MS))
	{
		e->no_slot_said = e->last_start;
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the pg_shipsync %s for database \"%s\"",
						receiver ? "receiver" : "dispatcher", e->dbname),
				 errdetail("All %d background worker slots (max_worker_processes) are taken; %d attempts so far, the next in %d s.",
						   max_worker_processes, e->no_slot, launcher_retry_ms(e) / 1000),
				 errhint("Raise max_worker_processes.")));
	}
}

/*
 * Keep the receiver running while shipsync.receiver_listen is set (a
 * postmaster parameter: it cannot change while we run).
 */
static void
launcher_reconcile_receiver(void)
{
	LauncherEntry *e = &launcher_receiver;

	if (shipsync_receiver_listen == NULL || shipsync_receiver_listen[0] == '\0')
		return;
	strlcpy(e->dbname, shipsync_receiver_database, NAMEDATALEN);
	if (launcher_let_go(e) || launcher_worker_alive(e))
		return;
	if (!TimestampDifferenceExceeds(e->last_start, GetCurrentTimestamp(), launcher_retry_ms(e)))
		return;
	if (!launcher_database_exists(e, true) || launcher_let_go(e))
		return;
	if (launcher_running_pid(InvalidOid) != 0)
		return;					/* started by the launcher before us */
	launcher_start_worker(e, true);
}

/*
 * shipsync._database_listed(): is the current database in
 * shipsync.databases, as the launcher reads it?  NULL when the list is
 * not valid (the launcher then serves no database).
 */
Datum
shipsync_database_listed(PG_FUNCTION_ARGS)
{
	char	   *raw;
	List	   *names;
	ListCell   *lc;
	char	   *db = get_database_name(MyDatabaseId);

	if (!shipsync_database_names(shipsync_databases, &raw, &names))
		PG_RETURN_NULL();
	foreach(lc, names)
		if (db != NULL && strcmp((const char *) lfirst(lc), db) == 0)
			PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(false);
}

/*
 * Bring the set of dispatchers in line with shipsync.databases.
 */
static void
launcher_reconcile(void)
{
	char	   *raw;
	List	   *names = NIL;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	if (!shipsync_database_names(shipsync_databases, &raw, &names))
	{
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list syntax in parameter \"shipsync.databases\"")));
		names = NIL;
	}

	for (int i = 0; i < launcher_nentries; i++)
		launcher_entries[i].listed = launcher_entries[i].stopped = false;

	foreach(lc, names)
	{
		const char *name = (const char *) lfirst(lc);
		LauncherEntry *e = NULL;

		if (name[0] == '\0')
			continue;
		for (int i = 0; i < launcher_nentries; i++)
			if (strcmp(launcher_entries[i].dbname, name) == 0)
				e = &launcher_entries[i];
		if (e == NULL)
		{
			if (launcher_nentries >= SHIPSYNC_MAX_DISPATCHERS)
			{
				ereport(WARNING,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("too many databases in shipsync.databases"),
						 errdetail("At most %d are served.", SHIPSYNC_MAX_DISPATCHERS)));
				break;
			}
			e = &launcher_entries[launcher_nentries++];
			memset(e, 0, sizeof(*e));
			strlcpy(e->dbname, name, NAMEDATALEN);
		}
		e->listed = true;
	}

	for (int i = 0; i < launcher_nentries; i++)
	{
		LauncherEntry *e = &launcher_entries[i];

		if (!e->listed)
		{
			if (e->handle)
			{
				TerminateBackgroundWorker(e->handle);
				pfree(e->handle);
				e->handle = NULL;
				e->stopped = true;
			}
			continue;
		}
		if (launcher_let_go(e) || launcher_worker_alive(e))
			continue;
		if (!TimestampDifferenceExceeds(e->last_start, now, launcher_retry_ms(e)))
			continue;
		if (!launcher_database_exists(e, false) || launcher_let_go(e))
			continue;
		if (launcher_running_pid(e->dbid) != 0)
		{
			/* started by the launcher before us: looked at again in a second */
			e->last_start = now;
			continue;
		}
		launcher_start_worker(e, false);
	}
	launcher_stop_unlisted();

	/* drop entries no longer listed and no longer running */
	for (int i = 0; i < launcher_nentries;)
	{
		if (!launcher_entries[i].listed && launcher_entries[i].handle == NULL)
			launcher_entries[i] = launcher_entries[--launcher_nentries];
		else
			i++;
	}

	list_free(names);
	pfree(raw);
}

void
shipsync_launcher_main(Datum main_arg)
{
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: we read only pg_database */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	/* as every worker of ours, though no database's settings reach it */
	shipsync_pin_search_path();
	pgstat_report_appname("pg_shipsync launcher");

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync launcher",
									 ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("pg_shipsync launcher started")));
	flush_serve_begin();

	for (;;)
	{
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		flush_serve();
		old = MemoryContextSwitchTo(loop_cxt);
		launcher_reconcile();
		launcher_reconcile_receiver();
		MemoryContextSwitchTo(old);
		MemoryContextReset(loop_cxt);

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
