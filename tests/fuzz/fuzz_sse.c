/*
 * fuzz_sse — libFuzzer target for core/sse.c, the SSE framing rapport owns
 * (reading OpenAI's streams, writing its own).
 *
 * Every input is used four ways:
 *
 *  1. As a stream, fed to a reader in several slicings derived from the
 *     input (one shot, one byte at a time, sizes taken from the bytes
 *     themselves, sizes from a PRNG seeded by the input — zero-length feeds
 *     included — and one cut at a hashed offset). Every slicing must give
 *     exactly the events of an independent whole-buffer reference parser
 *     written from the spec rules in sse.h, and the same "pending" answer.
 *  2. With a small cap derived from the input: the events seen are a prefix
 *     of the reference's; while the reader says SSE_OK its buffers are within
 *     the cap; SSE_TOO_LARGE is sticky (later feeds return it, dispatch
 *     nothing and grow nothing); sse_reader_reset() afterwards gives a
 *     reader that behaves like a fresh one.
 *  3. With a stop request after the k-th event: exactly the reference's first
 *     k events, then SSE_STOPPED for that feed and every later one.
 *  4. Split at NUL bytes into event/id/data of two events for
 *     sse_format_event(): -1 (and nothing appended) when event or id holds
 *     CR or LF; otherwise the reader and the reference both get the events
 *     back, data with line ends normalised to "\n", the id rules applied.
 *
 * Any mismatch prints what differed and abort()s, so libFuzzer records the
 * input; ASan/UBSan/LSan catch the rest. Reproduce a crash with
 *   build/fuzz/fuzz_sse crash-<sha1>
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "sse.h"

#define SMALL_MAX_LIMIT 512     /* small caps are 1..SMALL_MAX_LIMIT bytes */

static void __attribute__((noreturn, format(printf, 1, 2)))
die(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "fuzz_sse: INVARIANT FAILED: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	abort();
}

#define CHECK(cond, ...) do { if (!(cond)) die(__VA_ARGS__); } while (0)

/* ---- a growable byte string --------------------------------------------- */

struct str {
	char *p;
	size_t len, cap;
};

static void
str_add(struct str *s, const void *b, size_t n)
{
	if (s->len + n + 1 > s->cap) {
		size_t cap = s->cap ? s->cap : 64;
		while (cap < s->len + n + 1)
			cap *= 2;
		s->p = realloc(s->p, cap);
		if (!s->p)
			abort();
		s->cap = cap;
	}
	if (n)
		memcpy(s->p + s->len, b, n);
	s->len += n;
	s->p[s->len] = '\0';
}

static void
str_adds(struct str *s, const char *z)
{
	str_add(s, z, strlen(z));
}

static void
str_free(struct str *s)
{
	free(s->p);
	s->p = NULL;
	s->len = s->cap = 0;
}

/* ---- event traces --------------------------------------------------------- */

/* Events serialised as "event \x1f id \x1f data \x1e" ("\x01" for no id), so
 * that two runs compare with one memcmp and a prefix is a byte prefix. */
struct trace {
	struct str s;
	int n;
	size_t *ends;           /* ends[i]: s.len after event i */
	size_t ends_cap;
};

static void
trace_event(struct trace *t, const char *event, const char *id, const char *data,
            size_t data_len)
{
	str_adds(&t->s, event);
	str_add(&t->s, "\x1f", 1);
	if (id)
		str_adds(&t->s, id);
	else
		str_add(&t->s, "\x01", 1);
	str_add(&t->s, "\x1f", 1);
	str_add(&t->s, data, data_len);
	str_add(&t->s, "\x1e", 1);
	if ((size_t)t->n == t->ends_cap) {
		t->ends_cap = t->ends_cap ? t->ends_cap * 2 : 16;
		t->ends = realloc(t->ends, t->ends_cap * sizeof *t->ends);
		if (!t->ends)
			abort();
	}
	t->ends[t->n++] = t->s.len;
}

static void
trace_free(struct trace *t)
{
	str_free(&t->s);
	free(t->ends);
	memset(t, 0, sizeof *t);
}

static void
dump_bytes(const char *what, const char *p, size_t n)
{
	fprintf(stderr, "  %s (%zu bytes): \"", what, n);
	for (size_t i = 0; i < n && i < 600; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			fputc(c, stderr);
		else
			fprintf(stderr, "\\x%02x", c);
	}
	fprintf(stderr, "%s\"\n", n > 600 ? "..." : "");
}

static void
same_trace(const struct trace *want, const struct trace *got, const char *what)
{
	if (want->n == got->n && want->s.len == got->s.len &&
	    (want->s.len == 0 || memcmp(want->s.p, got->s.p, want->s.len) == 0))
		return;
	fprintf(stderr, "fuzz_sse: %s: events differ (want %d, got %d)\n", what, want->n, got->n);
	dump_bytes("want", want->s.p ? want->s.p : "", want->s.len);
	dump_bytes("got", got->s.p ? got->s.p : "", got->s.len);
	die("%s: events differ", what);
}

/* got's events are the first got->n of want's. */
static void
prefix_trace(const struct trace *want, const struct trace *got, const char *what)
{
	if (got->n <= want->n) {
		size_t n = got->n ? want->ends[got->n - 1] : 0;
		if (n == got->s.len && (n == 0 || memcmp(want->s.p, got->s.p, n) == 0))
			return;
	}
	fprintf(stderr, "fuzz_sse: %s: events are not a prefix (want %d, got %d)\n",
	        what, want->n, got->n);
	dump_bytes("want", want->s.p ? want->s.p : "", want->s.len);
	dump_bytes("got", got->s.p ? got->s.p : "", got->s.len);
	die("%s: events are not a prefix of the reference", what);
}

/* ---- the reference parser ---------------------------------------------------- */

/* The rules of sse.h applied to a whole buffer, the simple way: drop one
 * leading BOM, cut lines at CRLF / LF / CR, parse each line. The
 * unterminated tail is not an event. Returns "pending" as sse.h defines
 * it: bytes of an unfinished line or event remain. */
static int
reference_parse(const char *in, size_t len, struct trace *t)
{
	struct str data = { 0 }, event = { 0 }, id = { 0 };
	int has_id = 0;
	size_t pos = 0;

	if (len >= 3 && memcmp(in, "\xEF\xBB\xBF", 3) == 0)
		pos = 3;
	str_add(&data, "", 0);
	str_add(&event, "", 0);
	str_add(&id, "", 0);
	for (;;) {
		size_t eol = pos;
		while (eol < len && in[eol] != '\r' && in[eol] != '\n')
			eol++;
		if (eol == len)
			break;                  /* unterminated: never dispatched */
		const char *line = in + pos;
		size_t n = eol - pos;
		pos = eol + 1;
		if (in[eol] == '\r' && pos < len && in[pos] == '\n')
			pos++;

		if (n == 0) {
			if (data.len > 0) {
				trace_event(t, event.len ? event.p : "message", has_id ? id.p : NULL,
				            data.p, data.len - 1);
			}
			data.len = event.len = 0;
			continue;
		}
		if (line[0] == ':')
			continue;
		const char *colon = memchr(line, ':', n);
		size_t name_len = colon ? (size_t)(colon - line) : n;
		const char *value = colon ? colon + 1 : line + n;
		size_t value_len = colon ? n - name_len - 1 : 0;
		if (value_len && value[0] == ' ') {
			value++;
			value_len--;
		}
		if (name_len == 4 && memcmp(line, "data", 4) == 0) {
			str_add(&data, value, value_len);
			str_add(&data, "\n", 1);
		} else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
			event.len = 0;
			str_add(&event, value, value_len);
		} else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
			if (!memchr(value, '\0', value_len)) {
				id.len = 0;
				str_add(&id, value, value_len);
				has_id = value_len > 0;
			}
		}
	}
	int pending = pos < len || data.len > 0;
	str_free(&data);
	str_free(&event);
	str_free(&id);
	return pending;
}

/* ---- the reader under test ---------------------------------------------------- */

struct run {
	sse_reader r;
	struct trace t;
	int stop_after;         /* > 0: ask to stop after that many events */
	int stopped;            /* the callback asked to stop */
	int calls_after_stop;
};

static size_t
buffered(const sse_reader *r)
{
	return r->line.len + r->data.len + r->event.len + r->id.len;
}

static int
on_event(void *arg, const struct sse_event *ev)
{
	struct run *run = arg;
	const sse_reader *r = &run->r;

	if (run->stopped)
		run->calls_after_stop++;
	CHECK(ev->event, "event name is NULL");
	/* Empty only when the "event:" value starts with a NUL: names are C
	 * strings, and unlike ids (dropped when they hold a NUL) a name with a
	 * NUL is passed on cut at it. Reported; the reference does the same. */
	CHECK(ev->event[0] || (r->event.len && !r->event.p[0]), "event name is empty");
	CHECK(r->event.len ? ev->event == r->event.p : strcmp(ev->event, "message") == 0,
	      "event name is neither the field's value nor \"message\"");
	CHECK(ev->data, "data is NULL");
	CHECK(ev->data[ev->data_len] == '\0', "data is not NUL-terminated");
	CHECK(!strpbrk(ev->event, "\r\n"), "event name holds CR or LF");
	CHECK(!memchr(ev->data, '\r', ev->data_len), "data holds a CR");
	CHECK(!ev->id || (ev->id[0] && !strpbrk(ev->id, "\r\n")), "bad id");
	CHECK(!ev->id || strlen(ev->id) == r->id.len, "id holds a NUL");
	/* The event was within the cap when it was complete. */
	CHECK(r->data.len + 1 + r->event.len + r->id.len <= r->max_bytes,
	      "dispatched an event of %zu bytes over the cap %zu",
	      r->data.len + 1 + r->event.len + r->id.len, r->max_bytes);

	trace_event(&run->t, ev->event, ev->id, ev->data, ev->data_len);
	if (run->stop_after > 0 && run->t.n >= run->stop_after) {
		run->stopped = 1;
		return 1;
	}
	return 0;
}

static void
run_init(struct run *run, size_t max, int stop_after)
{
	memset(run, 0, sizeof *run);
	sse_reader_init(&run->r, max, on_event, run);
	run->stop_after = stop_after;
}

static void
run_free(struct run *run)
{
	sse_reader_free(&run->r);
	trace_free(&run->t);
}

/* Slice sizes. A plan is a deterministic function of the input. */
enum plan { PLAN_WHOLE, PLAN_BYTES, PLAN_SELF, PLAN_PRNG, PLAN_TWO, PLAN_COUNT };

static const char *const plan_names[] = {
	"one shot", "byte at a time", "sizes from the input bytes",
	"PRNG sizes (with empty feeds)", "two halves",
};

struct slicer {
	enum plan plan;
	const uint8_t *in;
	size_t len;
	size_t i;               /* walk index for PLAN_SELF */
	uint64_t rng;
	size_t cut;             /* PLAN_TWO */
	int gave;
};

static uint64_t
fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static uint64_t
xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static void
slicer_init(struct slicer *s, enum plan plan, const uint8_t *in, size_t len)
{
	memset(s, 0, sizeof *s);
	s->plan = plan;
	s->in = in;
	s->len = len;
	s->rng = fnv1a(in, len) | 1;
	s->cut = len ? (size_t)(s->rng % (len + 1)) : 0;
	s->i = len ? in[0] % len : 0;
}

/* The next slice size (the caller clamps it to what is left). */
static size_t
slicer_next(struct slicer *s)
{
	switch (s->plan) {
	case PLAN_WHOLE:
		return SIZE_MAX;
	case PLAN_BYTES:
		return 1;
	case PLAN_SELF: {
		uint8_t b = s->len ? s->in[s->i++ % s->len] : 0;
		return 1 + b % 7 + (b >= 0xF0 ? (size_t)(b & 0x0F) * 16 : 0);
	}
	case PLAN_PRNG: {
		uint64_t x = xorshift(&s->rng);
		switch (x & 7) {
		case 0: return 0;                           /* an empty feed */
		case 1: case 2: case 3: return 1 + (x >> 8) % 3;
		case 4: case 5: return 1 + (x >> 8) % 16;
		default: return (x >> 8) % 300;
		}
	}
	case PLAN_TWO:
		return s->gave++ ? SIZE_MAX : s->cut;
	default:
		abort();
	}
}

/* Feeds in[0..len) with the plan. With check_cap, checks the buffer bound
 * after every feed and that SSE_TOO_LARGE is sticky. Returns the last rc. */
static enum sse_rc
feed_plan(struct run *run, enum plan plan, const uint8_t *in, size_t len, int check_cap)
{
	struct slicer s;
	enum sse_rc rc = SSE_OK, first_bad = SSE_OK;
	size_t at = 0;

	slicer_init(&s, plan, in, len);
	while (at < len) {
		size_t n = slicer_next(&s);
		if (n > len - at)
			n = len - at;
		int events_before = run->t.n;
		size_t before = buffered(&run->r);
		rc = sse_reader_feed(&run->r, (const char *)in + at, n);
		at += n;
		CHECK(rc == SSE_OK || rc == SSE_STOPPED || rc == SSE_TOO_LARGE, "rc %d", (int)rc);
		if (first_bad != SSE_OK) {
			/* Sticky: the same rc, no event, no growth. */
			CHECK(rc == first_bad, "%s: rc %d after %d", plan_names[plan], rc, first_bad);
			CHECK(run->t.n == events_before, "%s: event after rc %d", plan_names[plan],
			      first_bad);
			CHECK(buffered(&run->r) == before, "%s: buffers grew after rc %d",
			      plan_names[plan], first_bad);
			continue;
		}
		if (rc == SSE_STOPPED)
			CHECK(run->stopped, "SSE_STOPPED without a stop request");
		if (check_cap) {
			size_t max = run->r.max_bytes;
			if (rc == SSE_OK)
				CHECK(buffered(&run->r) <= max,
				      "%s: %zu bytes buffered over the cap %zu with SSE_OK",
				      plan_names[plan], buffered(&run->r), max);
			else if (rc == SSE_TOO_LARGE)
				CHECK(buffered(&run->r) <= max + n + 1,
				      "%s: %zu bytes buffered, cap %zu, slice %zu",
				      plan_names[plan], buffered(&run->r), max, n);
		}
		if (rc != SSE_OK)
			first_bad = rc;
	}
	/* One more feed (sometimes empty) after the end: still the same rc. */
	if (first_bad != SSE_OK) {
		int events_before = run->t.n;
		CHECK(sse_reader_feed(&run->r, "data: x\n\n", 9) == first_bad, "not sticky");
		CHECK(sse_reader_feed(&run->r, "", 0) == first_bad, "not sticky on empty feed");
		CHECK(run->t.n == events_before, "event after a sticky error");
		rc = first_bad;
	}
	return rc;
}

/* ---- 1-3: the input as a stream ------------------------------------------------ */

static void
stream_checks(const uint8_t *in, size_t len)
{
	struct trace ref = { 0 };
	int ref_pending = reference_parse((const char *)in, len, &ref);
	char what[128];

	/* 1. Every slicing gives the reference's events (the default cap of
	 *    1 MiB is far above any input libFuzzer makes). */
	for (int p = 0; p < PLAN_COUNT; p++) {
		struct run run;
		run_init(&run, 0, 0);
		enum sse_rc rc = feed_plan(&run, (enum plan)p, in, len, 1);
		snprintf(what, sizeof what, "slicing \"%s\"", plan_names[p]);
		CHECK(rc == SSE_OK, "%s: rc %d", what, (int)rc);
		same_trace(&ref, &run.t, what);
		CHECK(sse_reader_pending(&run.r) == (ref_pending != 0),
		      "%s: pending %d, reference says %d", what, sse_reader_pending(&run.r),
		      ref_pending);
		/* Reset forgets the stream: the same input again gives the same. */
		if (p == PLAN_PRNG) {
			sse_reader_reset(&run.r);
			CHECK(!sse_reader_pending(&run.r), "pending after reset");
			trace_free(&run.t);
			rc = feed_plan(&run, PLAN_SELF, in, len, 1);
			CHECK(rc == SSE_OK, "after reset: rc %d", (int)rc);
			same_trace(&ref, &run.t, "after sse_reader_reset");
		}
		run_free(&run);
	}

	/* 2. A small cap: a prefix of the reference, bounded buffers, sticky. */
	size_t max = 1 + (len ? (in[len - 1] * 7u + len) % SMALL_MAX_LIMIT : 0);
	for (int p = 0; p < PLAN_COUNT; p++) {
		struct run run;
		run_init(&run, max, 0);
		enum sse_rc rc = feed_plan(&run, (enum plan)p, in, len, 1);
		snprintf(what, sizeof what, "cap %zu, slicing \"%s\"", max, plan_names[p]);
		CHECK(rc == SSE_OK || rc == SSE_TOO_LARGE, "%s: rc %d", what, (int)rc);
		if (rc == SSE_OK)
			same_trace(&ref, &run.t, what);
		else
			prefix_trace(&ref, &run.t, what);
		if (p == PLAN_WHOLE || p == PLAN_PRNG) {
			/* After reset the reader is as good as a fresh one. */
			struct run fresh;
			run_init(&fresh, max, 0);
			enum sse_rc want = feed_plan(&fresh, PLAN_BYTES, in, len, 1);
			sse_reader_reset(&run.r);
			trace_free(&run.t);
			rc = feed_plan(&run, PLAN_BYTES, in, len, 1);
			CHECK(rc == want, "%s: after reset rc %d, fresh reader %d", what, rc, want);
			same_trace(&fresh.t, &run.t, "reset reader vs fresh reader");
			CHECK(sse_reader_pending(&run.r) == sse_reader_pending(&fresh.r),
			      "reset reader vs fresh reader: pending");
			run_free(&fresh);
		}
		run_free(&run);
	}

	/* 3. Stop after k events. */
	int k = 1 + (len ? in[len / 2] % 4 : 0);
	for (int p = 0; p < PLAN_COUNT; p++) {
		struct run run;
		run_init(&run, 0, k);
		enum sse_rc rc = feed_plan(&run, (enum plan)p, in, len, 0);
		snprintf(what, sizeof what, "stop after %d, slicing \"%s\"", k, plan_names[p]);
		if (ref.n >= k) {
			CHECK(rc == SSE_STOPPED, "%s: rc %d", what, (int)rc);
			CHECK(run.t.n == k, "%s: %d events", what, run.t.n);
			prefix_trace(&ref, &run.t, what);
		} else {
			CHECK(rc == SSE_OK, "%s: rc %d", what, (int)rc);
			same_trace(&ref, &run.t, what);
		}
		CHECK(run.calls_after_stop == 0, "%s: callback called after stop", what);
		run_free(&run);
	}
	trace_free(&ref);
}

/* ---- 4: the writer, read back ---------------------------------------------------- */

/* data with CRLF and lone CR turned into LF, as sse.h documents. */
static void
normalise(struct str *out, const char *data)
{
	str_add(out, "", 0);
	for (const char *p = data ? data : ""; *p; p++) {
		if (*p == '\r') {
			str_add(out, "\n", 1);
			if (p[1] == '\n')
				p++;
		} else {
			str_add(out, p, 1);
		}
	}
}

static void
roundtrip_checks(const uint8_t *in, size_t len)
{
	/* Byte 0: which fields are NULL; the rest: up to six NUL-separated
	 * fields ev1, id1, data1, ev2, id2, data2 (missing ones are NULL). */
	unsigned flags = len ? in[0] : 0;
	char *copy = malloc(len + 1);
	const char *field[6] = { NULL };
	size_t nf = 0;

	if (!copy)
		abort();
	if (len > 1)
		memcpy(copy, in + 1, len - 1);
	copy[len ? len - 1 : 0] = '\0';
	if (len > 0) {
		char *p = copy, *end = copy + (len - 1);
		while (nf < 6) {
			field[nf++] = p;
			char *z = memchr(p, '\0', (size_t)(end - p));
			if (!z)
				break;
			p = z + 1;
		}
	}
	for (int i = 0; i < 6; i++)
		if (flags & (1u << i))
			field[i] = NULL;

	struct evbuffer *out = evbuffer_new();
	struct trace want = { 0 };
	struct str norm = { 0 };
	const char *cur_id = NULL;

	for (int e = 0; e < 2; e++) {
		const char *ev = field[3 * e], *id = field[3 * e + 1], *data = field[3 * e + 2];
		size_t before = evbuffer_get_length(out);
		int rc = sse_format_event(out, ev, id, data);
		int refuse = (ev && strpbrk(ev, "\r\n")) || (id && strpbrk(id, "\r\n"));
		if (refuse) {
			CHECK(rc == -1, "sse_format_event accepted a CR/LF in event or id");
			CHECK(evbuffer_get_length(out) == before, "a refused event appended bytes");
			continue;
		}
		CHECK(rc == 0, "sse_format_event failed on a valid event");
		if (id)
			cur_id = id[0] ? id : NULL;
		norm.len = 0;
		normalise(&norm, data);
		trace_event(&want, ev && ev[0] ? ev : "message", cur_id, norm.p, norm.len);
	}

	size_t n = evbuffer_get_length(out);
	const uint8_t *text = evbuffer_pullup(out, -1);
	if (!text)
		text = (const uint8_t *)"";

	/* The reference parser agrees with the expectation ... */
	struct trace ref = { 0 };
	int pending = reference_parse((const char *)text, n, &ref);
	if (!(ref.n == want.n && ref.s.len == want.s.len &&
	      (want.s.len == 0 || memcmp(ref.s.p, want.s.p, want.s.len) == 0)))
		dump_bytes("written", (const char *)text, n);
	same_trace(&want, &ref, "sse_format_event read back by the reference parser");
	CHECK(!pending, "sse_format_event output leaves a partial event");

	/* ... and so does the reader, however the text is cut. */
	for (int p = 0; p < PLAN_COUNT; p++) {
		struct run run;
		run_init(&run, 0, 0);
		enum sse_rc rc = feed_plan(&run, (enum plan)p, text, n, 1);
		CHECK(rc == SSE_OK, "round trip: rc %d", (int)rc);
		same_trace(&want, &run.t, "sse_format_event read back by sse_reader");
		CHECK(!sse_reader_pending(&run.r), "round trip: reader still pending");
		run_free(&run);
	}

	trace_free(&ref);
	trace_free(&want);
	str_free(&norm);
	evbuffer_free(out);
	free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	stream_checks(data, size);
	roundtrip_checks(data, size);
	return 0;
}
