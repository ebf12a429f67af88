/*
 * test_feedback — the checks on a vote's body (feedback_parse): what is
 * accepted, the status and code of each refusal, the reason's cap in bytes,
 * generated_at as a real RFC 3339 time.
 */
#include "feedback.h"
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The status feedback_parse gives body; *code set; the doc freed. */
static int
parse(const char *body, const char **code, struct feedback_vote *out)
{
	struct feedback_vote v;
	json_t *doc = NULL;
	char msg[300];
	int st = feedback_parse(body, strlen(body), &v, &doc, code, msg, sizeof msg);
	if (out && st == 0) {
		out->verdict = v.verdict && strcmp(v.verdict, "up") == 0 ? "up" : "down";
		out->reason = v.reason ? "set" : NULL;
		out->generated_at = v.generated_at ? "set" : NULL;
	}
	json_decref(doc);
	return st;
}

static int
with_time(const char *ts)
{
	char body[200];
	const char *code;
	snprintf(body, sizeof body, "{\"verdict\":\"up\",\"script_version\":\"0123abcd\","
	         "\"generated_at\":\"%s\"}", ts);
	return parse(body, &code, NULL);
}

int
main(void)
{
	const char *code = NULL;
	struct feedback_vote v;
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123abcd\"}", &code, &v) == 0 &&
	   strcmp(v.verdict, "up") == 0 && !v.reason && !v.generated_at,
	   "verdict and script_version are enough");
	ok(parse("{\"verdict\":\"down\",\"script_version\":\"89abcdef\",\"reason\":\"wrong "
	         "company\",\"generated_at\":\"2026-11-25T21:00:00.123Z\"}", &code, &v) == 0 &&
	   strcmp(v.verdict, "down") == 0 && v.reason && v.generated_at,
	   "every field");
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123abcd\",\"reason\":\" \\t\\n\"}", &code,
	         &v) == 0 && !v.reason, "a reason of blanks is no reason");
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123abcd\",\"reason\":null,"
	         "\"generated_at\":null}", &code, &v) == 0, "null reason and generated_at");

	ok(parse("nope", &code, NULL) == 400 && strcmp(code, "invalid_json") == 0, "not JSON");
	ok(parse("", &code, NULL) == 400 && strcmp(code, "invalid_json") == 0, "empty");
	ok(parse("[\"up\"]", &code, NULL) == 400 && strcmp(code, "invalid_feedback") == 0,
	   "not an object");
	ok(parse("{\"verdict\":\"UP\",\"script_version\":\"0123abcd\"}", &code, NULL) == 400 &&
	   strcmp(code, "invalid_verdict") == 0, "verdicts are lowercase");
	ok(parse("{\"verdict\":true,\"script_version\":\"0123abcd\"}", &code, NULL) == 400 &&
	   strcmp(code, "invalid_verdict") == 0, "a verdict is a string");
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123abc\"}", &code, NULL) == 400 &&
	   strcmp(code, "invalid_script_version") == 0, "7 digits are too few");
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123abcd89abcdef\"}", &code, NULL) ==
	   400 && strcmp(code, "invalid_script_version") == 0,
	   "16 digits are not what a result carries (8)");
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123ABCD\"}", &code, NULL) == 400,
	   "versions are lowercase hex");
	ok(parse("{\"verdict\":\"up\",\"script_version\":\"0123abcd\",\"extra\":1}", &code, NULL) ==
	   400 && strcmp(code, "invalid_feedback") == 0, "an unknown field");
	ok(parse("{\"verdict\":\"up\",\"verdict\":\"up\",\"script_version\":\"0123abcd\"}", &code,
	         NULL) == 400, "a duplicate key");

	char *big = malloc(FEEDBACK_REASON_MAX + 200);
	int n = snprintf(big, 100, "{\"verdict\":\"up\",\"script_version\":\"0123abcd\",\"reason\":\"");
	memset(big + n, 'x', FEEDBACK_REASON_MAX);
	strcpy(big + n + FEEDBACK_REASON_MAX, "\"}");
	ok(parse(big, &code, NULL) == 0, "a reason of exactly %d bytes", FEEDBACK_REASON_MAX);
	big[n] = 'y';
	memmove(big + n + 1, big + n, strlen(big + n) + 1);
	ok(parse(big, &code, NULL) == 413 && strcmp(code, "reason_too_long") == 0,
	   "one byte more is 413");
	free(big);

	ok(with_time("2026-11-25T21:00:00Z") == 0, "UTC, whole seconds");
	ok(with_time("2026-11-25T21:00:00.123456+01:00") == 0, "an offset, microseconds");
	ok(with_time("2028-02-29T00:00:00Z") == 0, "a leap day");
	ok(with_time("2026-02-29T00:00:00Z") == 400, "not a leap year");
	ok(with_time("2026-13-01T00:00:00Z") == 400, "month 13");
	ok(with_time("2026-11-25T24:00:00Z") == 400, "hour 24");
	ok(with_time("2026-11-25T21:00:00") == 400, "no zone");
	ok(with_time("2026-11-25") == 400, "a date alone");
	ok(with_time("2026-11-25T21:00:00.Z") == 400, "an empty fraction");
	ok(with_time("2026-11-25T21:00:00+1:00") == 400, "a short offset");
	return tap_done();
}
