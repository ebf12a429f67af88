/*
 * http_cors — RAPPORT_CORS_ORIGINS: which browser origins may call the API,
 * and the headers that tell the browser so. See http_cors.h.
 */
#include "http_cors.h"
#include "util.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#define CORS_MAX_ORIGINS 64

struct http_cors {
	bool any;                         /* "*" */
	int n;
	char *origin[CORS_MAX_ORIGINS];   /* lower-case scheme and host, as browsers send them */
};

/* What the API's answers carry that a cross-origin script may read. */
static const char EXPOSE[] =
	"ETag, Age, X-Cache, X-Request-Id, Server-Timing, Retry-After, Cache-Control";
static const char METHODS[] = "GET, HEAD, POST, DELETE, OPTIONS";
static const char HEADERS[] =
	"Authorization, Content-Type, Cache-Control, If-None-Match, X-Request-Id, Last-Event-ID";

/* scheme://host[:port], lower case, no path, query or trailing slash: the
 * serialisation of an origin a browser sends in Origin. */
static bool
valid_origin(const char *o)
{
	const char *rest;
	if (strncmp(o, "http://", 7) == 0)
		rest = o + 7;
	else if (strncmp(o, "https://", 8) == 0)
		rest = o + 8;
	else
		return false;
	if (!*rest)
		return false;
	for (const char *p = rest; *p; p++)
		if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || strchr("-.:[]", *p)))
			return false;
	return true;
}

static char *
trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

http_cors *
http_cors_create(const char *origins, char **err)
{
	*err = NULL;
	if (!origins)
		return NULL;
	char *copy = xstrdup(origins), *save = NULL;
	if (!*trim(copy)) {
		free(copy);
		return NULL;
	}
	http_cors *c = xcalloc(1, sizeof *c);
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *o = trim(tok);
		if (!*o)
			continue;
		if (strcmp(o, "*") == 0) {
			c->any = true;
			continue;
		}
		size_t n = strlen(o);
		if (n > 1 && o[n - 1] == '/')
			o[n - 1] = '\0';     /* "https://crm.example.com/" means the origin */
		for (char *p = o; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		if (!valid_origin(o)) {
			*err = xasprintf("RAPPORT_CORS_ORIGINS: \"%s\" is not an origin (expected "
			                 "scheme://host[:port], e.g. https://crm.example.com, or *)", tok);
			goto fail;
		}
		if (c->n == CORS_MAX_ORIGINS) {
			*err = xasprintf("RAPPORT_CORS_ORIGINS: more than %d origins", CORS_MAX_ORIGINS);
			goto fail;
		}
		c->origin[c->n++] = xstrdup(o);
	}
	if (c->any && c->n) {
		*err = xasprintf("RAPPORT_CORS_ORIGINS: \"*\" with a list of origins (use one or the other)");
		goto fail;
	}
	free(copy);
	if (!c->any && !c->n) {
		free(c);
		return NULL;
	}
	return c;
fail:
	free(copy);
	http_cors_destroy(c);
	return NULL;
}

void
http_cors_destroy(http_cors *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->n; i++)
		free(c->origin[i]);
	free(c);
}

/* The request's Origin when it is allowed, else NULL. */
static const char *
allowed_origin(const http_cors *c, struct evhttp_request *req)
{
	if (!c)
		return NULL;
	const char *o = evhttp_find_header(evhttp_request_get_input_headers(req), "Origin");
	if (!o || !*o)
		return NULL;
	if (c->any)
		return o;
	for (int i = 0; i < c->n; i++)
		if (strcasecmp(o, c->origin[i]) == 0)
			return o;
	return NULL;
}

void
http_cors_apply(const http_cors *c, struct evhttp_request *req)
{
	if (!c)
		return;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	if (!c->any)   /* the answer differs by Origin: caches must keep them apart */
		evhttp_add_header(out, "Vary", "Origin");
	const char *o = allowed_origin(c, req);
	if (!o)
		return;
	evhttp_add_header(out, "Access-Control-Allow-Origin", c->any ? "*" : o);
	evhttp_add_header(out, "Access-Control-Expose-Headers", EXPOSE);
}

bool
http_cors_preflight(const http_cors *c, struct evhttp_request *req)
{
	if (evhttp_request_get_command(req) != EVHTTP_REQ_OPTIONS)
		return false;
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	if (!evhttp_find_header(in, "Access-Control-Request-Method") || !allowed_origin(c, req))
		return false;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	evhttp_add_header(out, "Access-Control-Allow-Methods", METHODS);
	evhttp_add_header(out, "Access-Control-Allow-Headers", HEADERS);
	evhttp_add_header(out, "Access-Control-Max-Age", "600");
	return true;
}
