/*
 * fake_openai.c — the process: command line, listener, routing, the control
 * endpoints tests use (/_fake/stats, /_fake/reset, /_fake/config), the
 * scripted failure queue, and the helpers every reply goes through.
 *
 * One event_base, one evhttp, no threads, no sleeping: latency is a timer.
 * Chat completions themselves live in fake_chat.c.
 *
 *   build/fake_openai [--listen HOST:PORT] [--port-file PATH]
 *       [--latency-ms N] [--chunk-delay-ms N] [--chunks N]
 *       [--rate-limit-requests N] [--rate-limit-tokens N]
 *       [--rate-limit-window-ms N] [--require-key KEY] [--quiet]
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "fake.h"

#define MAX_BODY	(4 * 1024 * 1024)
#define MAX_HEADERS	(64 * 1024)
#define LISTEN_BACKLOG	1024
#define TIMEOUT_SEC	60
/* Upper bounds for the knobs, to catch a test passing seconds as ms. */
#define MAX_MS		(3600 * 1000)
#define MAX_CHUNKS	100000

/* ---- small helpers ----------------------------------------------------- */

static void
oom(void)
{
	fprintf(stderr, "fake_openai: out of memory\n");
	abort();
}

void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		oom();
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		oom();
	return p;
}

char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

void
fake_log(struct fake *f, const char *fmt, ...)
{
	va_list ap;

	if (f->quiet)
		return;
	va_start(ap, fmt);
	fputs("fake_openai: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

const char *
fake_method_name(struct evhttp_request *req)
{
	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_GET:		return "GET";
	case EVHTTP_REQ_POST:		return "POST";
	case EVHTTP_REQ_HEAD:		return "HEAD";
	case EVHTTP_REQ_PUT:		return "PUT";
	case EVHTTP_REQ_DELETE:		return "DELETE";
	case EVHTTP_REQ_OPTIONS:	return "OPTIONS";
	case EVHTTP_REQ_PATCH:		return "PATCH";
	default:			return "UNKNOWN";
	}
}

/* ---- replies ----------------------------------------------------------- */

/* libevent 2.1's phrase table stops short of 429 and friends ("Client
 * Error"); clients log the phrase, so give them the real one. */
static const char *
status_reason(int status)
{
	switch (status) {
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default:  return NULL;	/* evhttp's own table */
	}
}

json_t *
fake_error_body(const char *message, const char *type, const char *param,
    const char *code)
{
	/* All four keys always, null when unknown: the SDKs rely on it. */
	return json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error",
	    "message", message, "type", type, "param", param, "code", code);
}

void
fake_reply_json(struct evhttp_request *req, int status, json_t *body)
{
	struct evbuffer *buf = evbuffer_new();
	char *s = json_dumps(body, JSON_COMPACT);

	if (buf == NULL || s == NULL)
		oom();
	evbuffer_add(buf, s, strlen(s));
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "application/json");
	evhttp_send_reply(req, status, status_reason(status), buf);
	evbuffer_free(buf);
	free(s);
	json_decref(body);
}

void
fake_reply_error(struct evhttp_request *req, int status, const char *message,
    const char *type, const char *param, const char *code)
{
	fake_reply_json(req, status, fake_error_body(message, type, param,
	    code));
}

void
fake_add_openai_headers(struct fake *f, struct evhttp_request *req,
    const char *req_id, long processing_ms, const struct fake_rl_view *rl)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	char ms[32];

	snprintf(ms, sizeof(ms), "%ld", processing_ms);
	evhttp_add_header(h, "x-request-id", req_id);
	evhttp_add_header(h, "openai-processing-ms", ms);
	evhttp_add_header(h, "openai-version", "2020-10-01");
	evhttp_add_header(h, "openai-organization", "user-fake");
	fake_rl_headers(f, req, rl);
}

json_t *
fake_body_json(struct evhttp_request *req, json_error_t *err)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
	json_t *v = json_loadb(data, len, 0, err);

	if (v != NULL && !json_is_object(v)) {
		json_decref(v);
		snprintf(err->text, sizeof(err->text), "expected an object");
		return NULL;
	}
	return v;
}

/* ---- failure queue ----------------------------------------------------- */

json_t *
fake_fail_next(struct fake *f)
{
	json_t *head = json_array_get(f->fail_queue, 0);
	json_int_t count;

	if (head == NULL)
		return NULL;
	json_incref(head);
	count = json_integer_value(json_object_get(head, "count"));
	if (count < 1)
		count = 1;
	if (++f->fail_head_used >= count) {
		json_array_remove(f->fail_queue, 0);
		f->fail_head_used = 0;
	}
	return head;
}

/* ---- control endpoints ------------------------------------------------- */

static void
settings_copy(struct fake_settings *dst, const struct fake_settings *src)
{
	free(dst->content);
	*dst = *src;
	dst->content = src->content ? xstrdup(src->content) : NULL;
}

static json_t *
settings_json(struct fake *f)
{
	json_t *rl = fake_rl_on(f) ? json_pack("{s:i, s:i, s:i}",
	    "requests", f->live.rl_requests, "tokens", f->live.rl_tokens,
	    "window_ms", f->live.rl_window_ms) : json_null();

	return json_pack("{s:i, s:i, s:i, s:s?, s:O, s:i, s:o}",
	    "latency_ms", f->live.latency_ms,
	    "chunk_delay_ms", f->live.chunk_delay_ms,
	    "chunks", f->live.chunks,
	    "content", f->live.content,
	    "fail", f->fail_queue,
	    "fail_head_used", f->fail_head_used,
	    "rate_limit", rl);
}

static void
handle_stats(struct fake *f, struct evhttp_request *req)
{
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		fake_reply_error(req, 405, "Use GET for /_fake/stats.",
		    "invalid_request_error", NULL, NULL);
		return;
	}
	fake_reply_json(req, 200, json_pack(
	    "{s:I, s:I, s:I, s:i, s:i, s:I, s:O, s:b, s:f}",
	    "chat_calls", (json_int_t)f->chat_calls,
	    "stream_calls", (json_int_t)f->stream_calls,
	    "rate_limited", (json_int_t)f->rl_refused,
	    "in_flight", f->in_flight,
	    "max_in_flight", f->max_in_flight,
	    "connections", (json_int_t)f->connections,
	    "last_request", f->last_request ? f->last_request : json_null(),
	    "last_authorization_present", f->last_auth_present,
	    "last_first_content_mono_ms", f->last_first_content_ms));
}

static void
handle_reset(struct fake *f, struct evhttp_request *req)
{
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		fake_reply_error(req, 405, "Use POST for /_fake/reset.",
		    "invalid_request_error", NULL, NULL);
		return;
	}
	f->chat_calls = f->stream_calls = f->connections = 0;
	f->rl_refused = 0;
	f->rl_used_requests = f->rl_used_tokens = 0;
	/* in_flight is a gauge of live requests, not a counter: zeroing it
	 * would drive it negative when they finish. */
	f->max_in_flight = f->in_flight;
	json_decref(f->last_request);
	f->last_request = NULL;
	f->last_auth_present = false;
	settings_copy(&f->live, &f->defaults);
	json_array_clear(f->fail_queue);
	f->fail_head_used = 0;
	fake_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
}

static bool
int_setting(json_t *v, int lo, int hi, int *out)
{
	if (!json_is_integer(v) || json_integer_value(v) < lo ||
	    json_integer_value(v) > hi)
		return false;
	*out = (int)json_integer_value(v);
	return true;
}

/* "rate_limit": {"requests": N, "tokens": M, "window_ms": W} (each key
 * optional: requests/tokens 0 = no limit on that count, window 60000 by
 * default), or null to turn the mode off. */
static bool
rate_limit_setting(json_t *v, struct fake_settings *next, char *err,
    size_t errlen)
{
	const char *k;
	json_t *x;

	if (json_is_null(v)) {
		next->rl_requests = next->rl_tokens = 0;
		return true;
	}
	if (!json_is_object(v)) {
		snprintf(err, errlen, "rate_limit must be an object or null");
		return false;
	}
	next->rl_requests = next->rl_tokens = 0;
	next->rl_window_ms = 60000;
	json_object_foreach(v, k, x) {
		int *slot = strcmp(k, "requests") == 0 ? &next->rl_requests :
		    strcmp(k, "tokens") == 0 ? &next->rl_tokens :
		    strcmp(k, "window_ms") == 0 ? &next->rl_window_ms : NULL;

		if (slot == NULL) {
			snprintf(err, errlen, "unknown rate_limit key '%s'", k);
			return false;
		}
		if (!int_setting(x, slot == &next->rl_window_ms ? 1 : 0,
		    slot == &next->rl_window_ms ? MAX_MS : INT_MAX, slot)) {
			snprintf(err, errlen, "bad rate_limit.%s", k);
			return false;
		}
	}
	return true;
}

/* Validates the whole body first and applies it only if all of it is good,
 * so a typo never leaves half a configuration behind. */
static void
handle_config(struct fake *f, struct evhttp_request *req)
{
	struct fake_settings next = f->live;
	json_error_t jerr;
	json_t *body, *v, *fail = NULL;
	const char *key = NULL;
	char err[256];
	size_t i;

	if (evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
		fake_reply_json(req, 200, settings_json(f));
		return;
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		fake_reply_error(req, 405, "Use GET or POST for /_fake/config.",
		    "invalid_request_error", NULL, NULL);
		return;
	}
	if ((body = fake_body_json(req, &jerr)) == NULL) {
		snprintf(err, sizeof(err), "Body is not a JSON object: %s",
		    jerr.text);
		fake_reply_error(req, 400, err, "invalid_request_error", NULL,
		    NULL);
		return;
	}
	err[0] = '\0';
	json_object_foreach(body, key, v) {
		if (strcmp(key, "latency_ms") == 0) {
			if (!int_setting(v, 0, MAX_MS, &next.latency_ms))
				snprintf(err, sizeof(err), "bad %s", key);
		} else if (strcmp(key, "chunk_delay_ms") == 0) {
			if (!int_setting(v, 0, MAX_MS, &next.chunk_delay_ms))
				snprintf(err, sizeof(err), "bad %s", key);
		} else if (strcmp(key, "chunks") == 0) {
			if (!int_setting(v, 1, MAX_CHUNKS, &next.chunks))
				snprintf(err, sizeof(err), "bad %s", key);
		} else if (strcmp(key, "content") == 0) {
			if (!json_is_string(v) && !json_is_null(v))
				snprintf(err, sizeof(err),
				    "content must be a string or null");
		} else if (strcmp(key, "rate_limit") == 0) {
			if (!rate_limit_setting(v, &next, err, sizeof(err)))
				break;
		} else if (strcmp(key, "fail") == 0) {
			if (!json_is_array(v)) {
				snprintf(err, sizeof(err),
				    "fail must be an array");
				break;
			}
			json_array_foreach(v, i, fail)
				if (!chat_fail_entry_valid(fail, err,
				    sizeof(err)))
					break;
		} else {
			snprintf(err, sizeof(err), "unknown setting '%s'", key);
		}
		if (err[0])
			break;
	}
	if (err[0]) {
		fake_reply_error(req, 400, err, "invalid_request_error", key,
		    NULL);
		json_decref(body);
		return;
	}

	f->live.latency_ms = next.latency_ms;
	f->live.chunk_delay_ms = next.chunk_delay_ms;
	f->live.chunks = next.chunks;
	if (f->live.rl_requests != next.rl_requests ||
	    f->live.rl_tokens != next.rl_tokens ||
	    f->live.rl_window_ms != next.rl_window_ms)
		f->rl_used_requests = f->rl_used_tokens = 0; /* a new window */
	f->live.rl_requests = next.rl_requests;
	f->live.rl_tokens = next.rl_tokens;
	f->live.rl_window_ms = next.rl_window_ms;
	if ((v = json_object_get(body, "content")) != NULL) {
		free(f->live.content);
		f->live.content = json_is_string(v) ?
		    xstrndup(json_string_value(v), json_string_length(v)) :
		    NULL;
	}
	if ((v = json_object_get(body, "fail")) != NULL)
		json_array_extend(f->fail_queue, v);
	json_decref(body);
	fake_reply_json(req, 200, settings_json(f));
}

/* ---- routing ----------------------------------------------------------- */

static void
on_request(struct evhttp_request *req, void *arg)
{
	struct fake *f = arg;
	const char *path = evhttp_uri_get_path(
	    evhttp_request_get_evhttp_uri(req));
	char msg[512];

	if (path == NULL || *path == '\0')
		path = "/";
	if (strcmp(path, "/v1/chat/completions") == 0 ||
	    strcmp(path, "/chat/completions") == 0)
		chat_handle(f, req);
	else if (strcmp(path, "/_fake/stats") == 0)
		handle_stats(f, req);
	else if (strcmp(path, "/_fake/reset") == 0)
		handle_reset(f, req);
	else if (strcmp(path, "/_fake/config") == 0)
		handle_config(f, req);
	else {
		/* The API's own wording for an unknown route. */
		snprintf(msg, sizeof(msg), "Invalid URL (%s %.400s)",
		    fake_method_name(req), path);
		fake_reply_error(req, 404, msg, "invalid_request_error", NULL,
		    NULL);
	}
}

/* evhttp asks us for the bufferevent of every accepted connection: the one
 * place that sees each TCP connection exactly once, so it counts them. */
static struct bufferevent *
on_new_connection(struct event_base *base, void *arg)
{
	struct fake *f = arg;

	f->connections++;
	return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

/* ---- listener ---------------------------------------------------------- */

/* The error callback gets evhttp's callback argument, not ours, so the one
 * listener's pause state lives here. */
static struct listener_pause {
	struct evconnlistener *listener;
	struct event *resume;
} pause_state;

static void
on_listener_resume(evutil_socket_t fd, short what, void *arg)
{
	struct listener_pause *p = arg;

	evconnlistener_enable(p->listener);
}

/* accept() failed (EMFILE most likely). Without this libevent would retry
 * at once, forever, at 100% CPU; pause accepting for a moment instead. */
static void
on_listener_error(struct evconnlistener *l, void *arg)
{
	struct listener_pause *p = &pause_state;
	struct timeval tv = { 0, 100 * 1000 };

	fprintf(stderr, "fake_openai: accept: %s\n",
	    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	evconnlistener_disable(l);
	evtimer_add(p->resume, &tv);
}

/* Writes "PORT\n" under a temporary name then renames it, so a reader
 * polling for the file never sees it half written. */
static int
write_port_file(const char *path, int port)
{
	size_t n = strlen(path) + 32;
	char *tmp = xmalloc(n);
	FILE *fp;
	int rc = -1;

	snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
	if ((fp = fopen(tmp, "w")) == NULL)
		goto out;
	fprintf(fp, "%d\n", port);
	if (fclose(fp) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		goto out;
	}
	rc = 0;
out:
	if (rc != 0)
		fprintf(stderr, "fake_openai: %s: %s\n", path,
		    strerror(errno));
	free(tmp);
	return rc;
}

/* ---- process ----------------------------------------------------------- */

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	event_base_loopbreak(arg);
}

static void
usage(FILE *out)
{
	fputs("usage: fake_openai [--listen HOST:PORT] [--port-file PATH]\n"
	    "         [--latency-ms N] [--chunk-delay-ms N] [--chunks N]\n"
	    "         [--rate-limit-requests N] [--rate-limit-tokens N]\n"
	    "         [--rate-limit-window-ms N]\n"
	    "         [--require-key KEY] [--quiet]\n"
	    "An OpenAI chat completions stand-in for tests and demos.\n"
	    "Control: GET /_fake/stats, POST /_fake/reset, "
	    "POST /_fake/config\n", out);
}

static int
parse_int(const char *s, int lo, int hi, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = (int)v;
	return 0;
}

/* "HOST:PORT" or "[V6]:PORT" with numeric addresses only (no resolver on
 * the way to a test), port 0 meaning any free port — which
 * evutil_parse_sockaddr_port refuses. */
static int
parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len)
{
	const char *colon = strrchr(spec, ':');
	char host[INET6_ADDRSTRLEN + 2];
	size_t hlen;
	int port;

	if (colon == NULL || parse_int(colon + 1, 0, 65535, &port) != 0)
		return -1;
	hlen = (size_t)(colon - spec);
	if (hlen >= 2 && spec[0] == '[' && spec[hlen - 1] == ']') {
		spec++;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= sizeof(host))
		return -1;
	memcpy(host, spec, hlen);
	host[hlen] = '\0';
	memset(ss, 0, sizeof(*ss));
	if (strchr(host, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*s6);
		return inet_pton(AF_INET6, host, &s6->sin6_addr) == 1 ? 0 : -1;
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		*len = sizeof(*s4);
		return inet_pton(AF_INET, host, &s4->sin_addr) == 1 ? 0 : -1;
	}
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen",		required_argument, NULL, 'l' },
		{ "port-file",		required_argument, NULL, 'p' },
		{ "latency-ms",		required_argument, NULL, 'L' },
		{ "chunk-delay-ms",	required_argument, NULL, 'd' },
		{ "chunks",		required_argument, NULL, 'c' },
		{ "require-key",	required_argument, NULL, 'k' },
		{ "rate-limit-requests", required_argument, NULL, 'R' },
		{ "rate-limit-tokens",	required_argument, NULL, 'T' },
		{ "rate-limit-window-ms", required_argument, NULL, 'W' },
		{ "quiet",		no_argument,	   NULL, 'q' },
		{ "help",		no_argument,	   NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct fake f = {
		.defaults = { .latency_ms = 20, .chunk_delay_ms = 5,
		    .chunks = 8, .rl_window_ms = 60000 },
		.timeout_sec = TIMEOUT_SEC,
	};
	const char *listen_addr = "127.0.0.1:0", *port_file = NULL;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	struct evconnlistener *listener;
	struct listener_pause *lp = &pause_state;
	struct event *sigint = NULL, *sigterm = NULL;
	char host[INET6_ADDRSTRLEN];
	int port, opt, rc = 1;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int bad = 0;

		switch (opt) {
		case 'l': listen_addr = optarg; break;
		case 'p': port_file = optarg; break;
		case 'L':
			bad = parse_int(optarg, 0, MAX_MS,
			    &f.defaults.latency_ms);
			break;
		case 'd':
			bad = parse_int(optarg, 0, MAX_MS,
			    &f.defaults.chunk_delay_ms);
			break;
		case 'c':
			bad = parse_int(optarg, 1, MAX_CHUNKS,
			    &f.defaults.chunks);
			break;
		case 'k': f.require_key = optarg; break;
		case 'R':
			bad = parse_int(optarg, 0, INT_MAX,
			    &f.defaults.rl_requests);
			break;
		case 'T':
			bad = parse_int(optarg, 0, INT_MAX,
			    &f.defaults.rl_tokens);
			break;
		case 'W':
			bad = parse_int(optarg, 1, MAX_MS,
			    &f.defaults.rl_window_ms);
			break;
		case 'q': f.quiet = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "fake_openai: bad value '%s'\n",
			    optarg);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (parse_listen(listen_addr, &ss, &sslen) != 0) {
		fprintf(stderr, "fake_openai: bad --listen '%s' (want "
		    "HOST:PORT)\n", listen_addr);
		return 2;
	}

	/* A client hanging up mid-write must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	settings_copy(&f.live, &f.defaults);
	f.fail_queue = json_array();
	/* A precise timer (timerfd): the configured latency is what the
	 * benchmarks subtract, so it must not drift by epoll's millisecond
	 * rounding. */
	struct event_config *ecfg = event_config_new();
	if (!ecfg)
		oom();
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	f.base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (f.base == NULL || (f.http = evhttp_new(f.base)) == NULL)
		oom();

	/* Before anyone learns our port: a SIGTERM right after start-up
	 * must still end in a clean exit. */
	sigint = evsignal_new(f.base, SIGINT, on_signal, f.base);
	sigterm = evsignal_new(f.base, SIGTERM, on_signal, f.base);
	evsignal_add(sigint, NULL);
	evsignal_add(sigterm, NULL);

	evhttp_set_max_body_size(f.http, MAX_BODY);
	evhttp_set_max_headers_size(f.http, MAX_HEADERS);
	evhttp_set_timeout(f.http, f.timeout_sec);
	evhttp_set_default_content_type(f.http, "application/json");
	/* Reads an oversized body before the 413, so the client sees it. */
	evhttp_set_flags(f.http, EVHTTP_SERVER_LINGERING_CLOSE);
	/* Every method reaches us, so wrong ones get a JSON 405 rather than
	 * evhttp's HTML 501. */
	evhttp_set_allowed_methods(f.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(f.http, on_request, &f);
	evhttp_set_bevcb(f.http, on_new_connection, &f);

	/* Our own listener: evhttp_bind_socket's backlog of 128 drops
	 * connections when a benchmark opens many at once. */
	listener = evconnlistener_new_bind(f.base, NULL, NULL,
	    LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
	    LISTEN_BACKLOG, (struct sockaddr *)&ss, (int)sslen);
	if (listener == NULL) {
		fprintf(stderr, "fake_openai: listen on %s: %s\n", listen_addr,
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		goto out;
	}
	/* Streams are many small writes: without TCP_NODELAY, Nagle and the
	 * client's delayed ACK hold chunks back ~40 ms. Linux hands the
	 * option down to every accepted socket. */
	setsockopt(evconnlistener_get_fd(listener), IPPROTO_TCP, TCP_NODELAY,
	    &(int){1}, sizeof(int));
	if (evhttp_bind_listener(f.http, listener) == NULL) {
		evconnlistener_free(listener);
		goto out;
	}
	lp->listener = listener;
	lp->resume = evtimer_new(f.base, on_listener_resume, lp);
	evconnlistener_set_error_cb(listener, on_listener_error);

	sslen = sizeof(ss);
	if (getsockname(evconnlistener_get_fd(listener),
	    (struct sockaddr *)&ss, &sslen) != 0) {
		perror("fake_openai: getsockname");
		goto out;
	}
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		evutil_inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		port = ntohs(s6->sin6_port);
		printf("fake_openai listening on [%s]:%d\n", host, port);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		evutil_inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		port = ntohs(s4->sin_port);
		printf("fake_openai listening on %s:%d\n", host, port);
	}
	fflush(stdout);

	if (port_file && write_port_file(port_file, port) != 0)
		goto out;

	event_base_dispatch(f.base);
	fake_log(&f, "shutting down");
	rc = 0;
out:
	/* Order matters: chat contexts drop their closecbs and timers before
	 * evhttp_free tears the connections (and their requests) down. */
	chat_shutdown_all(&f);
	if (f.http)
		evhttp_free(f.http);
	if (lp->resume)
		event_free(lp->resume);
	if (sigint)
		event_free(sigint);
	if (sigterm)
		event_free(sigterm);
	if (f.base)
		event_base_free(f.base);
	json_decref(f.fail_queue);
	json_decref(f.last_request);
	free(f.live.content);
	free(f.defaults.content);
	libevent_global_shutdown();
	return rc;
}
