/*
 * test_breaker — the circuit breaker with explicit times: opening after a
 * run of failures, half-open after the period, trial limits, lost trials,
 * backoff doubling and its cap, retry-after and the stats.
 */
#include "breaker.h"
#include "log.h"
#include "tap.h"

#include <string.h>

static const struct breaker_config cfg = {
	.name = "test",
	.failure_threshold = 3,
	.open_ms = 1000,
	.max_open_ms = 5000,
	.half_open_probes = 2,
	.probe_timeout_ms = 10000,
};

static void
fail_n(breaker *b, int n, double now)
{
	for (int i = 0; i < n; i++)
		breaker_record(b, false, now);
}

static void
test_names_and_defaults(void)
{
	ok(strcmp(breaker_state_name(BREAKER_CLOSED), "closed") == 0 &&
	   strcmp(breaker_state_name(BREAKER_OPEN), "open") == 0 &&
	   strcmp(breaker_state_name(BREAKER_HALF_OPEN), "half_open") == 0,
	   "state names: closed, open, half_open");
	ok(strcmp(breaker_state_name((enum breaker_state)7), "unknown") == 0, "an out-of-range state is unknown");

	breaker *b = breaker_create(NULL);
	struct breaker_stats st;
	breaker_stats(b, 0, &st);
	ok(st.state == BREAKER_CLOSED && st.next_open_ms == 5000, "defaults: closed, first open period 5 s");
	fail_n(b, 4, 0);
	ok(breaker_state(b, 0) == BREAKER_CLOSED, "default threshold: 4 failures keep it closed");
	fail_n(b, 1, 0);
	ok(breaker_state(b, 0) == BREAKER_OPEN, "and the 5th opens it");
	ok(breaker_state(b, 4999) == BREAKER_OPEN && breaker_state(b, 5000) == BREAKER_HALF_OPEN,
	   "default open period 5000 ms");
	breaker_destroy(b);

	struct breaker_config c = { .open_ms = 10000, .max_open_ms = 2000 };
	b = breaker_create(&c);
	fail_n(b, 5, 0);
	breaker_stats(b, 0, &st);
	ok(st.next_open_ms == 10000, "max_open_ms below open_ms is raised to open_ms");
	breaker_destroy(b);
}

static void
test_closed_to_open(void)
{
	breaker *b = breaker_create(&cfg);
	ok(breaker_allow(b, 0) && breaker_state(b, 0) == BREAKER_CLOSED, "a new breaker is closed and allows");
	ok(breaker_retry_after_ms(b, 0) == 0, "retry-after is 0 when closed");
	fail_n(b, 2, 10);
	breaker_record(b, true, 11);
	fail_n(b, 2, 12);
	ok(breaker_state(b, 12) == BREAKER_CLOSED, "a success resets the run: 2 + 2 failures stay closed");
	struct breaker_stats st;
	breaker_stats(b, 12, &st);
	ok(st.consecutive_failures == 2 && st.failures_total == 4 && st.successes_total == 1,
	   "stats: 2 consecutive, 4 failures, 1 success");
	breaker_record(b, false, 100);
	ok(breaker_state(b, 100) == BREAKER_OPEN, "the 3rd consecutive failure opens it");
	breaker_stats(b, 100, &st);
	ok(st.opens_total == 1 && st.state_since_ms == 100 && st.open_until_ms == 1100,
	   "stats: 1 open, since 100, until 1100");
	ok(!breaker_allow(b, 100) && !breaker_allow(b, 1099), "nothing allowed while open");
	ok(breaker_retry_after_ms(b, 100) == 1000 && breaker_retry_after_ms(b, 600) == 500,
	   "retry-after is the rest of the open period");
	breaker_stats(b, 1099, &st);
	ok(st.rejected_total == 2, "rejections counted (%ld)", st.rejected_total);

	/* late results of calls allowed before it opened */
	breaker_record(b, true, 200);
	breaker_record(b, false, 300);
	breaker_stats(b, 300, &st);
	ok(st.state == BREAKER_OPEN && st.open_until_ms == 1100 && st.opens_total == 1,
	   "results while open change nothing (no close, no extension)");
	ok(st.successes_total == 2 && st.failures_total == 6, "but are counted");
	breaker_destroy(b);
}

static void
test_half_open_probes(void)
{
	breaker *b = breaker_create(&cfg);
	fail_n(b, 3, 0);
	ok(breaker_state(b, 999) == BREAKER_OPEN, "open until the period ends");
	ok(breaker_state(b, 1000) == BREAKER_HALF_OPEN, "half-open at the end of the period (read-only view)");
	ok(breaker_retry_after_ms(b, 1000) == 0, "retry-after 0 once a trial may go");
	struct breaker_stats st;
	breaker_stats(b, 1500, &st);
	ok(st.state == BREAKER_HALF_OPEN && st.state_since_ms == 1000 && st.probes_in_flight == 0,
	   "stats before any allow: half-open since 1000, no trials");
	ok(breaker_allow(b, 1500), "first trial allowed");
	ok(breaker_allow(b, 1501), "second trial allowed (half_open_probes = 2)");
	ok(!breaker_allow(b, 1502), "a third is refused while two are out");
	ok(breaker_retry_after_ms(b, 1502) == 1000, "retry-after hints 1 s while the trials are out");
	breaker_stats(b, 1502, &st);
	ok(st.probes_in_flight == 2 && st.state_since_ms == 1000 && st.rejected_total == 1,
	   "stats: 2 trials out, half-open since 1000, 1 rejected");
	breaker_record(b, true, 1600);
	ok(breaker_state(b, 1600) == BREAKER_CLOSED && breaker_allow(b, 1600),
	   "the first successful trial closes it");
	breaker_record(b, false, 1700);
	breaker_stats(b, 1700, &st);
	ok(st.state == BREAKER_CLOSED && st.consecutive_failures == 1,
	   "the other trial's failure, arriving closed, starts a new run only");
	breaker_destroy(b);
}

static void
test_backoff_doubling_and_cap(void)
{
	breaker *b = breaker_create(&cfg);
	double t = 0;
	fail_n(b, 3, t);                          /* open 1000 */
	double expect[] = { 2000, 4000, 5000, 5000 };
	struct breaker_stats st;
	breaker_stats(b, t, &st);
	ok(st.open_until_ms == 1000 && st.next_open_ms == 2000, "first period 1000, next 2000");
	for (int i = 0; i < 4; i++) {
		t = st.open_until_ms;
		ok(breaker_allow(b, t), "trial %d allowed at %.0f", i + 1, t);
		breaker_record(b, false, t + 10);
		breaker_stats(b, t + 10, &st);
		ok(st.state == BREAKER_OPEN && st.open_until_ms - (t + 10) == expect[i],
		   "failed trial %d re-opens for %.0f ms (got %.0f)", i + 1, expect[i],
		   st.open_until_ms - (t + 10));
	}
	ok(st.opens_total == 5, "5 openings counted");
	ok(st.consecutive_failures == 7, "consecutive failures include failed trials (%d)",
	   st.consecutive_failures);

	/* success closes and resets the backoff */
	t = st.open_until_ms;
	ok(breaker_allow(b, t), "trial allowed");
	breaker_record(b, true, t + 1);
	breaker_stats(b, t + 1, &st);
	ok(st.state == BREAKER_CLOSED && st.state_since_ms == t + 1 && st.consecutive_failures == 0,
	   "success closes: since %.0f, run reset", t + 1);
	ok(st.next_open_ms == 1000, "closing resets the period to open_ms");
	fail_n(b, 3, t + 2);
	breaker_stats(b, t + 2, &st);
	ok(st.open_until_ms == t + 2 + 1000, "the next opening lasts open_ms again");
	breaker_destroy(b);
}

static void
test_lost_trials(void)
{
	breaker *b = breaker_create(&cfg);
	fail_n(b, 3, 0);
	ok(breaker_allow(b, 1000) && breaker_allow(b, 1000), "two trials out at 1000");
	ok(!breaker_allow(b, 10999), "still refused just before probe_timeout_ms");
	ok(breaker_retry_after_ms(b, 11000) == 0, "retry-after 0 once the trials are presumed lost");
	ok(breaker_allow(b, 11000), "trials with no verdict after probe_timeout_ms are presumed lost");
	ok(breaker_allow(b, 11001) && !breaker_allow(b, 11002), "a fresh budget of two trials");
	struct breaker_stats st;
	breaker_stats(b, 11002, &st);
	ok(st.state == BREAKER_HALF_OPEN && st.probes_in_flight == 2, "still half-open, 2 trials out");
	breaker_destroy(b);
}

static void
test_record_settles_half_open(void)
{
	breaker *b = breaker_create(&cfg);
	fail_n(b, 3, 0);
	/* no allow() in between: a late result arriving after the period is a verdict */
	breaker_record(b, true, 2000);
	ok(breaker_state(b, 2000) == BREAKER_CLOSED, "a success recorded after the period closes it");
	fail_n(b, 3, 3000);
	breaker_record(b, false, 4500);
	struct breaker_stats st;
	breaker_stats(b, 4500, &st);
	ok(st.state == BREAKER_OPEN && st.open_until_ms == 6500,
	   "a failure recorded after the period re-opens for the doubled period");
	breaker_destroy(b);
}

static void
test_single_probe(void)
{
	struct breaker_config c = cfg;
	c.half_open_probes = 1;
	c.failure_threshold = 1;
	breaker *b = breaker_create(&c);
	breaker_record(b, false, 0);
	ok(breaker_state(b, 0) == BREAKER_OPEN, "threshold 1: one failure opens it");
	ok(breaker_allow(b, 1000) && !breaker_allow(b, 1000), "one trial at a time");
	breaker_record(b, true, 1200);
	ok(breaker_allow(b, 1200) && breaker_allow(b, 1200), "closed again: everything allowed");
	breaker_destroy(b);
}

int
main(void)
{
	log_set_level(LOG_ERROR);  /* transitions log at warn/info; keep TAP output clean */
	test_names_and_defaults();
	test_closed_to_open();
	test_half_open_probes();
	test_backoff_doubling_and_cap();
	test_lost_trials();
	test_record_settles_half_open();
	test_single_probe();

	/* once with logging on, so the log calls themselves run */
	log_set_level(LOG_DEBUG);
	breaker *b = breaker_create(&cfg);
	fail_n(b, 3, 0);
	breaker_allow(b, 1000);
	breaker_record(b, true, 1001);
	ok(breaker_state(b, 1001) == BREAKER_CLOSED, "a full cycle with logging on");
	breaker_destroy(b);
	return tap_done();
}
