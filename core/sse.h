/*
 * sse — Server-Sent Events framing (WHATWG HTML §9.2), both directions.
 *
 * sse_reader turns a byte stream, fed in slices cut anywhere (mid-line, mid
 * CRLF, mid UTF-8 sequence), into events: llm uses it on OpenAI's streamed
 * replies. sse_format_event() writes one event so that any text is framed
 * safely: the server uses it for its own text/event-stream responses.
 *
 * The reader follows the spec's parsing rules: lines end with CRLF, LF or a
 * lone CR; one leading UTF-8 BOM is dropped; ":" lines are comments; a field
 * is "name:value" with one space after the colon removed; data lines are
 * joined with "\n"; an empty line dispatches; an event with no data line is
 * not dispatched; an unterminated event at end of stream is discarded (the
 * reader never sees the end: it simply never dispatches it). "retry:" and
 * unknown fields are ignored. Bytes are not validated as UTF-8: the reader
 * only splits on ASCII CR/LF, so multi-byte sequences pass through intact.
 */
#ifndef RAPPORT_SSE_H
#define RAPPORT_SSE_H

#include <stdbool.h>
#include <stddef.h>

struct evbuffer;

/* One dispatched event. Strings are NUL-terminated and live only during the
 * callback. data may contain NUL bytes: use data_len. */
struct sse_event {
	const char *event;   /* "event:" field, "message" when none was given */
	const char *id;      /* last event id seen on this stream, or NULL */
	const char *data;    /* data lines joined with "\n" */
	size_t data_len;
};

/* Return 0 to go on, non-zero to stop: sse_reader_feed() then returns
 * SSE_STOPPED at once, the rest of the slice is dropped, and every later
 * feed returns SSE_STOPPED too. */
typedef int sse_event_cb(void *arg, const struct sse_event *ev);

enum sse_rc {
	SSE_OK = 0,
	SSE_STOPPED,        /* the callback asked to stop */
	SSE_TOO_LARGE,      /* buffered bytes went over max_bytes */
};

/* A simple growable byte buffer; private to the reader but embedded in it. */
struct sse_buf {
	char *p;
	size_t len, cap;
};

/* Embeddable (no allocation until bytes need buffering). Fields are private. */
typedef struct sse_reader {
	sse_event_cb *cb;
	void *arg;
	size_t max_bytes;       /* cap on partial line + pending event data */
	struct sse_buf line;    /* the unterminated line carried between feeds */
	struct sse_buf data;    /* data lines of the event being built */
	struct sse_buf event;   /* its "event:" value */
	struct sse_buf id;      /* last event id ("id:" persists across events) */
	bool has_id;
	bool saw_cr;            /* last byte was CR: an LF right after is its pair */
	bool started;           /* past the optional leading BOM */
	unsigned char bom_seen; /* BOM bytes matched so far, while !started */
	enum sse_rc state;      /* sticky once not SSE_OK */
} sse_reader;

/* max_bytes 0 means 1 MiB. */
void sse_reader_init(sse_reader *r, size_t max_bytes, sse_event_cb *cb, void *arg);
/* Frees buffers; the reader may be initialised again afterwards. */
void sse_reader_free(sse_reader *r);
/* Forget all stream state (buffers are kept for reuse), as for a new stream. */
void sse_reader_reset(sse_reader *r);
/* Feed the next slice of the stream (len may be 0). */
enum sse_rc sse_reader_feed(sse_reader *r, const char *buf, size_t len);
/* True when bytes of an unfinished line or event are buffered: at end of
 * stream that means the last event was cut. */
bool sse_reader_pending(const sse_reader *r);

/* Appends one event to out: "event: <event>\n" when event is non-NULL,
 * "id: <id>\n" when id is non-NULL, then one "data: " line per line of data
 * (split on CRLF, LF or CR, so the reader gets the same text back with line
 * ends normalised to "\n"; NULL data is sent as ""), then the blank line.
 * Returns -1 (and appends nothing) when event or id contain CR or LF, which
 * no framing can carry; 0 on success. */
int sse_format_event(struct evbuffer *out, const char *event, const char *id,
                     const char *data);

#endif
