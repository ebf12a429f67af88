/*
 * sse — Server-Sent Events framing: an incremental reader and a writer.
 *
 * The reader owns four small buffers: the line that is not yet terminated
 * (carried from one feed to the next), and the data, event name and id of the
 * event being built. A complete line found inside a slice is parsed straight
 * from the caller's bytes; only a line cut by the slice end is copied. Lines
 * end at CRLF, LF or a lone CR; since a CR may be the last byte of a slice,
 * the reader remembers it (saw_cr) and drops an LF that starts the next
 * slice instead of looking ahead. Every buffered byte counts against
 * max_bytes, so a peer that never ends a line or an event cannot make us
 * grow without bound.
 *
 * The writer emits "event:", "id:" and one "data:" line per line of the text,
 * so text containing line breaks cannot end an event early or inject fields.
 */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "util.h"

#define SSE_DEFAULT_MAX (1024 * 1024)

static const unsigned char bom[3] = { 0xEF, 0xBB, 0xBF };

/* Append n bytes and keep the buffer NUL-terminated, so its contents can be
 * handed out as a C string. */
static void
buf_append(struct sse_buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
buf_set(struct sse_buf *b, const char *s, size_t n)
{
	b->len = 0;
	buf_append(b, s, n);
}

static void
buf_free(struct sse_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void
sse_reader_init(sse_reader *r, size_t max_bytes, sse_event_cb *cb, void *arg)
{
	memset(r, 0, sizeof(*r));
	r->cb = cb;
	r->arg = arg;
	r->max_bytes = max_bytes ? max_bytes : SSE_DEFAULT_MAX;
	r->state = SSE_OK;
}

void
sse_reader_free(sse_reader *r)
{
	buf_free(&r->line);
	buf_free(&r->data);
	buf_free(&r->event);
	buf_free(&r->id);
}

void
sse_reader_reset(sse_reader *r)
{
	r->line.len = r->data.len = r->event.len = r->id.len = 0;
	r->has_id = false;
	r->saw_cr = false;
	r->started = false;
	r->bom_seen = 0;
	r->state = SSE_OK;
}

bool
sse_reader_pending(const sse_reader *r)
{
	return r->line.len > 0 || r->data.len > 0 || r->bom_seen > 0;
}

static bool
over_cap(const sse_reader *r)
{
	return r->line.len + r->data.len + r->event.len + r->id.len > r->max_bytes;
}

/* An empty line: hand the event over, unless it has no data (then the spec
 * says nothing is dispatched and the event name is forgotten too). */
static void
dispatch(sse_reader *r)
{
	struct sse_event ev;

	if (r->data.len == 0) {
		r->event.len = 0;
		return;
	}
	/* Every data line appended a "\n"; the last one is not part of the data. */
	r->data.len--;
	r->data.p[r->data.len] = '\0';

	ev.event = r->event.len ? r->event.p : "message";
	ev.id = r->has_id ? r->id.p : NULL;
	ev.data = r->data.p;
	ev.data_len = r->data.len;
	if (r->cb(r->arg, &ev) != 0)
		r->state = SSE_STOPPED;
	r->data.len = 0;
	r->event.len = 0;
}

static void
process_line(sse_reader *r, const char *line, size_t n)
{
	const char *colon, *value;
	size_t name_len, value_len;

	if (n == 0) {
		dispatch(r);
		return;
	}
	if (line[0] == ':')
		return; /* comment: heartbeats and padding */

	colon = memchr(line, ':', n);
	if (colon) {
		name_len = (size_t)(colon - line);
		value = colon + 1;
		value_len = n - name_len - 1;
		if (value_len && value[0] == ' ') {
			value++;
			value_len--;
		}
	} else {
		/* A bare name is that field with an empty value. */
		name_len = n;
		value = line + n;
		value_len = 0;
	}

	if (name_len == 4 && memcmp(line, "data", 4) == 0) {
		buf_append(&r->data, value, value_len);
		buf_append(&r->data, "\n", 1);
	} else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
		buf_set(&r->event, value, value_len);
	} else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
		/* An id with a NUL is ignored; an empty one clears the id. */
		if (!memchr(value, '\0', value_len)) {
			buf_set(&r->id, value, value_len);
			r->has_id = value_len > 0;
		}
	}
	/* "retry" and unknown fields: ignored. */

	if (over_cap(r))
		r->state = SSE_TOO_LARGE;
}

/* Drop one leading BOM, which may itself arrive split across slices. Returns
 * how many bytes of buf were consumed as BOM. */
static size_t
skip_bom(sse_reader *r, const char *buf, size_t len)
{
	size_t i = 0;

	while (!r->started && i < len) {
		if ((unsigned char)buf[i] == bom[r->bom_seen]) {
			r->bom_seen++;
			i++;
			if (r->bom_seen == sizeof(bom)) {
				r->started = true;
				r->bom_seen = 0;
			}
		} else {
			/* Not a BOM after all: the bytes matched so far are text
			 * (none of them is CR or LF), so they begin the line. */
			buf_append(&r->line, (const char *)bom, r->bom_seen);
			r->bom_seen = 0;
			r->started = true;
		}
	}
	return i;
}

enum sse_rc
sse_reader_feed(sse_reader *r, const char *buf, size_t len)
{
	const char *p, *end, *eol;

	if (r->state != SSE_OK)
		return r->state;
	if (len == 0)
		return SSE_OK;

	p = buf + skip_bom(r, buf, len);
	end = buf + len;
	while (p < end && r->state == SSE_OK) {
		if (r->saw_cr) {
			/* The LF of a CRLF whose CR ended the previous line. */
			r->saw_cr = false;
			if (*p == '\n') {
				p++;
				continue;
			}
		}
		for (eol = p; eol < end && *eol != '\n' && *eol != '\r'; eol++)
			;
		if (eol == end) {
			buf_append(&r->line, p, (size_t)(end - p));
			if (over_cap(r))
				r->state = SSE_TOO_LARGE;
			break;
		}
		if (r->line.len) {
			buf_append(&r->line, p, (size_t)(eol - p));
			if (over_cap(r)) {
				r->state = SSE_TOO_LARGE;
				break;
			}
			/* process_line may not touch r->line, so this is safe. */
			process_line(r, r->line.p, r->line.len);
			r->line.len = 0;
		} else {
			process_line(r, p, (size_t)(eol - p));
		}
		r->saw_cr = (*eol == '\r');
		p = eol + 1;
	}
	return r->state;
}

/* Validation first, so a refused event appends nothing. */
static bool
has_line_break(const char *s)
{
	return s && strpbrk(s, "\r\n") != NULL;
}

int
sse_format_event(struct evbuffer *out, const char *event, const char *id,
                     const char *data)
{
	const char *p, *eol;
	int rc = 0;

	if (has_line_break(event) || has_line_break(id))
		return -1;
	if (event)
		rc |= evbuffer_add_printf(out, "event: %s\n", event) < 0;
	if (id)
		rc |= evbuffer_add_printf(out, "id: %s\n", id) < 0;

	p = data ? data : "";
	for (;;) {
		eol = p + strcspn(p, "\r\n");
		rc |= evbuffer_add(out, "data: ", 6);
		rc |= evbuffer_add(out, p, (size_t)(eol - p));
		rc |= evbuffer_add(out, "\n", 1);
		if (*eol == '\0')
			break;
		p = eol + ((eol[0] == '\r' && eol[1] == '\n') ? 2 : 1);
	}
	rc |= evbuffer_add(out, "\n", 1);
	return rc ? -1 : 0;
}
