/*
 * limiter — counting semaphore with an intrusive doubly linked FIFO.
 *
 * Invariant outside dispatch(): a slot is free only if nobody is queued.
 * limiter_release() breaks it for a moment and dispatch() restores it by
 * granting slots to the queue head until the slots or the queue run out. The
 * `dispatching` flag turns re-entrant releases from inside a callback into
 * one more turn of the outer loop instead of a deeper call.
 *
 * The averages are exponential moving averages (weight 1/5 for the newest
 * sample, the first sample taken as is): recent enough to follow a slowing
 * upstream, smooth enough not to jump on one slow call.
 */
#include "limiter.h"
#include "util.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#define EWMA_WEIGHT        0.2
#define RETRY_AFTER_MAX_S  60

struct limiter {
	int max_in_flight, max_queue;
	int in_flight, queued;
	limiter_waiter *head, *tail;
	bool dispatching;
	long acquired, queued_total, rejected, cancelled;
	double avg_hold_ms, avg_wait_ms;
	long hold_samples, wait_samples;
};

limiter *
limiter_create(int max_in_flight, int max_queue)
{
	limiter *l = xcalloc(1, sizeof *l);
	l->max_in_flight = max_in_flight < 1 ? 1 : max_in_flight;
	l->max_queue = max_queue < 0 ? 0 : max_queue;
	return l;
}

static void
queue_unlink(limiter *l, limiter_waiter *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		l->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		l->tail = w->prev;
	w->prev = w->next = NULL;
	w->state = LIMITER_IDLE;
	l->queued--;
}

static void
queue_push(limiter *l, limiter_waiter *w)
{
	w->next = NULL;
	w->prev = l->tail;
	if (l->tail)
		l->tail->next = w;
	else
		l->head = w;
	l->tail = w;
	w->state = LIMITER_WAITING;
	l->queued++;
}

void
limiter_destroy(limiter *l)
{
	if (!l)
		return;
	while (l->head)
		queue_unlink(l, l->head);
	free(l);
}

static void
ewma(double *avg, long *samples, double v)
{
	if (v < 0)
		v = 0;
	*avg = (*samples)++ ? *avg + EWMA_WEIGHT * (v - *avg) : v;
}

static void
grant(limiter *l, limiter_waiter *w, double now_ms)
{
	w->state = LIMITER_HOLDING;
	w->since_ms = now_ms;
	l->in_flight++;
	l->acquired++;
}

/* Hands free slots to the oldest waiters. Callbacks may re-enter. */
static void
dispatch(limiter *l, double now_ms)
{
	if (l->dispatching)
		return;
	l->dispatching = true;
	while (l->in_flight < l->max_in_flight && l->head) {
		limiter_waiter *w = l->head;
		ewma(&l->avg_wait_ms, &l->wait_samples, now_ms - w->since_ms);
		queue_unlink(l, w);
		grant(l, w, now_ms);
		w->cb(w->arg);
	}
	l->dispatching = false;
}

enum limiter_verdict
limiter_acquire(limiter *l, limiter_waiter *w, limiter_ready_cb *cb, void *arg,
                double now_ms)
{
	assert(w->state == LIMITER_IDLE);
	w->cb = cb;
	w->arg = arg;
	w->prev = w->next = NULL;
	if (l->in_flight < l->max_in_flight && !l->head) {
		grant(l, w, now_ms);
		return LIMITER_GO;
	}
	if (l->queued >= l->max_queue) {
		l->rejected++;
		return LIMITER_FULL;
	}
	assert(cb != NULL);
	w->since_ms = now_ms;
	queue_push(l, w);
	l->queued_total++;
	return LIMITER_QUEUED;
}

void
limiter_release(limiter *l, limiter_waiter *w, double now_ms)
{
	if (w->state != LIMITER_HOLDING)
		return;
	w->state = LIMITER_IDLE;
	l->in_flight--;
	ewma(&l->avg_hold_ms, &l->hold_samples, now_ms - w->since_ms);
	dispatch(l, now_ms);
}

void
limiter_cancel(limiter *l, limiter_waiter *w)
{
	if (w->state != LIMITER_WAITING)
		return;
	queue_unlink(l, w);
	l->cancelled++;
}

int
limiter_retry_after_s(const limiter *l)
{
	if (!l->hold_samples)
		return 1;
	double ms = l->avg_hold_ms * (l->queued + 1) / l->max_in_flight;
	double s = ceil(ms / 1000.0);
	if (!(s >= 1))
		return 1;
	return s > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : (int)s;
}

void
limiter_stats(const limiter *l, struct limiter_stats *out)
{
	*out = (struct limiter_stats){
		.in_flight = l->in_flight,
		.max_in_flight = l->max_in_flight,
		.queued = l->queued,
		.max_queue = l->max_queue,
		.acquired_total = l->acquired,
		.queued_total = l->queued_total,
		.rejected_total = l->rejected,
		.cancelled_total = l->cancelled,
		.avg_hold_ms = l->avg_hold_ms,
		.avg_wait_ms = l->avg_wait_ms,
	};
}
