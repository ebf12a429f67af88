/*
 * test_jschema — the strict-mode JSON Schema subset: every keyword passes
 * and fails, messages name the first problem with its path the way a model
 * can act on, anyOf names the closest branch, $ref resolves and recursion
 * stops at the depth limit, and jschema_check_strict() accepts the three
 * real script schemas while refusing what OpenAI strict mode refuses.
 */
#include "jschema.h"
#include "tap.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static json_t *
parse(const char *text)
{
	json_error_t e;
	json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
	if (!v) {
		fprintf(stderr, "# bad JSON in test (%s): %s\n", e.text, text);
		exit(2);
	}
	return v;
}

/* Runs the validator; err gets the message ("" when valid). */
static bool
run(const char *schema, const char *value, char *err, size_t errlen)
{
	json_t *s = parse(schema), *v = parse(value);
	bool ok = jschema_validate(s, v, err, errlen);
	json_decref(s);
	json_decref(v);
	return ok;
}

static void
valid(const char *schema, const char *value, const char *name)
{
	char err[1024];
	bool ok = run(schema, value, err, sizeof err);
	if (!ok)
		fprintf(stderr, "# unexpected error: %s\n", err);
	ok(ok && err[0] == '\0', "valid: %s", name);
}

/* Fails with exactly `want`. */
static void
invalid(const char *schema, const char *value, const char *want, const char *name)
{
	char err[1024];
	bool ok = run(schema, value, err, sizeof err);
	bool same = !ok && strcmp(err, want) == 0;
	if (!same)
		fprintf(stderr, "# want: %s\n#  got: %s%s\n", want, ok ? "(valid) " : "", err);
	ok(same, "invalid: %s", name);
}

static void
strict_good(const char *schema, const char *name)
{
	char err[1024];
	json_t *s = parse(schema);
	bool ok = jschema_check_strict(s, err, sizeof err);
	json_decref(s);
	if (!ok)
		fprintf(stderr, "# unexpected error: %s\n", err);
	ok(ok && err[0] == '\0', "strict ok: %s", name);
}

static void
strict_bad(const char *schema, const char *part, const char *name)
{
	char err[1024];
	json_t *s = parse(schema);
	bool ok = jschema_check_strict(s, err, sizeof err);
	json_decref(s);
	bool has = !ok && strstr(err, part) != NULL;
	if (!has)
		fprintf(stderr, "# want part: %s\n#       got: %s%s\n", part, ok ? "(accepted) " : "", err);
	ok(has, "strict refuses: %s", name);
}

static bool
utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2
		      : (*p & 0xF8) == 0xF0 ? 3 : -1;
		if (n < 0)
			return false;
		p++;
		for (int i = 0; i < n; i++, p++)
			if ((*p & 0xC0) != 0x80)
				return false;
	}
	return true;
}

/* ---- the three real schemas (copied from the scripts' tables) ---- */

static const char SMART_TIPS[] =
	"{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"tips\"],"
	"\"properties\":{\"tips\":{\"type\":\"array\",\"minItems\":3,\"maxItems\":5,"
	"\"items\":{\"type\":\"object\",\"additionalProperties\":false,"
	"\"required\":[\"title\",\"action\",\"why\",\"channel\",\"timing\"],"
	"\"properties\":{"
	"\"title\":{\"type\":\"string\",\"description\":\"Short imperative headline, at most 8 words\"},"
	"\"action\":{\"type\":\"string\",\"description\":\"What exactly to do or say\"},"
	"\"why\":{\"type\":\"string\",\"description\":\"The fact from the data\"},"
	"\"channel\":{\"type\":\"string\",\"enum\":[\"email\",\"call\",\"meeting\",\"linkedin\",\"other\"]},"
	"\"timing\":{\"type\":\"string\",\"description\":\"When\"}}}}}}";

static const char HEALTH[] =
	"{\"type\":\"object\",\"additionalProperties\":false,"
	"\"required\":[\"score\",\"trend\",\"summary\",\"reasons\"],"
	"\"properties\":{"
	"\"score\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":100,\"description\":\"0-100\"},"
	"\"trend\":{\"type\":\"string\",\"enum\":[\"improving\",\"stable\",\"cooling\",\"at_risk\"]},"
	"\"summary\":{\"type\":\"string\"},"
	"\"reasons\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":5,"
	"\"items\":{\"type\":\"string\",\"description\":\"A reason\"}}}}";

static const char RESEARCH[] =
	"{\"type\":\"object\",\"additionalProperties\":false,"
	"\"required\":[\"company_overview\",\"industry_context\",\"talking_points\","
	"\"open_questions\",\"risks\"],"
	"\"properties\":{"
	"\"company_overview\":{\"type\":\"string\",\"description\":\"What the CRM tells us\"},"
	"\"industry_context\":{\"type\":\"string\",\"description\":\"Typical of the industry\"},"
	"\"talking_points\":{\"type\":\"array\",\"maxItems\":6,\"items\":{\"type\":\"string\"}},"
	"\"open_questions\":{\"type\":\"array\",\"maxItems\":6,\"items\":{\"type\":\"string\"}},"
	"\"risks\":{\"type\":\"array\",\"maxItems\":5,\"items\":{\"type\":\"string\"}}}}";

#define TIP(ch) "{\"title\":\"t\",\"action\":\"a\",\"why\":\"w\",\"channel\":\"" ch "\",\"timing\":\"now\"}"

static void
test_types(void)
{
	valid("{\"type\":\"object\"}", "{}", "object");
	valid("{\"type\":\"array\"}", "[]", "array");
	valid("{\"type\":\"string\"}", "\"x\"", "string");
	valid("{\"type\":\"integer\"}", "42", "integer");
	valid("{\"type\":\"integer\"}", "3.0", "3.0 counts as integer");
	valid("{\"type\":\"integer\"}", "-0.0", "-0.0 counts as integer");
	valid("{\"type\":\"number\"}", "1.5", "number (real)");
	valid("{\"type\":\"number\"}", "7", "number (integer)");
	valid("{\"type\":\"boolean\"}", "false", "boolean");
	valid("{\"type\":\"null\"}", "null", "null");
	valid("{\"type\":[\"string\",\"null\"]}", "null", "type array, second member");

	invalid("{\"type\":\"object\"}", "[]", "$: expected object, got array", "object vs array");
	invalid("{\"type\":\"array\"}", "{}", "$: expected array, got object", "array vs object");
	invalid("{\"type\":\"string\"}", "5", "$: expected string, got integer", "string vs integer");
	invalid("{\"type\":\"integer\"}", "\"7\"", "$: expected integer, got string", "integer vs string");
	invalid("{\"type\":\"integer\"}", "3.5", "$: expected integer, got number 3.5",
	        "fractional number is not an integer");
	invalid("{\"type\":\"integer\"}", "true", "$: expected integer, got boolean", "boolean is not integer");
	invalid("{\"type\":\"number\"}", "\"1\"", "$: expected number, got string", "number vs string");
	invalid("{\"type\":\"boolean\"}", "0", "$: expected boolean, got integer", "boolean vs 0");
	invalid("{\"type\":\"null\"}", "\"\"", "$: expected null, got string", "null vs empty string");
	invalid("{\"type\":[\"string\",\"null\"]}", "1", "$: expected string or null, got integer",
	        "type array lists every type");
	invalid("{\"type\":[\"string\",\"integer\",\"null\"]}", "[]",
	        "$: expected string, integer or null, got array", "three types");
	invalid("{\"type\":[\"null\",\"null\"]}", "0", "$: expected null, got integer", "type names listed once");
	invalid("{\"type\":\"float\"}", "1.5", "$: schema error: unknown type \"float\"",
	        "unknown type name is a schema error");
}

static void
test_objects(void)
{
	const char *s = "{\"type\":\"object\",\"properties\":{\"score\":{\"type\":\"integer\"},"
	                "\"trend\":{\"type\":\"string\"}},\"required\":[\"score\",\"trend\"],"
	                "\"additionalProperties\":false}";
	valid(s, "{\"score\":1,\"trend\":\"up\"}", "properties + required");
	invalid(s, "{\"score\":\"high\",\"trend\":\"up\"}", "$.score: expected integer, got string",
	        "property type");
	invalid(s, "{\"score\":1}", "$: missing required property \"trend\"", "missing required");
	invalid(s, "{\"score\":1,\"trend\":\"x\",\"extra\":true}",
	        "$: unexpected property \"extra\" (additionalProperties is false)", "unexpected property");
	invalid(s, "{\"extra\":1,\"score\":1}", "$: missing required property \"trend\"",
	        "missing is reported before unexpected");

	valid("{\"properties\":{\"a\":{\"type\":\"string\"}}}", "{\"b\":5}",
	      "additional properties allowed by default");
	valid("{\"additionalProperties\":true}", "{\"b\":5}", "additionalProperties true");
	valid("{\"additionalProperties\":{\"type\":\"integer\"}}", "{\"b\":5}",
	      "additionalProperties schema, pass");
	invalid("{\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"integer\"}}",
	        "{\"a\":\"ok\",\"b\":\"x\"}", "$.b: expected integer, got string",
	        "additionalProperties schema, fail");
	invalid("{\"properties\":{\"odd key\":{\"type\":\"string\"}}}", "{\"odd key\":1}",
	        "$[\"odd key\"]: expected string, got integer", "non-identifier key is quoted in path");
	valid("{\"required\":{}}", "{}", "empty required as {} (from Lua)");
	invalid("{\"properties\":{\"a\":{\"type\":\"string\"}}}", "{\"a\\\"b\":1,\"a\":2}",
	        "$.a: expected string, got integer", "only listed keys are checked");
	invalid("{\"required\":[\"a\\\"q\"]}", "{}", "$: missing required property \"a\\\"q\"",
	        "property name escaped in message");
}

static void
test_arrays(void)
{
	const char *s = "{\"type\":\"array\",\"minItems\":1,\"maxItems\":5,\"items\":{\"type\":\"string\"}}";
	valid(s, "[\"a\"]", "minItems boundary");
	valid(s, "[\"a\",\"b\",\"c\",\"d\",\"e\"]", "maxItems boundary");
	invalid(s, "[]", "$: at least 1 item required, got 0", "minItems");
	invalid("{\"minItems\":3}", "[1]", "$: at least 3 items required, got 1", "minItems plural");
	invalid("{\"properties\":{\"reasons\":" "{\"type\":\"array\",\"maxItems\":5}}}",
	        "{\"reasons\":[1,2,3,4,5,6,7]}", "$.reasons: at most 5 items allowed, got 7", "maxItems");
	invalid("{\"maxItems\":1}", "[1,2]", "$: at most 1 item allowed, got 2", "maxItems singular");
	invalid(s, "[\"a\",2]", "$[1]: expected string, got integer", "items");
	valid("{\"items\":true}", "[1,\"x\"]", "items true");
	invalid("{\"items\":false}", "[1]", "$[0]: no value is allowed here", "items false");
	valid("{\"minItems\":2}", "\"x\"", "array keywords ignore non-arrays");

	const char *nested = "{\"type\":\"object\",\"properties\":{\"rows\":{\"type\":\"array\","
	                     "\"items\":{\"type\":\"object\",\"properties\":{\"cells\":{\"type\":"
	                     "\"array\",\"items\":{\"type\":\"object\",\"required\":[\"v\"],"
	                     "\"properties\":{\"v\":{\"type\":\"integer\"}}}}}}}}}";
	valid(nested, "{\"rows\":[{\"cells\":[{\"v\":1}]},{\"cells\":[]}]}", "nested arrays of objects");
	invalid(nested, "{\"rows\":[{\"cells\":[{\"v\":1}]},{\"cells\":[{\"v\":2},{\"v\":\"3\"}]}]}",
	        "$.rows[1].cells[1].v: expected integer, got string", "nested path");
	invalid(nested, "{\"rows\":[{\"cells\":[{\"v\":1}]},{\"cells\":[{}]}]}",
	        "$.rows[1].cells[0]: missing required property \"v\"", "nested missing property");
}

static void
test_enum_const(void)
{
	const char *s = "{\"enum\":[\"email\",\"call\",\"meeting\",\"linkedin\",\"other\"]}";
	valid(s, "\"call\"", "enum");
	invalid(s, "\"fax\"", "$: \"fax\" is not one of \"email\", \"call\", \"meeting\", \"linkedin\", \"other\"",
	        "enum");
	valid("{\"enum\":[1,null,[1,2]]}", "1.0", "enum compares numbers by value");
	valid("{\"enum\":[1,null,[1,2]]}", "[1,2.0]", "enum compares nested numbers by value");
	valid("{\"enum\":[1,null,{\"a\":[true]}]}", "{\"a\":[true]}", "enum object member");
	invalid("{\"enum\":[1,null]}", "2", "$: 2 is not one of 1, null", "enum of numbers");
	invalid("{\"enum\":[{\"a\":1}]}", "{\"a\":2}", "$: {\"a\":2} is not one of {\"a\":1}", "enum objects");
	invalid("{\"enum\":[]}", "1", "$: 1 is not allowed (the enum is empty)", "empty enum");

	valid("{\"const\":\"a\"}", "\"a\"", "const");
	valid("{\"const\":2}", "2.0", "const numbers by value");
	invalid("{\"properties\":{\"kind\":{\"const\":\"a\"}}}", "{\"kind\":\"b\"}",
	        "$.kind: expected \"a\", got \"b\"", "const");
	invalid("{\"const\":null}", "false", "$: expected null, got false", "const null");
}

static void
test_numbers(void)
{
	const char *s = "{\"properties\":{\"score\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":100}}}";
	valid(s, "{\"score\":0}", "minimum boundary");
	valid(s, "{\"score\":100}", "maximum boundary");
	valid(s, "{\"score\":100.0}", "maximum boundary, real");
	invalid(s, "{\"score\":150}", "$.score: 150 is greater than the maximum 100", "maximum");
	invalid(s, "{\"score\":-1}", "$.score: -1 is less than the minimum 0", "minimum");
	invalid("{\"minimum\":0.5}", "0.25", "$: 0.25 is less than the minimum 0.5", "real minimum");
	valid("{\"exclusiveMinimum\":0}", "0.001", "exclusiveMinimum");
	invalid("{\"exclusiveMinimum\":0}", "0", "$: 0 must be greater than 0", "exclusiveMinimum equal");
	valid("{\"exclusiveMaximum\":1}", "0.999", "exclusiveMaximum");
	invalid("{\"exclusiveMaximum\":1}", "1.0", "$: 1 must be less than 1", "exclusiveMaximum equal");
	invalid("{\"exclusiveMaximum\":1}", "7", "$: 7 must be less than 1", "exclusiveMaximum above");
	valid("{\"maximum\":9007199254740993}", "9007199254740993", "big integers compare exactly");
	invalid("{\"maximum\":9007199254740992}", "9007199254740993",
	        "$: 9007199254740993 is greater than the maximum 9007199254740992",
	        "big integers compare exactly, fail");
	valid("{\"multipleOf\":5}", "10", "multipleOf");
	invalid("{\"multipleOf\":5}", "7", "$: 7 is not a multiple of 5", "multipleOf fail");
	valid("{\"multipleOf\":0.1}", "0.3", "multipleOf real (rounding tolerated)");
	invalid("{\"multipleOf\":0.5}", "0.75", "$: 0.75 is not a multiple of 0.5", "multipleOf real fail");
	valid("{\"minimum\":5}", "\"abc\"", "number keywords ignore strings");
}

static void
test_strings(void)
{
	valid("{\"maxLength\":5}", "\"h\xc3\xa9llo\"", "maxLength counts code points, not bytes");
	invalid("{\"maxLength\":5}", "\"h\xc3\xa9llo!\"", "$: at most 5 characters allowed, got 6",
	        "maxLength");
	valid("{\"minLength\":1}", "\"\xf0\x9f\x98\x80\"", "minLength, one 4-byte code point");
	invalid("{\"minLength\":2}", "\"\xc3\xa9\"", "$: at least 2 characters required, got 1",
	        "minLength");
	invalid("{\"maxLength\":1}", "\"ab\"", "$: at most 1 character allowed, got 2", "maxLength singular");
	valid("{\"minLength\":3}", "12", "string keywords ignore numbers");
}

static void
test_anyof(void)
{
	const char *s = "{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}";
	valid(s, "\"x\"", "anyOf first branch");
	valid(s, "null", "anyOf second branch");
	invalid(s, "5", "$: expected string or null, got integer", "anyOf: all fail on type");

	const char *shapes =
		"{\"properties\":{\"contact\":{\"anyOf\":["
		"{\"type\":\"object\",\"required\":[\"email\"],\"properties\":{\"email\":{\"type\":\"string\"}}},"
		"{\"type\":\"object\",\"required\":[\"phone\"],\"properties\":{\"phone\":{\"type\":\"string\"}}},"
		"{\"type\":\"null\"}]}}}";
	valid(shapes, "{\"contact\":{\"phone\":\"123\"}}", "anyOf object branch");
	invalid(shapes, "{\"contact\":{\"phone\":123}}",
	        "$.contact.phone: expected string, got integer "
	        "(no anyOf alternative matched; closest: #2 of 3)", "anyOf names the closest branch");
	invalid(shapes, "{\"contact\":{}}",
	        "$.contact: missing required property \"email\" "
	        "(no anyOf alternative matched; closest: #1 of 3)", "anyOf: tie goes to the first");
	invalid(shapes, "{\"contact\":7}", "$.contact: expected object or null, got integer",
	        "anyOf: types merged and deduplicated");
	invalid("{\"anyOf\":[{\"type\":\"string\"},{\"minimum\":3}]}", "1",
	        "$: 1 is less than the minimum 3 (no anyOf alternative matched; closest: #2 of 2)",
	        "anyOf: a branch past its type check is closer");
	invalid("{\"anyOf\":[{\"const\":1},{\"const\":2}]}", "true",
	        "$: expected 1, got true (no anyOf alternative matched; closest: #1 of 2)",
	        "anyOf without types");
	valid("{\"anyOf\":[{\"type\":\"string\"},true]}", "1", "anyOf with a true branch");
	invalid("{\"anyOf\":[{\"type\":\"string\"},false]}", "1",
	        "$: matches none of the 2 anyOf alternatives (got integer)", "anyOf with false branch");
	invalid("{\"$defs\":{\"s\":{\"type\":\"string\"}},\"anyOf\":[{\"$ref\":\"#/$defs/s\"},"
	        "{\"type\":\"integer\"}]}", "1.5", "$: expected string or integer, got number 1.5",
	        "anyOf types through $ref");
	invalid("{\"anyOf\":[{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]},"
	        "{\"type\":\"object\",\"required\":[\"a\"]}]}", "{}",
	        "$: missing required property \"a\" (no anyOf alternative matched; closest: #2 of 2)",
	        "nested anyOf");
}

static void
test_refs(void)
{
	const char *defs = "{\"$defs\":{\"tip\":{\"type\":\"object\",\"required\":[\"t\"],"
	                   "\"properties\":{\"t\":{\"type\":\"string\"}}}},"
	                   "\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/tip\"}}";
	valid(defs, "[{\"t\":\"a\"}]", "$ref to $defs");
	invalid(defs, "[{\"t\":\"a\"},{\"t\":1}]", "$[1].t: expected string, got integer", "$ref to $defs, fail");
	const char *old = "{\"definitions\":{\"n\":{\"type\":\"integer\"}},"
	                  "\"properties\":{\"x\":{\"$ref\":\"#/definitions/n\"}}}";
	valid(old, "{\"x\":1}", "$ref to definitions");
	invalid(old, "{\"x\":\"1\"}", "$.x: expected integer, got string", "$ref to definitions, fail");
	const char *tree = "{\"type\":\"object\",\"required\":[\"name\"],\"properties\":{"
	                   "\"name\":{\"type\":\"string\"},"
	                   "\"children\":{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}}}";
	valid(tree, "{\"name\":\"a\",\"children\":[{\"name\":\"b\",\"children\":[{\"name\":\"c\"}]}]}",
	      "recursive $ref to the root");
	invalid(tree, "{\"name\":\"a\",\"children\":[{\"name\":\"b\",\"children\":[{}]}]}",
	        "$.children[0].children[0]: missing required property \"name\"", "recursive $ref, fail");
	valid("{\"$defs\":{\"a/b\":{\"type\":\"string\"},\"c~d\":{\"type\":\"null\"}},"
	      "\"items\":[{\"$ref\":\"#/$defs/a~1b\"}],"
	      "\"properties\":{\"p\":{\"$ref\":\"#/$defs/a~1b\"},\"q\":{\"$ref\":\"#/$defs/c~0d\"}}}",
	      "{\"p\":\"x\",\"q\":null}", "JSON pointer escapes in $ref");
	invalid("{\"properties\":{\"x\":{\"$ref\":\"#/$defs/missing\"}}}", "{\"x\":1}",
	        "$.x: schema error: cannot resolve $ref \"#/$defs/missing\"", "unresolvable $ref");
	invalid("{\"$ref\":\"other.json#/a\"}", "1", "$: schema error: cannot resolve $ref \"other.json#/a\"",
	        "remote $ref refused");
}

static void
test_depth(void)
{
	const char *s = "{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"c\":{\"$ref\":\"#/$defs/n\"}}}},"
	                "\"$ref\":\"#/$defs/n\"}";
	char value[4096], err[2048];
	size_t len = 0;

	/* 20 levels of value nest 41 schema levels ($ref + object each): fine. */
	for (int i = 0; i < 20; i++)
		len += (size_t)snprintf(value + len, sizeof value - len, "{\"c\":");
	len += (size_t)snprintf(value + len, sizeof value - len, "{}");
	for (int i = 0; i < 20; i++)
		value[len++] = '}';
	value[len] = '\0';
	valid(s, value, "20 levels of recursion");

	len = 0;
	for (int i = 0; i < 500; i++)
		len += (size_t)snprintf(value + len, sizeof value - len, "[");
	for (int i = 0; i < 500; i++)
		value[len++] = ']';
	value[len] = '\0';
	bool ok = run("{\"items\":{\"$ref\":\"#\"}}", value, err, sizeof err);
	ok(!ok && strstr(err, "nested too deeply (more than 64 levels"), "500 nested arrays stop at the limit");
	ok(strncmp(err, "$[0][0][0]", 10) == 0, "depth error has the path: %.40s...", err);

	ok(!run("{\"$ref\":\"#\"}", "1", err, sizeof err) && strstr(err, "nested too deeply"),
	   "a $ref cycle stops at the limit: %s", err);
	ok(!run("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"}]}},"
	        "\"$ref\":\"#/$defs/a\"}", "1", err, sizeof err) && strstr(err, "nested too deeply"),
	   "a $ref cycle through anyOf stops at the limit");

	/* Two branches that both recurse would cost 2^64 checks: the work
	 * budget ends it. */
	double t0 = (double)clock() / CLOCKS_PER_SEC;
	ok(!run("{\"$defs\":{\"x\":{\"anyOf\":[{\"$ref\":\"#/$defs/x\"},{\"$ref\":\"#/$defs/x\"}]}},"
	        "\"$ref\":\"#/$defs/x\"}", "1", err, sizeof err) && strstr(err, "too much work"),
	   "exponential anyOf recursion stops at the work budget: %s", err);
	ok(!run("{\"$defs\":{\"x\":{\"anyOf\":[{\"items\":{\"$ref\":\"#/$defs/x\"}},"
	        "{\"items\":{\"$ref\":\"#/$defs/x\"}},{\"type\":\"string\"}]}},\"$ref\":\"#/$defs/x\"}",
	        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
	        err, sizeof err) && strstr(err, "too much work"),
	   "exponential anyOf over a deep value stops too");
	ok((double)clock() / CLOCKS_PER_SEC - t0 < 2.0, "and both stop quickly");
}

static void
test_misc(void)
{
	char err[64];
	valid("{\"description\":\"d\",\"title\":\"t\",\"x-unknown\":{\"type\":\"string\"},"
	      "\"pattern\":\"^a$\",\"format\":\"email\"}", "5", "description, title, unknown keywords ignored");
	valid("true", "{\"a\":1}", "schema true");
	invalid("false", "1", "$: no value is allowed here", "schema false");
	invalid("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"enum\":"
	        "[\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]}}}}",
	        "{\"a\":[\"b\"]}",
	        "$.a[0]: \"b\" is not one of \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\"",
	        "long values are shortened in messages");

	/* A message cut to a small buffer ends on a character boundary. */
	bool ok = run("{\"enum\":[\"x\"]}", "\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
	              "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
	              "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"",
	              err, 10);
	ok(!ok && strlen(err) <= 9 && utf8_valid(err), "short buffer: \"%s\" is cut at a character", err);
	for (size_t n = 1; n < 40; n++) {
		char small[40];
		run("{\"enum\":[\"x\"]}", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9\xe2\x82\xac\"",
		    small, n);
		if (!utf8_valid(small) || strlen(small) >= n) {
			ok(0, "cut at %zu bytes keeps UTF-8 valid: %s", n, small);
			break;
		}
		if (n == 39)
			ok(1, "every cut from 1 to 39 bytes keeps UTF-8 valid");
	}
	json_t *s = parse("{\"type\":\"string\"}"), *v = parse("1");
	ok(!jschema_validate(s, v, NULL, 0), "err may be NULL");
	ok(!jschema_validate(NULL, v, err, sizeof err) && strstr(err, "no schema"), "NULL schema");
	ok(!jschema_validate(s, NULL, err, sizeof err) && strstr(err, "no value"), "NULL value");
	json_decref(s);
	json_decref(v);
	invalid("{\"enum\":[\"x\"]}", "\"\\u0001\\\"\\\\\"",
	        "$: \"\\u0001\\\"\\\\\" is not one of \"x\"", "control characters and quotes escaped");
}

static void
test_real_schemas(void)
{
	valid(SMART_TIPS, "{\"tips\":[" TIP("email") "," TIP("call") "," TIP("linkedin") "]}",
	      "smart_tips reply");
	invalid(SMART_TIPS, "{\"tips\":[" TIP("email") "," TIP("call") "," TIP("fax") "]}",
	        "$.tips[2].channel: \"fax\" is not one of \"email\", \"call\", \"meeting\", \"linkedin\", \"other\"",
	        "smart_tips: bad channel");
	invalid(SMART_TIPS, "{\"tips\":[" TIP("email") "," TIP("call") "]}",
	        "$.tips: at least 3 items required, got 2", "smart_tips: too few tips");
	invalid(SMART_TIPS, "{\"tips\":[" TIP("email") "," TIP("call") ","
	        "{\"title\":\"t\",\"action\":\"a\",\"why\":\"w\",\"channel\":\"call\"}]}",
	        "$.tips[2]: missing required property \"timing\"", "smart_tips: tip without timing");

	valid(HEALTH, "{\"score\":72,\"trend\":\"cooling\",\"summary\":\"s\",\"reasons\":[\"r\"]}",
	      "relationship_health reply");
	valid(HEALTH, "{\"score\":72.0,\"trend\":\"cooling\",\"summary\":\"s\",\"reasons\":[\"r\"]}",
	      "relationship_health reply, score 72.0");
	invalid(HEALTH, "{\"score\":\"72\",\"trend\":\"cooling\",\"summary\":\"s\",\"reasons\":[\"r\"]}",
	        "$.score: expected integer, got string", "relationship_health: score as string");
	invalid(HEALTH, "{\"score\":72,\"summary\":\"s\",\"reasons\":[\"r\"]}",
	        "$: missing required property \"trend\"", "relationship_health: no trend");
	invalid(HEALTH, "{\"score\":101,\"trend\":\"cooling\",\"summary\":\"s\",\"reasons\":[\"r\"]}",
	        "$.score: 101 is greater than the maximum 100", "relationship_health: score 101");
	invalid(HEALTH, "{\"score\":7,\"trend\":\"cooling\",\"summary\":\"s\","
	        "\"reasons\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\"]}",
	        "$.reasons: at most 5 items allowed, got 7", "relationship_health: 7 reasons");

	valid(RESEARCH, "{\"company_overview\":\"c\",\"industry_context\":\"i\",\"talking_points\":[\"t\"],"
	      "\"open_questions\":[],\"risks\":[]}", "contextual_research reply");
	invalid(RESEARCH, "{\"company_overview\":\"c\",\"industry_context\":\"i\",\"talking_points\":[\"t\"],"
	        "\"open_questions\":[],\"risks\":[],\"extra\":1}",
	        "$: unexpected property \"extra\" (additionalProperties is false)",
	        "contextual_research: extra property");
	invalid(RESEARCH, "{\"company_overview\":\"c\",\"industry_context\":\"i\",\"talking_points\":\"t\","
	        "\"open_questions\":[],\"risks\":[]}",
	        "$.talking_points: expected array, got string", "contextual_research: string for list");
	invalid(RESEARCH, "{\"company_overview\":\"c\",\"industry_context\":null,\"talking_points\":[],"
	        "\"open_questions\":[],\"risks\":[]}",
	        "$.industry_context: expected string, got null", "contextual_research: null text");
}

static void
test_strict(void)
{
	strict_good(SMART_TIPS, "smart_tips schema");
	strict_good(HEALTH, "relationship_health schema");
	strict_good(RESEARCH, "contextual_research schema");
	strict_good("{\"type\":\"object\",\"properties\":{},\"required\":{},\"additionalProperties\":false}",
	            "empty object, required as {} (from Lua)");
	strict_good("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\",\"b\",\"c\"],"
	            "\"properties\":{\"a\":{\"type\":[\"string\",\"null\"],\"minLength\":1,\"maxLength\":9,"
	            "\"pattern\":\"^x\",\"format\":\"email\"},"
	            "\"b\":{\"anyOf\":[{\"$ref\":\"#/$defs/n\"},{\"type\":\"null\"}]},"
	            "\"c\":{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":1,"
	            "\"multipleOf\":0.1,\"title\":\"C\"}},"
	            "\"$defs\":{\"n\":{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"k\",\"kids\"],"
	            "\"properties\":{\"k\":{\"enum\":[\"x\",\"y\"]},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"}}}}}}",
	            "nullable, anyOf, $defs, numeric and string keywords");
}

static void
test_strict_bad(void)
{
	strict_bad("[]", "#: the schema must be a JSON object", "not an object");
	strict_bad("{\"type\":\"array\",\"items\":{\"type\":\"string\"}}",
	           "#: the root schema must have \"type\": \"object\"", "root array");
	strict_bad("{\"anyOf\":[{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}]}",
	           "#: the root schema must be an object schema, not anyOf", "root anyOf");
	strict_bad("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
	           "#: an object schema needs \"additionalProperties\": false", "no additionalProperties");
	strict_bad("{\"type\":\"object\",\"properties\":{},\"additionalProperties\":true}",
	           "#: an object schema needs \"additionalProperties\": false", "additionalProperties true");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"string\"},\"b\":{\"type\":\"string\"}}}",
	           "#: property \"b\" is missing from \"required\"", "property not required");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\",\"z\"],"
	           "\"properties\":{\"a\":{\"type\":\"string\"}}}",
	           "#: \"required\" lists \"z\", which is not in \"properties\"", "required unknown");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,"
	           "\"required\":[\"tips\"],\"properties\":{\"tips\":{\"type\":\"array\",\"items\":"
	           "{\"type\":\"object\",\"required\":[\"t\"],\"properties\":{\"t\":{\"type\":\"string\"}}}}}}",
	           "#/properties/tips/items: an object schema needs \"additionalProperties\": false",
	           "nested object path");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"oneOf\":[{\"type\":\"string\"}]}}}",
	           "#/properties/a: keyword \"oneOf\" is not supported in strict mode (supported: type, ",
	           "oneOf");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"string\",\"default\":\"x\"}}}",
	           "keyword \"default\" is not supported", "default");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{},"
	           "\"patternProperties\":{}}", "keyword \"patternProperties\" is not supported",
	           "patternProperties");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"float\"}}}",
	           "#/properties/a: unknown type \"float\"", "unknown type");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"description\":\"no type\"}}}",
	           "#/properties/a: a schema needs \"type\"", "schema without type");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"array\"}}}",
	           "#/properties/a: an array schema needs \"items\"", "array without items");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"$ref\":\"#/$defs/nope\"}}}",
	           "#/properties/a: $ref \"#/$defs/nope\" does not resolve", "dangling $ref");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"string\",\"format\":\"uri\"}}}",
	           "#/properties/a: format \"uri\" is not supported in strict mode", "format uri");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},"
	           "\"minItems\":3,\"maxItems\":2}}}",
	           "#/properties/a: \"minItems\" (3) is greater than \"maxItems\" (2)", "minItems > maxItems");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"string\",\"maxLength\":-1}}}",
	           "\"maxLength\" must be a non-negative integer", "negative maxLength");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"integer\",\"minimum\":\"0\"}}}",
	           "\"minimum\" must be a number", "string minimum");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"type\":\"string\",\"enum\":[]}}}",
	           "\"enum\" must be a non-empty array", "empty enum");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"object\","
	           "\"properties\":{}}]}}}",
	           "#/properties/a/anyOf/1: an object schema needs \"additionalProperties\": false",
	           "bad anyOf branch");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"properties\":{},"
	           "\"$defs\":{\"a/b\":{\"type\":\"object\"}}}",
	           "#/$defs/a~1b: an object schema needs \"additionalProperties\": false", "bad $defs entry");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
	           "\"properties\":{\"a\":true}}",
	           "#/properties/a: a schema must be a JSON object, got boolean", "boolean schema");
	strict_bad("{\"type\":\"object\",\"additionalProperties\":false,\"required\":[1],"
	           "\"properties\":{}}", "\"required\" must be an array of property names", "required numbers");

	/* A schema nested past the limit is refused, not a stack overflow. */
	char deep[8192];
	size_t len = 0;
	for (int i = 0; i < 100; i++)
		len += (size_t)snprintf(deep + len, sizeof deep - len, "{\"type\":\"array\",\"items\":");
	len += (size_t)snprintf(deep + len, sizeof deep - len, "{\"type\":\"string\"}");
	for (int i = 0; i < 100; i++)
		deep[len++] = '}';
	deep[len] = '\0';
	char wrapped[9000];
	snprintf(wrapped, sizeof wrapped, "{\"type\":\"object\",\"additionalProperties\":false,"
	         "\"required\":[\"a\"],\"properties\":{\"a\":%s}}", deep);
	strict_bad(wrapped, "schema nested deeper than 64 levels", "deep schema");
}

int
main(void)
{
	test_types();
	test_objects();
	test_arrays();
	test_enum_const();
	test_numbers();
	test_strings();
	test_anyof();
	test_refs();
	test_depth();
	test_misc();
	test_real_schemas();
	test_strict();
	test_strict_bad();
	return tap_done();
}
