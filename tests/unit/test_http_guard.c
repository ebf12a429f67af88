/*
 * test_http_guard — the RFC 9112 checks on a header list as evhttp builds it
 * (names cut at the first ':', duplicates kept) and the per-segment path
 * decoding.
 */
#include "http_guard.h"
#include "tap.h"

#include <stdarg.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/* check(method, minor, "Name", "value", ..., NULL) → the verdict */
static struct http_guard_verdict
check(enum evhttp_cmd_type m, int minor, ...)
{
	struct evkeyvalq h;
	TAILQ_INIT(&h);
	va_list ap;
	va_start(ap, minor);
	for (const char *k; (k = va_arg(ap, const char *));) {
		const char *v = va_arg(ap, const char *);
		evhttp_add_header(&h, k, v);
	}
	va_end(ap);
	struct http_guard_verdict v;
	http_guard_check_parts(&h, m, 1, minor, &v);
	evhttp_clear_headers(&h);
	return v;
}

#define GET EVHTTP_REQ_GET
#define POST EVHTTP_REQ_POST

static void
test_headers(void)
{
	struct http_guard_verdict v;
	v = check(GET, 1, "Host", "x", NULL);
	ok(v.status == 0, "a plain HTTP/1.1 GET passes");
	v = check(GET, 1, "Host ", "x", NULL);
	ok(v.status == 400 && v.close, "whitespace before the colon: 400 and close");
	v = check(GET, 1, "Host", "x", "", "v", NULL);
	ok(v.status == 400, "an empty header name: 400");
	v = check(GET, 1, "Host", "x", "X(y)", "v", NULL);
	ok(v.status == 400, "a separator in a header name: 400");
	v = check(GET, 1, "Host", "x", "X", "a\x01", NULL);
	ok(v.status == 400, "a control byte in a value: 400");
	v = check(GET, 1, "Host", "x", "X", "a\tb", NULL);
	ok(v.status == 0, "a tab in a value is fine");
	v = check(GET, 1, NULL);
	ok(v.status == 400, "HTTP/1.1 without Host: 400");
	v = check(GET, 0, NULL);
	ok(v.status == 0, "HTTP/1.0 without Host passes");
	v = check(GET, 1, "Host", "x", "host", "y", NULL);
	ok(v.status == 400, "two Host headers: 400");
	v = check(GET, 1, "Host", "x y", NULL);
	ok(v.status == 400, "a Host with a space (a fold joined into it): 400");
	v = check(GET, 1, "Host", "[::1]:8080", NULL);
	ok(v.status == 0, "an IPv6 literal with a port is a host");
	struct evkeyvalq h;
	TAILQ_INIT(&h);
	evhttp_add_header(&h, "Host", "x");
	http_guard_check_parts(&h, GET, 2, 0, &v);
	ok(v.status == 505, "HTTP/2.0 on this port: 505");
	evhttp_clear_headers(&h);
}

static void
test_framing(void)
{
	struct http_guard_verdict v;
	v = check(POST, 1, "Host", "x", "Content-Length", "3", NULL);
	ok(v.status == 0, "POST with one Content-Length passes (the route answers)");
	v = check(POST, 1, "Host", "x", "Content-Length", "3", "Content-Length", "5", NULL);
	ok(v.status == 400 && v.close, "two Content-Lengths: 400 and close");
	v = check(POST, 1, "Host", "x", "Content-Length", "3", "Content-Length", "3", NULL);
	ok(v.status == 400 && v.close, "even two equal ones (as nginx)");
	v = check(POST, 1, "Host", "x", "Content-Length", "+3", NULL);
	ok(v.status == 400 && v.close, "a sign in Content-Length: 400 and close");
	v = check(POST, 1, "Host", "x", "Content-Length", "3", "Transfer-Encoding", "chunked", NULL);
	ok(v.status == 400 && v.close, "Content-Length with Transfer-Encoding: 400 and close");
	v = check(POST, 1, "Host", "x", "Transfer-Encoding", "chunked", NULL);
	ok(v.status == 0, "a single chunked passes");
	v = check(POST, 1, "Host", "x", "Transfer-Encoding", "Chunked", NULL);
	ok(v.status == 0, "coding names are case-insensitive");
	v = check(POST, 1, "Host", "x", "Transfer-Encoding", "gzip, chunked", NULL);
	ok(v.status == 501 && v.close, "another coding: 501 and close");
	v = check(POST, 1, "Host", "x", "Transfer-Encoding", "chunked", "Transfer-Encoding", "chunked",
	          NULL);
	ok(v.status == 501 && v.close, "chunked twice: 501 and close");
	v = check(POST, 0, "Transfer-Encoding", "chunked", NULL);
	ok(v.status == 400 && v.close, "Transfer-Encoding in HTTP/1.0: 400 and close");
	v = check(GET, 1, "Host", "x", "Content-Length", "0", NULL);
	ok(v.status == 0, "GET with Content-Length: 0 passes");
	v = check(GET, 1, "Host", "x", "Content-Length", "4", NULL);
	ok(v.status == 400 && v.close && strcmp(v.code, "body_not_allowed") == 0,
	   "GET with a body: 400 body_not_allowed and close");
	v = check(EVHTTP_REQ_DELETE, 1, "Host", "x", "Transfer-Encoding", "chunked", NULL);
	ok(v.status == 400 && v.close, "chunked DELETE: 400 and close");
	v = check(EVHTTP_REQ_TRACE, 1, "Host", "x", NULL);
	ok(v.status == 0, "TRACE goes on to the route (a 405 with the path's Allow)");
	v = check(EVHTTP_REQ_TRACE, 1, "Host", "x", "Content-Length", "3", NULL);
	ok(v.status == 400 && v.close, "TRACE with a body: 400 and close");
	v = check(EVHTTP_REQ_CONNECT, 1, "Host", "x:443", NULL);
	ok(v.status == 405, "CONNECT: 405");
}

static void
test_paths(void)
{
	struct http_path p;
	ok(http_path_split("/v1/contacts/1/analyses/t", &p) == HTTP_PATH_OK && p.n == 5 &&
	   strcmp(p.seg[4], "t") == 0, "five segments");
	http_path_clear(&p);
	ok(http_path_split("//v1//x/", &p) == HTTP_PATH_OK && p.n == 2, "empty segments skipped");
	http_path_clear(&p);
	ok(http_path_split("/v1%2Fanalysis-types", &p) == HTTP_PATH_OK && p.n == 1 &&
	   strcmp(p.seg[0], "v1/analysis-types") == 0, "%%2F stays inside its segment");
	http_path_clear(&p);
	ok(http_path_split("/a/b%00c", &p) == HTTP_PATH_BAD && p.n == 0, "%%00: bad, nothing held");
	ok(http_path_split("/a%0a", &p) == HTTP_PATH_BAD, "%%0a: bad");
	ok(http_path_split("/a%7F", &p) == HTTP_PATH_BAD, "%%7F: bad");
	ok(http_path_split("/a b", &p) == HTTP_PATH_BAD, "a raw space: bad");
	ok(http_path_split("/a%2541", &p) == HTTP_PATH_OK && strcmp(p.seg[0], "a%41") == 0,
	   "decoded once");
	http_path_clear(&p);
	ok(http_path_split("/a+b", &p) == HTTP_PATH_OK && strcmp(p.seg[0], "a+b") == 0,
	   "'+' is not a space in a path");
	http_path_clear(&p);
	ok(http_path_split("/1/2/3/4/5/6/7/8/9", &p) == HTTP_PATH_TOO_DEEP && p.n == 0,
	   "too deep, nothing held");
	ok(http_path_split("/caf\xc3\xa9", &p) == HTTP_PATH_OK, "raw UTF-8 is left to the route");
	http_path_clear(&p);
	ok(http_path_split(NULL, &p) == HTTP_PATH_BAD, "no path: bad");
}

int
main(void)
{
	test_headers();
	test_framing();
	test_paths();
	return tap_done();
}
