/*
 * http_static — safe static file serving for the panel. See http_static.h.
 */
#include "http_static.h"
#include "http_guard.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define STATIC_MAX_SEGMENT 255
#define STATIC_MAX_FILE ((off_t)32 << 20)

struct http_static {
	char *root;        /* realpath of the folder, or the folder as given while missing */
	bool missing;
};

static const struct {
	const char *ext;
	const char *type;
} TYPES[] = {
	{ ".html", "text/html; charset=utf-8" },
	{ ".js", "text/javascript; charset=utf-8" },
	{ ".mjs", "text/javascript; charset=utf-8" },
	{ ".css", "text/css; charset=utf-8" },
	{ ".json", "application/json; charset=utf-8" },
	{ ".webmanifest", "application/manifest+json" },
	{ ".svg", "image/svg+xml" },
	{ ".png", "image/png" },
	{ ".ico", "image/x-icon" },
	{ ".txt", "text/plain; charset=utf-8" },
	{ ".woff2", "font/woff2" },
};

/* The page may load and call only its own origin; styles and scripts come
 * from files, never inline. */
static const char CSP[] =
	"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'";

static const char *
content_type(const char *path)
{
	const char *dot = strrchr(path, '.');
	const char *slash = strrchr(path, '/');
	if (dot && (!slash || dot > slash))
		for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
			if (strcasecmp(dot, TYPES[i].ext) == 0)
				return TYPES[i].type;
	return "application/octet-stream";
}

http_static *
http_static_create(const char *dir)
{
	if (!dir || !*dir)
		return NULL;
	http_static *st = xcalloc(1, sizeof *st);
	char *real = realpath(dir, NULL);
	if (real) {
		st->root = xstrdup(real);
		free(real);
	} else {
		st->root = xstrdup(dir);
		st->missing = true;
		log_event(LOG_WARN, "panel folder not found: / serves nothing", LOG_S("dir", dir),
		          LOG_S("error", strerror(errno)), LOG_END);
	}
	return st;
}

void
http_static_destroy(http_static *st)
{
	if (!st)
		return;
	free(st->root);
	free(st);
}

static bool
segment_ok(const char *s)
{
	size_t n = strlen(s);
	return n > 0 && n <= STATIC_MAX_SEGMENT && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\');
}

/* The open descriptor of the regular file p names inside root (its
 * real path in *real, malloc'd), or -1. */
static int
open_inside(const http_static *st, const struct http_path *p, char **real, struct stat *sb)
{
	char path[PATH_MAX];
	size_t len = (size_t)snprintf(path, sizeof path, "%s", st->root);
	for (int i = 0; i < p->n; i++) {
		if (!segment_ok(p->seg[i]))
			return -1;
		int w = snprintf(path + len, sizeof path - len, "/%s", p->seg[i]);
		if (w < 0 || (size_t)w >= sizeof path - len)
			return -1;
		len += (size_t)w;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		char *r = realpath(path, NULL);
		if (!r)
			return -1;
		size_t rl = strlen(st->root);
		if (strncmp(r, st->root, rl) != 0 || (r[rl] != '/' && r[rl] != '\0')) {
			free(r);      /* a symlink out of the folder */
			return -1;
		}
		int fd = open(r, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (fd < 0 || fstat(fd, sb) != 0) {
			if (fd >= 0)
				close(fd);
			free(r);
			return -1;
		}
		if (S_ISREG(sb->st_mode) && sb->st_size <= STATIC_MAX_FILE) {
			*real = r;
			return fd;
		}
		close(fd);
		free(r);
		if (!S_ISDIR(sb->st_mode) || attempt)
			return -1;
		/* A folder: its index.html. */
		if (len + sizeof "/index.html" > sizeof path)
			return -1;
		memcpy(path + len, "/index.html", sizeof "/index.html");
	}
	return -1;
}

static void
http_date(time_t t, char *buf, size_t len)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, len, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2). */
static bool
not_modified(struct evhttp_request *req, const char *etag, time_t mtime)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *inm = evhttp_find_header(in, "If-None-Match");
	if (inm)
		return strcmp(inm, "*") == 0 || strstr(inm, etag) != NULL;
	const char *ims = evhttp_find_header(in, "If-Modified-Since");
	if (!ims)
		return false;
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	const char *end = strptime(ims, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	if (!end || *end)
		return false;
	return mtime <= timegm(&tm);
}

int
http_static_serve(const http_static *st, struct evhttp_request *req, const struct http_path *p,
                  const char *req_id, bool head)
{
	if (!st || st->missing)
		return 0;
	char *real = NULL;
	struct stat sb;
	int fd = open_inside(st, p, &real, &sb);
	if (fd < 0)
		return 0;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	char etag[64], date[64], n[32];
	snprintf(etag, sizeof etag, "\"%llx-%llx\"", (unsigned long long)sb.st_size,
	         (unsigned long long)sb.st_mtim.tv_sec * 1000000000ull +
	             (unsigned long long)sb.st_mtim.tv_nsec);
	http_date(sb.st_mtime, date, sizeof date);
	const char *type = content_type(real);
	evhttp_add_header(out, "X-Request-Id", req_id);
	evhttp_add_header(out, "ETag", etag);
	evhttp_add_header(out, "Last-Modified", date);
	evhttp_add_header(out, "Cache-Control", "no-cache");
	evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(out, "Referrer-Policy", "no-referrer");
	if (strncmp(type, "text/html", 9) == 0)
		evhttp_add_header(out, "Content-Security-Policy", CSP);
	free(real);
	if (not_modified(req, etag, sb.st_mtime)) {
		close(fd);
		evhttp_send_reply(req, 304, "Not Modified", NULL);
		return 304;
	}
	evhttp_add_header(out, "Content-Type", type);
	struct evbuffer *buf = evbuffer_new();
	if (head) {
		snprintf(n, sizeof n, "%lld", (long long)sb.st_size);
		evhttp_add_header(out, "Content-Length", n);
	} else {
		/* Read here and close: the buffer never owns the descriptor. */
		int r;
		while ((r = evbuffer_read(buf, fd, 64 * 1024)) > 0)
			;
		if (r < 0 || (off_t)evbuffer_get_length(buf) != sb.st_size) {
			close(fd);
			evbuffer_free(buf);
			return 0;
		}
	}
	close(fd);
	evhttp_send_reply(req, 200, "OK", buf);
	evbuffer_free(buf);
	return 200;
}
