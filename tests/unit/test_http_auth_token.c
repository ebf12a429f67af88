/*
 * test_http_auth_token — stream tokens: a token opens only its contact and
 * type until its expiry; tampering with the expiry, the signature or the
 * form is refused; a shared secret makes tokens portable between
 * instances, a random one does not; bad settings are refused with the
 * setting's name.
 */
#include "http_auth_token.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>

int
main(void)
{
	char *err = NULL;
	http_tokens *t = http_tokens_create(NULL, 60, &err);
	ok(t && !err, "a random secret by default");
	char tok[HTTP_TOKEN_LEN];
	int64_t exp;
	http_tokens_issue(t, 42, "smart_tips", 1000000, tok, &exp);
	ok(exp == 1000060, "expires after the ttl (%lld)", (long long)exp);
	ok(strncmp(tok, "1000060.", 8) == 0 && strlen(tok) == 8 + 64, "\"<expiry>.<64 hex>\" (%s)", tok);
	ok(http_tokens_verify(t, tok, 42, "smart_tips", 1000000) == HTTP_TOKEN_OK, "valid for its stream");
	ok(http_tokens_verify(t, tok, 42, "smart_tips", 1000059) == HTTP_TOKEN_OK, "until just before expiry");
	ok(http_tokens_verify(t, tok, 42, "smart_tips", 1000060) == HTTP_TOKEN_EXPIRED, "expired at expiry");
	ok(http_tokens_verify(t, tok, 43, "smart_tips", 1000000) == HTTP_TOKEN_WRONG, "not another contact");
	ok(http_tokens_verify(t, tok, 42, "smart_tip", 1000000) == HTTP_TOKEN_WRONG, "not another type");

	char forged[HTTP_TOKEN_LEN];
	memcpy(forged, tok, sizeof forged);
	forged[0] = '2';   /* a later expiry, same signature */
	ok(http_tokens_verify(t, forged, 42, "smart_tips", 1000000) == HTTP_TOKEN_WRONG, "a moved expiry");
	memcpy(forged, tok, sizeof forged);
	forged[strlen(forged) - 1] = forged[strlen(forged) - 1] == '0' ? '1' : '0';
	ok(http_tokens_verify(t, forged, 42, "smart_tips", 1000000) == HTTP_TOKEN_WRONG, "a changed signature");
	const char *bad[] = { "", ".", "1000060", "1000060.", "x.abc", "1000060.zz", "-5.00",
	                      "99999999999999999999.0000000000000000000000000000000000000000000000000000000000000000" };
	int refused = 0;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		refused += http_tokens_verify(t, bad[i], 42, "smart_tips", 1000000) == HTTP_TOKEN_MALFORMED;
	ok(refused == (int)(sizeof bad / sizeof bad[0]), "malformed ones (%d of %zu)", refused,
	   sizeof bad / sizeof bad[0]);
	ok(http_tokens_verify(t, NULL, 42, "smart_tips", 1000000) == HTTP_TOKEN_MALFORMED, "none");

	http_tokens *other = http_tokens_create(NULL, 60, &err);
	ok(http_tokens_verify(other, tok, 42, "smart_tips", 1000000) == HTTP_TOKEN_WRONG,
	   "another process's random secret refuses it");
	http_tokens_destroy(other);

	const char *secret = "0123456789abcdef0123456789abcdef";
	http_tokens *a = http_tokens_create(secret, 60, &err);
	http_tokens *b = http_tokens_create(secret, 30, &err);
	http_tokens_issue(a, 7, "relationship_health", 500, tok, &exp);
	ok(http_tokens_verify(b, tok, 7, "relationship_health", 520) == HTTP_TOKEN_OK,
	   "a shared secret: any instance takes it");
	http_tokens_destroy(a);
	http_tokens_destroy(b);

	ok(!http_tokens_create("short", 60, &err) && err && strstr(err, "RAPPORT_STREAM_SECRET"),
	   "a short secret is refused (%s)", err ? err : "");
	free(err);
	err = NULL;
	ok(!http_tokens_create(NULL, 0, &err) && err && strstr(err, "RAPPORT_STREAM_TOKEN_TTL"),
	   "a zero ttl is refused (%s)", err ? err : "");
	free(err);
	http_tokens_destroy(t);
	return tap_done();
}
