/*
 * metrics — one list of numbers, two printers.
 *
 * Families and samples are two growing arrays; a sample points at its
 * family by index, and families keep their samples contiguous because a
 * sample always joins the family started last. The printers walk both
 * arrays in order, so /metrics lists the families in the order
 * metrics_gather() adds them (the order of the text before this file).
 */
#include "metrics.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#define MAX_LABELS 3

struct family {
	const char *name, *help;
	enum metrics_type type;
};

struct sample {
	size_t family;
	int nlabels;
	const char *label_names[MAX_LABELS];
	char *label_values[MAX_LABELS];
	const char *suffix;           /* histograms: _bucket, _sum, _count */
	bool integer;
	long long i;
	double d;
};

struct metrics {
	struct family *families;
	size_t nfamilies, cap_families;
	struct sample *samples;
	size_t nsamples, cap_samples;
};

metrics *
metrics_new(void)
{
	return xcalloc(1, sizeof(metrics));
}

void
metrics_free(metrics *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nsamples; i++)
		for (int k = 0; k < m->samples[i].nlabels; k++)
			free(m->samples[i].label_values[k]);
	free(m->samples);
	free(m->families);
	free(m);
}

void
metrics_family(metrics *m, const char *name, const char *help, enum metrics_type type)
{
	if (m->nfamilies == m->cap_families) {
		m->cap_families = m->cap_families ? 2 * m->cap_families : 32;
		m->families = xrealloc(m->families, m->cap_families * sizeof *m->families);
	}
	m->families[m->nfamilies++] = (struct family){ name, help, type };
}

static struct sample *
add_sample(metrics *m, va_list ap)
{
	if (m->nsamples == m->cap_samples) {
		m->cap_samples = m->cap_samples ? 2 * m->cap_samples : 64;
		m->samples = xrealloc(m->samples, m->cap_samples * sizeof *m->samples);
	}
	struct sample *s = &m->samples[m->nsamples++];
	*s = (struct sample){ .family = m->nfamilies - 1 };
	const char *name;
	while ((name = va_arg(ap, const char *)) && s->nlabels < MAX_LABELS) {
		const char *value = va_arg(ap, const char *);
		s->label_names[s->nlabels] = name;
		s->label_values[s->nlabels++] = xstrdup(value ? value : "");
	}
	return s;
}

void
metrics_int(metrics *m, long long value, ...)
{
	va_list ap;
	va_start(ap, value);
	struct sample *s = add_sample(m, ap);
	va_end(ap);
	s->integer = true;
	s->i = value;
}

void
metrics_real(metrics *m, double value, ...)
{
	va_list ap;
	va_start(ap, value);
	struct sample *s = add_sample(m, ap);
	va_end(ap);
	s->d = value;
}

void
metrics_int_suffix(metrics *m, const char *suffix, long long value, ...)
{
	va_list ap;
	va_start(ap, value);
	struct sample *s = add_sample(m, ap);
	va_end(ap);
	s->suffix = suffix;
	s->integer = true;
	s->i = value;
}

void
metrics_real_suffix(metrics *m, const char *suffix, double value, ...)
{
	va_list ap;
	va_start(ap, value);
	struct sample *s = add_sample(m, ap);
	va_end(ap);
	s->suffix = suffix;
	s->d = value;
}

/* ---- gathering -------------------------------------------------------------- */

static void
gather_http(metrics *m, const struct metrics_http *h)
{
	metrics_family(m, "rapport_http_requests_total", "Requests routed.", METRICS_COUNTER);
	metrics_int(m, h->requests, NULL);
	metrics_family(m, "rapport_http_responses_total",
	               "Responses by status class (streams count as 2xx).", METRICS_COUNTER);
	for (int k = 1; k < 6; k++) {
		char class[8];
		snprintf(class, sizeof class, "%dxx", k);
		metrics_int(m, h->responses_by_class[k], "class", class, NULL);
	}
	const struct http_conn_stats *c = h->conns;
	if (!c)
		return;
	metrics_family(m, "rapport_http_connections", "Client connections open now.", METRICS_GAUGE);
	metrics_int(m, c->open, NULL);
	metrics_family(m, "rapport_http_connections_max", "The connection cap in force.",
	               METRICS_GAUGE);
	metrics_int(m, c->max, NULL);
	metrics_family(m, "rapport_http_connections_accepted_total",
	               "Connections admitted since start.", METRICS_COUNTER);
	metrics_int(m, c->accepted, NULL);
	metrics_family(m, "rapport_http_connections_refused_total",
	               "Connections answered 503 because of the cap.", METRICS_COUNTER);
	metrics_int(m, c->refused, NULL);
	metrics_family(m, "rapport_http_connections_closed_total",
	               "Connections cut by a timer, by reason.", METRICS_COUNTER);
	metrics_int(m, c->closed_idle, "reason", "idle_keepalive", NULL);
	metrics_int(m, c->closed_slow, "reason", "slow_request", NULL);
	metrics_family(m, "rapport_http_accept_paused", "1 while accepting is paused (out of descriptors).",
	               METRICS_GAUGE);
	metrics_int(m, c->paused ? 1 : 0, NULL);
	metrics_family(m, "rapport_http_accept_pauses_total",
	               "accept(2) failures that paused accepting.", METRICS_COUNTER);
	metrics_int(m, c->accept_pauses, NULL);
}

static void
gather_cache(metrics *m, const cache *c)
{
	struct cache_stats cs;
	cache_stats(c, &cs);
	static const struct {
		const char *name, *help;
		enum metrics_type type;
	} f[] = {
		{ "rapport_cache_hits_total", "Cache lookups that found a fresh entry.", METRICS_COUNTER },
		{ "rapport_cache_stale_hits_total", "Cache lookups that found a stale entry (past its ttl "
		  "or its data changed, within its grace).", METRICS_COUNTER },
		{ "rapport_cache_rearms_total", "Entries made fresh again without a new result.",
		  METRICS_COUNTER },
		{ "rapport_cache_marked_stale_total", "Entries made stale by a data change.",
		  METRICS_COUNTER },
		{ "rapport_cache_misses_total", "Cache lookups that found none.", METRICS_COUNTER },
		{ "rapport_cache_evictions_total", "LRU evictions.", METRICS_COUNTER },
		{ "rapport_cache_expired_total", "Entries found expired at lookup.", METRICS_COUNTER },
		{ "rapport_cache_entries", "Entries now.", METRICS_GAUGE },
		{ "rapport_cache_bytes", "Bytes the entries take now.", METRICS_GAUGE },
		{ "rapport_cache_max_bytes", "The cache's bound in bytes.", METRICS_GAUGE },
	};
	long long v[] = { cs.hits, cs.stale_hits, cs.rearms, cs.marked_stale, cs.misses,
	                  cs.evictions, cs.expired, cs.entries,
	                  (long long)cs.bytes, (long long)cs.max_bytes };
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		metrics_family(m, f[i].name, f[i].help, f[i].type);
		metrics_int(m, v[i], NULL);
	}
}

static void
gather_db(metrics *m, const db_pool *db)
{
	struct db_stats ds;
	db_pool_stats(db, &ds);
	metrics_family(m, "rapport_db_connections",
	               "The pool's connections: configured, connected, busy.", METRICS_GAUGE);
	metrics_int(m, ds.size, "state", "configured", NULL);
	metrics_int(m, ds.connected, "state", "connected", NULL);
	metrics_int(m, ds.busy, "state", "busy", NULL);
	metrics_family(m, "rapport_db_queued", "Queries waiting for a connection.", METRICS_GAUGE);
	metrics_int(m, ds.queued, NULL);
}

static void
gather_llm(metrics *m, const llm_client *llm)
{
	struct llm_stats ls;
	llm_client_stats(llm, &ls);
	metrics_family(m, "rapport_upstream_calls_total",
	               "Upstream calls (a retried call counts once).", METRICS_COUNTER);
	metrics_int(m, ls.calls, NULL);
	metrics_family(m, "rapport_upstream_attempts_total",
	               "HTTP requests sent upstream, retries included.", METRICS_COUNTER);
	metrics_int(m, ls.attempts, NULL);
	metrics_family(m, "rapport_upstream_in_flight", "Upstream calls running.", METRICS_GAUGE);
	metrics_int(m, ls.in_flight, NULL);
	metrics_family(m, "rapport_upstream_connections_total",
	               "New upstream connections (low means reuse works).", METRICS_COUNTER);
	metrics_int(m, ls.connections, NULL);
	metrics_family(m, "rapport_upstream_http2_total", "Upstream attempts over HTTP/2.",
	               METRICS_COUNTER);
	metrics_int(m, ls.http2, NULL);
}

static void
gather_limiter(metrics *m, const limiter *l)
{
	struct limiter_stats st;
	limiter_stats(l, &st);
	metrics_family(m, "rapport_upstream_queued", "Generations waiting for an upstream slot.",
	               METRICS_GAUGE);
	metrics_int(m, st.queued, NULL);
	metrics_family(m, "rapport_upstream_rejected_total", "429 overloaded verdicts.",
	               METRICS_COUNTER);
	metrics_int(m, st.rejected_total, NULL);
	/* The adaptive cap and the provider's window (limiter.h). */
	static const struct {
		const char *name, *help;
		enum metrics_type type;
	} f[] = {
		{ "rapport_upstream_cap", "Upstream calls allowed at once now (adaptive).", METRICS_GAUGE },
		{ "rapport_upstream_cap_start", "RAPPORT_LLM_MAX_IN_FLIGHT.", METRICS_GAUGE },
		{ "rapport_upstream_cap_ceiling", "RAPPORT_LLM_MAX_IN_FLIGHT_CEILING.", METRICS_GAUGE },
		{ "rapport_upstream_cap_min", "Lowest cap so far.", METRICS_GAUGE },
		{ "rapport_upstream_cap_max", "Highest cap so far.", METRICS_GAUGE },
		{ "rapport_upstream_cap_decreases_total", "Halvings of the cap on a 429 round.",
		  METRICS_COUNTER },
		{ "rapport_upstream_cap_increases_total", "Steps of +1 of the cap.", METRICS_COUNTER },
		{ "rapport_upstream_throttled_total", "429s the provider sent (attempts).",
		  METRICS_COUNTER },
		{ "rapport_upstream_held", "1 while new calls wait for the provider's window.",
		  METRICS_GAUGE },
		{ "rapport_upstream_holds_total", "Holds for the provider's window.", METRICS_COUNTER },
		{ "rapport_upstream_background_in_flight", "Background (warm) calls running.",
		  METRICS_GAUGE },
		{ "rapport_upstream_background_cap", "Background calls allowed at once now.",
		  METRICS_GAUGE },
		{ "rapport_upstream_background_queued", "Background calls waiting.", METRICS_GAUGE },
	};
	long long v[] = { st.max_in_flight, st.cap_start, st.cap_ceiling, st.cap_min_seen,
	                  st.cap_max_seen, st.decreases_total, st.increases_total,
	                  st.throttled_total, st.held, st.holds_total, st.bg_in_flight,
	                  st.bg_max_in_flight, st.bg_queued };
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		metrics_family(m, f[i].name, f[i].help, f[i].type);
		metrics_int(m, v[i], NULL);
	}
}

static void
gather_breaker(metrics *m, const breaker *b)
{
	struct breaker_stats bs;
	breaker_stats(b, util_now_ms(), &bs);
	metrics_family(m, "rapport_upstream_breaker_open",
	               "1 while the upstream breaker is open or half-open.", METRICS_GAUGE);
	metrics_int(m, bs.state == BREAKER_CLOSED ? 0 : 1, NULL);
	metrics_family(m, "rapport_upstream_breaker_opens_total", "Times the breaker opened.",
	               METRICS_COUNTER);
	metrics_int(m, bs.opens_total, NULL);
}

/* The accounting families, one per counter of struct acct_row, each with
 * the labels type and model (tokens also kind="prompt"|"completion"), rows
 * in accounting's order (sorted by type, then model). */
enum acct_field { A_CALLS, A_TOKENS, A_COST, A_UNPRICED, A_NO_USAGE };

struct acct_walk {
	metrics *m;
	enum acct_field field;
};

static void
acct_one(const struct acct_row *r, void *arg)
{
	struct acct_walk *w = arg;
	metrics *m = w->m;
	switch (w->field) {
	case A_CALLS:
		metrics_int(m, r->calls, "type", r->type, "model", r->model, NULL);
		break;
	case A_TOKENS:
		metrics_int(m, r->prompt_tokens, "type", r->type, "model", r->model, "kind", "prompt",
		            NULL);
		metrics_int(m, r->completion_tokens, "type", r->type, "model", r->model, "kind",
		            "completion", NULL);
		break;
	case A_COST:
		metrics_real(m, r->cost_usd, "type", r->type, "model", r->model, NULL);
		break;
	case A_UNPRICED:
		metrics_int(m, r->unpriced_calls, "type", r->type, "model", r->model, NULL);
		break;
	case A_NO_USAGE:
		metrics_int(m, r->no_usage_calls, "type", r->type, "model", r->model, NULL);
		break;
	}
}

static void
gather_acct(metrics *m, const accounting *a)
{
	static const struct {
		const char *name, *help;
	} f[] = {
		[A_CALLS] = { "rapport_llm_calls_total", "Upstream model calls accounted." },
		[A_TOKENS] = { "rapport_llm_tokens_total", "Tokens the upstream reported, by kind." },
		[A_COST] = { "rapport_llm_cost_usd_total", "Estimated cost in USD from the price table." },
		[A_UNPRICED] = { "rapport_llm_unpriced_calls_total",
		                 "Calls to a model with no price (cost counted as 0)." },
		[A_NO_USAGE] = { "rapport_llm_calls_without_usage_total",
		                 "Calls whose token usage was not reported (tokens not counted)." },
	};
	for (int i = A_CALLS; i <= A_NO_USAGE; i++) {
		struct acct_walk w = { m, (enum acct_field)i };
		metrics_family(m, f[i].name, f[i].help, METRICS_COUNTER);
		acct_each(a, acct_one, &w);
	}
}

static void
gather_l2(metrics *m, const l2 *l)
{
	struct l2_stats s;
	l2_stats(l, &s);
	metrics_family(m, "rapport_l2_up", "1 when the Redis L2 is connected.", METRICS_GAUGE);
	metrics_int(m, s.up, NULL);
	metrics_family(m, "rapport_l2_pubsub_up",
	               "1 when the Redis subscriber (events from other instances) is connected.",
	               METRICS_GAUGE);
	metrics_int(m, s.pubsub_up, NULL);
	static const struct {
		const char *name, *help;
	} f[] = {
		{ "rapport_l2_hits_total", "L2 lookups that found a fresh entry." },
		{ "rapport_l2_stale_hits_total", "L2 lookups that found a stale entry." },
		{ "rapport_l2_misses_total", "L2 lookups that found nothing usable." },
		{ "rapport_l2_errors_total", "L2 error replies, unreadable values, lost replies." },
		{ "rapport_l2_timeouts_total", "L2 lookups past their deadline (the request went on)." },
		{ "rapport_l2_skipped_total", "L2 lookups and writes not tried: Redis not up." },
		{ "rapport_l2_stores_total", "Results written to the L2." },
		{ "rapport_l2_too_large_total", "Results over RAPPORT_L2_MAX_BYTES, not written." },
		{ "rapport_l2_connects_total", "Times the L2 connection came up." },
		{ "rapport_l2_disconnects_total", "Times it was lost." },
		{ "rapport_l2_lock_acquired_total", "Keys this instance took the lock for and generated." },
		{ "rapport_l2_lock_waits_total", "Claims that found a key locked by another instance and waited." },
		{ "rapport_l2_lock_results_total", "Waits answered by the other instance's result." },
		{ "rapport_l2_lock_takeovers_total", "Waits that took the lock over: its owner ended without a result." },
		{ "rapport_l2_lock_skipped_total", "Generations that went on without the lock (Redis not up or slow)." },
		{ "rapport_l2_lock_lost_total", "Lease renewals that found the lock no longer ours." },
		{ "rapport_l2_relay_published_total", "Deltas written to Redis for other instances' streams." },
		{ "rapport_l2_relay_deltas_total", "Deltas of another instance's generation relayed here." },
		{ "rapport_l2_remote_drops_total", "DELETEs of another instance applied to this L1." },
	};
	long long v[] = { s.hits, s.stale_hits, s.misses, s.errors, s.timeouts, s.skipped,
	                  s.stores, s.too_large, s.connects, s.disconnects, s.lock_acquired,
	                  s.lock_waits, s.lock_results, s.lock_takeovers, s.lock_skipped, s.lock_lost,
	                  s.relay_published, s.relay_deltas, s.remote_drops };
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		metrics_family(m, f[i].name, f[i].help, METRICS_COUNTER);
		metrics_int(m, v[i], NULL);
	}
	metrics_family(m, "rapport_l2_lookup_ms", "L2 lookup latency, milliseconds.",
	               METRICS_HISTOGRAM);
	long long cum = 0;
	char le[16];
	for (int i = 0; i < 8; i++) {
		cum += s.lat_buckets[i];
		if (i < 7)
			snprintf(le, sizeof le, "%g", l2_latency_bounds_ms[i]);
		else
			snprintf(le, sizeof le, "+Inf");
		metrics_int_suffix(m, "_bucket", cum, "le", le, NULL);
	}
	metrics_real_suffix(m, "_sum", s.lat_sum_ms, NULL);
	metrics_int_suffix(m, "_count", cum, NULL);
}

static void
gather_analysis(metrics *m, const analysis *a)
{
	if (analysis_l2(a))
		gather_l2(m, analysis_l2(a));
	struct analysis_stats as;
	analysis_stats(a, &as);
	metrics_family(m, "rapport_analysis_flights", "Generations in progress.", METRICS_GAUGE);
	metrics_int(m, as.flights, NULL);
	metrics_family(m, "rapport_analysis_generated_total",
	               "Generations that succeeded, fallbacks included.", METRICS_COUNTER);
	metrics_int(m, as.generated, NULL);
	metrics_family(m, "rapport_analysis_failed_total",
	               "Generations that failed or were cancelled.", METRICS_COUNTER);
	metrics_int(m, as.failed, NULL);
	metrics_family(m, "rapport_analysis_coalesced_total", "Requests that joined a generation.",
	               METRICS_COUNTER);
	metrics_int(m, as.coalesced, NULL);
	static const struct {
		const char *name, *help;
	} f[] = {
		{ "rapport_analysis_stale_served_total",
		  "Replies from a stale entry, at once, while its refresh runs." },
		{ "rapport_analysis_refreshes_total", "Background refreshes started by a stale reply." },
		{ "rapport_analysis_change_refreshes_total",
		  "Background refreshes started by a data change, of entries a person viewed "
		  "(RAPPORT_REFRESH_ON_CHANGE_S)." },
		{ "rapport_analysis_refresh_failures_total",
		  "Background refreshes that failed (the entry stays stale until its grace ends)." },
		{ "rapport_analysis_revalidated_total",
		  "Refreshes whose model request was unchanged: re-armed, no model call (calls saved)." },
		{ "rapport_analysis_saved_prompt_tokens_total",
		  "Prompt tokens the revalidated refreshes did not spend." },
		{ "rapport_analysis_saved_completion_tokens_total",
		  "Completion tokens the revalidated refreshes did not spend." },
	};
	long long v[] = { as.stale_served, as.refreshes, as.change_refreshes, as.refresh_failures, as.revalidated,
	                  as.saved_prompt_tokens, as.saved_completion_tokens };
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
		metrics_family(m, f[i].name, f[i].help, METRICS_COUNTER);
		metrics_int(m, v[i], NULL);
	}
	metrics_family(m, "rapport_analysis_saved_cost_usd_total",
	               "What the revalidated refreshes' model calls would have cost, at the price "
	               "table of their original generation.", METRICS_COUNTER);
	metrics_real(m, as.saved_cost_usd, NULL);
}

void
metrics_gather(metrics *m, const struct metrics_sources *src)
{
	if (src->http)
		gather_http(m, src->http);
	if (src->cache)
		gather_cache(m, src->cache);
	if (src->db)
		gather_db(m, src->db);
	if (src->llm)
		gather_llm(m, src->llm);
	if (src->limiter)
		gather_limiter(m, src->limiter);
	if (src->breaker)
		gather_breaker(m, src->breaker);
	if (src->acct)
		gather_acct(m, src->acct);
	if (src->analysis)
		gather_analysis(m, src->analysis);
}

/* ---- printing ---------------------------------------------------------------- */

/* name{k="v",…} with the values escaped as the text format wants. */
static void
sample_name(struct evbuffer *b, const struct family *f, const struct sample *s)
{
	evbuffer_add(b, f->name, strlen(f->name));
	if (s->suffix)
		evbuffer_add(b, s->suffix, strlen(s->suffix));
	if (!s->nlabels)
		return;
	evbuffer_add(b, "{", 1);
	for (int k = 0; k < s->nlabels; k++) {
		evbuffer_add_printf(b, "%s%s=\"", k ? "," : "", s->label_names[k]);
		for (const char *p = s->label_values[k]; *p; p++) {
			if (*p == '\\')
				evbuffer_add(b, "\\\\", 2);
			else if (*p == '"')
				evbuffer_add(b, "\\\"", 2);
			else if (*p == '\n')
				evbuffer_add(b, "\\n", 2);
			else
				evbuffer_add(b, p, 1);
		}
		evbuffer_add(b, "\"", 1);
	}
	evbuffer_add(b, "}", 1);
}

static void
sample_value(struct evbuffer *b, const struct sample *s)
{
	if (s->integer)
		evbuffer_add_printf(b, "%lld", s->i);
	else
		evbuffer_add_printf(b, "%.15g", s->d);
}

void
metrics_prometheus(const metrics *m, struct evbuffer *out)
{
	size_t s = 0;
	for (size_t fi = 0; fi < m->nfamilies; fi++) {
		const struct family *f = &m->families[fi];
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
		                    f->type == METRICS_COUNTER ? "counter"
		                    : f->type == METRICS_HISTOGRAM ? "histogram" : "gauge");
		for (; s < m->nsamples && m->samples[s].family == fi; s++) {
			sample_name(out, f, &m->samples[s]);
			evbuffer_add(out, " ", 1);
			sample_value(out, &m->samples[s]);
			evbuffer_add(out, "\n", 1);
		}
	}
}

json_t *
metrics_json(const metrics *m)
{
	json_t *o = json_object();
	struct evbuffer *key = evbuffer_new();
	for (size_t i = 0; i < m->nsamples; i++) {
		const struct sample *s = &m->samples[i];
		evbuffer_drain(key, evbuffer_get_length(key));
		sample_name(key, &m->families[s->family], s);
		evbuffer_add(key, "", 1);
		json_object_set_new(o, (const char *)evbuffer_pullup(key, -1),
		                    s->integer ? json_integer((json_int_t)s->i) : json_real(s->d));
	}
	evbuffer_free(key);
	return o;
}
