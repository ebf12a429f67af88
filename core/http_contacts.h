/*
 * http_contacts — GET /v1/contacts?q=&limit=: the panel's contact search.
 *
 * Runs the named query `contact_search` of scripts/lib/queries.lua (so a CRM
 * adapts it in Lua, like every read) on the scripts' read-only pool, with
 * $1 = the search text and $2 = the limit, and answers
 * {"contacts":[{id, full_name, email, …}], "q", "limit"} with the columns
 * the query returns (integers and booleans typed, NULL as null, the rest as
 * text). 400 for a bad limit or a text over 200 bytes, 503
 * database_unavailable when the pool is down, 500 query_failed on an SQL
 * error, 501 when queries.lua has no contact_search.
 *
 * Owns each search in progress (the request, the database query) until its
 * answer; http_contacts_abort_all() answers them 503 at shutdown, before
 * evhttp frees their requests. The query is bounded by
 * RAPPORT_DB_TIMEOUT_MS, so a client that leaves meanwhile costs at most
 * that wait.
 */
#ifndef RAPPORT_HTTP_CONTACTS_H
#define RAPPORT_HTTP_CONTACTS_H

#include "db.h"
#include "http_api.h"
#include "script.h"

#include <stdbool.h>

struct evhttp_request;
struct evkeyvalq;
typedef struct http_contacts http_contacts;

#define HTTP_CONTACTS_DEFAULT_LIMIT 20
#define HTTP_CONTACTS_MAX_LIMIT 100
#define HTTP_CONTACTS_MAX_Q 200

http_contacts *http_contacts_create(http_server *srv, db_pool *db, script_registry *scripts);
/* Answers what is still pending (503 shutting_down) and frees all. */
void http_contacts_destroy(http_contacts *hc);
void http_contacts_abort_all(http_contacts *hc);

/* True when the answer and its log line come later (the query was sent);
 * false when it was answered here and the caller logs it. */
bool http_contacts_search(http_contacts *hc, struct evhttp_request *req, const char *req_id,
                          const char *method, const char *path, struct evkeyvalq *query,
                          bool head, double t_start);

#endif
