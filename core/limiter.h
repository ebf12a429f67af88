/*
 * limiter — a cap on upstream requests in flight, with a bounded FIFO queue.
 *
 * Owns only counters and the links of the queue. Each waiter belongs to the
 * caller: embed a zeroed struct limiter_waiter in the request struct, pass it
 * to limiter_acquire(), and keep it alive and in place until it is idle
 * again, that is until limiter_release() (once it holds a slot) or
 * limiter_cancel() (while it is queued). Nothing is allocated per request.
 *
 * How the caller uses it:
 *
 *   switch (limiter_acquire(l, &r->lw, on_slot, r, now)) {
 *   case LIMITER_GO:     start_upstream(r); break;
 *   case LIMITER_QUEUED: break;           (on_slot(r) starts it later)
 *   case LIMITER_FULL:   reply 429 with Retry-After: limiter_retry_after_s(l)
 *   }
 *   upstream finished, any outcome:   limiter_release(l, &r->lw, now);
 *   client went away while queued:    limiter_cancel(l, &r->lw);
 *
 * release() does nothing unless the waiter holds a slot, and cancel() does
 * nothing unless it is queued, so a cleanup path that does not know where the
 * request stands can call both.
 *
 * The ready callback runs inside limiter_release(), when the waiter already
 * holds its slot. It may call into the limiter again: release its own slot at
 * once after a synchronous failure, acquire, or cancel other waiters. The
 * hand-over is a loop, not recursion, so the stack stays flat however long
 * the queue is. It must not destroy the limiter.
 *
 * Time is passed in (monotonic ms), so the module does no I/O and has no
 * clock of its own. It is used for the hold-time average behind the
 * Retry-After hint and for the queue-wait average.
 */
#ifndef RAPPORT_LIMITER_H
#define RAPPORT_LIMITER_H

typedef struct limiter limiter;
typedef void limiter_ready_cb(void *arg);

enum limiter_verdict {
	LIMITER_GO,       /* slot taken now: start, then release */
	LIMITER_QUEUED,   /* cb(arg) runs later with the slot taken */
	LIMITER_FULL      /* queue full: nothing taken, answer 429 */
};

enum limiter_waiter_state {
	LIMITER_IDLE = 0, /* zeroed memory is idle */
	LIMITER_WAITING,
	LIMITER_HOLDING
};

/* Owned by the caller, managed by the limiter: read state if you like, but
 * write nothing after zeroing it. */
typedef struct limiter_waiter {
	struct limiter_waiter *prev, *next;
	limiter_ready_cb *cb;
	void *arg;
	double since_ms;              /* when queued, then when granted */
	enum limiter_waiter_state state;
} limiter_waiter;

struct limiter_stats {
	int in_flight, max_in_flight;
	int queued, max_queue;
	long acquired_total;          /* slots granted, at once or after a wait */
	long queued_total;            /* acquisitions that had to wait */
	long rejected_total;          /* LIMITER_FULL verdicts */
	long cancelled_total;         /* queued waiters that left */
	double avg_hold_ms;           /* moving average; 0 before the first release */
	double avg_wait_ms;           /* same, over waiters that queued */
};

/* max_in_flight below 1 is raised to 1; max_queue below 0 is taken as 0
 * (no queue: FULL whenever every slot is taken). */
limiter *limiter_create(int max_in_flight, int max_queue);
/* Queued waiters are unlinked and left idle; their callbacks never run. */
void limiter_destroy(limiter *l);

/* w must be idle. cb is needed only if the verdict is LIMITER_QUEUED. A new
 * arrival never overtakes the queue: it goes ahead only if the queue is
 * empty. */
enum limiter_verdict limiter_acquire(limiter *l, limiter_waiter *w, limiter_ready_cb *cb,
                                     void *arg, double now_ms);
/* Frees w's slot and hands free slots to the oldest waiters, calling their
 * callbacks. A no-op unless w holds a slot. */
void limiter_release(limiter *l, limiter_waiter *w, double now_ms);
/* A queued waiter leaves; its callback never runs. A no-op otherwise. */
void limiter_cancel(limiter *l, limiter_waiter *w);

/* Seconds a rejected client should wait: the average hold time times the
 * waiters ahead (the queue plus the newcomer) over the slots, rounded up,
 * within [1, 60]. 1 until a hold time has been measured. */
int limiter_retry_after_s(const limiter *l);
void limiter_stats(const limiter *l, struct limiter_stats *out);

#endif
