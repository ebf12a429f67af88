/*
 * breaker — three states, one stored and one derived.
 *
 * The stored state changes only in breaker_allow() and breaker_record(); the
 * end of an open period is noticed lazily there (settle()), so there is no
 * timer. The const readers derive the same answer with effective_state(), so
 * what they report never depends on whether anyone called allow() lately.
 * `next_open_ms` is the backoff: the period the next opening lasts.
 */
#include "breaker.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>

#define DEF_THRESHOLD      5
#define DEF_OPEN_MS        5000.0
#define DEF_MAX_OPEN_MS    120000.0
#define DEF_PROBES         1
#define DEF_PROBE_TIMEOUT  30000.0
#define PROBE_WAIT_HINT_MS 1000.0

struct breaker {
	char *name;
	struct breaker_config cfg;
	enum breaker_state state;      /* stored; OPEN may have ended already */
	double since_ms;
	double open_until_ms;
	double next_open_ms;
	int consecutive;
	int probes;                    /* trials allowed in this half-open spell */
	double last_probe_ms;
	long opens, rejected, successes, failures;
};

static const char *state_names[] = { "closed", "open", "half_open" };

const char *
breaker_state_name(enum breaker_state s)
{
	return (unsigned)s < 3 ? state_names[s] : "unknown";
}

static void
apply_defaults(struct breaker_config *c)
{
	if (c->failure_threshold <= 0)
		c->failure_threshold = DEF_THRESHOLD;
	if (!(c->open_ms > 0))
		c->open_ms = DEF_OPEN_MS;
	if (!(c->max_open_ms > 0))
		c->max_open_ms = DEF_MAX_OPEN_MS;
	if (c->max_open_ms < c->open_ms)
		c->max_open_ms = c->open_ms;
	if (c->half_open_probes <= 0)
		c->half_open_probes = DEF_PROBES;
	if (!(c->probe_timeout_ms > 0))
		c->probe_timeout_ms = DEF_PROBE_TIMEOUT;
}

breaker *
breaker_create(const struct breaker_config *cfg)
{
	breaker *b = xcalloc(1, sizeof *b);
	if (cfg)
		b->cfg = *cfg;
	apply_defaults(&b->cfg);
	b->name = xstrdup(b->cfg.name ? b->cfg.name : "upstream");
	b->cfg.name = b->name;
	b->state = BREAKER_CLOSED;
	b->next_open_ms = b->cfg.open_ms;
	return b;
}

void
breaker_destroy(breaker *b)
{
	if (!b)
		return;
	free(b->name);
	free(b);
}

static enum breaker_state
effective_state(const breaker *b, double now_ms)
{
	if (b->state == BREAKER_OPEN && now_ms >= b->open_until_ms)
		return BREAKER_HALF_OPEN;
	return b->state;
}

static void
log_change(const breaker *b, enum breaker_state from, double period_ms)
{
	if (b->state == BREAKER_OPEN)
		log_event(LOG_WARN, "breaker open", LOG_S("breaker", b->name),
		          LOG_S("from", breaker_state_name(from)),
		          LOG_I("consecutive_failures", b->consecutive),
		          LOG_N("open_ms", period_ms), LOG_I("opens_total", b->opens), LOG_END);
	else
		log_event(LOG_INFO, b->state == BREAKER_CLOSED ? "breaker closed" : "breaker half-open",
		          LOG_S("breaker", b->name), LOG_S("from", breaker_state_name(from)),
		          LOG_END);
}

static void
trip(breaker *b, double now_ms)
{
	enum breaker_state from = b->state;
	double period = b->next_open_ms;
	b->state = BREAKER_OPEN;
	b->since_ms = now_ms;
	b->open_until_ms = now_ms + period;
	b->next_open_ms = period * 2 < b->cfg.max_open_ms ? period * 2 : b->cfg.max_open_ms;
	b->probes = 0;
	b->opens++;
	log_change(b, from, period);
}

static void
close_breaker(breaker *b, double now_ms)
{
	b->state = BREAKER_CLOSED;
	b->since_ms = now_ms;
	b->consecutive = 0;
	b->probes = 0;
	b->next_open_ms = b->cfg.open_ms;
	log_change(b, BREAKER_HALF_OPEN, 0);
}

/* Stores the half-open state once the open period is over. */
static void
settle(breaker *b, double now_ms)
{
	if (effective_state(b, now_ms) != BREAKER_HALF_OPEN || b->state == BREAKER_HALF_OPEN)
		return;
	b->state = BREAKER_HALF_OPEN;
	b->since_ms = b->open_until_ms;
	b->probes = 0;
	log_change(b, BREAKER_OPEN, 0);
}

/* Trials that have gone without a verdict for too long are presumed lost. */
static bool
probes_lost(const breaker *b, double now_ms)
{
	return b->probes > 0 && now_ms - b->last_probe_ms >= b->cfg.probe_timeout_ms;
}

bool
breaker_allow(breaker *b, double now_ms)
{
	settle(b, now_ms);
	if (b->state == BREAKER_CLOSED)
		return true;
	if (b->state == BREAKER_HALF_OPEN) {
		if (probes_lost(b, now_ms)) {
			log_event(LOG_WARN, "breaker trial lost", LOG_S("breaker", b->name),
			          LOG_I("probes", b->probes), LOG_END);
			b->probes = 0;
		}
		if (b->probes < b->cfg.half_open_probes) {
			b->probes++;
			b->last_probe_ms = now_ms;
			return true;
		}
	}
	b->rejected++;
	return false;
}

void
breaker_forget(breaker *b, double now_ms)
{
	settle(b, now_ms);
	if (b->state == BREAKER_HALF_OPEN && b->probes > 0)
		b->probes--;
}

void
breaker_record(breaker *b, bool success, double now_ms)
{
	settle(b, now_ms);
	if (success)
		b->successes++;
	else
		b->failures++;
	switch (b->state) {
	case BREAKER_CLOSED:
		if (success)
			b->consecutive = 0;
		else if (++b->consecutive >= b->cfg.failure_threshold)
			trip(b, now_ms);
		break;
	case BREAKER_HALF_OPEN:
		if (success) {
			close_breaker(b, now_ms);
		} else {
			b->consecutive++;
			trip(b, now_ms);
		}
		break;
	case BREAKER_OPEN:
		break;
	}
}

enum breaker_state
breaker_state(const breaker *b, double now_ms)
{
	return effective_state(b, now_ms);
}

double
breaker_retry_after_ms(const breaker *b, double now_ms)
{
	switch (effective_state(b, now_ms)) {
	case BREAKER_OPEN:
		return b->open_until_ms - now_ms;
	case BREAKER_HALF_OPEN:
		if (b->state == BREAKER_OPEN || probes_lost(b, now_ms) ||
		    b->probes < b->cfg.half_open_probes)
			return 0;
		return PROBE_WAIT_HINT_MS;
	case BREAKER_CLOSED:
		break;
	}
	return 0;
}

void
breaker_stats(const breaker *b, double now_ms, struct breaker_stats *out)
{
	enum breaker_state st = effective_state(b, now_ms);
	bool pending = st != b->state;    /* open period over, not yet settled */
	*out = (struct breaker_stats){
		.state = st,
		.state_since_ms = pending ? b->open_until_ms : b->since_ms,
		.open_until_ms = b->open_until_ms,
		.next_open_ms = b->next_open_ms,
		.consecutive_failures = b->consecutive,
		.probes_in_flight = pending ? 0 : b->probes,
		.opens_total = b->opens,
		.rejected_total = b->rejected,
		.successes_total = b->successes,
		.failures_total = b->failures,
	};
}
