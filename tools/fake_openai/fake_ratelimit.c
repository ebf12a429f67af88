/*
 * fake_ratelimit.c — the rate-limit mode: requests and tokens per window,
 * the x-ratelimit-* headers OpenAI sends on every reply, and the 429 it
 * answers when a call would go over.
 *
 * Owns the window's counters in struct fake (rl_*). A fixed window: it
 * starts with the first call after the previous one ended and lasts
 * window_ms; both limits count within it. A call is admitted, or refused,
 * at arrival (chat_start), and its reply carries the headers as of that
 * moment, as OpenAI's do: limit, remaining after this call, and the time
 * until the window resets, in Go's duration format ("20ms", "1m0s").
 * A call's tokens are what its usage will report (prompt + completion);
 * refused calls count for nothing. With the mode off every reply carries
 * generous, never-exhausted numbers.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fake.h"

static double
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

void
fake_rl_format_duration(long ms, char *out, size_t n)
{
	long h, m;
	double s;
	size_t p = 0;

	if (ms < 1000) {
		snprintf(out, n, ms > 0 ? "%ldms" : "0s", ms);
		return;
	}
	h = ms / 3600000;
	m = ms / 60000 % 60;
	s = (double)(ms % 60000) / 1000.0;
	if (h)
		p += (size_t)snprintf(out + p, n - p, "%ldh", h);
	if (h || m)
		p += (size_t)snprintf(out + p, n - p, "%ldm", m);
	if (p < n)
		snprintf(out + p, n - p, "%gs", s);
}

/* Starts a new window if the last one is over. */
static void
window_roll(struct fake *f, double now)
{
	if (f->rl_used_requests == 0 && f->rl_used_tokens == 0)
		return;
	if (now >= f->rl_window_start + f->live.rl_window_ms) {
		f->rl_used_requests = 0;
		f->rl_used_tokens = 0;
	}
}

static void
view_of(struct fake *f, double now, struct fake_rl_view *v)
{
	long left = 0;

	v->on = true;
	v->limit_requests = f->live.rl_requests;
	v->limit_tokens = f->live.rl_tokens;
	if (f->rl_used_requests || f->rl_used_tokens) {
		left = (long)ceil(f->rl_window_start + f->live.rl_window_ms - now);
		if (left < 0)
			left = 0;
	}
	v->remaining_requests = f->live.rl_requests ?
	    f->live.rl_requests - f->rl_used_requests : 0;
	v->remaining_tokens = f->live.rl_tokens ?
	    f->live.rl_tokens - f->rl_used_tokens : 0;
	v->reset_requests_ms = f->rl_used_requests ? left : 0;
	v->reset_tokens_ms = f->rl_used_tokens ? left : 0;
}

bool
fake_rl_on(const struct fake *f)
{
	return f->live.rl_requests > 0 || f->live.rl_tokens > 0;
}

bool
fake_rl_admit(struct fake *f, long tokens, struct fake_rl_view *v,
    struct fake_rl_refusal *why)
{
	double now = mono_ms();

	memset(v, 0, sizeof(*v));
	if (!fake_rl_on(f))
		return true;
	window_roll(f, now);
	memset(why, 0, sizeof(*why));
	if (f->live.rl_requests > 0 &&
	    f->rl_used_requests + 1 > f->live.rl_requests) {
		why->kind = "requests";
		why->unit = "requests per min (RPM)";
		why->limit = f->live.rl_requests;
		why->used = f->rl_used_requests;
		why->requested = 1;
	} else if (f->live.rl_tokens > 0 &&
	    f->rl_used_tokens + tokens > f->live.rl_tokens) {
		why->kind = "tokens";
		why->unit = "tokens per min (TPM)";
		why->limit = f->live.rl_tokens;
		why->used = f->rl_used_tokens;
		why->requested = tokens;
	}
	if (why->kind) {
		view_of(f, now, v);
		/* An idle window (only possible when one call is bigger than
		 * the whole token limit) would give 0: ask for a window. */
		why->retry_ms = (long)ceil(f->rl_window_start +
		    f->live.rl_window_ms - now);
		if (why->retry_ms <= 0 || (f->rl_used_requests == 0 &&
		    f->rl_used_tokens == 0))
			why->retry_ms = f->live.rl_window_ms;
		f->rl_refused++;
		return false;
	}
	if (f->rl_used_requests == 0 && f->rl_used_tokens == 0)
		f->rl_window_start = now;
	f->rl_used_requests++;
	f->rl_used_tokens += tokens;
	view_of(f, now, v);
	return true;
}

void
fake_rl_headers(struct fake *f, struct evhttp_request *req,
    const struct fake_rl_view *snapshot)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct fake_rl_view live;
	char b[64];

	if (!fake_rl_on(f)) {
		/* Generous, never-exhausted limits; Go-style durations. */
		evhttp_add_header(h, "x-ratelimit-limit-requests", "30000");
		evhttp_add_header(h, "x-ratelimit-limit-tokens", "150000000");
		evhttp_add_header(h, "x-ratelimit-remaining-requests", "29999");
		evhttp_add_header(h, "x-ratelimit-remaining-tokens",
		    "149999000");
		evhttp_add_header(h, "x-ratelimit-reset-requests", "2ms");
		evhttp_add_header(h, "x-ratelimit-reset-tokens", "0s");
		return;
	}
	if (snapshot == NULL || !snapshot->on) {
		double now = mono_ms();

		window_roll(f, now);
		view_of(f, now, &live);
		snapshot = &live;
	}
	/* A dimension without a limit is reported as OpenAI would a huge
	 * one: never the constraint. */
	snprintf(b, sizeof(b), "%d", snapshot->limit_requests ?
	    snapshot->limit_requests : 30000);
	evhttp_add_header(h, "x-ratelimit-limit-requests", b);
	snprintf(b, sizeof(b), "%d", snapshot->limit_tokens ?
	    snapshot->limit_tokens : 150000000);
	evhttp_add_header(h, "x-ratelimit-limit-tokens", b);
	snprintf(b, sizeof(b), "%ld", snapshot->limit_requests ?
	    snapshot->remaining_requests : 29999);
	evhttp_add_header(h, "x-ratelimit-remaining-requests", b);
	snprintf(b, sizeof(b), "%ld", snapshot->limit_tokens ?
	    snapshot->remaining_tokens : 149999000);
	evhttp_add_header(h, "x-ratelimit-remaining-tokens", b);
	fake_rl_format_duration(snapshot->limit_requests ?
	    snapshot->reset_requests_ms : 0, b, sizeof(b));
	evhttp_add_header(h, "x-ratelimit-reset-requests", b);
	fake_rl_format_duration(snapshot->limit_tokens ?
	    snapshot->reset_tokens_ms : 0, b, sizeof(b));
	evhttp_add_header(h, "x-ratelimit-reset-tokens", b);
}
