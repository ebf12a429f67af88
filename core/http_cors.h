/*
 * http_cors — Cross-Origin Resource Sharing for a CRM front end served from
 * another origin (RAPPORT_CORS_ORIGINS).
 *
 * The list is parsed once at start (http_cors_create) into exact origins
 * ("https://crm.example.com", scheme://host[:port], no path), or "*" for any
 * origin. route() calls http_cors_apply() first on every request: a request
 * whose Origin is allowed gets Access-Control-Allow-Origin (the origin
 * itself, or "*") and Access-Control-Expose-Headers on whatever answer it
 * gets, streams included; with a list, every answer says Vary: Origin, since
 * it depends on it. An origin not allowed gets no CORS header at all, so the
 * browser refuses it. No Access-Control-Allow-Credentials is ever sent:
 * rapport uses no cookies, and the panel's Authorization header and stream
 * tokens need none. http_cors_preflight() answers an allowed OPTIONS
 * preflight before auth (a preflight never carries the key).
 *
 * Owns its parsed list; freed by http_cors_destroy().
 */
#ifndef RAPPORT_HTTP_CORS_H
#define RAPPORT_HTTP_CORS_H

#include <stdbool.h>

struct evhttp_request;
typedef struct http_cors http_cors;

/* origins: NULL or "" = CORS off (NULL returned, *err NULL); else a
 * comma-separated list or "*". NULL with *err (malloc'd) on a malformed
 * entry. */
http_cors *http_cors_create(const char *origins, char **err);
void http_cors_destroy(http_cors *c);

/* Adds the CORS headers the request's Origin calls for (none when cors is
 * NULL, the request has no Origin, or the origin is not allowed). */
void http_cors_apply(const http_cors *c, struct evhttp_request *req);
/* True when req is a preflight (OPTIONS with Origin and
 * Access-Control-Request-Method) from an allowed origin: the caller answers
 * 204 after this added Allow-Methods, Allow-Headers and Max-Age. */
bool http_cors_preflight(const http_cors *c, struct evhttp_request *req);

#endif
