/*-------------------------------------------------------------------------
 *
 * pg_shipsync.c
 *		Module load: GUCs, shared memory and the launcher registration.
 *
 * pg_shipsync must be in shared_preload_libraries: the launcher is a static
 * background worker registered here, and the dispatchers' latches live in a
 * small shared struct so that a committing backend can wake the dispatcher
 * of its database without any polling delay.
 *
 * A COMMIT PREPARED runs no transaction callback: the utility hook here
 * wakes the dispatcher after one (shipsync_process_utility()).
 *
 * The secret key files are read here too, in the postmaster, and the hook
 * that keeps secrets out of the server log is installed here: every
 * process forked later inherits both (secret.c, redact.c).
 *
 * Shared state is small: one slot per running dispatcher (database, pid,
 * latch) under a spinlock, a configuration generation counter that SQL
 * functions bump when a provider or binding changes, the blocks of intent
 * ids (capture.c), and one entry per provider in use (breaker, holds,
 * rate-limit tokens and health counters, under the LWLock health_lock; see
 * health.c), so that a dispatcher that restarts keeps them.  They are lost
 * with the server's shared memory (a restart or a crash of the server),
 * which is harmless: they only hold back sending.  All durable state lives
 * in tables of schema shipsync.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "pg_shipsync.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(shipsync_library_version);

void		_PG_init(void);

ShipsyncShared *shipsync_shared = NULL;

char	   *shipsync_databases = NULL;
int			shipsync_batch_size = 256;
int			shipsync_max_response_bytes = 1024 * 1024;
/*
 * At most 128 MB: a value is looked at before it is printed (body.c), and
 * JSON escapes a byte into at most six, so that a body being printed stays
 * under the 1 GB a palloc() may take.
 */
int			shipsync_max_request_bytes = 16 * 1024 * 1024;
bool		shipsync_allow_insecure_http = false;
int			shipsync_idle_check_ms = 10000;
int			shipsync_dispatcher_nice = 0;
int			shipsync_busy_cpu_percent = 2;
bool		shipsync_apply_worker = true;
int			shipsync_order_lock_timeout_ms = 1000;
int			shipsync_writeback_wait_ticket_ms = 300000;
bool		shipsync_dispatcher_huge_pages = true;
bool		shipsync_prefault_memory = true;
char	   *shipsync_receiver_listen = NULL;
char	   *shipsync_receiver_database = NULL;
char	   *shipsync_receiver_ssl_cert_file = NULL;
char	   *shipsync_receiver_ssl_key_file = NULL;
int			shipsync_receiver_max_connections = 256;
int			shipsync_receiver_max_connections_per_ip = 32;
int			shipsync_max_push_bytes = 1024 * 1024;
int			shipsync_receiver_rate_limit = 0;
int			shipsync_receiver_header_timeout_ms = 10000;
int			shipsync_receiver_body_timeout_ms = 30000;
int			shipsync_receiver_queue_size = 1024;
int			shipsync_receiver_lock_timeout_ms = 1000;
char	   *shipsync_allowed_hosts = NULL;
const ShipAllowList *shipsync_allowlist = NULL;
int			shipsync_audit_retention = 400 * 24 * 60;	/* minutes */
char	   *shipsync_audit_action = NULL;
char	   *shipsync_reconcile_at = NULL;
int			shipsync_reconcile_at_minute = 3 * 60;
int			shipsync_reconcile_interval_s = 300;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
shipsync_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(ShipsyncShared)));
	RequestNamedLWLockTranche("pg_shipsync", 1);
}

static void
shipsync_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shipsync_shared = ShmemInitStruct("pg_shipsync",
									  sizeof(ShipsyncShared), &found);
	if (!found)
	{
		memset(shipsync_shared, 0, sizeof(ShipsyncShared));
		SpinLockInit(&shipsync_shared->mutex);
		SpinLockInit(&shipsync_shared->id_mutex);
		pg_atomic_init_u64(&shipsync_shared->config_generation, 1);
		for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
			pg_atomic_init_u64(&shipsync_shared->slots[i].flush_wanted, 0);
		shipsync_shared->health_lock = &(GetNamedLWLockTranche("pg_shipsync"))[0].lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * The shared entry of one provider of database dbid, taken (zeroed) if it
 * has none yet; NULL when every entry is taken (the caller then keeps the
 * state in its own memory, and it does not survive a restart).  extoid is
 * the OID of the extension the provider belongs to: an entry left by a
 * provider of the same id in an extension since dropped (DROP EXTENSION
 * and CREATE EXTENSION start the ids again) is zeroed, so that the new
 * provider inherits neither its breaker, nor the wait its carrier asked
 * for, nor its counters.
 */
ShipsyncProviderState *
shipsync_provider_state(Oid dbid, Oid extoid, int32 provider_id)
{
	ShipsyncProviderState *found = NULL;
	ShipsyncProviderState *free_entry = NULL;

	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	for (int i = 0; i < SHIPSYNC_MAX_PROVIDER_STATES; i++)
	{
		ShipsyncProviderState *st = &shipsync_shared->provider_states[i];

		if (st->dbid == dbid && st->provider_id == provider_id)
		{
			found = st;
			break;
		}
		if (st->dbid == InvalidOid && free_entry == NULL)
			free_entry = st;
	}
	if (found != NULL && found->extoid != extoid)
		free_entry = found;		/* the dropped extension's: start afresh */
	else if (found != NULL)
		free_entry = NULL;		/* ours: kept */
	if (free_entry != NULL)
	{
		memset(free_entry, 0, sizeof(*free_entry));
		free_entry->dbid = dbid;
		free_entry->extoid = extoid;
		free_entry->provider_id = provider_id;
		found = free_entry;
	}
	LWLockRelease(shipsync_shared->health_lock);
	return found;
}

/*
 * Free the entries of database dbid whose provider is not among keep[]
 * (dropped providers).  Those of a dropped database stay until the server
 * restarts.
 */
void
shipsync_forget_provider_states(Oid dbid, const int32 *keep, int nkeep)
{
	LWLockAcquire(shipsync_shared->health_lock, LW_EXCLUSIVE);
	for (int i = 0; i < SHIPSYNC_MAX_PROVIDER_STATES; i++)
	{
		ShipsyncProviderState *st = &shipsync_shared->provider_states[i];
		bool		kept = false;

		if (st->dbid != dbid)
			continue;
		for (int k = 0; k < nkeep && !kept; k++)
			kept = keep[k] == st->provider_id;
		if (!kept)
			st->dbid = InvalidOid;
	}
	LWLockRelease(shipsync_shared->health_lock);
}

/*
 * A commit enqueued work for the given providers (a mask of their bits):
 * note it for the dispatcher serving database dbid, and set its latch if
 * one of them can take work now.  A commit for a paused, held or full
 * provider leaves the dispatcher asleep: it looks at the noted work as soon
 * as that provider can take some.  A configuration change always wakes it.
 * Cheap enough for every commit that enqueued something: a spinlock and a
 * scan of at most SHIPSYNC_MAX_DISPATCHERS slots.
 */
void
shipsync_wake_dispatcher(Oid dbid, uint64 providers, bool config_changed)
{
	Latch	   *latch = NULL;

	if (shipsync_shared == NULL)
		return;

	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
	{
		ShipsyncSlot *slot = &shipsync_shared->slots[i];

		if (slot->dbid == dbid)
		{
			slot->pending |= providers;
			if (config_changed || (slot->accepting & providers) != 0)
				latch = slot->latch;
			break;
		}
	}
	SpinLockRelease(&shipsync_shared->mutex);

	/* a latch of an exited process only causes a spurious wakeup */
	if (latch)
		SetLatch(latch);
}

/*
 * Run this process (a dispatcher or its applier) at
 * shipsync.dispatcher_nice, so that under a full CPU the database's
 * own sessions come first and delivery takes what they leave (it loses
 * nothing by waiting: the outbox is durable).  Every PostgreSQL process is
 * the leader of its own session, and on kernels that schedule sessions as
 * groups (autogroup) a process's nice value only orders it within its
 * group: there the group's own nice value, /proc/self/autogroup, is the
 * one that counts, so both are set.  Lowering either needs a privilege the
 * server does not have: it takes effect at the dispatcher's next start.
 */
/*
 * Set this process's session group's nice value, if the kernel groups
 * sessions.  From an unprivileged process the kernel takes one such change
 * per 100 ms on the whole machine, and refuses the others with EAGAIN: a
 * dispatcher and its applier reload at the same moment, so the second of
 * them waits its turn and tries again.
 */
static void
set_group_nice(int want)
{
	char		buf[16];
	int			len = snprintf(buf, sizeof(buf), "%d", want);
	int			err = 0;

	for (int attempt = 0; attempt < 10; attempt++)
	{
		int			fd = open("/proc/self/autogroup", O_WRONLY);
		bool		done;

		if (fd < 0)
			return;				/* no autogroup */
		done = write(fd, buf, len) == len;
		err = errno;
		close(fd);
		if (done)
			return;
		if (err != EAGAIN)
			break;
		pg_usleep(110 * 1000L);
	}
	errno = err;
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("pg_shipsync: could not set the nice value of this process's session group to %d", want),
			 errdetail("Writing /proc/self/autogroup: %m. The process's own nice value is set.")));
}

void
shipsync_set_nice(void)
{
	static int	applied = INT_MIN;
	int			want = shipsync_dispatcher_nice;

	if (applied == INT_MIN)
		applied = getpriority(PRIO_PROCESS, 0); /* the postmaster's */
	if (want == applied)
		return;
	if (setpriority(PRIO_PROCESS, 0, want) != 0)
	{
		ereport(LOG,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("pg_shipsync: shipsync.dispatcher_nice = %d applies when the dispatcher next starts", want),
				 errdetail("setpriority: %m")));
		applied = want;			/* said once */
		return;
	}
	set_group_nice(want);
	applied = want;
}

/*
 * The dispatcher in slot publishes which providers can take work, and
 * collects which got work since it last looked.
 */
uint64
shipsync_exchange_masks(int slot, uint64 accepting)
{
	uint64		pending;

	SpinLockAcquire(&shipsync_shared->mutex);
	shipsync_shared->slots[slot].accepting = accepting;
	pending = shipsync_shared->slots[slot].pending;
	shipsync_shared->slots[slot].pending = 0;
	SpinLockRelease(&shipsync_shared->mutex);
	return pending;
}

/*
 * A transaction of database dbid that captured intents for the given
 * providers was prepared: tell the dispatcher to watch for it (its idle
 * checks), and note the providers, which its COMMIT PREPARED wakes the
 * dispatcher for (shipsync_process_utility()).
 */
void
shipsync_note_prepared(Oid dbid, uint64 providers)
{
	if (shipsync_shared == NULL)
		return;
	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
		if (shipsync_shared->slots[i].dbid == dbid)
		{
			shipsync_shared->slots[i].prepared = true;
			shipsync_shared->slots[i].prepared_providers |= providers;
			break;
		}
	SpinLockRelease(&shipsync_shared->mutex);
}

/*
 * The dispatcher in slot found no prepared transaction of its database
 * left: a COMMIT PREPARED from now on has nothing of ours to commit, and
 * wakes no one, unless a transaction that captured was prepared since
 * the dispatcher last took the flag (it looks again then).
 */
void
shipsync_forget_prepared(int slot)
{
	SpinLockAcquire(&shipsync_shared->mutex);
	if (!shipsync_shared->slots[slot].prepared)
		shipsync_shared->slots[slot].prepared_providers = 0;
	SpinLockRelease(&shipsync_shared->mutex);
}

/*
 * COMMIT PREPARED runs no transaction callback (capture.c wakes the
 * dispatcher from one at a plain commit), so the orders a prepared
 * transaction captured waited for the dispatcher's idle check, up to
 * shipsync.idle_check_ms.  Once a COMMIT PREPARED has succeeded, its rows
 * are visible to every new snapshot: wake the dispatcher of this database
 * (a prepared transaction is committed from its own database, PostgreSQL
 * checks it) for the providers whose intents a prepared transaction may
 * hold; none, and the dispatcher sleeps on.
 */
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

static void
shipsync_process_utility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		commit_prepared;
	uint64		providers = 0;

	commit_prepared = IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED;

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (!commit_prepared || shipsync_shared == NULL)
		return;
	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
		if (shipsync_shared->slots[i].dbid == MyDatabaseId)
		{
			providers = shipsync_shared->slots[i].prepared_providers;
			break;
		}
	SpinLockRelease(&shipsync_shared->mutex);
	if (providers != 0)
		shipsync_wake_dispatcher(MyDatabaseId, providers, false);
}

/* Whether a capturing transaction was prepared since the last call */
bool
shipsync_take_prepared(int slot)
{
	bool		prepared;

	SpinLockAcquire(&shipsync_shared->mutex);
	prepared = shipsync_shared->slots[slot].prepared;
	shipsync_shared->slots[slot].prepared = false;
	SpinLockRelease(&shipsync_shared->mutex);
	return prepared;
}

/*
 * shipsync.allowed_hosts is parsed once per value, here; the list is the
 * GUC's "extra", malloc'd by hostcheck.c and freed by guc.c.
 */
static bool
shipsync_check_allowed_hosts(char **newval, void **extra, GucSource source)
{
	char		err[256];
	ShipAllowList *l = shipsync_allowlist_parse(*newval, err, sizeof(err));

	if (l == NULL)
	{
		GUC_check_errdetail("%s", err);
		GUC_check_errhint("List host names, patterns such as *.carrier.example, IP addresses and networks such as 10.8.0.0/16, separated by commas.");
		return false;
	}
	*extra = l;
	return true;
}

static void
shipsync_assign_allowed_hosts(const char *newval, void *extra)
{
	shipsync_allowlist = (const ShipAllowList *) extra;
}

void
shipsync_out_of_memory(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("out of memory"),
			 errdetail("pg_shipsync could not allocate memory outside PostgreSQL's allocator.")));
	pg_unreachable();
}

/*
 * The names of the database list (shipsync.databases' value), as the
 * launcher serves them: a name in double quotes may hold commas and quotes
 * (doubled), and no name is folded to lower case (SplitGUCList()).  The one
 * parse of the list: the setting's check, the launcher's and attach()'s
 * (shipsync._database_listed(), launcher.c).  False when the list is not
 * valid; *names is then NIL.  The names point into *raw, palloc'd: the
 * caller frees both.
 */
bool
shipsync_database_names(const char *list, char **raw, List **names)
{
	*raw = pstrdup(list ? list : "");
	*names = NIL;
	if (SplitGUCList(*raw, ',', names))
		return true;
	list_free(*names);
	*names = NIL;
	return false;
}

/*
 * shipsync.databases must parse as the launcher parses it: a list that
 * does not (an unclosed quote) is refused where it is written, ALTER
 * SYSTEM or a reload, and the list in force stays.  Taken, it made the
 * launcher serve no database: every dispatcher stopped, and a warning
 * every second.
 */
static bool
shipsync_check_databases(char **newval, void **extra, GucSource source)
{
	char	   *raw;
	List	   *names;
	bool		ok = shipsync_database_names(*newval, &raw, &names);

	list_free(names);
	pfree(raw);
	if (!ok)
	{
		GUC_check_errdetail("The list of databases does not parse: a name in double quotes is not closed, or a comma, quote or space is misplaced.");
		GUC_check_errhint("Separate the names with commas; write a name that holds a comma, a double quote or leading or trailing spaces in double quotes, its quotes doubled.");
		return false;
	}
	return true;
}

/*
 * shipsync.reconcile_at: '' (no daily run) or HH:MM, local time.  The
 * minute of the day goes to the assign hook in *extra (malloc'd, as GUC
 * extras are in this version).
 */
static bool
shipsync_check_reconcile_at(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;
	int		   *minute;
	int			h = -1,
				m = 0;

	if (s != NULL && s[0] != '\0' &&
		(strlen(s) != 5 || !isdigit((unsigned char) s[0]) || !isdigit((unsigned char) s[1]) ||
		 s[2] != ':' || !isdigit((unsigned char) s[3]) || !isdigit((unsigned char) s[4]) ||
		 (h = atoi(s)) > 23 || (m = atoi(s + 3)) > 59))
	{
		GUC_check_errdetail("\"%s\" is not a time of day as HH:MM.", s);
		GUC_check_errhint("For example '03:00'; an empty string turns the daily run off.");
		return false;
	}
	minute = malloc(sizeof(int));
	if (minute == NULL)
		return false;
	*minute = h < 0 ? -1 : h * 60 + m;
	*extra = minute;
	return true;
}

static void
shipsync_assign_reconcile_at(const char *newval, void *extra)
{
	shipsync_reconcile_at_minute = *(int *) extra;
}

/* shipsync.reconcile_at and shipsync.reconcile_interval */
static void
define_reconcile_gucs(void)
{
	DefineCustomStringVariable("shipsync.reconcile_at",
							   "Local time of day (HH:MM) of the daily reconciliation run of every attached, unpaused provider.",
							   "An empty string turns the daily run off.",
							   &shipsync_reconcile_at,
							   "03:00",
							   PGC_SIGHUP, 0,
							   shipsync_check_reconcile_at,
							   shipsync_assign_reconcile_at, NULL);

	DefineCustomIntVariable("shipsync.reconcile_interval",
							"How often the CRM side of every attached table is reconciled (no pull).",
							"0 turns the pass off.",
							&shipsync_reconcile_interval_s,
							300, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

/*
 * The launcher (launcher.c), named by its symbol so that this file, the
 * lowest layer, links to nothing above it.  Restarted a second after it
 * exits.  It starts at consistent state, so that on a hot standby the
 * receiver of pushes runs (answering 503); the dispatchers it starts wait
 * for the end of recovery.
 */
static void
shipsync_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "pg_shipsync", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "shipsync_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "pg_shipsync launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "pg_shipsync launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* The receiver's parameters (src/receiver.c, docs/gucs.md) */
static void
define_receiver_gucs(void)
{
	DefineCustomStringVariable("shipsync.receiver_listen",
							   "Address and port the receiver of pushes listens on.",
							   "host:port, [IPv6]:port, or a port alone for 127.0.0.1; empty: no receiver.",
							   &shipsync_receiver_listen,
							   "",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("shipsync.receiver_database",
							   "Database whose ingest functions the receiver calls.",
							   NULL,
							   &shipsync_receiver_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("shipsync.receiver_ssl_cert_file",
							   "PEM certificate (chain) of the receiver's HTTPS listener.",
							   "With shipsync.receiver_ssl_key_file set too, the receiver speaks HTTPS only.",
							   &shipsync_receiver_ssl_cert_file,
							   "",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("shipsync.receiver_ssl_key_file",
							   "PEM private key of the receiver's HTTPS listener.",
							   NULL,
							   &shipsync_receiver_ssl_key_file,
							   "",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_max_connections",
							"Most connections the receiver holds open at once.",
							"More wait in the kernel's listen queue until one closes.",
							&shipsync_receiver_max_connections,
							256, 1, 65536,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_max_connections_per_ip",
							"Most connections the receiver holds open at once from one client address; 0: no limit.",
							"More from that address are closed as soon as they are accepted.",
							&shipsync_receiver_max_connections_per_ip,
							32, 0, 65536,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.max_push_bytes",
							"Largest push body the receiver accepts; larger ones are answered 413.",
							NULL,
							&shipsync_max_push_bytes,
							1024 * 1024, 1024, 64 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_rate_limit",
							"Most requests per second the receiver takes from one client address; 0: no limit.",
							"Requests over it are answered 429 with Retry-After.",
							&shipsync_receiver_rate_limit,
							0, 0, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_header_timeout_ms",
							"Time a client has to send a request's headers, from its connection or its previous answer.",
							"Slower clients (and idle keep-alive connections) are cut off.",
							&shipsync_receiver_header_timeout_ms,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_body_timeout_ms",
							"Time a client has to send a request's body once its headers are in.",
							"Slower clients are cut off.",
							&shipsync_receiver_body_timeout_ms,
							30000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_queue_size",
							"Most requests waiting for the database in the receiver; more are answered 503 with Retry-After.",
							NULL,
							&shipsync_receiver_queue_size,
							1024, 1, 65536,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("shipsync.receiver_lock_timeout",
							"Longest wait of a push for a lock held by another session; the push is then answered 503 with Retry-After.",
							"0 leaves the server's lock_timeout in force.",
							&shipsync_receiver_lock_timeout_ms,
							1000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/*
 * shipsync.audit_action comes from the extension's functions (their SET
 * clauses) or a superuser's SET, never from a configuration file: there it
 * would be the action of every audit row written outside those functions,
 * an INSERT recorded as a "resolve".  GUC_DISALLOW_IN_FILE stops ALTER
 * SYSTEM only; a value read from postgresql.conf (or its includes) is
 * refused here, at start and at every reload, and the setting stays empty.
 */
static bool
check_audit_action(char **newval, void **extra, GucSource source)
{
	if (source == PGC_S_FILE && *newval != NULL && (*newval)[0] != '\0')
	{
		GUC_check_errdetail("shipsync.audit_action is set by pg_shipsync's functions for their duration, not in a configuration file.");
		GUC_check_errhint("Remove the line from the configuration file.");
		return false;
	}
	return true;
}

/* The parameters of the audit log (src/audit.c, install/80_security.sql) */
static void
define_audit_gucs(void)
{
	DefineCustomIntVariable("shipsync.audit_retention",
							"How long rows of shipsync.audit_log are kept; the dispatcher prunes older ones.",
							"0 keeps them forever.",
							&shipsync_audit_retention,
							400 * 24 * 60, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN,
							NULL, NULL, NULL);

	/*
	 * The action that audit rows written by triggers are recorded under,
	 * set by the extension's own functions for their duration (SET clauses
	 * of SECURITY DEFINER functions): superuser only, so that no caller
	 * can make an UPDATE look like another action.
	 */
	DefineCustomStringVariable("shipsync.audit_action",
							   "Set by pg_shipsync's functions: the action their audit rows record.",
							   NULL,
							   &shipsync_audit_action,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							   check_audit_action, NULL, NULL);
}

/* The files of the keys that encrypt the secrets (secret.c) */
static void
define_secret_gucs(void)
{
	DefineCustomStringVariable("shipsync.secret_key_file",
							   "File holding the key that encrypts the secrets of shipsync.secret.",
							   "32 random bytes or 64 hexadecimal digits, owned by the server's user, mode 0600 or less; empty: pg_shipsync.key in the data directory, generated at the first need.",
							   &shipsync_secret_key_file,
							   "",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("shipsync.previous_secret_key_file",
							   "File holding the key the secrets were encrypted with before a key rotation.",
							   "Set during a rotation, until shipsync.rotate_key() has encrypted every secret again under shipsync.secret_key_file.",
							   &shipsync_previous_secret_key_file,
							   "",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_shipsync must be loaded via shared_preload_libraries"),
				 errhint("Add pg_shipsync to shared_preload_libraries in postgresql.conf and restart the server.")));

	DefineCustomStringVariable("shipsync.databases",
							   "Databases in which a pg_shipsync dispatcher runs.",
							   "Comma-separated list; a database that does not exist yet, or lacks the extension, is waited for.",
							   &shipsync_databases,
							   "postgres",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   shipsync_check_databases, NULL, NULL);

	DefineCustomIntVariable("shipsync.batch_size",
							"Most intents one provider claims in one dispatcher transaction.",
							NULL,
							&shipsync_batch_size,
							256, 1, 4096,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.max_response_bytes",
							"Largest carrier response body accepted; larger ones fail the attempt.",
							NULL,
							&shipsync_max_response_bytes,
							1024 * 1024, 1024, 256 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.max_request_bytes",
							"Largest generic body of an order; a larger order is invalid.",
							NULL,
							&shipsync_max_request_bytes,
							16 * 1024 * 1024, 1024, 128 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("shipsync.allow_insecure_http",
							 "Allow plain http:// provider URLs to hosts other than the loopback.",
							 NULL,
							 &shipsync_allow_insecure_http,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.idle_check_ms",
							"How often an idle dispatcher looks for work it was not woken for.",
							"Commits wake the dispatcher at once; this only covers prepared transactions and clock-driven retries.",
							&shipsync_idle_check_ms,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.dispatcher_nice",
							"Scheduling niceness of the dispatchers: how readily they yield the CPU to the database's own sessions.",
							"0 competes as an equal; 19 takes only what the sessions leave. Raising it applies at once; lowering it at the next start of each dispatcher.",
							&shipsync_dispatcher_nice,
							0, 0, 19,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.busy_cpu_percent",
							"The share of one core each dispatcher keeps for delivery while the server's sessions keep the CPU full.",
							"Its applier takes about as much again. When the CPU has room, delivery takes it; 100: delivery never holds back for the sessions.",
							&shipsync_busy_cpu_percent,
							2, 1, 100,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("shipsync.apply_worker",
							 "Apply the results of requests in a background worker of their own, beside each dispatcher.",
							 "On, a burst's requests and its results use two processes (two cores); off, or when no worker slot is free, the dispatcher applies them itself.",
							 &shipsync_apply_worker,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.order_lock_timeout",
							"Longest wait of a delivery's write-back for an order row another session holds; the answer is then recorded and only its write-back waits.",
							"The other results go on meanwhile. The write-back is tried again about every second, never asking the carrier again. 0 waits as long as the other session holds the row, and every result waits behind it.",
							&shipsync_order_lock_timeout_ms,
							1000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("shipsync.writeback_wait_ticket",
							"How long a write-back may wait for an order row another session holds before an order_held ticket says so.",
							"The ticket is resolved when the write-back lands. 0 opens none.",
							&shipsync_writeback_wait_ticket_ms,
							300000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("shipsync.dispatcher_huge_pages",
							 "Put the private heap of the dispatchers in transparent huge pages.",
							 "Only where the kernel gives them to memory that asks (transparent_hugepage \"madvise\" or \"always\"). The server's shared memory is huge_pages'. Applies when each dispatcher next starts.",
							 &shipsync_dispatcher_huge_pages,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("shipsync.prefault_memory",
							 "Have each dispatcher and applier touch the server's shared memory, and the applier a heap reserve, before their first burst needs them.",
							 "The shared memory is read a megabyte at a time while the worker has nothing else to do; the applier's reserve is 16 MB of private memory. Applies when each worker next starts.",
							 &shipsync_prefault_memory,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	define_receiver_gucs();
	define_secret_gucs();
	define_reconcile_gucs();

	DefineCustomStringVariable("shipsync.allowed_hosts",
							   "Internal hosts and networks that providers' URLs may reach.",
							   "Host names, *.domain patterns, IP addresses and CIDR networks, comma-separated. Loopback, private, link-local and other internal addresses are refused unless listed; public addresses are always allowed.",
							   &shipsync_allowed_hosts,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   shipsync_check_allowed_hosts,
							   shipsync_assign_allowed_hosts,
							   NULL);

	define_audit_gucs();

	MarkGUCPrefixReserved("shipsync");

	/* the keys and the log's redaction, inherited by every process */
	secret_load_keys();
	redact_install_hook();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shipsync_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shipsync_shmem_startup;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = shipsync_process_utility;

	shipsync_register_launcher();
}

/*
 * The version of this library.  The install and update scripts call it
 * first, through a function they create and drop again: the package of a
 * new version replaces the library on disk, but a server that was not
 * restarted still runs the one it loaded at its start, and the scripts
 * failed on their first C function, naming only its symbol.
 */
Datum
shipsync_library_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(SHIPSYNC_EXTVERSION));
}
