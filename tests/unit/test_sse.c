/*
 * test_sse — the SSE reader and writer (core/sse.c), TAP output.
 *
 * The main property: however a stream is cut into slices, the reader sees
 * the same events. Each stream is fed whole, split in two at every byte
 * offset, split in three at many offset pairs, and one byte at a time; a
 * seeded random-bytes pass checks the same invariance on garbage. The writer
 * is checked by feeding what it writes back through the reader.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "sse.h"

static int failures, tests;

static void
ok(int cond, const char *fmt, ...)
{
	va_list ap;

	tests++;
	if (!cond)
		failures++;
	printf("%sok %d - ", cond ? "" : "not ", tests);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

/* Every event seen, serialised as "event\x1fid\x1fdata\x1e" so a whole
 * sequence compares with one memcmp. */
struct trace {
	char *p;
	size_t len, cap;
	int n;
	int stop_after; /* > 0: ask the reader to stop after that many events */
};

static void
trace_add(struct trace *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		t->cap = (t->len + n + 1) * 2;
		t->p = realloc(t->p, t->cap);
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = '\0';
}

static int
on_event(void *arg, const struct sse_event *ev)
{
	struct trace *t = arg;

	trace_add(t, ev->event, strlen(ev->event));
	trace_add(t, "\x1f", 1);
	if (ev->id)
		trace_add(t, ev->id, strlen(ev->id));
	else
		trace_add(t, "(none)", 6);
	trace_add(t, "\x1f", 1);
	trace_add(t, ev->data, ev->data_len);
	trace_add(t, "\x1e", 1);
	if (ev->data[ev->data_len] != '\0')
		trace_add(t, "(not NUL-terminated)", 20);
	t->n++;
	return t->stop_after > 0 && t->n >= t->stop_after;
}

static void
trace_reset(struct trace *t)
{
	t->len = 0;
	t->n = 0;
	if (t->p)
		t->p[0] = '\0';
}

/* Feeds s cut at the given offsets (sorted, within [0, len]). */
static enum sse_rc
feed_cuts(struct trace *t, size_t max, const char *s, size_t len,
          const size_t *cuts, int ncuts, int *pending)
{
	sse_reader r;
	enum sse_rc rc = SSE_OK;
	size_t from = 0;

	sse_reader_init(&r, max, on_event, t);
	trace_reset(t);
	for (int i = 0; i <= ncuts; i++) {
		size_t to = i < ncuts ? cuts[i] : len;
		rc = sse_reader_feed(&r, s + from, to - from);
		from = to;
	}
	if (pending)
		*pending = sse_reader_pending(&r);
	sse_reader_free(&r);
	return rc;
}

static enum sse_rc
feed_bytes(struct trace *t, size_t max, const char *s, size_t len)
{
	sse_reader r;
	enum sse_rc rc = SSE_OK;

	sse_reader_init(&r, max, on_event, t);
	trace_reset(t);
	for (size_t i = 0; i < len; i++)
		rc = sse_reader_feed(&r, s + i, 1);
	sse_reader_free(&r);
	return rc;
}

/* Checks that every way of slicing s yields exactly `expect` (a trace). */
static void
check_stream(const char *name, const char *s, size_t len, const char *expect)
{
	struct trace t = { 0 };
	size_t cuts[2];
	int bad = 0;

	feed_cuts(&t, 0, s, len, NULL, 0, NULL);
	ok(t.len == strlen(expect) && memcmp(t.p ? t.p : "", expect, t.len) == 0,
	   "%s: whole", name);
	if (!(t.len == strlen(expect) && memcmp(t.p ? t.p : "", expect, t.len) == 0))
		printf("# got:    '%s'\n# wanted: '%s'\n", t.p ? t.p : "", expect);

	for (size_t i = 0; i <= len && !bad; i++) {
		cuts[0] = i;
		feed_cuts(&t, 0, s, len, cuts, 1, NULL);
		if (t.len != strlen(expect) || memcmp(t.p ? t.p : "", expect, t.len) != 0) {
			printf("# split at %zu differs\n", i);
			bad = 1;
		}
	}
	ok(!bad, "%s: split in two at every offset", name);

	bad = 0;
	for (size_t i = 0; i <= len && !bad; i++) {
		for (size_t j = i; j <= len && !bad; j += 1 + j % 3) {
			cuts[0] = i;
			cuts[1] = j;
			feed_cuts(&t, 0, s, len, cuts, 2, NULL);
			if (t.len != strlen(expect) || memcmp(t.p ? t.p : "", expect, t.len) != 0) {
				printf("# split at %zu,%zu differs\n", i, j);
				bad = 1;
			}
		}
	}
	ok(!bad, "%s: split in three", name);

	feed_bytes(&t, 0, s, len);
	ok(t.len == strlen(expect) && memcmp(t.p ? t.p : "", expect, t.len) == 0,
	   "%s: one byte at a time", name);
	free(t.p);
}

#define EV(event, id, data) event "\x1f" id "\x1f" data "\x1e"

static const char openai_lf[] =
	": OPENROUTER PROCESSING\n"
	"\n"
	"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n"
	"\n"
	"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n"
	"\n"
	"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n"
	"\n"
	"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n"
	"\n"
	"data: [DONE]\n"
	"\n";

static const char openai_expect[] =
	EV("message", "(none)", "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}")
	EV("message", "(none)", "{\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}")
	EV("message", "(none)", "{\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}")
	EV("message", "(none)", "{\"choices\":[],\"usage\":{\"prompt_tokens\":3}}")
	EV("message", "(none)", "[DONE]");

/* Rewrites every "\n" of an LF stream as the given line ending. */
static char *
with_eol(const char *s, const char *eol, size_t *len)
{
	size_t n = 0, el = strlen(eol);
	char *out = malloc(strlen(s) * el + 1);

	for (; *s; s++) {
		if (*s == '\n') {
			memcpy(out + n, eol, el);
			n += el;
		} else {
			out[n++] = *s;
		}
	}
	out[n] = '\0';
	*len = n;
	return out;
}

static void
test_line_endings(void)
{
	size_t len;
	char *s;

	check_stream("openai stream, LF", openai_lf, strlen(openai_lf), openai_expect);
	s = with_eol(openai_lf, "\r\n", &len);
	check_stream("openai stream, CRLF", s, len, openai_expect);
	free(s);
	s = with_eol(openai_lf, "\r", &len);
	check_stream("openai stream, lone CR", s, len, openai_expect);
	free(s);

	/* Mixed endings, and a CR right before an LF that is really the next
	 * blank line ("\r\n" is one line end, "\r\r" two). */
	static const char mixed[] = "data: a\r\rdata: b\n\r\ndata: c\r\n\n";
	check_stream("mixed line endings", mixed, strlen(mixed),
	             EV("message", "(none)", "a") EV("message", "(none)", "b")
	             EV("message", "(none)", "c"));
}

static void
test_fields(void)
{
	static const char multi[] = "data: line one\ndata:line two\ndata:  three\n\n";
	check_stream("multi-line data, one space stripped", multi, strlen(multi),
	             EV("message", "(none)", "line one\nline two\n three"));

	static const char named[] =
		"event: token\nid: 7\ndata: {\"d\":\"x\"}\n\n"
		"data: second\n\n"             /* id persists, event resets */
		"id\ndata: third\n\n"          /* bare "id" clears it */
		"retry: 100\nfoo: bar\ndata: fourth\n\n";
	check_stream("event, id, retry, unknown fields", named, strlen(named),
	             EV("token", "7", "{\"d\":\"x\"}") EV("message", "7", "second")
	             EV("message", "(none)", "third") EV("message", "(none)", "fourth"));

	static const char empty[] =
		"event: nodata\n\n"            /* no data line: not dispatched */
		"data\n\n"                     /* bare "data": one empty line */
		"data:\ndata:\n\n"             /* two empty lines → "\n" */
		": just a comment\n\n"
		"data:x:y: z\n\n";             /* only the first colon splits */
	check_stream("empty data and comments", empty, strlen(empty),
	             EV("message", "(none)", "") EV("message", "(none)", "\n")
	             EV("message", "(none)", "x:y: z"));

	static const char bom[] = "\xEF\xBB\xBF" "data: after bom\n\n" "\xEF\xBB\xBF" "data: x\n\n";
	check_stream("leading BOM dropped, later one kept", bom, strlen(bom),
	             EV("message", "(none)", "after bom"));

	static const char notbom[] = "\xEF\xBB" "data: x\n\n" "data: y\n\n";
	check_stream("BOM prefix that is not a BOM is a (bad) line", notbom, strlen(notbom),
	             EV("message", "(none)", "y"));
}

static void
test_utf8(void)
{
	/* 2-, 3- and 4-byte sequences: one-byte feeding cuts all of them. */
	static const char s[] =
		"data: {\"content\":\"w\xC3\xB6rld \xE2\x82\xAC \xF0\x9F\x98\x80\"}\n\n";
	check_stream("UTF-8 split across slices", s, strlen(s),
	             EV("message", "(none)",
	                "{\"content\":\"w\xC3\xB6rld \xE2\x82\xAC \xF0\x9F\x98\x80\"}"));
}

static void
test_unterminated(void)
{
	struct trace t = { 0 };
	static const char s[] = "data: one\n\ndata: two\n";
	static const char s2[] = "data: one\n\ndata: tw";
	int pending = 0;

	feed_cuts(&t, 0, s, strlen(s), NULL, 0, &pending);
	ok(t.n == 1 && strstr(t.p, "one") && !strstr(t.p, "two") && pending,
	   "event without the final blank line is not dispatched (and is pending)");
	feed_cuts(&t, 0, s2, strlen(s2), NULL, 0, &pending);
	ok(t.n == 1 && pending, "cut mid-line: not dispatched, pending");
	feed_cuts(&t, 0, openai_lf, strlen(openai_lf), NULL, 0, &pending);
	ok(!pending, "a complete stream leaves nothing pending");
	free(t.p);
}

static void
test_cap(void)
{
	struct trace t = { 0 };
	char big[300];
	enum sse_rc rc;
	sse_reader r;

	/* One long line, never ended. */
	memset(big, 'x', sizeof big);
	memcpy(big, "data: ", 6);
	rc = feed_cuts(&t, 64, big, sizeof big, NULL, 0, NULL);
	ok(rc == SSE_TOO_LARGE, "unterminated line over the cap → SSE_TOO_LARGE");
	rc = feed_bytes(&t, 64, big, sizeof big);
	ok(rc == SSE_TOO_LARGE, "same, fed a byte at a time");

	/* Many short data lines, never dispatched. */
	sse_reader_init(&r, 64, on_event, &t);
	trace_reset(&t);
	rc = SSE_OK;
	for (int i = 0; i < 20 && rc == SSE_OK; i++)
		rc = sse_reader_feed(&r, "data: 0123456789\n", 17);
	ok(rc == SSE_TOO_LARGE, "data accumulated over the cap → SSE_TOO_LARGE");
	rc = sse_reader_feed(&r, "\n", 1);
	ok(rc == SSE_TOO_LARGE && t.n == 0, "the error is sticky; nothing dispatched");
	sse_reader_free(&r);

	/* Under the cap, however long the whole stream is. */
	sse_reader_init(&r, 64, on_event, &t);
	trace_reset(&t);
	rc = SSE_OK;
	for (int i = 0; i < 1000 && rc == SSE_OK; i++)
		rc = sse_reader_feed(&r, "data: 0123456789\n\n", 18);
	ok(rc == SSE_OK && t.n == 1000, "the cap bounds one event, not the stream");
	sse_reader_free(&r);

	/* A complete long line inside one slice counts too. */
	char line[200];
	memset(line, 'y', sizeof line);
	memcpy(line, "data: ", 6);
	line[sizeof line - 1] = '\n';
	rc = feed_cuts(&t, 64, line, sizeof line, NULL, 0, NULL);
	ok(rc == SSE_TOO_LARGE, "a whole long data line in one slice → SSE_TOO_LARGE");
	free(t.p);
}

static void
test_stop(void)
{
	struct trace t = { 0 };
	sse_reader r;
	enum sse_rc rc;

	t.stop_after = 2;
	sse_reader_init(&r, 0, on_event, &t);
	rc = sse_reader_feed(&r, openai_lf, strlen(openai_lf));
	ok(rc == SSE_STOPPED && t.n == 2, "callback stop: SSE_STOPPED, rest of slice dropped");
	rc = sse_reader_feed(&r, "data: more\n\n", 12);
	ok(rc == SSE_STOPPED && t.n == 2, "stopped reader stays stopped");
	sse_reader_reset(&r);
	t.stop_after = 0;
	rc = sse_reader_feed(&r, "data: fresh\n\n", 13);
	ok(rc == SSE_OK && t.n == 3, "reset makes it usable again");
	sse_reader_free(&r);
	free(t.p);
}

/* ---- writer ---- */

static char *
drain(struct evbuffer *b, size_t *len)
{
	*len = evbuffer_get_length(b);
	char *s = malloc(*len + 1);
	evbuffer_remove(b, s, *len);
	s[*len] = '\0';
	return s;
}

/* What the reader should give back for data written by sse_format_event:
 * every CRLF, CR and LF becomes "\n". */
static char *
normalise(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;

	for (; *s; s++) {
		if (*s == '\r') {
			*o++ = '\n';
			if (s[1] == '\n')
				s++;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
	return out;
}

static void
test_writer(void)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *s;

	sse_format_event(b, "token", "3", "{\"delta\":\"hi\"}");
	s = drain(b, &len);
	ok(strcmp(s, "event: token\nid: 3\ndata: {\"delta\":\"hi\"}\n\n") == 0,
	   "writer: simple event bytes");
	free(s);

	sse_format_event(b, NULL, NULL, "a\nb\r\nc\rd\n");
	s = drain(b, &len);
	ok(strcmp(s, "data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n") == 0,
	   "writer: data split on LF, CRLF and CR");
	free(s);

	sse_format_event(b, NULL, NULL, NULL);
	s = drain(b, &len);
	ok(strcmp(s, "data: \n\n") == 0, "writer: NULL data is an empty event");
	free(s);

	ok(sse_format_event(b, "bad\nname", NULL, "x") == -1 &&
	   sse_format_event(b, "ok", "1\r2", "x") == -1 &&
	   evbuffer_get_length(b) == 0,
	   "writer: CR/LF in event or id refused, nothing appended");

	/* Round trips through the reader, cut everywhere. */
	static const char *datas[] = {
		"plain", "", " leading space", "two\nlines", "crlf\r\nand\rcr",
		"\n", "\n\n", "trailing\n", "data: looks like a field\n\nevent: x",
		": comment-looking", "w\xC3\xB6rld \xF0\x9F\x98\x80",
	};
	for (size_t i = 0; i < sizeof datas / sizeof *datas; i++) {
		struct trace want = { 0 };
		char *norm = normalise(datas[i]);
		char name[64];

		trace_add(&want, "delta\x1f" "42\x1f", 9);
		trace_add(&want, norm, strlen(norm));
		trace_add(&want, "\x1e", 1);
		sse_format_event(b, "delta", "42", datas[i]);
		s = drain(b, &len);
		snprintf(name, sizeof name, "writer round trip #%zu", i);
		check_stream(name, s, len, want.p);
		free(s);
		free(norm);
		free(want.p);
	}
	evbuffer_free(b);
}

/* ---- split invariance on random input (a poor man's fuzzer) ---- */

static unsigned long long rng = 0x2545F4914F6CDD1DULL;

static unsigned
rnd(unsigned n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng % n);
}

static void
test_random(void)
{
	static const char alphabet[] = "data:event:id: \r\n\n\n:x\xC3\xB6\0";
	struct trace whole = { 0 }, sliced = { 0 };
	char buf[512];
	int bad = 0, rounds = 3000;

	for (int round = 0; round < rounds && !bad; round++) {
		size_t len = rnd(sizeof buf);
		size_t cuts[8];
		int ncuts = (int)rnd(8);
		enum sse_rc rc1, rc2;

		for (size_t i = 0; i < len; i++)
			buf[i] = round % 4 == 0 ? (char)rnd(256)
			                        : alphabet[rnd(sizeof alphabet - 1)];
		for (int i = 0; i < ncuts; i++)
			cuts[i] = len ? rnd((unsigned)len + 1) : 0;
		/* sort the cuts */
		for (int i = 1; i < ncuts; i++)
			for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
				size_t tmp = cuts[j];
				cuts[j] = cuts[j - 1];
				cuts[j - 1] = tmp;
			}
		/* A small cap sometimes, so the error path is exercised too. */
		size_t cap = round % 3 == 0 ? 48 : 0;
		rc1 = feed_cuts(&whole, cap, buf, len, NULL, 0, NULL);
		rc2 = feed_cuts(&sliced, cap, buf, len, cuts, ncuts, NULL);
		/* With a cap, slicing may hit it earlier (a line is copied only
		 * when a slice cuts it), never later; without one, or when
		 * neither hit it, the events must be identical. */
		if (rc1 == SSE_TOO_LARGE && rc2 == SSE_OK)
			bad = round + 1;
		if (rc1 == SSE_OK && rc2 != SSE_OK && cap == 0)
			bad = round + 1;
		if (rc1 == SSE_OK && rc2 == SSE_OK && (whole.len != sliced.len ||
		    memcmp(whole.p ? whole.p : "", sliced.p ? sliced.p : "", whole.len) != 0))
			bad = round + 1;
	}
	ok(!bad, "random input: same events whole and sliced (%d rounds)", rounds);
	if (bad)
		printf("# first failing round %d\n", bad - 1);
	free(whole.p);
	free(sliced.p);
}

int
main(void)
{
	test_line_endings();
	test_fields();
	test_utf8();
	test_unterminated();
	test_cap();
	test_stop();
	test_writer();
	test_random();
	printf("1..%d\n", tests);
	if (failures)
		printf("# %d of %d failed\n", failures, tests);
	return failures ? 1 : 0;
}
