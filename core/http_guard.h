/*
 * http_guard — RFC 9112 framing checks in front of evhttp's lenient parser,
 * and the one decoding of a request path.
 *
 * evhttp (2.1.12) stays the parser: it hands route() a request whose header
 * list keeps every duplicate and whatever name it cut at the first ':'. The
 * guard looks at that list before anything else does and says whether the
 * request may go on, and if not, with which status and error code, and
 * whether the connection must be closed after the answer because the body's
 * framing is in doubt (request smuggling: two Content-Lengths, Content-Length
 * with Transfer-Encoding, a coding evhttp would not decode, a body on a
 * method that takes none).
 *
 * http_path_split() decodes a raw path exactly once, per segment, so a %2F
 * stays inside its segment, and refuses control bytes (%00 would otherwise
 * end a C string early and match a shorter name). Owns nothing between
 * calls; a struct http_path's segments are freed by http_path_clear().
 */
#ifndef RAPPORT_HTTP_GUARD_H
#define RAPPORT_HTTP_GUARD_H

#include <stdbool.h>

#include <event2/http.h>

struct evkeyvalq;

struct http_guard_verdict {
	int status;            /* 0: the request may go on; else the answer's status */
	const char *code;      /* JSON error code (static) */
	const char *message;   /* JSON error message (static) */
	bool close;            /* answer with Connection: close */
};

/* The checks on what evhttp parsed: header names, Host, body framing,
 * methods the API never serves. major/minor: the request's HTTP version. */
void http_guard_check_parts(const struct evkeyvalq *headers, enum evhttp_cmd_type method,
                            int major, int minor, struct http_guard_verdict *v);
/* The same for a request handed to the gencb. */
void http_guard_check(struct evhttp_request *req, struct http_guard_verdict *v);

#define HTTP_PATH_MAX_SEGMENTS 8
struct http_path {
	int n;                                 /* non-empty segments */
	char *seg[HTTP_PATH_MAX_SEGMENTS];     /* decoded, NUL-terminated, in buf */
	char *buf;                             /* the one allocation they live in */
};
enum { HTTP_PATH_OK = 0, HTTP_PATH_BAD = -1, HTTP_PATH_TOO_DEEP = -2 };
/* Splits raw (still percent-encoded, no query) at '/' and decodes each
 * segment once; empty segments ("//") are skipped. HTTP_PATH_BAD: a raw
 * control byte or space, or a segment that decodes to a byte < 0x20 or
 * 0x7f. HTTP_PATH_TOO_DEEP: more than HTTP_PATH_MAX_SEGMENTS. On every
 * return p holds only what http_path_clear() frees. */
int http_path_split(const char *raw, struct http_path *p);
void http_path_clear(struct http_path *p);

#endif
