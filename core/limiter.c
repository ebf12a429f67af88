/*
 * limiter — counting semaphore with an adaptive count and two intrusive
 * doubly linked FIFOs (interactive, background).
 *
 * Invariant outside dispatch(): a slot is free only if nobody is queued who
 * may take it (the hold, the cap and the background share decide who may).
 * limiter_release(), limiter_observe() and limiter_tick() break it for a
 * moment and dispatch() restores it by granting slots to the interactive
 * head, then to the background head, until the slots or the queues run out.
 * The `dispatching` flag turns re-entrant releases from inside a callback
 * into one more turn of the outer loop instead of a deeper call.
 *
 * The cap is the congestion window, in calls. Why these rules:
 *   - decrease ×0.5 once per round: a burst of 429s from one provider window
 *     all come from calls sent under the same cap, so they are one signal,
 *     not one per call (TCP halves once per window of loss, for the same
 *     reason). A round is "calls granted since the last decrease".
 *   - growth only while the cap binds (every slot taken when the call is
 *     answered): successes under a cap nobody reaches, or with slots left
 *     free by a hold, say nothing about the provider's room (TCP's
 *     congestion window validation, RFC 7661).
 *   - slow start until the first 429 (+1 per success, so it doubles per
 *     round), then +1 per cap's worth of successes: a burst bigger than the
 *     start cap reaches its size in one round when the provider has room,
 *     and after a 429 the cap creeps back instead of overshooting again.
 *   - the provider's window: a reply's remaining count was taken when the
 *     provider admitted that call, so it misses only our calls granted
 *     after it; less those, it is what the window still takes before its
 *     reset (also counted from the admission). None left: hold new calls
 *     until the reset. Some left: that many more grants (the credit), then
 *     hold until the reset. At the reset the credit becomes the window's
 *     limit (x-ratelimit-limit-*), until a reply from the new window says
 *     more: without that, the first moment of every window would go to the
 *     cap alone, and a cap above the limit would be refused there each
 *     time. A reply about a window already over says nothing of the room.
 *     A window that still has room paces the calls by itself, so while
 *     replies say so the cap regrows at slow start's pace after a 429;
 *     without such replies, TCP's +1 per cap's worth.
 *     Tokens count as calls at the average tokens per call seen so far.
 *
 * The averages are exponential moving averages (weight 1/5 for the newest
 * sample, the first sample taken as is): recent enough to follow a slowing
 * upstream, smooth enough not to jump on one slow call.
 */
#include "limiter.h"
#include "util.h"

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

#define EWMA_WEIGHT        0.2
#define RETRY_AFTER_MAX_S  60
#define DECREASE_DIVISOR   2
#define HOLD_MAX_MS        60000.0  /* never believe a longer reset */
#define RESET_UNKNOWN_MS   1000.0   /* "none left" without a reset header */
/* Our clock starts a call's window before the provider admits it (the
 * loop tick, the request on the wire): a reset counted from the grant is a
 * little early, and a call sent right then would land in the old window. */
#define RESET_GUARD_MS     20.0
#define BG_SHARE_DEFAULT   0.25

struct lane {
	limiter_waiter *head, *tail;
	int queued, in_flight;
};

struct limiter {
	int max_queue;
	int cap_start, cap_ceiling;
	int cap;                      /* within [1, cap_ceiling] */
	int ssthresh;                 /* slow start below it */
	int acked;                    /* successes toward the next +1 above it */
	int cap_min_seen, cap_max_seen;
	struct lane fg, bg;
	double bg_share;
	bool dispatching;
	double now_ms;                /* latest time seen, for the hints */
	/* The provider's window. */
	double hold_until_ms;         /* no grant before this */
	long credit;                  /* grants left before credit_until_ms; -1 unknown */
	double credit_until_ms;       /* when that window ends; INFINITY: until told */
	long window_calls;            /* the window's limit in calls, -1 unknown */
	long grants;                  /* grants so far, both lanes (waiter->grant_seq) */
	double last_decrease_ms;      /* calls granted before it share its round */
	double avg_tokens;
	long token_samples;
	limiter_wake_cb *wake;
	void *wake_arg;
	limiter_pending_cb *pending;
	void *pending_arg;
	double wake_at_ms;            /* the hold end the wake was asked for */
	/* Counters. */
	long acquired, queued_total, rejected, cancelled;
	long decreases, increases, throttled, holds;
	long bg_acquired, bg_rejected;
	double avg_hold_ms, avg_wait_ms;
	long hold_samples, wait_samples;
};

static int
cap_slots(const limiter *l)
{
	return l->cap;
}

static int
bg_slots(const limiter *l)
{
	return (int)ceil(l->bg_share * cap_slots(l) - 1e-9);
}

static void
cap_seen(limiter *l)
{
	int c = cap_slots(l);
	if (c < l->cap_min_seen)
		l->cap_min_seen = c;
	if (c > l->cap_max_seen)
		l->cap_max_seen = c;
}

limiter *
limiter_create(int max_in_flight, int max_queue)
{
	limiter *l = xcalloc(1, sizeof *l);
	l->cap_start = l->cap_ceiling = max_in_flight < 1 ? 1 : max_in_flight;
	l->cap = l->cap_start;
	l->ssthresh = INT_MAX;
	l->cap_min_seen = l->cap_max_seen = l->cap_start;
	l->max_queue = max_queue < 0 ? 0 : max_queue;
	l->bg_share = BG_SHARE_DEFAULT;
	l->credit = l->window_calls = -1;
	l->credit_until_ms = INFINITY;
	l->last_decrease_ms = -INFINITY;
	l->hold_until_ms = -INFINITY;
	l->wake_at_ms = -INFINITY;
	return l;
}

void
limiter_set_ceiling(limiter *l, int ceiling)
{
	l->cap_ceiling = ceiling < l->cap_start ? l->cap_start : ceiling;
	if (l->cap > l->cap_ceiling)
		l->cap = l->cap_ceiling;
}

void
limiter_set_background_share(limiter *l, double share)
{
	l->bg_share = !(share >= 0) ? 0 : share > 1 ? 1 : share;
}

void
limiter_set_pending(limiter *l, limiter_pending_cb *cb, void *arg)
{
	l->pending = cb;
	l->pending_arg = arg;
}

static long
pending(const limiter *l)
{
	long n = l->pending ? l->pending(l->pending_arg) : 0;
	return n > 0 ? n : 0;
}

void
limiter_set_wake(limiter *l, limiter_wake_cb *cb, void *arg)
{
	l->wake = cb;
	l->wake_arg = arg;
}

static struct lane *
lane_of(limiter *l, const limiter_waiter *w)
{
	return w->background ? &l->bg : &l->fg;
}

static void
queue_unlink(limiter *l, limiter_waiter *w)
{
	struct lane *q = lane_of(l, w);
	if (w->prev)
		w->prev->next = w->next;
	else
		q->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		q->tail = w->prev;
	w->prev = w->next = NULL;
	w->state = LIMITER_IDLE;
	q->queued--;
}

static void
queue_push(limiter *l, limiter_waiter *w)
{
	struct lane *q = lane_of(l, w);
	w->next = NULL;
	w->prev = q->tail;
	if (q->tail)
		q->tail->next = w;
	else
		q->head = w;
	q->tail = w;
	w->state = LIMITER_WAITING;
	q->queued++;
}

void
limiter_destroy(limiter *l)
{
	if (!l)
		return;
	while (l->fg.head)
		queue_unlink(l, l->fg.head);
	while (l->bg.head)
		queue_unlink(l, l->bg.head);
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
see_time(limiter *l, double now_ms)
{
	if (now_ms > l->now_ms)
		l->now_ms = now_ms;
}

static bool
held(const limiter *l, double now_ms)
{
	return now_ms < l->hold_until_ms;
}

static void arm_wake(limiter *l, double now_ms);

/* No grant before until_ms (a later hold wins over an earlier one). */
static void
hold(limiter *l, double now_ms, double until_ms)
{
	if (until_ms > now_ms + HOLD_MAX_MS)
		until_ms = now_ms + HOLD_MAX_MS;
	if (until_ms <= l->hold_until_ms || until_ms <= now_ms)
		return;
	if (!held(l, now_ms))
		l->holds++;
	l->hold_until_ms = until_ms;
	arm_wake(l, now_ms);
}

static int
total_in_flight(const limiter *l)
{
	return l->fg.in_flight + l->bg.in_flight;
}

static void window_full(limiter *l, double now_ms);

/* The window the credit counted for is over (or its hold is): a new one
 * has the limit's room, as far as we know, less the retries about to go
 * into it. */
static void
window_turn(limiter *l, double now_ms)
{
	if (now_ms >= l->credit_until_ms || (l->credit == 0 && !held(l, now_ms))) {
		l->credit_until_ms = INFINITY;
		l->credit = -1;
		if (l->window_calls > 0) {
			l->credit = l->window_calls - pending(l);
			if (l->credit <= 0)
				window_full(l, now_ms);
		}
	}
}

/* The window has no room left for us: hold until it ends (a second when
 * nobody said when). */
static void
window_full(limiter *l, double now_ms)
{
	l->credit = 0;
	if (l->credit_until_ms == INFINITY)
		l->credit_until_ms = now_ms + RESET_UNKNOWN_MS;
	hold(l, now_ms, l->credit_until_ms);
}

static void
grant(limiter *l, limiter_waiter *w, double now_ms)
{
	w->state = LIMITER_HOLDING;
	w->since_ms = now_ms;
	w->grant_seq = l->grants++;
	lane_of(l, w)->in_flight++;
	if (w->background)
		l->bg_acquired++;
	else
		l->acquired++;
	if (l->credit > 0 && --l->credit == 0)
		window_full(l, now_ms);
}

/* Whether a slot may go out now, to the interactive lane or the other
 * (window_turn() first). */
static bool
may_grant(const limiter *l, bool background, double now_ms)
{
	if (held(l, now_ms) || l->credit == 0 || total_in_flight(l) >= cap_slots(l))
		return false;
	return !background || (!l->fg.head && l->bg.in_flight < bg_slots(l));
}

/* Asks the owner for a tick at the end of a hold, once per hold end: the
 * waiters go then, and the stats see the hold end even if nobody waits. */
static void
arm_wake(limiter *l, double now_ms)
{
	if (!l->wake || !held(l, now_ms) || l->wake_at_ms == l->hold_until_ms)
		return;
	l->wake_at_ms = l->hold_until_ms;
	l->wake(l->wake_arg, l->hold_until_ms - now_ms);
}

/* Hands free slots to the oldest waiters, interactive first. Callbacks may
 * re-enter. */
static void
dispatch(limiter *l, double now_ms)
{
	if (l->dispatching)
		return;
	l->dispatching = true;
	window_turn(l, now_ms);
	for (;;) {
		limiter_waiter *w;
		if (l->fg.head && may_grant(l, false, now_ms))
			w = l->fg.head;
		else if (l->bg.head && may_grant(l, true, now_ms))
			w = l->bg.head;
		else
			break;
		ewma(&l->avg_wait_ms, &l->wait_samples, now_ms - w->since_ms);
		queue_unlink(l, w);
		grant(l, w, now_ms);
		w->cb(w->arg);
	}
	l->dispatching = false;
	arm_wake(l, now_ms);
}

static enum limiter_verdict
acquire(limiter *l, limiter_waiter *w, bool background, limiter_ready_cb *cb, void *arg,
        double now_ms)
{
	assert(w->state == LIMITER_IDLE);
	see_time(l, now_ms);
	w->cb = cb;
	w->arg = arg;
	w->prev = w->next = NULL;
	w->background = background;
	struct lane *q = lane_of(l, w);
	window_turn(l, now_ms);
	if (!q->head && may_grant(l, background, now_ms)) {
		grant(l, w, now_ms);
		return LIMITER_GO;
	}
	if (q->queued >= l->max_queue) {
		if (background)
			l->bg_rejected++;
		else
			l->rejected++;
		return LIMITER_FULL;
	}
	assert(cb != NULL);
	w->since_ms = now_ms;
	queue_push(l, w);
	if (!background)
		l->queued_total++;
	return LIMITER_QUEUED;
}

enum limiter_verdict
limiter_acquire(limiter *l, limiter_waiter *w, limiter_ready_cb *cb, void *arg, double now_ms)
{
	return acquire(l, w, false, cb, arg, now_ms);
}

enum limiter_verdict
limiter_acquire_background(limiter *l, limiter_waiter *w, limiter_ready_cb *cb, void *arg,
                           double now_ms)
{
	return acquire(l, w, true, cb, arg, now_ms);
}

/* Calls per window the limits allow, or -1 when they say nothing. */
static long
window_limit(const limiter *l, const struct limiter_signal *s)
{
	long calls = -1;
	if (s->has_limit_requests && s->limit_requests > 0)
		calls = s->limit_requests;
	if (s->has_limit_tokens && s->limit_tokens > 0) {
		double per_call = l->avg_tokens >= 1 ? l->avg_tokens : 1;
		long t = (long)floor((double)s->limit_tokens / per_call);
		if (t < 1)
			t = 1;
		if (calls < 0 || t < calls)
			calls = t;
	}
	return calls;
}

/* The room one reply says its window has left for new calls, and when that
 * window ends (from base_ms, the call's admission); false when it says
 * nothing. `later` are our calls granted after this one, which the
 * provider had not counted yet. */
static bool
window_room(const limiter *l, const struct limiter_signal *s, long later, double base_ms,
            long *room, double *reset_at_ms)
{
	bool known = false;
	if (s->has_remaining_requests) {
		*room = s->remaining_requests - later;
		*reset_at_ms = base_ms + RESET_GUARD_MS +
		               (s->has_reset_requests ? s->reset_requests_ms : RESET_UNKNOWN_MS);
		known = true;
	}
	if (s->has_remaining_tokens) {
		double per_call = l->avg_tokens >= 1 ? l->avg_tokens : 1;
		long r = (long)floor((double)s->remaining_tokens / per_call) - later;
		double at = base_ms + RESET_GUARD_MS +
		            (s->has_reset_tokens ? s->reset_tokens_ms : RESET_UNKNOWN_MS);
		if (!known || r < *room) {
			*room = r;
			*reset_at_ms = at;
		}
		known = true;
	}
	return known;
}

void
limiter_observe(limiter *l, const limiter_waiter *w, const struct limiter_signal *s,
                double now_ms)
{
	see_time(l, now_ms);
	bool mine = w && w->state == LIMITER_HOLDING;
	if (s->ok && s->tokens > 0)
		ewma(&l->avg_tokens, &l->token_samples, (double)s->tokens);

	/* The provider's window. */
	long calls = window_limit(l, s);
	if (calls > 0)
		l->window_calls = calls;
	if (s->throttled > 0 && s->has_retry_after)
		hold(l, now_ms, now_ms + s->retry_after_ms);
	long later = (mine ? l->grants - w->grant_seq - 1 : total_in_flight(l)) + pending(l);
	long room = 0;
	double reset_at = 0;
	bool window_has_room = false;
	double base = s->sent_ms > 0 && s->sent_ms <= now_ms ? s->sent_ms
	              : mine ? w->since_ms : now_ms;
	if (window_room(l, s, later, base, &room, &reset_at) &&
	    reset_at > now_ms) {
		/* The newest room replaces the older: it counts what went out
		 * since. Every reset is a little early (see RESET_GUARD_MS), a
		 * later estimate of the same window's less so: keep the latest. */
		if (l->credit_until_ms == INFINITY || reset_at > l->credit_until_ms)
			l->credit_until_ms = reset_at;
		if (room <= 0)
			window_full(l, now_ms);
		else
			l->credit = room;
		window_has_room = room > 0;
	}

	/* The cap. */
	l->throttled += s->throttled;
	if (s->throttled > 0) {
		if (!mine || w->since_ms >= l->last_decrease_ms) {
			l->cap = l->cap / DECREASE_DIVISOR > 1 ? l->cap / DECREASE_DIVISOR : 1;
			l->ssthresh = l->cap;
			l->acked = 0;
			l->last_decrease_ms = now_ms;
			l->decreases++;
		}
	} else if (s->ok) {
		/* w still counts: every slot was taken when it was answered.
		 * Waiters kept by a hold say nothing about the cap. A window
		 * that still has room paces the calls itself: then the cap
		 * regrows at slow start's pace even after a 429. */
		bool binding = total_in_flight(l) >= cap_slots(l);
		if (binding && l->cap < l->cap_ceiling) {
			if (l->cap < l->ssthresh || window_has_room ||
			    ++l->acked >= cap_slots(l)) {
				l->cap += 1;
				l->acked = 0;
				l->increases++;
			}
		}
	}
	cap_seen(l);

	/* A bigger cap or an ended hold may let waiters go (not w: it holds). */
	dispatch(l, now_ms);
}

void
limiter_release(limiter *l, limiter_waiter *w, double now_ms)
{
	if (w->state != LIMITER_HOLDING)
		return;
	see_time(l, now_ms);
	w->state = LIMITER_IDLE;
	lane_of(l, w)->in_flight--;
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

void
limiter_tick(limiter *l, double now_ms)
{
	see_time(l, now_ms);
	l->wake_at_ms = -INFINITY;  /* this wake is spent: a new hold needs one */
	dispatch(l, now_ms);
}

int
limiter_retry_after_s(const limiter *l)
{
	double hold_ms = held(l, l->now_ms) ? l->hold_until_ms - l->now_ms : 0;
	if (!l->hold_samples && hold_ms <= 0)
		return 1;
	double ms = l->avg_hold_ms * (l->fg.queued + 1) / cap_slots(l) + hold_ms;
	double s = ceil(ms / 1000.0);
	if (!(s >= 1))
		return 1;
	return s > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : (int)s;
}

void
limiter_stats(const limiter *l, struct limiter_stats *out)
{
	bool h = held(l, l->now_ms);
	*out = (struct limiter_stats){
		.in_flight = total_in_flight(l),
		.max_in_flight = cap_slots(l),
		.queued = l->fg.queued,
		.max_queue = l->max_queue,
		.acquired_total = l->acquired,
		.queued_total = l->queued_total,
		.rejected_total = l->rejected,
		.cancelled_total = l->cancelled,
		.avg_hold_ms = l->avg_hold_ms,
		.avg_wait_ms = l->avg_wait_ms,
		.cap_start = l->cap_start,
		.cap_ceiling = l->cap_ceiling,
		.cap_min_seen = l->cap_min_seen,
		.cap_max_seen = l->cap_max_seen,
		.decreases_total = l->decreases,
		.increases_total = l->increases,
		.throttled_total = l->throttled,
		.held = h,
		.hold_remaining_ms = h ? l->hold_until_ms - l->now_ms : 0,
		.holds_total = l->holds,
		.credit = l->now_ms < l->credit_until_ms ? l->credit : l->window_calls,
		.bg_in_flight = l->bg.in_flight,
		.bg_max_in_flight = bg_slots(l),
		.bg_queued = l->bg.queued,
		.bg_acquired_total = l->bg_acquired,
		.bg_rejected_total = l->bg_rejected,
	};
}
