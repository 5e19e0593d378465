/*-------------------------------------------------------------------------
 *
 * flush.c
 *		The dispatcher's claims flushed by the launcher, so that the
 *		dispatcher goes on working meanwhile.
 *
 * A first attempt goes out only once its stored request is on disk: the
 * dispatcher's claims commit without waiting for their WAL flush, and one
 * flush up to the last of them comes before any of them is sent (outbox.c).
 * That flush is an fdatasync() of the WAL, one to two milliseconds on the
 * disks measured here, and the dispatcher used to sleep through it while
 * requests were on the wire: their answers waited in the sockets, the
 * applier ran dry, and the carrier sat idle once it had answered.  In a
 * burst that was a tenth of the dispatcher's time (docs/architecture.md,
 * the thirty-third round).
 *
 * So with requests on the wire the dispatcher asks the launcher for the
 * flush (flush_ask()), and while it waits it reaps answers and hands them
 * to the applier, until GetFlushRecPtr() has passed its claims; only then
 * does it send them.  With nothing on the wire there is nothing to
 * overlap: it flushes itself, at once, as before.
 * The launcher is the one process of ours that lives as long as the server
 * and is idle nearly all the time; whenever its latch is set it serves
 * every request (flush_serve()).  PostgreSQL's WAL writer cannot be asked:
 * it flushes at most every wal_writer_delay, or after
 * wal_writer_flush_after of WAL.
 *
 * Shared state: each dispatcher's slot (pg_shipsync.h) holds the WAL
 * position it waits for, 0 for none, an atomic written by the dispatcher
 * and cleared by the launcher once that position is flushed; the launcher
 * publishes its latch in the shared struct while it lives (under its
 * mutex).  Correctness never depends on the launcher: the dispatcher sends
 * nothing before GetFlushRecPtr() has passed its claims; when there is no
 * launcher, or it does not answer within FLUSH_WAIT_MS (dispatcher.c; it
 * may be reading pg_database behind a lock), the dispatcher flushes
 * itself, which costs nothing more when the launcher got there first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/spin.h"

#include "pg_shipsync.h"

static void
flush_launcher_gone(int code, Datum arg)
{
	SpinLockAcquire(&shipsync_shared->mutex);
	if (shipsync_shared->flush_latch == MyLatch)
		shipsync_shared->flush_latch = NULL;
	SpinLockRelease(&shipsync_shared->mutex);
}

/*
 * The launcher, as it starts: take the dispatchers' flush requests from now
 * on (until it exits).
 */
void
flush_serve_begin(void)
{
	SpinLockAcquire(&shipsync_shared->mutex);
	shipsync_shared->flush_latch = MyLatch;
	SpinLockRelease(&shipsync_shared->mutex);
	on_shmem_exit(flush_launcher_gone, 0);
}

/*
 * The launcher, whenever its latch was set: flush the WAL up to the
 * furthest position a dispatcher waits for, then wake each dispatcher whose
 * position is flushed.  A request written after the flush began is left for
 * the next call: its dispatcher set the latch again after writing it.
 */
void
flush_serve(void)
{
	XLogRecPtr	target = InvalidXLogRecPtr;
	XLogRecPtr	flushed;

	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
		target = Max(target, pg_atomic_read_u64(&shipsync_shared->slots[i].flush_wanted));
	/* a dispatcher runs only once recovery is over; this is belt and braces */
	if (XLogRecPtrIsInvalid(target) || RecoveryInProgress())
		return;
	XLogFlush(target);
	flushed = GetFlushRecPtr(NULL);

	for (int i = 0; i < SHIPSYNC_MAX_DISPATCHERS; i++)
	{
		ShipsyncSlot *slot = &shipsync_shared->slots[i];
		uint64		wanted = pg_atomic_read_u64(&slot->flush_wanted);
		Latch	   *latch;

		if (wanted == 0 || wanted > flushed ||
			!pg_atomic_compare_exchange_u64(&slot->flush_wanted, &wanted, 0))
			continue;
		SpinLockAcquire(&shipsync_shared->mutex);
		latch = slot->latch;
		SpinLockRelease(&shipsync_shared->mutex);
		/* a latch of an exited process only causes a spurious wakeup */
		if (latch)
			SetLatch(latch);
	}
}

/*
 * A dispatcher (slot): ask the launcher to flush the WAL up to lsn, and to
 * set our latch once it has.  Returns false when there is no launcher to
 * ask: the caller flushes itself.
 */
bool
flush_ask(int slot, XLogRecPtr lsn)
{
	Latch	   *latch;

	pg_atomic_write_u64(&shipsync_shared->slots[slot].flush_wanted, lsn);
	SpinLockAcquire(&shipsync_shared->mutex);
	latch = shipsync_shared->flush_latch;
	SpinLockRelease(&shipsync_shared->mutex);
	if (latch == NULL)
	{
		pg_atomic_write_u64(&shipsync_shared->slots[slot].flush_wanted, 0);
		return false;
	}
	SetLatch(latch);
	return true;
}

/*
 * A dispatcher (slot): stop waiting for the launcher, whose request is
 * flushed or given up (the launcher may have withdrawn it already).
 */
void
flush_withdraw(int slot)
{
	pg_atomic_write_u64(&shipsync_shared->slots[slot].flush_wanted, 0);
}
