/*
 * test_limiter — the in-flight cap: GO up to the cap, FIFO hand-over on
 * release, FULL when the queue is full, cancel, re-entrant callbacks, the
 * averages and the Retry-After hint.
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
	return tap_done();
}
