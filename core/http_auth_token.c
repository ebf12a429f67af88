/*
 * http_auth_token — stream tokens: HMAC-SHA256 (OpenSSL) over the contact,
 * the type and the expiry. See http_auth_token.h.
 */
#include "http_auth_token.h"
#include "http_int.h"
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

/* No token may claim to last longer than this, whatever instance made it. */
#define TOKEN_MAX_LIFE_S 3600

struct http_tokens {
	unsigned char *secret;
	size_t secret_len;
	int ttl_s;
};

http_tokens *
http_tokens_create(const char *secret, int ttl_s, char **err)
{
	*err = NULL;
	if (ttl_s < 1 || ttl_s > TOKEN_MAX_LIFE_S) {
		*err = xasprintf("RAPPORT_STREAM_TOKEN_TTL: 1 to %d seconds, got %d", TOKEN_MAX_LIFE_S,
		                 ttl_s);
		return NULL;
	}
	if (secret && strlen(secret) < HTTP_TOKEN_SECRET_MIN) {
		*err = xasprintf("RAPPORT_STREAM_SECRET: at least %d characters (it signs the "
		                 "stream tokens; e.g. openssl rand -hex 32)", HTTP_TOKEN_SECRET_MIN);
		return NULL;
	}
	http_tokens *t = xcalloc(1, sizeof *t);
	t->ttl_s = ttl_s;
	if (secret) {
		t->secret_len = strlen(secret);
		t->secret = (unsigned char *)xstrdup(secret);
	} else {
		t->secret_len = 32;
		t->secret = xmalloc(t->secret_len);
		if (RAND_bytes(t->secret, (int)t->secret_len) != 1) {
			*err = xasprintf("cannot draw a random secret for the stream tokens");
			http_tokens_destroy(t);
			return NULL;
		}
	}
	return t;
}

void
http_tokens_destroy(http_tokens *t)
{
	if (!t)
		return;
	OPENSSL_cleanse(t->secret, t->secret_len);
	free(t->secret);
	free(t);
}

int
http_tokens_ttl(const http_tokens *t)
{
	return t->ttl_s;
}

/* 64 hex digits of HMAC-SHA256(secret, "rapport-stream-v1\n<contact>\n<type>\n<expiry>"). */
static void
sign(const http_tokens *t, int64_t contact_id, const char *type, int64_t expires_s, char hex[65])
{
	char msg[160];
	int n = snprintf(msg, sizeof msg, "rapport-stream-v1\n%lld\n%s\n%lld", (long long)contact_id,
	                 type, (long long)expires_s);
	if (n < 0 || (size_t)n >= sizeof msg)
		n = (int)strlen(msg);  /* a type is at most 64 characters: never cut */
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	HMAC(EVP_sha256(), t->secret, (int)t->secret_len, (const unsigned char *)msg, (size_t)n, md,
	     &mdlen);
	for (unsigned i = 0; i < 32 && i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	hex[64] = '\0';
}

void
http_tokens_issue(const http_tokens *t, int64_t contact_id, const char *type, int64_t now_s,
                  char *out, int64_t *expires_s)
{
	*expires_s = now_s + t->ttl_s;
	char hex[65];
	sign(t, contact_id, type, *expires_s, hex);
	snprintf(out, HTTP_TOKEN_LEN, "%lld.%s", (long long)*expires_s, hex);
}

enum http_token_verdict
http_tokens_verify(const http_tokens *t, const char *token, int64_t contact_id, const char *type,
                   int64_t now_s)
{
	if (!token)
		return HTTP_TOKEN_MALFORMED;
	const char *dot = strchr(token, '.');
	if (!dot || dot == token || dot - token > 18 || strlen(dot + 1) != 64)
		return HTTP_TOKEN_MALFORMED;
	int64_t exp = 0;
	for (const char *p = token; p < dot; p++) {
		if (!isdigit((unsigned char)*p))
			return HTTP_TOKEN_MALFORMED;
		exp = exp * 10 + (*p - '0');
	}
	for (const char *p = dot + 1; *p; p++)
		if (!isxdigit((unsigned char)*p))
			return HTTP_TOKEN_MALFORMED;
	char want[65];
	sign(t, contact_id, type, exp, want);
	/* Signature first, in constant time: whether a forged token was
	 * "expired" must not tell anything either. */
	if (CRYPTO_memcmp(want, dot + 1, 64) != 0)
		return HTTP_TOKEN_WRONG;
	if (exp <= now_s || exp > now_s + TOKEN_MAX_LIFE_S)
		return HTTP_TOKEN_EXPIRED;
	return HTTP_TOKEN_OK;
}

const char *
http_token_verdict_message(enum http_token_verdict v)
{
	switch (v) {
	case HTTP_TOKEN_OK: return "ok";
	case HTTP_TOKEN_MALFORMED: return "malformed stream token";
	case HTTP_TOKEN_EXPIRED: return "the stream token has expired; ask POST /v1/stream-tokens for another";
	case HTTP_TOKEN_WRONG: return "the stream token is not valid for this contact and type";
	}
	return "bad stream token";
}

void
http_tokens_handle_issue(const http_tokens *t, struct http_server *s, struct evhttp_request *req,
                         const char *req_id)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	json_error_t jerr;
	json_t *body = json_loadb((const char *)evbuffer_pullup(in, -1), len, JSON_REJECT_DUPLICATES,
	                          &jerr);
	json_t *cid = body ? json_object_get(body, "contact_id") : NULL;
	json_t *typ = body ? json_object_get(body, "type") : NULL;
	if (!json_is_object(body) || !json_is_integer(cid) || json_integer_value(cid) <= 0 ||
	    !json_is_string(typ) || !util_type_name_ok(json_string_value(typ))) {
		json_decref(body);
		http_api_send_error(s, req, req_id, 400, "invalid_body",
		                    "expected a JSON body {\"contact_id\": <positive integer>, "
		                    "\"type\": \"<analysis type>\"}", false);
		return;
	}
	int64_t contact = (int64_t)json_integer_value(cid);
	char token[HTTP_TOKEN_LEN], iso[40];
	int64_t exp;
	http_tokens_issue(t, contact, json_string_value(typ), util_wall_ms() / 1000, token, &exp);
	util_iso8601(exp * 1000, iso, sizeof iso);
	json_t *doc = json_pack("{s:s, s:s, s:i, s:I, s:O}", "token", token, "expires_at", iso,
	                        "expires_in", t->ttl_s, "contact_id", (json_int_t)contact, "type", typ);
	char *text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(doc);
	json_decref(body);
	/* A token is a credential: no cache may keep it. */
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	http_api_send_json(s, req, req_id, 201, text, strlen(text), false);
	free(text);
}
