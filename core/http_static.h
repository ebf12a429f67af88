/*
 * http_static — the panel's static files (RAPPORT_WEB, ./web), served at `/`.
 *
 * route() hands over a GET or HEAD whose path no API route took, already
 * split and decoded once by http_path_split(). A segment that starts with
 * "." (so "..", and hidden files), holds a '/' or '\\' (an encoded slash),
 * or is too long is refused as not found; the joined path is then resolved
 * with realpath() and must stay inside the folder, so a symlink cannot lead
 * out of it either. A folder means its index.html. Only regular files are
 * served, read with evbuffer_add_file (small files on local disk: the loop
 * does not wait on anything slower).
 *
 * Answers carry Content-Type from the extension (unknown ones are
 * application/octet-stream), X-Content-Type-Options: nosniff, ETag and
 * Last-Modified (If-None-Match / If-Modified-Since answer 304), and
 * Cache-Control: no-cache, so an edited file is seen at the next load while
 * an unchanged one costs a 304. HTML also gets a Content-Security-Policy
 * that allows only this origin (the panel fetches nothing from the
 * internet) and Referrer-Policy: no-referrer (a stream token in a URL never
 * travels in a Referer).
 *
 * Owns the resolved folder path; freed by http_static_destroy().
 */
#ifndef RAPPORT_HTTP_STATIC_H
#define RAPPORT_HTTP_STATIC_H

#include <stdbool.h>

struct evhttp_request;
struct http_path;
typedef struct http_static http_static;

/* dir: NULL or "" = no panel (returns NULL). A folder that does not exist
 * (yet) is not an error: every file is then not found, and the log says so
 * once. */
http_static *http_static_create(const char *dir);
void http_static_destroy(http_static *st);

/* Answers req with the file p names (200, or 304) and returns the status
 * sent; returns 0 and sends nothing when there is no such file, for the
 * caller's JSON 404. */
int http_static_serve(const http_static *st, struct evhttp_request *req, const struct http_path *p,
                      const char *req_id, bool head);

#endif
