/*
 * http_guard — what evhttp 2.1.12 lets through and RFC 9112 does not, found
 * in the header list evhttp built (it keeps duplicates, and it cuts a line
 * at its first ':' without checking the name), plus the per-segment path
 * decoding. The checks run in the order a careful server reads a request:
 * version, each field line, Host, then the body's framing, then the method.
 *
 * What evhttp itself rejects never reaches route(): with its 400, a line
 * with no ':', an HTTP major version above 1, Content-Length with
 * Transfer-Encoding, a Content-Length strtoll refuses, a second
 * Transfer-Encoding after a "chunked" one, headers past the cap; with its
 * 501, an unknown method; with its 413, a bad chunk or a body past the
 * hard cap (probed with raw sockets, see docs/api.md). 2.1.12 has no error
 * hook, so evhttp_send_error() at the end of this file takes the place of
 * libevent's: those answers carry the JSON error document too, always with
 * close.
 * evhttp joins an obs-fold line into the previous value with one space
 * (RFC 9112 §5.2 allows a server that), so a fold is only seen where it
 * breaks a value's syntax: Host, Content-Length, Transfer-Encoding.
 */
#include "http_guard.h"
#include "log.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <jansson.h>

#include <event2/buffer.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>

static void
reject(struct http_guard_verdict *v, int status, const char *code, const char *message,
       bool close)
{
	v->status = status;
	v->code = code;
	v->message = message;
	v->close = close;
}

/* RFC 9110 §5.6.2 tchar. */
static bool
is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool
is_token(const char *s)
{
	if (!s || !*s)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (!is_tchar(*p))
			return false;
	return true;
}

/* A field value may hold HTAB, SP, visible ASCII and obs-text; no other
 * control byte (a bare CR would be a line end to someone else). */
static bool
value_ok(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			return false;
	return true;
}

/* uri-host [ ":" port ] (RFC 3986 reg-name, IP-literal, IPv4) — by its
 * characters; the API serves every host name. Empty is allowed (§7.2). */
static bool
host_ok(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
		      (*p >= 'A' && *p <= 'Z') || strchr("-._~!$&'()*+,;=:%[]", *p)))
			return false;
	return true;
}

/* 1*DIGIT, bounded; *out is the value. */
static bool
content_length_ok(const char *s, uint64_t *out)
{
	uint64_t n = 0;
	size_t len = 0;
	for (; *s; s++, len++) {
		if (*s < '0' || *s > '9' || len >= 18)
			return false;
		n = n * 10 + (uint64_t)(*s - '0');
	}
	*out = n;
	return len > 0;
}

/* Methods that may carry a body here. evhttp 2.1.12 as packaged reads a
 * body on any method, but a proxy in front may not (RFC 9110 §9.3.1: a GET
 * body "might lead some implementations to reject the request and close
 * the connection because of its potential as a request smuggling attack"),
 * and no endpoint reads one: refused, and the connection closed. */
static bool
method_takes_body(enum evhttp_cmd_type m)
{
	return m == EVHTTP_REQ_POST || m == EVHTTP_REQ_PUT || m == EVHTTP_REQ_PATCH;
}

void
http_guard_check_parts(const struct evkeyvalq *headers, enum evhttp_cmd_type method,
                       int major, int minor, struct http_guard_verdict *v)
{
	memset(v, 0, sizeof *v);
	if (major != 1) {
		reject(v, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served",
		       true);
		return;
	}
	int n_host = 0, n_cl = 0, n_te = 0;
	const char *host = NULL, *cl = NULL, *te = NULL;
	const struct evkeyval *kv;
	TAILQ_FOREACH(kv, headers, next) {
		if (!is_token(kv->key)) {
			reject(v, 400, "bad_request",
			       "a header name is not a token (empty, whitespace before the colon, "
			       "or a separator in it)", true);
			return;
		}
		if (!value_ok(kv->value)) {
			reject(v, 400, "bad_request", "a header value holds a control character", true);
			return;
		}
		if (strcasecmp(kv->key, "Host") == 0)
			n_host++, host = kv->value;
		else if (strcasecmp(kv->key, "Content-Length") == 0)
			n_cl++, cl = kv->value;
		else if (strcasecmp(kv->key, "Transfer-Encoding") == 0)
			n_te++, te = kv->value;
	}
	bool http11 = minor >= 1;
	if ((http11 && n_host != 1) || n_host > 1) {
		reject(v, 400, "bad_request",
		       n_host ? "more than one Host header" : "an HTTP/1.1 request needs a Host header",
		       true);
		return;
	}
	if (host && !host_ok(host)) {
		reject(v, 400, "bad_request", "the Host header is not a host[:port]", true);
		return;
	}
	if (n_te) {
		if (!http11) {
			reject(v, 400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request", true);
			return;
		}
		if (n_cl) {
			reject(v, 400, "bad_request",
			       "both Content-Length and Transfer-Encoding: the body's length is ambiguous",
			       true);
			return;
		}
		if (n_te > 1 || strcasecmp(te, "chunked") != 0) {
			reject(v, 501, "not_implemented",
			       "the only transfer coding accepted is a single \"chunked\"", true);
			return;
		}
		if (!method_takes_body(method)) {
			reject(v, 400, "body_not_allowed", "this method takes no request body", true);
			return;
		}
	}
	if (n_cl) {
		uint64_t len;
		if (n_cl > 1) {
			reject(v, 400, "bad_request", "more than one Content-Length header", true);
			return;
		}
		if (!content_length_ok(cl, &len)) {
			reject(v, 400, "bad_request", "Content-Length is not a decimal number", true);
			return;
		}
		if (len > 0 && !method_takes_body(method)) {
			reject(v, 400, "body_not_allowed", "this method takes no request body", true);
			return;
		}
	}
	if (method == EVHTTP_REQ_CONNECT) {
		/* Nothing to tunnel, and its target is no path to route (TRACE
		 * is routed: each path answers it with a 405 and its Allow).
		 * evhttp 2.1.12 keeps a connection open after any answer to
		 * CONNECT, whatever our headers say, so no close is promised:
		 * tunnel bytes sent after it fail its request-line parse. */
		reject(v, 405, "method_not_allowed", "this server does not serve CONNECT", false);
		return;
	}
}

void
http_guard_check(struct evhttp_request *req, struct http_guard_verdict *v)
{
	http_guard_check_parts(evhttp_request_get_input_headers(req),
	                       evhttp_request_get_command(req), req->major, req->minor, v);
}

/* ---- paths ------------------------------------------------------------- */

void
http_path_clear(struct http_path *p)
{
	free(p->buf);
	p->buf = NULL;
	p->n = 0;
}

int
http_path_split(const char *raw, struct http_path *p)
{
	p->n = 0;
	p->buf = NULL;
	if (!raw)
		return HTTP_PATH_BAD;
	for (const unsigned char *c = (const unsigned char *)raw; *c; c++)
		if (*c <= 0x20 || *c == 0x7f)
			return HTTP_PATH_BAD;
	/* One copy cut at each '/'; a segment with a '%' is decoded on its
	 * own and written back over itself (decoding only shrinks it), so
	 * every segment lives in the one buffer: one allocation a request,
	 * where there was one per segment (the cached hit's profile). */
	char *buf = p->buf = xstrdup(raw), *save = NULL;
	int rc = HTTP_PATH_OK;
	for (char *seg = strtok_r(buf, "/", &save); seg; seg = strtok_r(NULL, "/", &save)) {
		if (p->n == HTTP_PATH_MAX_SEGMENTS) {
			rc = HTTP_PATH_TOO_DEEP;
			break;
		}
		if (strchr(seg, '%')) {
			size_t dlen = 0;
			char *dec = evhttp_uridecode(seg, 0, &dlen);
			if (!dec) {
				rc = HTTP_PATH_BAD;
				break;
			}
			for (size_t i = 0; i < dlen; i++) {
				unsigned char b = (unsigned char)dec[i];
				if (b < 0x20 || b == 0x7f)
					rc = HTTP_PATH_BAD;
			}
			memcpy(seg, dec, dlen + 1);   /* dlen <= strlen(seg) */
			free(dec);
			if (rc != HTTP_PATH_OK)
				break;
		}
		p->seg[p->n++] = seg;
	}
	if (rc != HTTP_PATH_OK)
		http_path_clear(p);
	return rc;
}

/* ---- evhttp's own refusals, answered as JSON ------------------------------ */

/*
 * evhttp answers the requests it cannot parse itself, before route() sees
 * them, through evhttp_send_error(), which writes an HTML page. libevent
 * 2.1.12 has no hook for that answer (2.2 adds evhttp_set_errorcb), so this
 * file defines evhttp_send_error: in ELF symbol lookup the executable's
 * definition comes before the shared library's, and libevent calls its own
 * exported functions through its PLT (`objdump -R libevent-2.1.so.7` lists
 * a JUMP_SLOT for evhttp_send_error), so its refusals land here. We answer
 * as libevent's evhttp_send_page_ would (HTTP/1.1 when the version is
 * unknown, Connection: close: the framing is in doubt) with the error
 * document every other answer has, and log the refusal, since route()
 * never sees the request. tests/integration/test_http_framing.py pins it:
 * if a libevent build ever binds the call internally, those tests fail.
 */
static const char *
refusal_code(int status, const char **message)
{
	switch (status) {
	case 413:
		*message = "the request body is over the size limit, or its chunked framing "
		           "is broken";
		return "payload_too_large";
	case 501:
		*message = "the request method is not implemented";
		return "not_implemented";
	default:
		*message = "malformed HTTP request, refused by the HTTP parser (a bad request "
		           "line, a header line with no ':', headers over the size limit, "
		           "Content-Length with Transfer-Encoding, an unreadable Content-Length)";
		return "bad_request";
	}
}

void
evhttp_send_error(struct evhttp_request *req, int error, const char *reason)
{
	if (error < 400 || error > 599)
		error = 400;
	const char *message;
	const char *code = refusal_code(error, &message);
	struct evbuffer *buf = evbuffer_new();
	json_t *doc = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message);
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!buf || !text) {
		/* Out of memory: drop the connection as libevent itself would. */
		free(text);
		if (buf)
			evbuffer_free(buf);
		evhttp_connection_free(evhttp_request_get_connection(req));
		return;
	}
	evbuffer_add(buf, text, strlen(text));
	free(text);
	if (!req->major || !req->minor) {
		req->major = 1;
		req->minor = 1;
	}
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_clear_headers(h);
	evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
	evhttp_add_header(h, "Connection", "close");
	char *peer = NULL;
	ev_uint16_t port = 0;
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	if (evcon)
		evhttp_connection_get_peer(evcon, &peer, &port);
	log_event(LOG_INFO, "request refused by the HTTP parser", LOG_I("status", error),
	          LOG_S("code", code), LOG_S("peer", peer ? peer : "-"), LOG_END);
	evhttp_send_reply(req, error, reason, buf);
	evbuffer_free(buf);
}
