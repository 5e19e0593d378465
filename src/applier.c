/*-------------------------------------------------------------------------
 *
 * applier.c
 *		The applier: a second background worker per database that applies
 *		the results of the dispatcher's requests, so that a burst runs on
 *		two cores.
 *
 * In a burst the dispatcher is on the CPU nearly all the time, and about
 * half of that is applying results (outbox states, the delivery log,
 * shipments, quote lines, write-backs; apply.c).  So the dispatcher judges
 * each answer (the provider's health, its holds and its breaker stay with
 * it), then hands the results to its applier and goes on claiming and
 * sending while they are applied.
 *
 * The applier is a dynamic background worker that the dispatcher starts as
 * it starts (bgw_notify_pid: the dispatcher), so that it is ready
 * (configuration loaded, plans prepared) before the first results of a
 * burst.  It gets a dynamic shared memory segment of two shm_mq queues:
 * results go one way, one small acknowledgement per message comes back.  One message is one outbox_apply() call, so one
 * transaction (or, if it fails, one subtransaction per result) exactly as
 * when the dispatcher applied them itself.  At most one message is at the
 * applier at a time: results that complete meanwhile wait in the
 * dispatcher, serialized, and go as the next message -- the slower the
 * apply, the larger its batches.  Suspects of the quarantine (poison.c)
 * still go alone.  A provider with as many results waiting for the
 * applier as its max_inflight (not counting the message it is applying)
 * claims nothing until that message is acknowledged and the next one
 * goes: the dispatcher sends the next requests while the last results are
 * written, and a slow apply slows the claims instead of piling results
 * up in memory, while the wire keeps its own max_inflight.  Intents of one order
 * stay in order: the next intent of an order cannot be claimed until the
 * result of the one before is committed (its outbox row is in flight until
 * then), and the acknowledgement, sent after that commit, is what tells
 * the dispatcher to look again.
 *
 * Failures.  The record of the results being applied (poison.c) is written
 * by the dispatcher before a message goes, and cleared when its
 * acknowledgement comes.  If the applier exits with a message unapplied
 * (killed, crashed, an error it could not handle), the dispatcher exits
 * too, leaving that record: the next dispatcher sends those intents again
 * under the same keys, applies the suspects alone and quarantines an
 * intent at the second death, as when the dispatcher itself dies applying.
 * If it exits with nothing to apply, the dispatcher applies results itself
 * and starts a new applier APPLIER_RETRY_MS later.  If the dispatcher
 * exits, the applier finishes what it received and exits when it finds the
 * queue detached; a new dispatcher waits for it (the applier's entry in
 * shared memory) before it takes back the intents left in flight, so that
 * a late acknowledgement-less apply can never meet a resend of the same
 * intent.  With shipsync.apply_worker off, or no worker slot free
 * (max_worker_processes), the dispatcher applies the results itself.
 *
 * The applier acts for its dispatcher: the same pinned session settings, the
 * same niceness, the same audit actor ("dispatcher", audit.c), the same
 * configuration (reloaded when its generation in shared memory moves).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define APPLIER_QUEUE_BYTES (4 * 1024 * 1024)	/* results to the applier */
#define APPLIER_ACK_BYTES 1024	/* acknowledgements back */
#define APPLIER_RETRY_MS 10000	/* after an applier exited or failed to start */

/* What comes back for each message: after the commit of its results */
typedef struct ApplierAck
{
	int32		n;				/* results applied */
	uint64		fresh;			/* providers given new intents */
	bool		parked;			/* a write-back left to wait for a held row */
} ApplierAck;

/* The fixed part of a serialized result; its strings follow */
typedef struct ApplierFixed
{
	int64		id;
	TimestampTz next_at;
	double		latency_ms;
	int64		http_status;
	int64		content_digest;
	int32		attempt;
	int32		binding_id;
	int32		provider_id;
	int32		kind;
	bool		ship_ok;
	bool		no_writeback;
	bool		last_attempt;
	bool		has_content_digest;
} ApplierFixed;

/* Results serialized for one message, waiting in the dispatcher */
typedef struct ApplyGroup
{
	StringInfoData buf;			/* int32 count, then the results */
	int64	   *ids;
	int32	   *providers;
	int			n;
	int			cap;
	bool		alone;			/* a suspect's: nothing joins it */
	struct ApplyGroup *next;
} ApplyGroup;

/* ---------- the dispatcher's side ---------- */

static MemoryContext applier_cxt = NULL;
static dsm_segment *applier_seg = NULL;
static shm_mq_handle *to_applier = NULL;
static shm_mq_handle *from_applier = NULL;
static BackgroundWorkerHandle *applier_worker = NULL;
static TimestampTz applier_down_at = 0;	/* it exited, or could not start */
static ApplyGroup *waiting_head = NULL;
static ApplyGroup *waiting_tail = NULL;
static ApplyGroup *at_applier = NULL;	/* sent, not acknowledged */

/* applied since the dispatcher last asked (applier_take()) */
static int32 *done_providers = NULL;
static int	ndone = 0;
static int	done_cap = 0;
static uint64 done_fresh = 0;

static void
put_str(StringInfo b, const char *s)
{
	int32		len = s ? (int32) strlen(s) : -1;

	appendBinaryStringInfo(b, (char *) &len, sizeof(len));
	if (s)
		appendBinaryStringInfo(b, s, len);
}

static char *
get_str(const char **p)
{
	int32		len;
	char	   *s;

	memcpy(&len, *p, sizeof(len));
	*p += sizeof(len);
	if (len < 0)
		return NULL;
	s = palloc(len + 1);
	memcpy(s, *p, len);
	s[len] = '\0';
	*p += len;
	return s;
}

/* Append result r to buffer b */
static void
applier_put(StringInfo b, const ShipResult *r)
{
	ApplierFixed f;

	memset(&f, 0, sizeof(f));
	f.id = r->id;
	f.next_at = r->next_at;
	f.latency_ms = r->latency_ms;
	f.http_status = r->http_status;
	f.attempt = r->attempt;
	f.binding_id = r->binding_id;
	f.provider_id = r->provider_id;
	f.kind = (int32) r->kind;
	f.ship_ok = r->ship_ok;
	f.no_writeback = r->no_writeback;
	f.last_attempt = r->last_attempt;
	f.has_content_digest = r->has_content_digest;
	f.content_digest = r->content_digest;
	appendBinaryStringInfo(b, (char *) &f, sizeof(f));
	put_str(b, r->order_key);
	put_str(b, r->state);
	put_str(b, r->outcome);
	put_str(b, r->error_class);
	put_str(b, r->error);
	put_str(b, r->method);
	put_str(b, r->url);
	put_str(b, r->digest);
	put_str(b, r->ship_id);
	put_str(b, r->tracking_number);
	put_str(b, r->label_url);
	put_str(b, r->raw_status);
	put_str(b, r->fees_body);
	put_str(b, r->waybills);
	put_str(b, r->ticket_kind);
}

/* Read the next result at *p into r (strings palloc'd) */
static void
applier_get(const char **p, ShipResult *r)
{
	ApplierFixed f;

	memcpy(&f, *p, sizeof(f));
	*p += sizeof(f);
	memset(r, 0, sizeof(*r));
	r->id = f.id;
	r->next_at = f.next_at;
	r->latency_ms = f.latency_ms;
	r->http_status = (long) f.http_status;
	r->attempt = f.attempt;
	r->binding_id = f.binding_id;
	r->provider_id = f.provider_id;
	r->kind = (IntentKind) f.kind;
	r->ship_ok = f.ship_ok;
	r->no_writeback = f.no_writeback;
	r->last_attempt = f.last_attempt;
	r->has_content_digest = f.has_content_digest;
	r->content_digest = f.content_digest;
	r->order_key = get_str(p);
	r->state = get_str(p);
	r->outcome = get_str(p);
	r->error_class = get_str(p);
	r->error = get_str(p);
	r->method = get_str(p);
	r->url = get_str(p);
	r->digest = get_str(p);
	r->ship_id = get_str(p);
	r->tracking_number = get_str(p);
	r->label_url = get_str(p);
	r->raw_status = get_str(p);
	r->fees_body = get_str(p);
	r->waybills = get_str(p);
	r->ticket_kind = get_str(p);
}

/* Record that the results of intents ids[0..n), of providers ps, are applied */
static void
applier_note_done(const int32 *ps, int n, uint64 fresh)
{
	if (ndone + n > done_cap)
	{
		done_cap = Max(done_cap * 2, ndone + n + 64);
		done_providers = done_providers ?
			repalloc(done_providers, sizeof(int32) * done_cap) :
			MemoryContextAlloc(applier_cxt, sizeof(int32) * done_cap);
	}
	memcpy(done_providers + ndone, ps, sizeof(int32) * n);
	ndone += n;
	done_fresh |= fresh;
}

/*
 * Apply rs[0..nbatch) as one batch, then each of rs[nbatch..n) alone, each
 * call recorded (poison.c) while it runs.  Returns the providers given new
 * intents.
 */
static uint64
applier_apply_split(ShipResult *rs, const int64 *ids, int nbatch, int n,
					Binding *bs, int nb)
{
	uint64		fresh = 0;

	if (nbatch > 0)
	{
		poison_applying(ids, nbatch);
		fresh |= outbox_apply(rs, nbatch, bs, nb);
		poison_applied(ids, nbatch);
	}
	for (int i = nbatch; i < n; i++)
	{
		poison_applying(&ids[i], 1);
		fresh |= outbox_apply(&rs[i], 1, bs, nb);
		poison_applied(&ids[i], 1);
	}
	return fresh;
}

/*
 * Apply rs[0..n) in this process: one batch, each but the suspects, which
 * go alone (poison.c).  The record of what is being applied is written
 * first and cleared once it is committed.
 */
static void
applier_apply_here(ShipResult *rs, int n, Binding *bs, int nb)
{
	int64	   *ids = palloc(sizeof(int64) * Max(n, 1));
	int32	   *ps = palloc(sizeof(int32) * Max(n, 1));
	int			nbatch = 0;
	volatile uint64 fresh = 0;	/* set in PG_TRY, read in PG_FINALLY */

	/* suspects to the end of the array, the batch first */
	for (int i = 0; i < n; i++)
		if (!poison_is_suspect(rs[i].id))
		{
			ShipResult	tmp = rs[nbatch];

			rs[nbatch++] = rs[i];
			rs[i] = tmp;
		}
	for (int i = 0; i < n; i++)
	{
		ids[i] = rs[i].id;
		ps[i] = rs[i].provider_id;
	}

	/*
	 * An error that escapes (outbox_apply() handles those of a result)
	 * leaves these intents in flight until their lease expires; their
	 * places among the results waiting are given back all the same.
	 */
	PG_TRY();
	{
		fresh = applier_apply_split(rs, ids, nbatch, n, bs, nb);
	}
	PG_FINALLY();
	{
		applier_note_done(ps, n, fresh);
	}
	PG_END_TRY();
	pfree(ids);
	pfree(ps);
}

/* Forget the applier (it is gone, or asked to go) */
static void
applier_forget(void)
{
	if (applier_seg)
		dsm_detach(applier_seg);	/* detaches the queues too */
	if (applier_worker)
		pfree(applier_worker);
	applier_seg = NULL;
	to_applier = NULL;
	from_applier = NULL;
	applier_worker = NULL;
	applier_down_at = GetCurrentTimestamp();
}

/*
 * Start an applier: the segment with its two queues, then the worker.
 * Returns false (said in the log, at most every ten minutes) when there is
 * no worker slot for it.
 */
static bool
applier_start(void)
{
	static TimestampTz said = 0;
	BackgroundWorker w;
	shm_mq	   *mq;
	shm_mq	   *back;
	MemoryContext old = MemoryContextSwitchTo(applier_cxt);

	applier_seg = dsm_create(APPLIER_QUEUE_BYTES + APPLIER_ACK_BYTES, 0);
	dsm_pin_mapping(applier_seg);
	mq = shm_mq_create(dsm_segment_address(applier_seg), APPLIER_QUEUE_BYTES);
	back = shm_mq_create((char *) dsm_segment_address(applier_seg) + APPLIER_QUEUE_BYTES,
						 APPLIER_ACK_BYTES);
	shm_mq_set_sender(mq, MyProc);
	shm_mq_set_receiver(back, MyProc);

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(w.bgw_library_name, "pg_shipsync", BGW_MAXLEN);
	strlcpy(w.bgw_function_name, "shipsync_applier_main", BGW_MAXLEN);
	snprintf(w.bgw_name, BGW_MAXLEN, "pg_shipsync applier for database %u", MyDatabaseId);
	strlcpy(w.bgw_type, "pg_shipsync applier", BGW_MAXLEN);
	snprintf(w.bgw_extra, BGW_EXTRALEN, "%u", MyDatabaseId);
	w.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(applier_seg));
	w.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&w, &applier_worker))
	{
		applier_worker = NULL;
		applier_forget();
		MemoryContextSwitchTo(old);
		if (TimestampDifferenceExceeds(said, GetCurrentTimestamp(), 600 * 1000))
		{
			said = GetCurrentTimestamp();
			ereport(LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("pg_shipsync dispatcher: no background worker slot for an applier; the dispatcher applies results itself"),
					 errhint("Raise max_worker_processes: each database of shipsync.databases uses two workers.")));
		}
		return false;
	}
	to_applier = shm_mq_attach(mq, applier_seg, applier_worker);
	from_applier = shm_mq_attach(back, applier_seg, applier_worker);
	MemoryContextSwitchTo(old);
	return true;
}

/* A new group at the end of the waiting list */
static ApplyGroup *
applier_new_group(bool alone)
{
	ApplyGroup *g = MemoryContextAllocZero(applier_cxt, sizeof(ApplyGroup));
	int32		zero = 0;
	MemoryContext old = MemoryContextSwitchTo(applier_cxt);

	initStringInfo(&g->buf);
	appendBinaryStringInfo(&g->buf, (char *) &zero, sizeof(zero));
	g->cap = 64;
	g->ids = palloc(sizeof(int64) * g->cap);
	g->providers = palloc(sizeof(int32) * g->cap);
	g->alone = alone;
	MemoryContextSwitchTo(old);
	if (waiting_tail)
		waiting_tail->next = g;
	else
		waiting_head = g;
	waiting_tail = g;
	return g;
}

/* Add result r to the waiting groups: a suspect alone, others together */
static void
applier_enqueue(const ShipResult *r)
{
	bool		alone = poison_is_suspect(r->id);
	ApplyGroup *g = waiting_tail;

	if (g == NULL || g->alone || alone)
		g = applier_new_group(alone);
	if (g->n == g->cap)
	{
		g->cap *= 2;
		g->ids = repalloc(g->ids, sizeof(int64) * g->cap);
		g->providers = repalloc(g->providers, sizeof(int32) * g->cap);
	}
	g->ids[g->n] = r->id;
	g->providers[g->n] = r->provider_id;
	g->n++;
	memcpy(g->buf.data, &g->n, sizeof(int32));
	applier_put(&g->buf, r);
}

static void
applier_free_group(ApplyGroup *g)
{
	pfree(g->buf.data);
	pfree(g->ids);
	pfree(g->providers);
	pfree(g);
}

/*
 * The applier exited.  With a message of ours unapplied, this dispatcher
 * exits too, leaving the record of it (poison.c) to the next one; quietly
 * when the applier exited because the extension was dropped under the
 * batch: there is nothing left to apply it to.
 */
static void
applier_lost(void)
{
	int			n = at_applier ? at_applier->n : 0;

	applier_forget();
	if (n > 0)
	{
		(void) shipsync_exit_if_dropped();
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("pg_shipsync dispatcher: its applier exited while applying %d results", n),
				 errdetail("The next dispatcher sends those intents again under the same keys; an intent whose result was being applied at two exits in a row is quarantined."),
				 errhint("See the server log for why the applier exited.")));
	}
	ereport(LOG,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("pg_shipsync dispatcher: its applier exited; the dispatcher applies results itself for now")));
}

/*
 * Take the applier's acknowledgement if it came, then send the next
 * waiting group if the applier is free.
 */
static void
applier_pump(void)
{
	Size		len;
	void	   *data;
	shm_mq_result res;

	if (at_applier)
	{
		res = shm_mq_receive(from_applier, &len, &data, true);
		if (res == SHM_MQ_WOULD_BLOCK)
			return;
		if (res != SHM_MQ_SUCCESS || len != sizeof(ApplierAck))
		{
			applier_lost();
			return;
		}
		poison_applied(at_applier->ids, at_applier->n);
		applier_note_done(at_applier->providers, at_applier->n,
						  ((ApplierAck *) data)->fresh);
		/* the dispatcher tries those write-backs again (apply.c) */
		if (((ApplierAck *) data)->parked)
			outbox_writebacks_parked = true;
		applier_free_group(at_applier);
		at_applier = NULL;
	}
	if (waiting_head == NULL)
		return;
	at_applier = waiting_head;
	waiting_head = at_applier->next;
	if (waiting_head == NULL)
		waiting_tail = NULL;
	poison_applying(at_applier->ids, at_applier->n);
	/*
	 * No cancel inside the send: pg_cancel_backend() of the dispatcher
	 * while it waited for room in the queue left half a group there, the
	 * applier waiting for the rest and the dispatcher for its ack, for
	 * ever: the orders of those results were never written back (TAP 003,
	 * "cancelled while waiting").  The cancel is taken after it.
	 */
	HOLD_CANCEL_INTERRUPTS();
	res = shm_mq_send(to_applier, at_applier->buf.len, at_applier->buf.data, false, true);
	RESUME_CANCEL_INTERRUPTS();
	/* the wait inside may have eaten a wake-up meant for the loop */
	SetLatch(MyLatch);
	if (res != SHM_MQ_SUCCESS)
	{
		/* never received whole, so never applied: apply everything here */
		ApplyGroup *g = at_applier;

		at_applier = NULL;
		poison_applied(g->ids, g->n);
		g->next = waiting_head;
		waiting_head = g;
		if (waiting_tail == NULL)
			waiting_tail = g;
		applier_lost();
	}
}

/* Apply every waiting group in this process */
static void
applier_drain_here(Binding *bs, int nb)
{
	while (waiting_head)
	{
		ApplyGroup *g = waiting_head;
		const char *p = g->buf.data + sizeof(int32);
		ShipResult *rs = palloc(sizeof(ShipResult) * g->n);

		waiting_head = g->next;
		if (waiting_head == NULL)
			waiting_tail = NULL;
		for (int i = 0; i < g->n; i++)
			applier_get(&p, &rs[i]);
		applier_apply_here(rs, g->n, bs, nb);
		applier_free_group(g);
	}
}

/*
 * Have an applier when shipsync.apply_worker says so (and the last one did
 * not exit less than APPLIER_RETRY_MS ago), none when it says off (once it
 * has acknowledged what it was given).  Called by the dispatcher as it
 * starts, so that the first results of a burst do not wait for a process
 * to start, before every hand-over, and on every pass of its loop after
 * the applier's acknowledgement is taken (applier_take()), so that a
 * reload of the setting takes effect with no results to hand over.
 */
void
applier_ensure(void)
{
	if (applier_cxt == NULL)
		applier_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync applier queue",
											ALLOCSET_DEFAULT_SIZES);
	if (applier_seg && !shipsync_apply_worker && at_applier == NULL)
	{
		applier_forget();		/* the applier exits when it sees us go */
		applier_down_at = 0;
	}
	if (applier_seg == NULL && shipsync_apply_worker &&
		TimestampDifferenceExceeds(applier_down_at, GetCurrentTimestamp(), APPLIER_RETRY_MS))
		(void) applier_start();
}

/*
 * The dispatcher's results rs[0..n), judged: to the applier, or applied
 * here when there is none (shipsync.apply_worker off, no worker slot, or
 * it exited less than APPLIER_RETRY_MS ago).  Their slots are given back
 * by applier_take() once they are applied.  The results are copied: the
 * caller may free them on return.
 */
void
applier_submit(ShipResult *rs, int n, Binding *bs, int nb)
{
	applier_ensure();
	if (applier_seg == NULL)
	{
		applier_drain_here(bs, nb);
		applier_apply_here(rs, n, bs, nb);
		return;
	}
	for (int i = 0; i < n; i++)
		applier_enqueue(&rs[i]);
	applier_pump();
	if (applier_seg == NULL)
		applier_drain_here(bs, nb);
}

/*
 * How many of provider_id's results the applier is applying now: those do
 * not hold its claims back (dispatcher.c), so that the next requests go
 * out while the last ones are written.
 */
int
applier_applying(int32 provider_id)
{
	int			n = 0;

	for (int i = 0; at_applier && i < at_applier->n; i++)
		n += (at_applier->providers[i] == provider_id);
	return n;
}

/*
 * The results applied since the last call: their providers (*providers,
 * one per result, palloc'd in the caller's context) and the providers
 * given new intents (*fresh).  Returns how many.  Also moves the queue to
 * the applier along, and follows shipsync.apply_worker (applier_ensure()).
 */
int
applier_take(int32 **providers, uint64 *fresh, Binding *bs, int nb)
{
	int			n;

	if (applier_seg)
		applier_pump();
	applier_ensure();
	if (applier_seg == NULL && waiting_head)
		applier_drain_here(bs, nb);
	n = ndone;
	*providers = NULL;
	*fresh = done_fresh;
	if (n > 0)
	{
		*providers = palloc(sizeof(int32) * n);
		memcpy(*providers, done_providers, sizeof(int32) * n);
	}
	ndone = 0;
	done_fresh = 0;
	return n;
}

/* ---------- the shared entry: one applier per database ---------- */

static int	my_entry = -1;

static void
applier_release_entry(int code, Datum arg)
{
	if (my_entry < 0)
		return;
	SpinLockAcquire(&shipsync_shared->mutex);
	shipsync_shared->appliers[my_entry].dbid = InvalidOid;
	shipsync_shared->appliers[my_entry].pid = 0;
	SpinLockRelease(&shipsync_shared->mutex);
	my_entry = -1;
}

/* Is an applier of this database alive?  Its PID, or 0 */
static pid_t
applier_running_pid(void)
{
	pid_t		pid = 0;

	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
		if (shipsync_shared->appliers[i].dbid == MyDatabaseId)
			pid = shipsync_shared->appliers[i].pid;
	SpinLockRelease(&shipsync_shared->mutex);
	return pid;
}

/*
 * A dispatcher starting: wait until the applier of the dispatcher before
 * it is gone (it finishes the message it has, then sees the queue
 * detached), before intents in flight are taken back.
 */
void
applier_wait_gone(void)
{
	pid_t		pid;

	while ((pid = applier_running_pid()) != 0)
	{
		pgstat_report_activity(STATE_RUNNING, "waiting for the applier of the previous dispatcher to exit");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Take this database's applier entry (before attaching to the queues) */
static void
applier_claim_entry(Oid dbid)
{
	SpinLockAcquire(&shipsync_shared->mutex);
	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS && my_entry < 0; i++)
		if (shipsync_shared->appliers[i].dbid == InvalidOid)
		{
			shipsync_shared->appliers[i].dbid = dbid;
			shipsync_shared->appliers[i].pid = MyProcPid;
			my_entry = i;
		}
	SpinLockRelease(&shipsync_shared->mutex);
	on_shmem_exit(applier_release_entry, 0);
	if (my_entry < 0)
		ereport(FATAL,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no free pg_shipsync applier slot")));
}

/* ---------- the applier's side ---------- */

static MemoryContext worker_cfg_cxt = NULL;
static Binding *worker_bindings = NULL;
static int	worker_nbindings = 0;
static uint64 worker_cfg_generation = 0;

/* (Re)load the bindings when the configuration moved */
static void
applier_load_config(void)
{
	uint64		gen = pg_atomic_read_u64(&shipsync_shared->config_generation);
	MemoryContext cxt;
	Provider   *ps;
	int			np;

	if (worker_cfg_cxt && gen == worker_cfg_generation)
		return;
	cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync applier config",
								ALLOCSET_DEFAULT_SIZES);
	PG_TRY();
	{
		provider_load_config(cxt, &ps, &np, &worker_bindings, &worker_nbindings);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		shipsync_abort_tx();
		/* DROP EXTENSION moved the configuration: no failure, the end */
		(void) shipsync_exit_if_dropped();
		ReThrowError(edata);
	}
	PG_END_TRY();
	if (worker_cfg_cxt)
		MemoryContextDelete(worker_cfg_cxt);
	worker_cfg_cxt = cxt;
	worker_cfg_generation = gen;
	writeback_forget_plans(worker_bindings, worker_nbindings);
}

/* Apply one message; returns its acknowledgement */
static ApplierAck
applier_apply_message(const char *data, Size len)
{
	ApplierAck	ack = {0, 0};
	const char *p = data;
	ShipResult *rs;
	int32		n;

	if (len < sizeof(int32))
		elog(ERROR, "pg_shipsync applier: a message of %zu bytes", len);
	memcpy(&n, p, sizeof(n));
	p += sizeof(n);
	rs = palloc(sizeof(ShipResult) * Max(n, 1));
	for (int i = 0; i < n; i++)
		applier_get(&p, &rs[i]);
	if (p != data + len)
		elog(ERROR, "pg_shipsync applier: a message of %zu bytes holds %zu", len, (Size) (p - data));
	pgstat_report_activity(STATE_RUNNING, "applying results");
	ack.fresh = outbox_apply(rs, n, worker_bindings, worker_nbindings);
	ack.n = n;
	ack.parked = outbox_writebacks_parked;
	outbox_writebacks_parked = false;
	pgstat_report_activity(STATE_IDLE, NULL);
	return ack;
}

/* Die if asked to; re-read the configuration files after a SIGHUP */
static void
applier_process_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		shipsync_set_nice();
	}
}

/* the heap reserve of shipsync.prefault_memory: what a burst's applies grow */
#define APPLIER_HEAP_RESERVE (16 * 1024 * 1024)
static bool applier_prefaulting = false;	/* shared memory left to touch */
#define APPLIER_PREFAULT_QUIET_MS 200	/* no message this long: idle */

/*
 * As the applier starts, when shipsync.prefault_memory allows it: a heap
 * reserve touched now, and the server's shared memory to touch in the idle
 * moments to come, a step at a time (prefault.c).  A new applier's first
 * burst otherwise paid a page fault for each page of both it touched first.
 */
static void
applier_prefault_start(void)
{
	const char *why;

	if (!shipsync_prefault_memory)
		return;
	why = shipsync_prefault_heap(APPLIER_HEAP_RESERVE);
	if (why != NULL)
		elog(DEBUG1, "pg_shipsync: the applier has no heap reserve: %s", why);
	applier_prefaulting = prefault_server_begin();
}

/*
 * Nothing to apply: touch the next step of the shared memory, if any is
 * left, the dispatcher has sent nothing for APPLIER_PREFAULT_QUIET_MS
 * (last_message; 0: nothing yet) and no session is on the CPU.  Between
 * the batches of a burst the queue is empty for moments: touching then
 * would take the CPU from the burst and from the sessions beside it.
 * Returns 0 when a step was touched (look at the queue again at once), -1
 * when none is left (wait as usual), else how long to wait before trying
 * again.
 */
static long
applier_prefault_step(TimestampTz last_message)
{
	long		quiet_ms;

	if (!applier_prefaulting)
		return -1;
	quiet_ms = last_message == 0 ? APPLIER_PREFAULT_QUIET_MS :
		(long) ((GetCurrentTimestamp() - last_message) / 1000);
	if (quiet_ms < APPLIER_PREFAULT_QUIET_MS)
		return APPLIER_PREFAULT_QUIET_MS - quiet_ms;
	if (yield_sessions_running() > 0)
		return SHIPSYNC_PREFAULT_RETRY_MS;
	applier_prefaulting = shipsync_prefault_step(SHIPSYNC_PREFAULT_STEP) > 0;
	if (!applier_prefaulting)
		elog(DEBUG1, "pg_shipsync: the applier has touched the server's shared memory");
	applier_process_interrupts();
	return 0;
}

/*
 * Flush the table statistics of our applies, at most once a second; how
 * long to wait before trying again when some are left (0: none).  What is
 * left must be flushed once the applier goes idle, or autovacuum would not
 * hear of the outbox's dead tuples until the next burst; PostgreSQL asks
 * an idle session to try again in 10 s, we try every second.
 */
static long
applier_report_stat(void)
{
	long		wait_ms = pgstat_report_stat(false);

	return Min(wait_ms, 1000);
}

/*
 * Wait for the next message.  Every wake-up that brings none also reads
 * the shared invalidation queue, in an empty transaction as an idle
 * session does when signalled (PROCSIG_CATCHUP_INTERRUPT): a backend that
 * never reads it keeps the queue full for everyone, and is reset when it
 * overflows.  Blocking in shm_mq_receive() would never read it: that wait
 * resets the latch the signal sets and waits on.  At most stats_wait_ms
 * (when above 0): statistics wait to be flushed.
 */
static void
applier_idle_wait(long stats_wait_ms)
{
	MemoryContext old = CurrentMemoryContext;

	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
					 (stats_wait_ms > 0 ? WL_TIMEOUT : 0),
					 stats_wait_ms > 0 ? stats_wait_ms : -1L, WAIT_EVENT_MQ_RECEIVE);
	ResetLatch(MyLatch);
	applier_process_interrupts();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	CommitTransactionCommand();
	MemoryContextSwitchTo(old);
}

/*
 * The applier's entry point (bgw_function_name): attach to the queues of
 * the dispatcher that started it, then apply each message it sends and
 * acknowledge it, until the dispatcher goes.
 */
void
shipsync_applier_main(Datum main_arg)
{
	Oid			dbid = (Oid) strtoul(MyBgworkerEntry->bgw_extra, NULL, 10);
	dsm_segment *seg;
	shm_mq	   *mq;
	shm_mq	   *back;
	shm_mq_handle *in;
	shm_mq_handle *out;
	MemoryContext msg_cxt;
	long		stats_wait_ms = 0;
	TimestampTz last_message = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	/* no statement to cancel: one that escaped would exit, its message unapplied */
	pqsignal(SIGINT, SIG_IGN);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	shipsync_pin_worker_session(true);
	/* a queue table analyzed in the middle of a take is not empty */
	shipsync_distrust_empty_statistics();
	pgstat_report_appname("pg_shipsync applier");
	applier_claim_entry(dbid);
	shipsync_set_nice();
	applier_prefault_start();

	/* gone already (the dispatcher exited before we started): nothing to do */
	seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		proc_exit(0);
	dsm_pin_mapping(seg);
	mq = (shm_mq *) dsm_segment_address(seg);
	back = (shm_mq *) ((char *) dsm_segment_address(seg) + APPLIER_QUEUE_BYTES);
	shm_mq_set_receiver(mq, MyProc);
	shm_mq_set_sender(back, MyProc);
	in = shm_mq_attach(mq, seg, NULL);
	out = shm_mq_attach(back, seg, NULL);
	msg_cxt = AllocSetContextCreate(TopMemoryContext, "pg_shipsync applier message",
									ALLOCSET_DEFAULT_SIZES);

	/* ready before the first results come: configuration and plans */
	applier_load_config();
	outbox_apply_prepare();

	for (;;)
	{
		Size		len;
		void	   *data;
		ApplierAck	ack;
		MemoryContext old;

		shm_mq_result res = shm_mq_receive(in, &len, &data, true);

		if (res == SHM_MQ_WOULD_BLOCK)
		{
			long		touch = applier_prefault_step(last_message);

			if (touch == 0)
				continue;
			/* the touching's retry, when it comes before the statistics' */
			applier_idle_wait(touch > 0 && (stats_wait_ms <= 0 || touch < stats_wait_ms) ?
							  touch : stats_wait_ms);
			/* what the last applies counted, once a second allows it */
			if (stats_wait_ms > 0)
				stats_wait_ms = applier_report_stat();
			continue;
		}
		if (res != SHM_MQ_SUCCESS)
			break;				/* the dispatcher is gone */
		applier_process_interrupts();
		last_message = GetCurrentTimestamp();
		old = MemoryContextSwitchTo(msg_cxt);
		applier_load_config();
		shipsync_replan_grown(GetCurrentTimestamp());
		ack = applier_apply_message(data, len);
		MemoryContextSwitchTo(old);
		MemoryContextReset(msg_cxt);

		stats_wait_ms = applier_report_stat();
		if (shm_mq_send(out, sizeof(ack), &ack, false, true) != SHM_MQ_SUCCESS)
			break;
	}
	proc_exit(0);
}
