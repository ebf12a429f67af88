/*
 * limiter — an adaptive cap on upstream requests in flight, with a bounded
 * FIFO queue for interactive calls and a second, smaller lane for
 * background (warm) calls.
 *
 * Owns only counters, the cap and the links of the two queues. Each waiter
 * belongs to the caller: embed a zeroed struct limiter_waiter in the request
 * struct, pass it to limiter_acquire() (or limiter_acquire_background()),
 * and keep it alive and in place until it is idle again, that is until
 * limiter_release() (once it holds a slot) or limiter_cancel() (while it is
 * queued). Nothing is allocated per request.
 *
 * How the caller uses it:
 *
 *   switch (limiter_acquire(l, &r->lw, on_slot, r, now)) {
 *   case LIMITER_GO:     start_upstream(r); break;
 *   case LIMITER_QUEUED: break;           (on_slot(r) starts it later)
 *   case LIMITER_FULL:   reply 429 with Retry-After: limiter_retry_after_s(l)
 *   }
 *   upstream answered:                limiter_observe(l, &r->lw, &sig, now);
 *   upstream finished, any outcome:   limiter_release(l, &r->lw, now);
 *   client went away while queued:    limiter_cancel(l, &r->lw);
 *
 * release() does nothing unless the waiter holds a slot, and cancel() does
 * nothing unless it is queued, so a cleanup path that does not know where the
 * request stands can call both.
 *
 * The cap adapts (AIMD, as TCP's congestion window): it starts at the
 * configured value, halves on a 429 from the provider (at most once per
 * round: calls sent before the last decrease share its 429s), and grows on
 * success, only while the cap is what limits us (every slot taken): +1 per success until the first 429 (slow start: it doubles per
 * round), then +1 per cap's worth of successes. It stays within
 * [1, ceiling]. The provider's rate-limit headers (limiter_observe) say how
 * many calls the current window still has room for: with none left beyond
 * the calls already out, new calls are held (queued, not refused) until the
 * window resets, rather than sent to be refused.
 *
 * Background waiters get a slot only while no interactive waiter is queued
 * and the background calls in flight stay below ceil(share × cap); an
 * interactive waiter is always served first.
 *
 * The ready callback runs inside limiter_release() or limiter_tick(), when
 * the waiter already holds its slot. It may call into the limiter again:
 * release its own slot at once after a synchronous failure, acquire, or
 * cancel other waiters. The hand-over is a loop, not recursion, so the stack
 * stays flat however long the queue is. It must not destroy the limiter.
 *
 * Time is passed in (monotonic ms), so the module does no I/O and has no
 * clock of its own. A hold ends at a time nothing else may wake the limiter
 * at, so the owner gives it a wake callback (limiter_set_wake) that arms a
 * timer, and calls limiter_tick() when it fires.
 */
#ifndef RAPPORT_LIMITER_H
#define RAPPORT_LIMITER_H

#include <stdbool.h>

typedef struct limiter limiter;
typedef void limiter_ready_cb(void *arg);
/* "call limiter_tick() in delay_ms": only arm a timer in here. */
typedef void limiter_wake_cb(void *arg, double delay_ms);

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
	bool background;              /* in the background lane */
	long grant_seq;               /* grants before this one, for limiter_observe */
} limiter_waiter;

/* What the provider said about its rate limits in one reply (the last
 * attempt's headers), plus how the call went. Zeroed = nothing known. The
 * upstream client (llm.c) fills it in struct llm_result, so the caller hands
 * it over as is. */
struct limiter_signal {
	bool ok;                       /* the call succeeded (a 2xx, a whole reply) */
	int throttled;                 /* attempts refused with 429 (not quota) */
	long tokens;                   /* tokens it used (prompt + completion), 0 unknown */
	bool has_limit_requests, has_limit_tokens;
	long limit_requests;           /* x-ratelimit-limit-requests */
	long limit_tokens;             /* x-ratelimit-limit-tokens */
	bool has_remaining_requests, has_remaining_tokens;
	long remaining_requests;       /* x-ratelimit-remaining-requests */
	long remaining_tokens;         /* x-ratelimit-remaining-tokens */
	bool has_reset_requests, has_reset_tokens, has_retry_after;
	double reset_requests_ms;      /* x-ratelimit-reset-requests */
	double reset_tokens_ms;        /* x-ratelimit-reset-tokens */
	double retry_after_ms;         /* retry-after-ms, else retry-after */
	double sent_ms;                /* when the last attempt went out (the
	                                  limiter's clock), 0 unknown: the
	                                  resets count from about then */
};

struct limiter_stats {
	int in_flight, max_in_flight;  /* max_in_flight: the current cap */
	int queued, max_queue;
	long acquired_total;          /* slots granted, at once or after a wait */
	long queued_total;            /* acquisitions that had to wait */
	long rejected_total;          /* LIMITER_FULL verdicts (interactive) */
	long cancelled_total;         /* queued waiters that left */
	double avg_hold_ms;           /* moving average; 0 before the first release */
	double avg_wait_ms;           /* same, over waiters that queued */
	/* The adaptive cap. */
	int cap_start, cap_ceiling;   /* configured start and maximum */
	int cap_min_seen, cap_max_seen;
	long decreases_total;         /* multiplicative decreases (429 rounds) */
	long increases_total;         /* steps of +1 of the cap */
	long throttled_total;         /* 429s the provider sent (attempts) */
	/* The provider's window. */
	bool held;                    /* new calls wait for the window to reset */
	double hold_remaining_ms;     /* 0 unless held */
	long holds_total;             /* holds begun */
	long credit;                  /* calls the window still allows, -1 unknown */
	/* The background lane. */
	int bg_in_flight, bg_max_in_flight, bg_queued;
	long bg_acquired_total, bg_rejected_total;
};

/* max_in_flight below 1 is raised to 1; max_queue below 0 is taken as 0
 * (no queue: FULL whenever every slot is taken). The cap starts at
 * max_in_flight and may shrink; it grows above it only up to the ceiling,
 * which is max_in_flight until limiter_set_ceiling() says otherwise. */
limiter *limiter_create(int max_in_flight, int max_queue);
/* Queued waiters are unlinked and left idle; their callbacks never run. */
void limiter_destroy(limiter *l);

/* The most the cap may grow to; below the start it is taken as the start. */
void limiter_set_ceiling(limiter *l, int ceiling);
/* The background lane's share of the cap, within [0, 1] (default 0.25);
 * 0 gives it no slot at all. Its queue is as long as the interactive one. */
void limiter_set_background_share(limiter *l, double share);
/* How many calls holding a slot are retrying (the upstream client's): their
 * attempts take room in the provider's window that no grant accounts for.
 * NULL (the default): none. */
typedef long limiter_pending_cb(void *arg);
void limiter_set_pending(limiter *l, limiter_pending_cb *cb, void *arg);
/* See the header comment: cb is asked once per hold, for its end. NULL
 * (the default) means nobody wakes it, and a hold then ends for the
 * waiters at the next acquire, release or observe. */
void limiter_set_wake(limiter *l, limiter_wake_cb *cb, void *arg);

/* w must be idle. cb is needed only if the verdict is LIMITER_QUEUED. A new
 * arrival never overtakes the queue: it goes ahead only if the queue is
 * empty, the cap has room and no hold is on. */
enum limiter_verdict limiter_acquire(limiter *l, limiter_waiter *w, limiter_ready_cb *cb,
                                     void *arg, double now_ms);
/* The same in the background lane: it goes ahead only if both queues are
 * empty, the cap has room, no hold is on and the background calls in flight
 * are below ceil(share × cap). FULL when its own queue is full. */
enum limiter_verdict limiter_acquire_background(limiter *l, limiter_waiter *w,
                                                limiter_ready_cb *cb, void *arg,
                                                double now_ms);
/* The provider's reply to w's call (w still holding, before release):
 * adapts the cap and the hold. w may be NULL or idle (then the call counts
 * as sent after any decrease). */
void limiter_observe(limiter *l, const limiter_waiter *w, const struct limiter_signal *s,
                     double now_ms);
/* Frees w's slot and hands free slots to the oldest waiters, calling their
 * callbacks. A no-op unless w holds a slot. */
void limiter_release(limiter *l, limiter_waiter *w, double now_ms);
/* A queued waiter leaves; its callback never runs. A no-op otherwise. */
void limiter_cancel(limiter *l, limiter_waiter *w);
/* The wake timer fired: a hold may have ended; hands out what it can. */
void limiter_tick(limiter *l, double now_ms);

/* Seconds a rejected client should wait: the average hold time times the
 * waiters ahead (the queue plus the newcomer) over the slots, plus what is
 * left of a hold, rounded up, within [1, 60]. 1 until a hold time has been
 * measured and no hold is on. */
int limiter_retry_after_s(const limiter *l);
void limiter_stats(const limiter *l, struct limiter_stats *out);

#endif
