/*-------------------------------------------------------------------------
 *
 * yield.c
 *		Delivery taking what the server's sessions leave of the CPU.
 *
 * A dispatcher draining a backlog is on the CPU all the time, and its
 * applier most of it: two cores.  On a machine that has no more, the
 * database's own sessions then got about a third of what they had (inserts
 * while delivering read 0.36-0.41 of plain inserts on 2 cores).  A nice
 * value does not fix that (docs/gucs.md, shipsync.dispatcher_nice): a
 * niced process descheduled in the middle of a WAL insertion or holding a
 * buffer lock makes the sessions wait for it, and at 19 the inserts still
 * lost a fifth.  So the dispatcher holds back by itself, at a clean point
 * of its loop, holding nothing: it claims no new work once it has used its
 * share of one core, and its applier, which applies what was sent,
 * follows.  Requests in flight finish and are applied meanwhile.
 *
 * The share is judged every 100 ms from the 100 ms before, on at least
 * 20 samples of the sessions (cpuroom.c, the window).  If sessions
 * were running (on average at least half of one) and the machine had
 * little idle CPU left (under 15%), the share drops to
 * shipsync.busy_cpu_percent of one core, the floor that keeps orders
 * moving however busy the server is.  Held back, it takes fewer than a
 * tenth of a session running on average to let go: sessions inserting for
 * a client on the same machine wait for that client most of the time, and
 * averaged over 20 samples they read under a half now and then, which let
 * delivery go at full speed for a window at a time (600 orders a second
 * beside the bench's inserts instead of 150, and 0.82 of plain inserts
 * instead of 0.87).  Otherwise it grows by a tenth of a
 * core each 100 ms, and with no session running it is a whole core at once:
 * no limit, so a burst with nothing else running goes at full speed.  So
 * delivery takes the room the sessions leave and gives it back as soon as
 * they want it.  A session waiting for its client leaves the CPU idle, but
 * filling that with delivery makes its next statement wait for a core,
 * which a client waiting for each answer feels as fewer statements a
 * second: hence 15% rather than none.
 *
 * Sessions running: client backends and WAL senders out of any wait event,
 * sampled from the PGPROC array at most once a millisecond while the
 * dispatcher is awake.  Idle sessions wait for their client, and a session
 * waiting for a lock or an I/O does not want the CPU.  Background workers
 * (ours, parallel workers, other extensions') and autovacuum are not
 * sessions, nor is a slot whose process has exited (its pid stays, its
 * latch is disowned).  The array is read without a lock: a torn or stale
 * value only moves an estimate.  Idle CPU: of the CPUs this server may run
 * on, and of its control group's CPU quota if it has one, whichever has
 * less (cpuroom.c: in a container the host's idle time says nothing of the
 * container's quota); where neither can be read the CPU counts as idle,
 * and nothing is held back.
 *
 * While it holds back, the dispatcher accepts no wake-up from commits
 * (dispatcher.c): it looks again every 10 ms at most, and what was
 * captured meanwhile is found then.
 *
 * The share is spent from a budget of this process's CPU time
 * (CLOCK_THREAD_CPUTIME_ID), filled at the share's rate of wall-clock time
 * and holding at most 20 ms, nor owing more than 40 ms: a pass that
 * applied hundreds of tracking answers just as the hold began (a second of
 * CPU) would otherwise owe nearly a minute at 2%, and claim nothing
 * meanwhile.  40 ms takes two seconds to repay at 2%: the floor moves
 * orders within seconds whatever came before (TAP 050; at 100 ms it sent
 * nothing in six).  A smaller cap forgives what the claims themselves
 * cost: at 20 ms, each batch of 256 owed more than that, delivery took
 * three times its floor (685 orders a second beside the bench's inserts)
 * and the inserts fell to 0.79 of plain inserts.
 *
 * The budget pays for delivery, not for the waiting: a pass that claimed
 * nothing and had no order's request on the wire nor result to hand over
 * only looked at the sessions, and yield_forgive_pass() leaves it out.
 * Those looks, every 10 ms, cost 1.3-1.5% of a core here (TAP 050); when
 * they were charged, a floor of 2% moved one batch every four to six
 * seconds, and one of 1% (the least the setting takes) none at all.
 *
 * While it holds back, the floor goes to deliveries: the tracking poller,
 * fee pulls and reconciliation pulls, which run in the dispatcher, send
 * nothing new until the CPU has room (dispatcher.c).  The poller's answers
 * are applied in the dispatcher, and polling 2,000 shipments a second took
 * more than the floor by itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <time.h>

#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/timestamp.h"

#include "pg_shipsync.h"
#include "dispatcher.h"

#define YIELD_IDLE_MIN		0.15	/* below this idle share the machine is full */
#define YIELD_RUNNING_MIN	0.5 /* sessions running on average, at least */
#define YIELD_RUNNING_GONE	0.1 /* ... and held back, until they fall below */
#define YIELD_STEP			0.1 /* of a core: the share's growth a window */
#define YIELD_BUDGET_MAX_US 20000.0 /* what a full budget holds */
#define YIELD_DEBT_MAX_US	40000.0 /* what it may owe at most */
#define YIELD_WAIT_MAX_MS	10	/* look at the machine again after at most */

static double yield_share = 1.0;	/* of one core; >= 1: no limit */
static double yield_budget = YIELD_BUDGET_MAX_US;
static double yield_cpu_last = -1.0;
static TimestampTz yield_wall_last = 0;

static RoomWindow yield_window;	/* the window being observed */
static CpuRoom *yield_room = NULL;	/* this server's CPUs and quota */

/* This thread's CPU time in microseconds */
static double
yield_cpu_us(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return 0.0;
	return ts.tv_sec * 1000000.0 + ts.tv_nsec / 1000.0;
}

/*
 * How many sessions are on the CPU now (see the file header).  Also what
 * the workers' touching ahead waits for (prefault.c): none.
 */
int
yield_sessions_running(void)
{
	int			n = 0;

	for (int i = 0; i < MaxBackends; i++)
	{
		PGPROC	   *proc = &ProcGlobal->allProcs[i];

		/* a slot whose process exited keeps its pid: its latch is disowned */
		if (proc->pid == 0 || proc->procLatch.owner_pid == 0 || proc == MyProc ||
			proc->isBackgroundWorker || (proc->statusFlags & PROC_IS_AUTOVACUUM) != 0)
			continue;
		if (proc->wait_event_info == 0)
			n++;
	}
	return n;
}

/*
 * The idle share of the CPU this server may use since the last call
 * (cpuroom.c: its CPUs and its control group's quota); 1 when it cannot be
 * read.
 */
static double
yield_idle(TimestampTz now)
{
	if (yield_room == NULL)
	{
		yield_room = shipsync_cpuroom_open("", NULL, 0);
		if (yield_room == NULL)
			return 1.0;
		(void) shipsync_cpuroom_idle(yield_room, (double) now);
		elog(DEBUG1, "pg_shipsync: delivery watches the idle time of %s",
			 shipsync_cpuroom_limit(yield_room));
		return 1.0;
	}
	return shipsync_cpuroom_idle(yield_room, (double) now);
}

/* At the end of a window: judge it, and set the share for the next */
static void
yield_judge_window(TimestampTz now, double running)
{
	double		idle;
	double		least = shipsync_busy_cpu_percent / 100.0;
	double		was = yield_share;

	idle = yield_idle(now);
	if (running < (was < 1.0 ? YIELD_RUNNING_GONE : YIELD_RUNNING_MIN))
		yield_share = 1.0;
	else if (idle < YIELD_IDLE_MIN)
		yield_share = least;
	else
		yield_share = Min(1.0, yield_share + YIELD_STEP);

	if (yield_share == least && was > least)
		elog(DEBUG1, "pg_shipsync: sessions keep the CPU full (%.1f running, %.0f%% idle of %s): delivery holds back to %d%% of one core",
			 running, idle * 100, shipsync_cpuroom_limit(yield_room), shipsync_busy_cpu_percent);
	else if (yield_share >= 1.0 && was < 1.0)
		elog(DEBUG1, "pg_shipsync: the CPU has room (%.1f sessions running, %.0f%% idle): delivery goes at full speed",
			 running, idle * 100);
}

/*
 * The dispatcher's loop timeout while delivery holds back: at most 10 ms,
 * so that the sessions are looked at often enough to end a window (20
 * samples) soon after they are done.
 */
long
yield_cap_timeout(long timeout)
{
	return Min(timeout, YIELD_WAIT_MAX_MS);
}

/*
 * The pass since yield_wait_ms() only waited and looked at the sessions: its
 * CPU time is not charged to the budget (see the file header).
 */
void
yield_forgive_pass(void)
{
	yield_cpu_last = yield_cpu_us();
}

/* Whether delivery holds back for busy sessions now (a share under a core) */
bool
yield_holding(void)
{
	return shipsync_busy_cpu_percent < 100 && yield_share < 1.0;
}

/*
 * Note the time and CPU used since the last call, look at the sessions,
 * and return how many milliseconds the dispatcher must wait before it
 * claims anything new: 0 when it may claim now.  Called once per pass of
 * the dispatcher's loop, before it claims.
 */
long
yield_wait_ms(TimestampTz now)
{
	double		cpu = yield_cpu_us();
	double		used = yield_cpu_last < 0 ? 0.0 : cpu - yield_cpu_last;
	double		wall = yield_wall_last == 0 ? 0.0 : (double) (now - yield_wall_last);
	double		running;

	yield_cpu_last = cpu;
	yield_wall_last = now;
	if (shipsync_busy_cpu_percent >= 100)
		return 0;

	if (shipsync_window_due(&yield_window, now))
		shipsync_window_sample(&yield_window, now, yield_sessions_running());
	if (shipsync_window_over(&yield_window, now, &running))
		yield_judge_window(now, running);
	if (yield_share >= 1.0)
	{
		yield_budget = YIELD_BUDGET_MAX_US;
		return 0;
	}
	yield_budget = Min(yield_budget + wall * yield_share - used, YIELD_BUDGET_MAX_US);
	yield_budget = Max(yield_budget, -YIELD_DEBT_MAX_US);
	if (yield_budget >= 0)
		return 0;
	return Min(YIELD_WAIT_MAX_MS, (long) ceil(-yield_budget / yield_share / 1000.0));
}
