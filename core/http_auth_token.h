/*
 * http_auth_token — short-lived signed stream tokens, so a browser's
 * EventSource (which cannot send an Authorization header) can open one
 * analysis stream without the API key ever being put in a URL.
 *
 * A holder of a key asks POST /v1/stream-tokens {"contact_id","type"} and
 * gets "<expiry>.<hmac>": the expiry in Unix seconds and the hex HMAC-SHA256
 * of (contact, type, expiry) under the server's secret. The token is good
 * only for GET /v1/contacts/<contact>/analyses/<type> as a stream, until its
 * expiry (RAPPORT_STREAM_TOKEN_TTL, 60 s): checked when the stream opens,
 * not while it runs. The secret is RAPPORT_STREAM_SECRET when set (the same
 * on every instance behind one address), else 32 random bytes drawn at
 * start, so a restart voids every token. Nothing is stored per token.
 *
 * Owns the secret; freed (and wiped) by http_tokens_destroy().
 */
#ifndef RAPPORT_HTTP_AUTH_TOKEN_H
#define RAPPORT_HTTP_AUTH_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct http_tokens http_tokens;

#define HTTP_TOKEN_SECRET_MIN 32   /* bytes of RAPPORT_STREAM_SECRET at least */
#define HTTP_TOKEN_LEN 96          /* room for "<expiry>.<64 hex>" and its NUL */

/* secret: NULL = random. ttl_s >= 1. NULL with *err (malloc'd) on a short
 * secret or a bad ttl. */
http_tokens *http_tokens_create(const char *secret, int ttl_s, char **err);
void http_tokens_destroy(http_tokens *t);
int http_tokens_ttl(const http_tokens *t);

/* Writes the token for (contact, type) into out[HTTP_TOKEN_LEN]; its expiry
 * (Unix seconds) into *expires_s. */
void http_tokens_issue(const http_tokens *t, int64_t contact_id, const char *type,
                       int64_t now_s, char *out, int64_t *expires_s);

enum http_token_verdict {
	HTTP_TOKEN_OK,
	HTTP_TOKEN_MALFORMED,
	HTTP_TOKEN_EXPIRED,
	HTTP_TOKEN_WRONG,          /* bad signature, or made for another contact or type */
};
enum http_token_verdict http_tokens_verify(const http_tokens *t, const char *token,
                                           int64_t contact_id, const char *type, int64_t now_s);
const char *http_token_verdict_message(enum http_token_verdict v);

/* POST /v1/stream-tokens (the caller has checked the API key): body
 * {"contact_id": N, "type": "name"} → 201 {"token", "expires_at" (ISO-8601),
 * "expires_in" (s), "contact_id", "type"}; 400 invalid_body otherwise. */
struct http_server;
struct evhttp_request;
void http_tokens_handle_issue(const http_tokens *t, struct http_server *s,
                              struct evhttp_request *req, const char *req_id);

#endif
