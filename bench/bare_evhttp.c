/*
 * bare_evhttp — the ceiling for rapport's cached hit: a plain evhttp server
 * on one libevent loop that answers every request with the same headers and
 * body as a rapport cached hit (captured from a real one by bench/bench.py),
 * and writes one JSON request line per request to stderr with the fields of
 * rapport's hit line (one write(2) per line, as rapport's unbuffered stderr).
 * No routing, no cache, no escaping: what is left of rapport's cost once its
 * own work is gone.
 *
 *     bare_evhttp PORT HEADERS_FILE BODY_FILE
 *
 * HEADERS_FILE: "Name: value" lines, as a hit had them; Content-Length and
 * Date are evhttp's own (it adds them) and X-Request-Id is made per request,
 * the same length as rapport's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#define MAX_HEADERS 32

static struct {
	char *name[MAX_HEADERS], *value[MAX_HEADERS];
	int n;
	char *body;
	size_t body_len;
	unsigned long long next_id;
	unsigned salt;
} g;

static char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc((size_t)n + 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		perror(path);
		exit(2);
	}
	buf[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static double
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void
on_request(struct evhttp_request *req, void *arg)
{
	double t0 = now_ms();
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	char id[24];
	snprintf(id, sizeof id, "%08x%08llx", g.salt, ++g.next_id);
	evhttp_add_header(h, "X-Request-Id", id);
	for (int i = 0; i < g.n; i++)
		evhttp_add_header(h, g.name[i], g.value[i]);
	struct evbuffer *b = evbuffer_new();
	evbuffer_add(b, g.body, g.body_len);
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);

	/* The line rapport writes for a hit, same fields, same order. */
	struct timeval tv;
	gettimeofday(&tv, NULL);
	struct tm tm;
	gmtime_r(&tv.tv_sec, &tm);
	char ts[40];
	size_t k = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + k, sizeof ts - k, ".%03ldZ", (long)(tv.tv_usec / 1000));
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	char line[1024];
	int n = snprintf(line, sizeof line,
	                 "{\"ts\":\"%s\",\"level\":\"info\",\"msg\":\"request\",\"req_id\":\"%s\","
	                 "\"method\":\"GET\",\"path\":\"%s\",\"status\":200,\"contact\":1,"
	                 "\"type\":\"relationship_health\",\"cache\":\"hit\",\"age_ms\":%.6g,"
	                 "\"db_ms\":0,\"script_ms\":0,\"llm_ms\":0,\"total_ms\":%.6g,"
	                 "\"prompt_tokens\":-1,\"completion_tokens\":-1,\"cost_usd\":0,"
	                 "\"error\":null,\"stream\":0}\n",
	                 ts, id, path ? path : "-", 1234.0, now_ms() - t0);
	if (n > 0)
		fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, stderr);
}

static void
on_term(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopexit(arg, NULL);
}

int
main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s PORT HEADERS_FILE BODY_FILE\n", argv[0]);
		return 2;
	}
	size_t hlen;
	char *hdrs = slurp(argv[2], &hlen);
	for (char *line = strtok(hdrs, "\r\n"); line && g.n < MAX_HEADERS; line = strtok(NULL, "\r\n")) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = '\0';
		char *v = colon + 1;
		while (*v == ' ')
			v++;
		if (!strcasecmp(line, "Content-Length") || !strcasecmp(line, "Date") ||
		    !strcasecmp(line, "X-Request-Id"))
			continue;
		g.name[g.n] = line;
		g.value[g.n] = v;
		g.n++;
	}
	g.body = slurp(argv[3], &g.body_len);
	g.salt = (unsigned)getpid() * 2654435761u;
	signal(SIGPIPE, SIG_IGN);

	struct event_base *base = event_base_new();
	struct evhttp *http = evhttp_new(base);
	evhttp_set_gencb(http, on_request, NULL);
	if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)atoi(argv[1])) != 0) {
		fprintf(stderr, "cannot bind 127.0.0.1:%s\n", argv[1]);
		return 1;
	}
	struct event *term = evsignal_new(base, SIGTERM, on_term, base);
	event_add(term, NULL);
	event_base_dispatch(base);
	event_free(term);
	evhttp_free(http);
	event_base_free(base);
	free(hdrs);
	free(g.body);
	return 0;
}
