/*
 * http_int — what http_api lends the route modules beside it
 * (http_contacts, the stream-token route): its JSON replies, which keep the
 * server's counters and common headers, and its request log line. Not for
 * use outside the HTTP subsystem.
 */
#ifndef RAPPORT_HTTP_INT_H
#define RAPPORT_HTTP_INT_H

#include "http_api.h"

#include <stdbool.h>
#include <stddef.h>

struct evhttp_request;

void http_api_send_json(http_server *s, struct evhttp_request *req, const char *req_id,
                        int status, const char *body, size_t len, bool head);
void http_api_send_error(http_server *s, struct evhttp_request *req, const char *req_id,
                         int status, const char *code, const char *message, bool head);
void http_api_log_request(http_server *s, const char *req_id, const char *method,
                          const char *path, int status, double t_start);

#endif
