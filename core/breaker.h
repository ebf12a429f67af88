/*
 * breaker — a circuit breaker in front of the upstream model.
 *
 * Owns its state, counters and a copy of its name; nothing else. Time is
 * passed in (monotonic ms), so it does no I/O and has no clock of its own.
 *
 * States:
 *   closed     every request is allowed. failure_threshold consecutive
 *              failures open it (any success resets the run).
 *   open       nothing is allowed for the open period. The first period is
 *              open_ms; it doubles each time a half-open trial fails, up to
 *              max_open_ms, and goes back to open_ms once the breaker closes.
 *   half_open  when the open period ends. Up to half_open_probes trial
 *              requests are allowed at a time; the first verdict decides:
 *              success closes, failure re-opens for the doubled period.
 *
 * Consecutive failures, not a failure ratio: the breaker is for an upstream
 * that is down or unreachable, where every call fails; the retry policy
 * already deals with an upstream that fails some calls. A run of failures
 * also needs no window and no minimum volume.
 *
 * How the caller uses it:
 *
 *   if (!breaker_allow(b, now))
 *       reply 503, Retry-After: ceil(breaker_retry_after_ms(b, now) / 1000)
 *   ... upstream call ...
 *   breaker_record(b, success, now);   exactly once per allowed call
 *
 * Which outcomes count as failures is the caller's decision. rapport counts
 * upstream 5xx, timeouts and connection errors; not 4xx, whose cause is the
 * request or the account, not the upstream's health. A call that ends without
 * a verdict (our client went away and the call was cancelled) records
 * nothing. A trial that never records does not keep the breaker half-open
 * forever: after probe_timeout_ms with no verdict, new trials are allowed.
 * Results that arrive while the breaker is open (calls allowed before it
 * opened) are counted in the stats but change nothing; one that arrives when
 * half-open is a verdict like a trial's, being news of the upstream as fresh.
 *
 * State changes are logged: open at warn, half_open and closed at info.
 */
#ifndef RAPPORT_BREAKER_H
#define RAPPORT_BREAKER_H

#include <stdbool.h>

typedef struct breaker breaker;

enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };

/* Zero (or negative) fields take the defaults in brackets. */
struct breaker_config {
	const char *name;          /* in log lines ["upstream"] */
	int failure_threshold;     /* consecutive failures that open it [5] */
	double open_ms;            /* first open period [5000] */
	double max_open_ms;        /* cap on the doubled period [120000; >= open_ms] */
	int half_open_probes;      /* trial requests at a time when half-open [1] */
	double probe_timeout_ms;   /* a trial with no verdict this long is presumed
	                              lost [30000; set it near the call deadline] */
};

struct breaker_stats {
	enum breaker_state state;
	double state_since_ms;     /* when the current state began */
	double open_until_ms;      /* end of the current or last open period */
	double next_open_ms;       /* the period the next opening would last */
	int consecutive_failures;
	int probes_in_flight;
	long opens_total;          /* closed or half-open -> open */
	long rejected_total;       /* breaker_allow() == false */
	long successes_total, failures_total;
};

/* cfg may be NULL for all defaults; the name is copied. */
breaker *breaker_create(const struct breaker_config *cfg);
void breaker_destroy(breaker *b);

/* False while open, and while half-open with every trial taken. */
bool breaker_allow(breaker *b, double now_ms);
void breaker_record(breaker *b, bool success, double now_ms);

/* The state at now_ms (open turns half_open when its period ends). */
/* An allowed call that will never get a verdict (its caller went away and
 * cancelled it): while half-open, its trial slot is handed back at once
 * instead of after probe_timeout_ms. */
void breaker_forget(breaker *b, double now_ms);
enum breaker_state breaker_state(const breaker *b, double now_ms);
/* "closed", "open", "half_open". */
const char *breaker_state_name(enum breaker_state s);
/* How long a rejected client should wait: the rest of the open period; 1000
 * while half-open with every trial taken (a verdict is due); 0 when a
 * request would be allowed now. */
double breaker_retry_after_ms(const breaker *b, double now_ms);
void breaker_stats(const breaker *b, double now_ms, struct breaker_stats *out);

#endif
