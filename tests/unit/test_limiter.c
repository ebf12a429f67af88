/*
 * test_limiter — the in-flight cap: GO up to the cap, FIFO hand-over on
 * release, FULL when the queue is full, cancel, re-entrant callbacks, the
 * averages and the Retry-After hint; the adaptive cap (AIMD on the
 * provider's 429s and successes, within [1, ceiling]), the holds for the
 * provider's window (x-ratelimit-* and retry-after), and the background
 * lane.
 */
#include "limiter.h"
#include "tap.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define NEAR(a, b) (fabs((a) - (b)) < 1e-6)

/* Lowest and highest stack address seen in a callback: the spread shows
 * whether hand-over recursed. */
static uintptr_t stack_lo = UINTPTR_MAX, stack_hi;

/* A request as the caller would have it: the waiter embedded. */
struct req {
	int id;
	limiter_waiter w;
	limiter *l;
	int *order;                  /* ready ids are appended here */
	int *n_order;
	int release_in_cb;           /* release at once from the callback */
	struct req *cancel_in_cb;    /* cancel this other request from the callback */
	struct req *acquire_in_cb;   /* acquire this other request from the callback */
	enum limiter_verdict inner_verdict;
	double now;
};

static void
on_ready(void *arg)
{
	struct req *r = arg;
	volatile char here = 0;
	uintptr_t sp = (uintptr_t)&here;
	stack_lo = sp < stack_lo ? sp : stack_lo;
	stack_hi = sp > stack_hi ? sp : stack_hi;
	r->order[(*r->n_order)++] = r->id;
	if (r->cancel_in_cb)
		limiter_cancel(r->l, &r->cancel_in_cb->w);
	if (r->acquire_in_cb)
		r->inner_verdict = limiter_acquire(r->l, &r->acquire_in_cb->w, on_ready,
		                                   r->acquire_in_cb, r->now);
	if (r->release_in_cb)
		limiter_release(r->l, &r->w, r->now);
}

static void
req_init(struct req *r, int n, limiter *l, int *order, int *n_order)
{
	memset(r, 0, (size_t)n * sizeof *r);
	for (int i = 0; i < n; i++) {
		r[i].id = i;
		r[i].l = l;
		r[i].order = order;
		r[i].n_order = n_order;
	}
}

static enum limiter_verdict
acq(struct req *r, double now)
{
	return limiter_acquire(r->l, &r->w, on_ready, r, now);
}

static void
test_go_queue_full(void)
{
	int order[16], n = 0;
	limiter *l = limiter_create(2, 2);
	struct req r[5];
	req_init(r, 5, l, order, &n);
	ok(acq(&r[0], 0) == LIMITER_GO && acq(&r[1], 0) == LIMITER_GO, "GO up to max_in_flight");
	ok(r[0].w.state == LIMITER_HOLDING, "a GO waiter holds a slot");
	ok(acq(&r[2], 1) == LIMITER_QUEUED && acq(&r[3], 2) == LIMITER_QUEUED,
	   "QUEUED once every slot is taken");
	ok(r[2].w.state == LIMITER_WAITING, "a queued waiter is waiting");
	ok(acq(&r[4], 3) == LIMITER_FULL, "FULL once the queue is full");
	ok(r[4].w.state == LIMITER_IDLE, "a rejected waiter stays idle");
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(st.in_flight == 2 && st.queued == 2 && st.rejected_total == 1 && st.max_in_flight == 2 &&
	   st.max_queue == 2, "stats: in_flight 2, queued 2, rejected 1, max 2/2");
	ok(st.acquired_total == 2 && st.queued_total == 2, "stats: 2 acquired, 2 queued so far");
	ok(n == 0, "no callback runs from acquire");
	limiter_destroy(l);
}

static void
test_fifo_order(void)
{
	int order[16], n = 0;
	limiter *l = limiter_create(1, 10);
	struct req r[5];
	req_init(r, 5, l, order, &n);
	ok(acq(&r[0], 0) == LIMITER_GO, "first request goes");
	for (int i = 1; i < 5; i++)
		acq(&r[i], i);
	limiter_release(l, &r[0].w, 100);
	ok(n == 1 && order[0] == 1, "release hands the slot to the oldest waiter");
	ok(r[1].w.state == LIMITER_HOLDING && r[0].w.state == LIMITER_IDLE,
	   "the slot moved from the releaser to the waiter");
	limiter_release(l, &r[1].w, 200);
	limiter_release(l, &r[2].w, 300);
	limiter_release(l, &r[3].w, 400);
	ok(n == 4 && order[1] == 2 && order[2] == 3 && order[3] == 4,
	   "waiters are served in arrival order (%d %d %d %d)", order[0], order[1], order[2], order[3]);
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(st.in_flight == 1 && st.queued == 0 && st.acquired_total == 5, "one in flight, none queued");
	limiter_release(l, &r[4].w, 500);
	limiter_stats(l, &st);
	ok(st.in_flight == 0, "the last release frees the slot");
	limiter_destroy(l);
}

static void
test_newcomer_does_not_overtake(void)
{
	int order[16], n = 0;
	limiter *l = limiter_create(1, 4);
	struct req r[3];
	req_init(r, 3, l, order, &n);
	acq(&r[0], 0);
	acq(&r[1], 0);
	/* r[1]'s callback acquires r[2] while the slot is being handed over */
	r[1].acquire_in_cb = &r[2];
	limiter_release(l, &r[0].w, 10);
	ok(n == 1 && order[0] == 1 && r[1].inner_verdict == LIMITER_QUEUED,
	   "an acquire from inside a callback queues (the slot went to the waiter)");
	limiter_release(l, &r[1].w, 20);
	ok(n == 2 && order[1] == 2, "and is served on the next release");
	limiter_release(l, &r[2].w, 30);
	limiter_destroy(l);
}

static void
test_release_empty_queue_and_misuse(void)
{
	int order[4], n = 0;
	limiter *l = limiter_create(1, 1);
	struct req r[2];
	req_init(r, 2, l, order, &n);
	acq(&r[0], 0);
	limiter_release(l, &r[0].w, 5);
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(st.in_flight == 0 && n == 0, "release with an empty queue frees the slot and calls nobody");
	limiter_release(l, &r[0].w, 6);
	limiter_stats(l, &st);
	ok(st.in_flight == 0, "a second release of the same waiter is a no-op (no negative count)");
	limiter_release(l, &r[1].w, 6);
	limiter_cancel(l, &r[1].w);
	limiter_stats(l, &st);
	ok(st.in_flight == 0 && st.cancelled_total == 0, "release/cancel of a never-used waiter do nothing");
	ok(acq(&r[0], 7) == LIMITER_GO, "a released waiter can be reused");
	limiter_cancel(l, &r[0].w);
	limiter_stats(l, &st);
	ok(st.in_flight == 1 && r[0].w.state == LIMITER_HOLDING,
	   "cancel of a holding waiter leaves its slot alone");
	limiter_release(l, &r[0].w, 8);
	limiter_destroy(l);
}

static void
test_cancel(void)
{
	int order[16], n = 0;
	limiter *l = limiter_create(1, 3);
	struct req r[4];
	req_init(r, 4, l, order, &n);
	acq(&r[0], 0);
	acq(&r[1], 0);
	acq(&r[2], 0);
	acq(&r[3], 0);
	limiter_cancel(l, &r[2].w);               /* middle */
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(st.queued == 2 && st.cancelled_total == 1 && r[2].w.state == LIMITER_IDLE,
	   "cancel of a queued waiter removes it");
	limiter_cancel(l, &r[2].w);
	limiter_stats(l, &st);
	ok(st.queued == 2 && st.cancelled_total == 1, "a second cancel is a no-op");
	limiter_release(l, &r[0].w, 1);
	limiter_release(l, &r[1].w, 2);
	ok(n == 2 && order[0] == 1 && order[1] == 3, "the cancelled waiter is skipped, order kept");
	limiter_release(l, &r[3].w, 3);

	/* cancel head and tail */
	n = 0;
	acq(&r[0], 0);
	acq(&r[1], 0);
	acq(&r[2], 0);
	acq(&r[3], 0);
	limiter_cancel(l, &r[1].w);               /* head */
	limiter_cancel(l, &r[3].w);               /* tail */
	ok(acq(&r[1], 1) == LIMITER_QUEUED, "a cancelled waiter may queue again (goes to the back)");
	limiter_release(l, &r[0].w, 2);
	limiter_release(l, &r[2].w, 3);
	ok(n == 2 && order[0] == 2 && order[1] == 1, "head/tail cancel keep the list intact");
	limiter_release(l, &r[1].w, 4);
	limiter_stats(l, &st);
	ok(st.in_flight == 0 && st.queued == 0, "all slots and queue places returned");

	/* cancel frees a queue place */
	acq(&r[0], 0);
	acq(&r[1], 0);
	acq(&r[2], 0);
	acq(&r[3], 0);
	struct req extra[1];
	req_init(extra, 1, l, order, &n);
	ok(acq(&extra[0], 0) == LIMITER_FULL, "queue full");
	limiter_cancel(l, &r[2].w);
	ok(acq(&extra[0], 0) == LIMITER_QUEUED, "a cancel frees a queue place");
	limiter_destroy(l);
	ok(r[1].w.state == LIMITER_IDLE && extra[0].w.state == LIMITER_IDLE,
	   "destroy leaves queued waiters idle");
}

static void
test_reentrant_callbacks(void)
{
	int order[2048], n = 0;
	limiter *l = limiter_create(1, 2000);
	static struct req r[1001];
	req_init(r, 1001, l, order, &n);
	acq(&r[0], 0);
	for (int i = 1; i <= 1000; i++) {
		r[i].release_in_cb = 1;   /* every upstream call fails synchronously */
		acq(&r[i], 0);
	}
	stack_lo = UINTPTR_MAX;
	stack_hi = 0;
	limiter_release(l, &r[0].w, 1);
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(n == 1000 && order[0] == 1 && order[999] == 1000,
	   "1000 callbacks that release at once drain the queue in order");
	ok(stack_hi - stack_lo < 1024, "without recursion: callbacks ran %zu bytes of stack apart",
	   (size_t)(stack_hi - stack_lo));
	ok(st.in_flight == 0 && st.queued == 0, "and leave nothing held");

	/* a callback cancels the next waiter */
	n = 0;
	req_init(r, 4, l, order, &n);
	acq(&r[0], 0);
	acq(&r[1], 0);
	acq(&r[2], 0);
	acq(&r[3], 0);
	r[1].cancel_in_cb = &r[2];
	r[1].release_in_cb = 1;
	limiter_release(l, &r[0].w, 1);
	ok(n == 2 && order[0] == 1 && order[1] == 3, "a waiter cancelled from a callback is never called");
	limiter_release(l, &r[3].w, 2);
	limiter_stats(l, &st);
	ok(st.in_flight == 0 && st.queued == 0, "counts balanced after re-entry");
	limiter_destroy(l);
}

static void
test_no_queue(void)
{
	int order[4], n = 0;
	limiter *l = limiter_create(0, -5);
	struct req r[2];
	req_init(r, 2, l, order, &n);
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(st.max_in_flight == 1 && st.max_queue == 0, "bad sizes are clamped to 1 slot, no queue");
	ok(acq(&r[0], 0) == LIMITER_GO && acq(&r[1], 0) == LIMITER_FULL,
	   "with no queue the second request is FULL at once");
	limiter_release(l, &r[0].w, 1);
	limiter_destroy(l);
}

static void
test_averages_and_retry_after(void)
{
	int order[16], n = 0;
	limiter *l = limiter_create(2, 10);
	struct req r[8];
	req_init(r, 8, l, order, &n);
	ok(limiter_retry_after_s(l) == 1, "retry-after is 1 s before any hold time is known");

	acq(&r[0], 0);
	acq(&r[1], 0);
	acq(&r[2], 100);                          /* waits */
	limiter_release(l, &r[0].w, 3000);        /* held 3000 ms; r2 waited 2900 */
	struct limiter_stats st;
	limiter_stats(l, &st);
	ok(NEAR(st.avg_hold_ms, 3000), "first hold sample taken as is (%.0f)", st.avg_hold_ms);
	ok(NEAR(st.avg_wait_ms, 2900), "queue wait measured from queueing to grant (%.0f)", st.avg_wait_ms);
	limiter_release(l, &r[1].w, 1000);        /* held 1000: 3000 + 0.2 * (1000 - 3000) */
	limiter_stats(l, &st);
	ok(NEAR(st.avg_hold_ms, 2600), "moving average weights the new sample 1/5 (%.0f)", st.avg_hold_ms);

	/* r2 holds; fill the other slot and queue 4 behind them */
	acq(&r[3], 1000);
	for (int i = 4; i < 8; i++)
		acq(&r[i], 1000);
	limiter_stats(l, &st);
	ok(st.queued == 4, "4 queued");
	ok(limiter_retry_after_s(l) == 7, "retry-after = ceil(2600 * (4 + 1) / 2 / 1000) = 7 (%d)",
	   limiter_retry_after_s(l));
	limiter_destroy(l);

	l = limiter_create(1, 1000);
	req_init(r, 2, l, order, &n);
	acq(&r[0], 0);
	limiter_release(l, &r[0].w, 600000);      /* ten minutes */
	ok(limiter_retry_after_s(l) == 60, "retry-after is capped at 60 s");
	acq(&r[0], 0);
	limiter_release(l, &r[0].w, -50);         /* clock oddity: negative hold counts as 0 */
	limiter_stats(l, &st);
	ok(NEAR(st.avg_hold_ms, 480000), "a negative hold is taken as 0 (%.0f)",
	   st.avg_hold_ms);
	limiter_destroy(l);

	l = limiter_create(4, 10);
	req_init(r, 1, l, order, &n);
	acq(&r[0], 0);
	limiter_release(l, &r[0].w, 10);
	ok(limiter_retry_after_s(l) == 1, "short holds still give at least 1 s");
	limiter_destroy(l);
}


/* ---- the adaptive cap --------------------------------------------------- */

static const struct limiter_signal SIG_OK = { .ok = true };
static const struct limiter_signal SIG_429 = { .throttled = 1 };

static struct limiter_stats
st_of(limiter *l)
{
	struct limiter_stats st;
	limiter_stats(l, &st);
	return st;
}

/* Fills every slot and queues `extra` behind them; returns how many went. */
static int
fill(limiter *l, struct req *r, int n, double now)
{
	int go = 0;
	for (int i = 0; i < n; i++)
		if (r[i].w.state == LIMITER_IDLE && acq(&r[i], now) == LIMITER_GO)
			go++;
	return go;
}

static void
test_shrinks_on_429_once_per_round(void)
{
	int order[256], n = 0;
	limiter *l = limiter_create(16, 100);
	limiter_set_ceiling(l, 64);
	struct req r[40];
	req_init(r, 40, l, order, &n);
	ok(fill(l, r, 16, 0) == 16, "16 slots at the start cap");
	/* a burst of 429s from the calls of one round */
	limiter_observe(l, &r[0].w, &SIG_429, 10);
	ok(st_of(l).max_in_flight == 8, "a 429 halves the cap (16 -> %d)", st_of(l).max_in_flight);
	for (int i = 1; i < 16; i++)
		limiter_observe(l, &r[i].w, &SIG_429, 11 + i);
	struct limiter_stats st = st_of(l);
	ok(st.max_in_flight == 8 && st.decreases_total == 1 && st.throttled_total == 16,
	   "15 more 429s from calls sent before the decrease do not halve it again "
	   "(cap %d, decreases %ld, throttled %ld)", st.max_in_flight, st.decreases_total,
	   st.throttled_total);
	for (int i = 0; i < 16; i++)
		limiter_release(l, &r[i].w, 30);
	/* a call sent after the decrease that is refused: a new round */
	ok(acq(&r[20], 40) == LIMITER_GO, "a call of the next round goes");
	limiter_observe(l, &r[20].w, &SIG_429, 50);
	ok(st_of(l).max_in_flight == 4 && st_of(l).decreases_total == 2,
	   "its 429 halves the cap again (%d)", st_of(l).max_in_flight);
	limiter_release(l, &r[20].w, 50);
	for (int k = 0; k < 10; k++) {
		acq(&r[21], 60 + k);
		limiter_observe(l, &r[21].w, &SIG_429, 60 + k);
		limiter_release(l, &r[21].w, 60 + k);
	}
	st = st_of(l);
	ok(st.max_in_flight == 1 && st.cap_min_seen == 1,
	   "429 after 429 never takes the cap below 1 (%d, min %d)", st.max_in_flight,
	   st.cap_min_seen);
	ok(acq(&r[22], 100) == LIMITER_GO && acq(&r[23], 100) == LIMITER_QUEUED,
	   "at cap 1 one call still goes, the next waits");
	limiter_release(l, &r[22].w, 101);
	limiter_release(l, &r[23].w, 102);
	limiter_destroy(l);
}

static void
test_grows_on_success(void)
{
	int order[512], n = 0;
	limiter *l = limiter_create(4, 100);
	limiter_set_ceiling(l, 10);
	static struct req r[60];
	req_init(r, 60, l, order, &n);

	/* Successes under a cap nobody reaches say nothing: no growth. */
	acq(&r[0], 0);
	for (int i = 0; i < 5; i++)
		limiter_observe(l, &r[0].w, &SIG_OK, 1 + i);
	limiter_release(l, &r[0].w, 10);
	ok(st_of(l).max_in_flight == 4 && st_of(l).increases_total == 0,
	   "successes while the cap is not reached leave it alone (%d)", st_of(l).max_in_flight);

	/* 4 in flight, 20 queued: slow start, +1 per success. */
	fill(l, r, 24, 20);
	ok(st_of(l).in_flight == 4 && st_of(l).queued == 20, "4 running, 20 waiting");
	limiter_observe(l, &r[0].w, &SIG_OK, 30);
	struct limiter_stats st = st_of(l);
	ok(st.max_in_flight == 5 && st.in_flight == 5 && n == 1,
	   "a success while calls wait adds a slot, handed out at once (cap %d, in flight %d)",
	   st.max_in_flight, st.in_flight);
	for (int i = 1; i < 4; i++)
		limiter_observe(l, &r[i].w, &SIG_OK, 31);
	ok(st_of(l).max_in_flight == 8, "one round of 4 successes doubles the cap to 8 (%d)",
	   st_of(l).max_in_flight);
	for (int i = 0; i < 30; i++)
		limiter_observe(l, NULL, &SIG_OK, 32);
	st = st_of(l);
	ok(st.max_in_flight == 10 && st.cap_max_seen == 10 && st.in_flight == 10,
	   "never above the ceiling (cap %d, max seen %d)", st.max_in_flight, st.cap_max_seen);
	ok(st.increases_total == 6, "6 steps of +1 counted (%ld)", st.increases_total);

	/* After a 429: cap 5, then +1 per cap's worth of successes. */
	limiter_observe(l, NULL, &SIG_429, 40);
	ok(st_of(l).max_in_flight == 5, "a 429 halves 10 to 5");
	for (int i = 0; i < 4; i++)
		limiter_observe(l, NULL, &SIG_OK, 41);
	ok(st_of(l).max_in_flight == 5, "after a 429 four successes are not yet one step (%d)",
	   st_of(l).max_in_flight);
	limiter_observe(l, NULL, &SIG_OK, 42);
	ok(st_of(l).max_in_flight == 6, "the fifth (a cap's worth) is (%d)", st_of(l).max_in_flight);
	ok(st_of(l).in_flight == 10, "a smaller cap takes no slot back from calls out");
	limiter_destroy(l);
}

static void
test_no_growth_while_held(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(4, 50);
	limiter_set_ceiling(l, 40);
	struct req r[12];
	req_init(r, 12, l, order, &n);
	acq(&r[0], 0);
	acq(&r[1], 0);
	struct limiter_signal s = {
		.ok = true, .has_remaining_requests = true, .remaining_requests = 0,
		.has_reset_requests = true, .reset_requests_ms = 5000,
	};
	limiter_observe(l, &r[0].w, &s, 10);
	limiter_release(l, &r[0].w, 10);
	fill(l, &r[2], 8, 20);
	ok(st_of(l).held && st_of(l).queued == 8 && st_of(l).in_flight == 1,
	   "held: 8 wait though 3 slots are free");
	for (int i = 0; i < 5; i++)
		limiter_observe(l, &r[1].w, &SIG_OK, 30 + i);
	ok(st_of(l).max_in_flight == 4 && st_of(l).increases_total == 0,
	   "successes while a hold keeps calls waiting do not grow the cap (%d)",
	   st_of(l).max_in_flight);
	for (int i = 0; i < 12; i++) {
		limiter_cancel(l, &r[i].w);
		limiter_release(l, &r[i].w, 40);
	}
	limiter_destroy(l);
}

static void
test_ceiling_below_start(void)
{
	limiter *l = limiter_create(8, 0);
	limiter_set_ceiling(l, 3);
	struct limiter_stats st = st_of(l);
	ok(st.cap_ceiling == 8 && st.max_in_flight == 8 && st.cap_start == 8,
	   "a ceiling below the start is taken as the start");
	limiter_destroy(l);
}

static double wake_delay;
static int wakes;

static void
on_wake(void *arg, double delay_ms)
{
	wakes++;
	wake_delay = delay_ms;
}

static void
test_holds_until_reset(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(10, 50);
	limiter_set_wake(l, on_wake, NULL);
	wakes = 0;
	struct req r[20];
	req_init(r, 20, l, order, &n);
	acq(&r[0], 0);
	acq(&r[1], 0);
	/* r0's reply: the window has 1 request left, but r1 went out after r0
	 * was admitted and will take it. */
	struct limiter_signal s = {
		.ok = true, .has_remaining_requests = true, .remaining_requests = 1,
		.has_reset_requests = true, .reset_requests_ms = 500,
	};
	limiter_observe(l, &r[0].w, &s, 100);
	struct limiter_stats st = st_of(l);
	ok(st.held && st.holds_total == 1 && NEAR(st.hold_remaining_ms, 420),
	   "remaining 1 with one more call out: held until the reset and its 20 ms guard (%.0f)",
	   st.hold_remaining_ms);
	ok(wakes == 1 && NEAR(wake_delay, 420), "the owner is asked to wake it at the reset (%.0f ms)",
	   wake_delay);
	limiter_release(l, &r[0].w, 100);
	ok(acq(&r[2], 110) == LIMITER_QUEUED, "while held a free slot is not used: the call waits");
	ok(acq(&r[3], 120) == LIMITER_QUEUED && wakes == 1, "one wake per hold, however many wait");
	limiter_tick(l, 300);
	ok(n == 0 && r[2].w.state == LIMITER_WAITING, "a tick before the reset grants nothing");
	limiter_tick(l, 520);
	ok(n == 2 && order[0] == 2 && order[1] == 3 && !st_of(l).held,
	   "at the reset the waiters go, in order");
	for (int i = 1; i < 4; i++)
		limiter_release(l, &r[i].w, 600);

	/* remaining 0 on a 429 with retry-after: hold for the longer */
	acq(&r[4], 1000);
	struct limiter_signal t = {
		.throttled = 1, .has_remaining_requests = true, .remaining_requests = 0,
		.has_reset_requests = true, .reset_requests_ms = 200,
		.has_retry_after = true, .retry_after_ms = 3000,
	};
	limiter_observe(l, &r[4].w, &t, 1000);
	limiter_release(l, &r[4].w, 1000);
	st = st_of(l);
	ok(st.held && NEAR(st.hold_remaining_ms, 3000), "retry-after 3 s holds 3 s (%.0f)",
	   st.hold_remaining_ms);
	ok(limiter_retry_after_s(l) >= 3, "and a client refused meanwhile is told to wait as long (%d)",
	   limiter_retry_after_s(l));
	ok(acq(&r[5], 2000) == LIMITER_QUEUED, "a call during the hold waits");
	limiter_tick(l, 4000);
	ok(r[5].w.state == LIMITER_HOLDING, "and goes after it");
	limiter_release(l, &r[5].w, 4100);

	/* A hold never waits for a bogus reset longer than a minute. */
	acq(&r[6], 5000);
	struct limiter_signal u = {
		.ok = true, .has_remaining_requests = true, .remaining_requests = 0,
		.has_reset_requests = true, .reset_requests_ms = 86400000,
	};
	limiter_observe(l, &r[6].w, &u, 5000);
	ok(st_of(l).hold_remaining_ms <= 60000, "a day-long reset holds at most 60 s (%.0f)",
	   st_of(l).hold_remaining_ms);
	limiter_release(l, &r[6].w, 5000);
	limiter_destroy(l);
}

static void
test_credit_and_refill(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(20, 50);
	struct req r[40];
	req_init(r, 40, l, order, &n);
	acq(&r[0], 0);
	/* Room for 3 more in a window of 5 that ends in 1000 ms. */
	struct limiter_signal s = {
		.ok = true, .has_limit_requests = true, .limit_requests = 5,
		.has_remaining_requests = true, .remaining_requests = 3,
		.has_reset_requests = true, .reset_requests_ms = 1000,
	};
	limiter_observe(l, &r[0].w, &s, 800);
	limiter_release(l, &r[0].w, 800);
	ok(st_of(l).credit == 3 && !st_of(l).held, "the window still takes 3 (credit %ld)",
	   st_of(l).credit);
	int go = fill(l, &r[1], 10, 810);
	ok(go == 3 && st_of(l).queued == 7 && st_of(l).held,
	   "3 go, the rest wait for the window's reset (%d went)", go);
	limiter_tick(l, 1020);
	go = 0;
	for (int i = 1; i <= 10; i++)
		go += r[i].w.state == LIMITER_HOLDING;
	ok(go == 3 + 5, "at the reset the window's limit (5) more go, not the whole cap (%d)", go);
	ok(st_of(l).queued == 2 && st_of(l).held, "the last 2 wait for the next window");

	/* A reply about a window already over says nothing of the room. */
	struct limiter_signal old = {
		.ok = true, .has_remaining_requests = true, .remaining_requests = 0,
		.has_reset_requests = true, .reset_requests_ms = 100,
	};
	limiter_tick(l, 3000);     /* the next window */
	ok(st_of(l).queued == 0 && st_of(l).credit == 3, "the next window takes the last 2 of 5");
	limiter_observe(l, &r[1].w, &old, 3000);   /* r1 was granted at 810 */
	ok(!st_of(l).held && st_of(l).credit == 3,
	   "remaining 0 from a window that ended (810 + 100 ms) holds nothing");
	for (int i = 1; i <= 10; i++)
		limiter_release(l, &r[i].w, 3100);
	limiter_destroy(l);
}

static void
test_reset_counts_from_when_the_call_went_out(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(8, 50);
	struct req r[8];
	req_init(r, 8, l, order, &n);
	acq(&r[0], 0);
	/* granted at 0, on the wire at 150 (a slow connect): the window it
	 * speaks of resets 500 ms after 150, not after 0 */
	struct limiter_signal s = {
		.ok = true, .has_remaining_requests = true, .remaining_requests = 0,
		.has_reset_requests = true, .reset_requests_ms = 500, .sent_ms = 150,
	};
	limiter_observe(l, &r[0].w, &s, 400);
	ok(st_of(l).held && NEAR(st_of(l).hold_remaining_ms, 150 + 500 + 20 - 400),
	   "held until sent + reset + guard (%.0f ms left)", st_of(l).hold_remaining_ms);
	limiter_release(l, &r[0].w, 400);
	limiter_destroy(l);
}

static void
test_regrows_fast_while_the_window_has_room(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(8, 50);
	limiter_set_ceiling(l, 32);
	static struct req r[40];
	req_init(r, 40, l, order, &n);
	fill(l, r, 30, 0);
	limiter_observe(l, &r[0].w, &SIG_429, 1);
	ok(st_of(l).max_in_flight == 4, "a 429 halves 8 to 4");
	/* in flight 8 > cap 4: every slot taken; the window says 50 left */
	struct limiter_signal room = {
		.ok = true, .has_remaining_requests = true, .remaining_requests = 50,
		.has_reset_requests = true, .reset_requests_ms = 60000,
	};
	for (int i = 1; i < 4; i++)
		limiter_observe(l, &r[i].w, &room, 10);
	ok(st_of(l).max_in_flight == 7, "with room in the window: +1 per success after a 429 (%d)",
	   st_of(l).max_in_flight);
	for (int i = 4; i < 7; i++)
		limiter_observe(l, &r[i].w, &SIG_OK, 11);
	ok(st_of(l).max_in_flight == 7, "without a word on the window: additive again (%d)",
	   st_of(l).max_in_flight);
	for (int i = 0; i < 40; i++) {
		limiter_cancel(l, &r[i].w);
		limiter_release(l, &r[i].w, 20);
	}
	limiter_destroy(l);
}

static long pending_now;

static long
pending_probe(void *arg)
{
	return pending_now;
}

static void
test_pending_retries_take_window_room(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(20, 50);
	limiter_set_pending(l, pending_probe, NULL);
	struct req r[30];
	req_init(r, 30, l, order, &n);
	acq(&r[0], 0);
	acq(&r[1], 0);
	acq(&r[2], 0);
	/* Two of our calls were refused and wait to retry: the window's 5
	 * left are 3 for new calls (r1, r2 were granted after r0). */
	pending_now = 2;
	struct limiter_signal s = {
		.ok = true, .has_limit_requests = true, .limit_requests = 6,
		.has_remaining_requests = true, .remaining_requests = 7,
		.has_reset_requests = true, .reset_requests_ms = 1000,
	};
	limiter_observe(l, &r[0].w, &s, 100);
	limiter_release(l, &r[0].w, 100);
	ok(st_of(l).credit == 3, "remaining 7, 2 granted later, 2 retries pending: room 3 (%ld)",
	   st_of(l).credit);
	ok(fill(l, &r[3], 10, 110) == 3, "3 go before the reset");
	limiter_tick(l, 1020);
	int go = 0;
	for (int i = 3; i < 13; i++)
		go += r[i].w.state == LIMITER_HOLDING;
	ok(go == 3 + 4, "at the reset the limit (6) less the 2 retries go (%d)", go);
	pending_now = 0;
	for (int i = 0; i < 30; i++) {
		limiter_cancel(l, &r[i].w);
		limiter_release(l, &r[i].w, 1100);
	}
	limiter_destroy(l);
}

static void
test_tokens_window(void)
{
	int order[64], n = 0;
	limiter *l = limiter_create(20, 50);
	struct req r[20];
	req_init(r, 20, l, order, &n);
	acq(&r[0], 0);
	/* Calls of about 100 tokens; 250 tokens left: room for 2. */
	struct limiter_signal s = {
		.ok = true, .tokens = 100,
		.has_remaining_requests = true, .remaining_requests = 1000,
		.has_reset_requests = true, .reset_requests_ms = 60000,
		.has_remaining_tokens = true, .remaining_tokens = 250,
		.has_reset_tokens = true, .reset_tokens_ms = 700,
	};
	limiter_observe(l, &r[0].w, &s, 100);
	limiter_release(l, &r[0].w, 100);
	ok(st_of(l).credit == 2, "250 tokens left at 100 a call: room for 2 (%ld)", st_of(l).credit);
	ok(fill(l, &r[1], 5, 110) == 2 && st_of(l).held &&
	   NEAR(st_of(l).hold_remaining_ms, 610),
	   "2 go, then held until the tokens' reset (%.0f ms left)", st_of(l).hold_remaining_ms);
	for (int i = 0; i < 20; i++) {
		limiter_cancel(l, &r[i].w);
		limiter_release(l, &r[i].w, 120);
	}
	limiter_destroy(l);
}

/* ---- the background lane ------------------------------------------------ */

static enum limiter_verdict
acq_bg(struct req *r, double now)
{
	return limiter_acquire_background(r->l, &r->w, on_ready, r, now);
}

static void
test_background_share(void)
{
	int order[256], n = 0;
	limiter *l = limiter_create(8, 4);
	struct req fg[16], bg[16];
	req_init(fg, 16, l, order, &n);
	req_init(bg, 16, l, order, &n);
	for (int i = 0; i < 16; i++)
		bg[i].id = 100 + i;
	ok(st_of(l).bg_max_in_flight == 2, "default share 0.25 of 8: 2 background slots");
	ok(acq_bg(&bg[0], 0) == LIMITER_GO && acq_bg(&bg[1], 0) == LIMITER_GO,
	   "background calls go up to their share");
	ok(acq_bg(&bg[2], 0) == LIMITER_QUEUED, "the third waits though 6 slots are free");
	ok(acq(&fg[0], 0) == LIMITER_GO, "an interactive call takes a free slot at once");
	for (int i = 3; i < 6; i++)
		acq_bg(&bg[i], 1);
	ok(acq_bg(&bg[6], 1) == LIMITER_FULL && st_of(l).bg_rejected_total == 1 &&
	   st_of(l).rejected_total == 0, "the background queue is bounded, and counted apart");
	/* fill the cap with interactive calls and queue two more */
	for (int i = 1; i <= 7; i++)
		acq(&fg[i], 2);
	struct limiter_stats st = st_of(l);
	ok(st.in_flight == 8 && st.queued == 2 && st.bg_queued == 4 && st.bg_in_flight == 2,
	   "cap full: 8 out (2 background), 2 interactive and 4 background waiting");
	/* a background call ends: its slot goes to the interactive queue */
	limiter_release(l, &bg[0].w, 10);
	ok(n == 1 && order[0] == fg[6].id, "a freed background slot goes to the interactive head");
	limiter_release(l, &bg[1].w, 11);
	ok(n == 2 && order[1] == fg[7].id, "and the next one too");
	/* interactive queue empty: background may go again, within its share */
	limiter_release(l, &fg[0].w, 12);
	limiter_release(l, &fg[1].w, 12);
	limiter_release(l, &fg[2].w, 12);
	st = st_of(l);
	ok(n == 4 && order[2] == 102 && order[3] == 103 && st.bg_in_flight == 2,
	   "with no interactive waiter the background FIFO goes, in order, up to its share "
	   "(bg in flight %d)", st.bg_in_flight);
	ok(st.in_flight == 7, "one slot stays free for interactive calls");
	/* background never overtakes an interactive waiter, even with share 1 */
	limiter_set_background_share(l, 1.0);
	acq(&fg[8], 13);           /* takes the free slot */
	acq(&fg[9], 13);           /* waits */
	limiter_release(l, &bg[2].w, 14);
	ok(n == 5 && order[4] == fg[9].id, "share 1: still the interactive waiter first");
	limiter_release(l, &fg[3].w, 15);
	ok(n == 6 && order[5] == 104, "then the background head");
	limiter_set_background_share(l, 0);
	ok(st_of(l).bg_max_in_flight == 0, "share 0: no background slot");
	for (int i = 0; i < 16; i++) {
		limiter_cancel(l, &fg[i].w);
		limiter_cancel(l, &bg[i].w);
	}
	for (int i = 0; i < 16; i++) {
		limiter_release(l, &fg[i].w, 20);
		limiter_release(l, &bg[i].w, 20);
	}
	st = st_of(l);
	ok(st.in_flight == 0 && st.queued == 0 && st.bg_queued == 0 && st.bg_in_flight == 0,
	   "counts balanced after both lanes drain");
	ok(acq_bg(&bg[0], 30) == LIMITER_QUEUED, "share 0: a background call waits");
	limiter_set_background_share(l, 0.5);
	acq(&fg[0], 32);
	limiter_release(l, &fg[0].w, 33);
	ok(bg[0].w.state == LIMITER_HOLDING, "a share raised later lets it go at the next hand-over");
	limiter_release(l, &bg[0].w, 34);
	limiter_destroy(l);
}

static void
test_background_share_follows_cap(void)
{
	int order[256], n = 0;
	limiter *l = limiter_create(16, 50);
	struct req bg[16];
	req_init(bg, 16, l, order, &n);
	ok(fill(l, bg, 0, 0) == 0, "nothing yet");
	int go = 0;
	for (int i = 0; i < 8; i++)
		go += acq_bg(&bg[i], 0) == LIMITER_GO;
	ok(go == 4, "ceil(0.25 x 16) = 4 background slots (%d)", go);
	limiter_observe(l, &bg[0].w, &SIG_429, 1);
	ok(st_of(l).max_in_flight == 8 && st_of(l).bg_max_in_flight == 2,
	   "the cap halves, so does the background share (%d)", st_of(l).bg_max_in_flight);
	limiter_release(l, &bg[0].w, 2);
	limiter_release(l, &bg[1].w, 2);
	ok(st_of(l).bg_in_flight == 2 && n == 0,
	   "with 2 out, none of the waiting background calls goes");
	limiter_release(l, &bg[2].w, 3);
	ok(n == 1, "below the share, the next one does");
	for (int i = 0; i < 16; i++) {
		limiter_cancel(l, &bg[i].w);
		limiter_release(l, &bg[i].w, 4);
	}
	limiter_destroy(l);
}

int
main(void)
{
	test_go_queue_full();
	test_fifo_order();
	test_newcomer_does_not_overtake();
	test_release_empty_queue_and_misuse();
	test_cancel();
	test_reentrant_callbacks();
	test_no_queue();
	test_averages_and_retry_after();
	test_shrinks_on_429_once_per_round();
	test_grows_on_success();
	test_no_growth_while_held();
	test_ceiling_below_start();
	test_holds_until_reset();
	test_credit_and_refill();
	test_tokens_window();
	test_pending_retries_take_window_room();
	test_reset_counts_from_when_the_call_went_out();
	test_regrows_fast_while_the_window_has_room();
	test_background_share();
	test_background_share_follows_cap();
	return tap_done();
}
