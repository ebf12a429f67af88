/*
 * jschema — checks model replies against a script's JSON Schema, and the
 * schema itself against OpenAI's strict-mode rules (see jschema.h).
 *
 * jschema_validate() is one recursive walk, check(), over schema and value
 * together. The path of the value being looked at ("$.tips[2].channel")
 * lives in a fixed buffer: a step appends ".key" or "[i]" and the caller
 * cuts it back on return, so a valid reply costs no allocation. The first
 * failure writes "<path>: <message>" into the caller's buffer and unwinds.
 *
 * anyOf tries each branch with a scratch message buffer. Branches are scored
 * by how far into the value their error lies (two points per path step,
 * one more when it is not a type mismatch): the branch that got furthest is
 * the one the message names. When every branch fails on type right here,
 * the message merges their types instead ("expected string or null").
 * Every schema node visited costs one unit of a per-call budget
 * (JSCHEMA_MAX_WORK), so anyOf branches that $ref back into each other end
 * in an error instead of 2^64 steps.
 *
 * jschema_check_strict() walks the schema alone, with a JSON-pointer path
 * into the schema ("#/properties/tips/items"), and stops at the first rule
 * broken.
 *
 * Messages never end inside a UTF-8 sequence, so they can be put into a
 * JSON request (the repair prompt) whatever the buffer size.
 */
#include "jschema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PATH_LEN   1024
#define MSG_LEN    768
#define SHOW_LEN   80    /* bytes of a value quoted in a message */
#define LIST_LEN   400   /* bytes of an enum list in a message */
#define MAX_TYPES  7

#define NELEM(a) (sizeof (a) / sizeof *(a))

/* ---- bounded string building ------------------------------------------ */

/* A string in a fixed buffer, always NUL-terminated. What does not fit is
 * cut at a character boundary and marked with "...". */
struct sbuf {
	char *p;
	size_t cap, len;
	bool full;
};

static void
sb_init(struct sbuf *b, char *p, size_t cap)
{
	b->p = p;
	b->cap = cap;
	b->len = 0;
	b->full = false;
	if (cap)
		p[0] = '\0';
}

/* Length of s[0..n) shortened so it does not end inside a UTF-8 sequence. */
static size_t
utf8_cut(const char *s, size_t n)
{
	size_t i = n;
	while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
		i--;
	if (i == 0)
		return n;
	unsigned char lead = (unsigned char)s[i - 1];
	size_t need = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
	return n - (i - 1) >= need ? n : i - 1;
}

static void
sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->full || b->cap == 0)
		return;
	if (b->len + n < b->cap) {
		memcpy(b->p + b->len, s, n);
		b->len += n;
		b->p[b->len] = '\0';
		return;
	}
	b->full = true;
	if (b->cap < 4)
		return;
	size_t limit = b->cap - 4;     /* room for "..." and the NUL */
	size_t at = b->len < limit ? b->len : limit;
	size_t take = utf8_cut(s, limit - at < n ? limit - at : n);
	memcpy(b->p + at, s, take);
	at = utf8_cut(b->p, at + take);
	memcpy(b->p + at, "...", 4);
	b->len = at + 3;
}

/* Back to an earlier length (a path step undone). After a cut the text
 * may be shorter than old: then it stays as it is, still valid UTF-8. */
static void
sb_back(struct sbuf *b, size_t old)
{
	if (old < b->len) {
		b->len = old;
		b->p[old] = '\0';
	}
	b->full = false;
}

static void
sb_str(struct sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3)))
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[MSG_LEN];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof tmp)
		n = (int)utf8_cut(tmp, sizeof tmp - 1);
	sb_put(b, tmp, (size_t)n);
}

/* s as a JSON string literal, at most max bytes of it. */
static void
sb_quoted(struct sbuf *b, const char *s, size_t n, size_t max)
{
	bool cut = n > max;
	if (cut)
		n = utf8_cut(s, max);
	sb_put(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\') {
			char esc[2] = { '\\', (char)ch };
			sb_put(b, esc, 2);
		} else if (ch < 0x20) {
			sb_printf(b, "\\u%04x", ch);
		} else {
			sb_put(b, s + i, 1);
		}
	}
	sb_str(b, cut ? "...\"" : "\"");
}

static void
sb_number(struct sbuf *b, const json_t *v)
{
	if (json_is_integer(v))
		sb_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	else
		sb_printf(b, "%.15g", json_real_value(v));
}

/* A short rendering of any value, for messages. */
static void
sb_value(struct sbuf *b, const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		sb_quoted(b, json_string_value(v), json_string_length(v), SHOW_LEN);
		break;
	case JSON_INTEGER:
	case JSON_REAL:
		sb_number(b, v);
		break;
	case JSON_TRUE:
		sb_str(b, "true");
		break;
	case JSON_FALSE:
		sb_str(b, "false");
		break;
	case JSON_NULL:
		sb_str(b, "null");
		break;
	default: {
		char *dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		if (!dump) {
			sb_str(b, json_is_object(v) ? "{...}" : "[...]");
			break;
		}
		size_t n = strlen(dump);
		if (n > SHOW_LEN) {
			sb_put(b, dump, utf8_cut(dump, SHOW_LEN));
			sb_str(b, "...");
		} else {
			sb_put(b, dump, n);
		}
		free(dump);
	}
	}
}

/* Copies msg into the caller's buffer, never cutting a UTF-8 sequence. */
static void
copy_msg(char *dst, size_t dstlen, const char *msg)
{
	if (!dst || dstlen == 0)
		return;
	size_t n = strlen(msg);
	if (n >= dstlen)
		n = utf8_cut(msg, dstlen - 1);
	memcpy(dst, msg, n);
	dst[n] = '\0';
}

/* ---- values ------------------------------------------------------------ */

static const char *const type_names[] = {
	"object", "array", "string", "integer", "number", "boolean", "null",
};

static bool
known_type(const char *name)
{
	for (size_t i = 0; i < NELEM(type_names); i++)
		if (strcmp(name, type_names[i]) == 0)
			return true;
	return false;
}

/* The JSON Schema type of v as a reply would be described to the model. */
static const char *
type_of(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:  return "object";
	case JSON_ARRAY:   return "array";
	case JSON_STRING:  return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL:    return "number";
	case JSON_TRUE:
	case JSON_FALSE:   return "boolean";
	case JSON_NULL:    return "null";
	}
	return "value";
}

static bool
is_integral(const json_t *v)
{
	if (json_is_integer(v))
		return true;
	if (!json_is_real(v))
		return false;
	double x = json_real_value(v);
	return isfinite(x) && x == floor(x);
}

static bool
type_matches(const char *name, const json_t *v)
{
	if (strcmp(name, "integer") == 0)
		return is_integral(v);
	if (strcmp(name, "number") == 0)
		return json_is_number(v);
	if (strcmp(name, "boolean") == 0)
		return json_is_boolean(v);
	return strcmp(name, type_of(v)) == 0;
}

/* <0, 0 or >0 as number a is below, equal to or above number b. */
static int
num_cmp(const json_t *a, const json_t *b)
{
	if (json_is_integer(a) && json_is_integer(b)) {
		json_int_t x = json_integer_value(a), y = json_integer_value(b);
		return (x > y) - (x < y);
	}
	double x = json_number_value(a), y = json_number_value(b);
	return (x > y) - (x < y);
}

/* json_equal, except that numbers compare by value (3 equals 3.0). */
static bool
same_value(const json_t *a, const json_t *b, int depth)
{
	if (json_is_number(a) && json_is_number(b))
		return num_cmp(a, b) == 0;
	if (depth > JSCHEMA_MAX_DEPTH || json_typeof(a) != json_typeof(b))
		return json_equal(a, b);
	if (json_is_array(a)) {
		if (json_array_size(a) != json_array_size(b))
			return false;
		for (size_t i = 0; i < json_array_size(a); i++)
			if (!same_value(json_array_get(a, i), json_array_get(b, i), depth + 1))
				return false;
		return true;
	}
	if (json_is_object(a)) {
		const char *k;
		json_t *x;
		if (json_object_size(a) != json_object_size(b))
			return false;
		json_object_foreach((json_t *)a, k, x) {
			const json_t *y = json_object_get(b, k);
			if (!y || !same_value(x, y, depth + 1))
				return false;
		}
		return true;
	}
	return json_equal(a, b);
}

/* A count keyword (minItems, maxLength, ...): a non-negative integer. */
static bool
get_count(const json_t *s, const char *key, size_t *out)
{
	const json_t *x = json_object_get(s, key);
	if (!x || !is_integral(x) || json_number_value(x) < 0)
		return false;
	if (json_is_integer(x))
		*out = (size_t)json_integer_value(x);
	else
		*out = json_real_value(x) < 1e18 ? (size_t)json_real_value(x) : (size_t)1e18;
	return true;
}

static size_t
utf8_count(const char *s, size_t n)
{
	size_t count = 0;
	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] & 0xC0) != 0x80)
			count++;
	return count;
}

/* "required" or "enum" may arrive from Lua as {} when empty: read it as []. */
static bool
is_list(const json_t *x)
{
	return json_is_array(x) || (json_is_object(x) && json_object_size(x) == 0);
}

static size_t
list_size(const json_t *x)
{
	return json_is_array(x) ? json_array_size(x) : 0;
}

/* Resolves a local reference: "#" or a JSON pointer "#/a/b" from root. */
static const json_t *
resolve_ref(const json_t *root, const char *ref)
{
	if (ref[0] != '#')
		return NULL;
	const json_t *cur = root;
	const char *p = ref + 1;
	while (*p == '/') {
		char tok[256];
		size_t n = 0;
		for (p++; *p && *p != '/'; p++) {
			char ch = *p;
			if (ch == '~' && (p[1] == '0' || p[1] == '1'))
				ch = *++p == '0' ? '~' : '/';
			if (n + 1 >= sizeof tok)
				return NULL;
			tok[n++] = ch;
		}
		tok[n] = '\0';
		if (json_is_object(cur)) {
			cur = json_object_get(cur, tok);
		} else if (json_is_array(cur) && n > 0 && strspn(tok, "0123456789") == n) {
			cur = json_array_get(cur, strtoul(tok, NULL, 10));
		} else {
			return NULL;
		}
		if (!cur)
			return NULL;
	}
	return *p ? NULL : cur;
}

/* Adds a type name to a message's list, once. */
static void
add_name(const char **names, size_t *n, const char *name)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(names[i], name) == 0)
			return;
	if (*n < MAX_TYPES)
		names[(*n)++] = name;
}

/* "string", "string or null", "string, integer or null". */
static void
sb_type_list(struct sbuf *b, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_str(b, i + 1 == n ? " or " : ", ");
		sb_str(b, names[i]);
	}
}

/* "got string"; a fractional number shows its value when an integer was
 * wanted, since "expected integer, got number" alone reads as a riddle. */
static void
sb_got(struct sbuf *b, const json_t *v, bool wanted_integer)
{
	sb_str(b, "got ");
	sb_str(b, type_of(v));
	if (wanted_integer && json_is_real(v)) {
		sb_str(b, " ");
		sb_number(b, v);
	}
}

/* ---- validation -------------------------------------------------------- */

/* Message building is kept out of the recursive path (and its buffers off
 * the stack frames that recurse), so 64 levels stay cheap. */
#define COLD __attribute__((noinline, cold))

struct vctx {
	const json_t *root;
	struct sbuf path;
	char pathbuf[PATH_LEN];
	int steps;           /* path steps below "$" */
	char *err;
	size_t errlen;
	int err_steps;       /* path steps where the error was found */
	bool err_type;       /* the error is a type mismatch */
	long budget;         /* schema nodes still allowed to be visited */
};

static bool check(struct vctx *c, const json_t *s, const json_t *v, int depth);

static bool
is_ident(const char *key)
{
	if (!((*key >= 'A' && *key <= 'Z') || (*key >= 'a' && *key <= 'z') || *key == '_'))
		return false;
	for (const char *p = key + 1; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_' ||
		      (*p >= '0' && *p <= '9')))
			return false;
	return true;
}

/* ".key", or ["odd key"] when it is not an identifier. */
static size_t
path_key(struct vctx *c, const char *key)
{
	size_t old = c->path.len;
	if (is_ident(key)) {
		sb_str(&c->path, ".");
		sb_str(&c->path, key);
	} else {
		sb_str(&c->path, "[");
		sb_quoted(&c->path, key, strlen(key), SHOW_LEN);
		sb_str(&c->path, "]");
	}
	c->steps++;
	return old;
}

static size_t
path_index(struct vctx *c, size_t i)
{
	size_t old = c->path.len;
	sb_printf(&c->path, "[%zu]", i);
	c->steps++;
	return old;
}

static void
path_back(struct vctx *c, size_t old)
{
	sb_back(&c->path, old);
	c->steps--;
}

/* Records the failure "<path>: <msg>" and returns false. */
static COLD bool
fail_msg(struct vctx *c, bool type_mismatch, const char *msg)
{
	char full[MSG_LEN + PATH_LEN];
	struct sbuf b;
	sb_init(&b, full, sizeof full);
	sb_str(&b, c->path.p);
	sb_str(&b, ": ");
	sb_str(&b, msg);
	copy_msg(c->err, c->errlen, full);
	c->err_steps = c->steps;
	c->err_type = type_mismatch;
	return false;
}

static COLD bool __attribute__((format(printf, 3, 4)))
fail(struct vctx *c, bool type_mismatch, const char *fmt, ...)
{
	char msg[MSG_LEN];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof msg)
		msg[utf8_cut(msg, sizeof msg - 1)] = '\0';
	return fail_msg(c, type_mismatch, msg);
}

/* "expected string or null, got integer". */
static COLD bool
fail_type(struct vctx *c, const char *const *names, size_t n, const json_t *v)
{
	char msg[MSG_LEN];
	struct sbuf b;
	bool wants_integer = false;
	for (size_t i = 0; i < n; i++)
		wants_integer |= strcmp(names[i], "integer") == 0;
	sb_init(&b, msg, sizeof msg);
	sb_str(&b, "expected ");
	sb_type_list(&b, names, n);
	sb_str(&b, ", ");
	sb_got(&b, v, wants_integer);
	return fail_msg(c, true, msg);
}

/* `prefix` `value` `middle` `other`, e.g. "expected "a", got "b"". */
static COLD bool
fail_values(struct vctx *c, const char *prefix, const json_t *a, const char *middle,
            const json_t *b)
{
	char msg[MSG_LEN];
	struct sbuf m;
	sb_init(&m, msg, sizeof msg);
	sb_str(&m, prefix);
	sb_value(&m, a);
	sb_str(&m, middle);
	sb_value(&m, b);
	return fail_msg(c, false, msg);
}

static COLD bool
fail_enum(struct vctx *c, const json_t *e, const json_t *v)
{
	char list[LIST_LEN], msg[MSG_LEN];
	struct sbuf l, b;
	sb_init(&l, list, sizeof list);
	for (size_t i = 0; i < list_size(e); i++) {
		if (i)
			sb_str(&l, ", ");
		sb_value(&l, json_array_get(e, i));
	}
	sb_init(&b, msg, sizeof msg);
	sb_value(&b, v);
	sb_str(&b, list_size(e) ? " is not one of " : " is not allowed (the enum is empty)");
	sb_str(&b, list);
	return fail_msg(c, false, msg);
}

/* `what` is "missing required property" or "unexpected property". */
static COLD bool
fail_property(struct vctx *c, const char *what, const char *name, const char *why)
{
	char msg[MSG_LEN];
	struct sbuf b;
	sb_init(&b, msg, sizeof msg);
	sb_str(&b, what);
	sb_str(&b, " ");
	sb_quoted(&b, name, strlen(name), SHOW_LEN);
	sb_str(&b, why);
	return fail_msg(c, false, msg);
}

static bool
check_type(struct vctx *c, const json_t *s, const json_t *v)
{
	const json_t *t = json_object_get(s, "type");
	const char *names[MAX_TYPES];
	size_t n = 0, count;

	if (!t)
		return true;
	if (!json_is_string(t) && !json_is_array(t))
		return fail(c, false, "schema error: \"type\" must be a string or an array");
	count = json_is_array(t) ? json_array_size(t) : 1;
	for (size_t i = 0; i < count; i++) {
		const char *name = json_is_array(t) ? json_string_value(json_array_get(t, i))
		                                    : json_string_value(t);
		if (!name)
			return fail(c, false, "schema error: \"type\" lists a non-string");
		if (!known_type(name))
			return fail(c, false, "schema error: unknown type \"%s\"", name);
		if (type_matches(name, v))
			return true;
		add_name(names, &n, name);
	}
	return count ? fail_type(c, names, n, v)
	             : fail(c, false, "schema error: \"type\" is an empty array");
}

static bool
check_const(struct vctx *c, const json_t *s, const json_t *v)
{
	const json_t *k = json_object_get(s, "const");
	if (!k || same_value(k, v, 0))
		return true;
	return fail_values(c, "expected ", k, ", got ", v);
}

static bool
check_enum(struct vctx *c, const json_t *s, const json_t *v)
{
	const json_t *e = json_object_get(s, "enum");
	if (!e)
		return true;
	if (!is_list(e))
		return fail(c, false, "schema error: \"enum\" must be an array");
	for (size_t i = 0; i < list_size(e); i++)
		if (same_value(json_array_get(e, i), v, 0))
			return true;
	return fail_enum(c, e, v);
}

/* One numeric bound: fails when v compares to it as refuse_sign (or equal,
 * for the exclusive bounds). */
static bool
check_bound(struct vctx *c, const json_t *s, const json_t *v, const char *key,
            int refuse_sign, bool refuse_equal, const char *what)
{
	const json_t *bound = json_object_get(s, key);
	if (!json_is_number(bound))
		return true;
	int cmp = num_cmp(v, bound);
	if (cmp == refuse_sign || (refuse_equal && cmp == 0))
		return fail_values(c, "", v, what, bound);
	return true;
}

static bool
is_multiple(const json_t *v, const json_t *m)
{
	if (json_is_integer(v) && json_is_integer(m))
		return json_integer_value(v) % json_integer_value(m) == 0;
	double q = json_number_value(v) / json_number_value(m);
	return isfinite(q) && fabs(q - round(q)) <= 1e-9 * fmax(1.0, fabs(q));
}

static bool
check_number(struct vctx *c, const json_t *s, const json_t *v)
{
	if (!json_is_number(v))
		return true;
	if (!check_bound(c, s, v, "minimum", -1, false, " is less than the minimum ") ||
	    !check_bound(c, s, v, "maximum", 1, false, " is greater than the maximum ") ||
	    !check_bound(c, s, v, "exclusiveMinimum", -1, true, " must be greater than ") ||
	    !check_bound(c, s, v, "exclusiveMaximum", 1, true, " must be less than "))
		return false;
	const json_t *m = json_object_get(s, "multipleOf");
	if (json_is_number(m) && json_number_value(m) > 0 && !is_multiple(v, m))
		return fail_values(c, "", v, " is not a multiple of ", m);
	return true;
}

static bool
check_string(struct vctx *c, const json_t *s, const json_t *v)
{
	size_t n, lim;
	if (!json_is_string(v))
		return true;
	n = utf8_count(json_string_value(v), json_string_length(v));
	if (get_count(s, "minLength", &lim) && n < lim)
		return fail(c, false, "at least %zu character%s required, got %zu",
		            lim, lim == 1 ? "" : "s", n);
	if (get_count(s, "maxLength", &lim) && n > lim)
		return fail(c, false, "at most %zu character%s allowed, got %zu",
		            lim, lim == 1 ? "" : "s", n);
	return true;
}

static bool
check_array(struct vctx *c, const json_t *s, const json_t *v, int depth)
{
	size_t n, lim;
	if (!json_is_array(v))
		return true;
	n = json_array_size(v);
	if (get_count(s, "minItems", &lim) && n < lim)
		return fail(c, false, "at least %zu item%s required, got %zu",
		            lim, lim == 1 ? "" : "s", n);
	if (get_count(s, "maxItems", &lim) && n > lim)
		return fail(c, false, "at most %zu item%s allowed, got %zu",
		            lim, lim == 1 ? "" : "s", n);

	const json_t *items = json_object_get(s, "items");
	if (!json_is_object(items) && !json_is_boolean(items))
		return true;        /* absent, or a draft-4 tuple: not in the subset */
	for (size_t i = 0; i < n; i++) {
		size_t old = path_index(c, i);
		bool ok = check(c, items, json_array_get(v, i), depth + 1);
		path_back(c, old);
		if (!ok)
			return false;
	}
	return true;
}

/* Missing required properties first, then unexpected ones, then the
 * values in the order the reply gives them. */
static bool
check_object(struct vctx *c, const json_t *s, const json_t *v, int depth)
{
	const json_t *props = json_object_get(s, "properties");
	const json_t *req = json_object_get(s, "required");
	const json_t *extra = json_object_get(s, "additionalProperties");
	const char *key;
	json_t *item;

	if (!json_is_object(v))
		return true;
	if (!json_is_object(props))
		props = NULL;
	for (size_t i = 0; i < list_size(req); i++) {
		const char *name = json_string_value(json_array_get(req, i));
		if (name && !json_object_get(v, name))
			return fail_property(c, "missing required property", name, "");
	}
	if (json_is_false(extra)) {
		json_object_foreach((json_t *)v, key, item)
			if (!props || !json_object_get(props, key))
				return fail_property(c, "unexpected property", key,
				                     " (additionalProperties is false)");
	}
	json_object_foreach((json_t *)v, key, item) {
		const json_t *sub = props ? json_object_get(props, key) : NULL;
		if (!sub && (json_is_object(extra) || json_is_true(extra)))
			sub = extra;
		if (!sub)
			continue;
		size_t old = path_key(c, key);
		bool ok = check(c, sub, item, depth + 1);
		path_back(c, old);
		if (!ok)
			return false;
	}
	return true;
}

static bool
check_ref(struct vctx *c, const json_t *s, const json_t *v, int depth)
{
	const json_t *ref = json_object_get(s, "$ref");
	if (!ref)
		return true;
	if (!json_is_string(ref))
		return fail(c, false, "schema error: \"$ref\" must be a string");
	const json_t *target = resolve_ref(c->root, json_string_value(ref));
	if (!target)
		return fail(c, false, "schema error: cannot resolve $ref \"%s\"", json_string_value(ref));
	return check(c, target, v, depth + 1);
}

/* Adds the types a branch allows (following $ref) to names; false when
 * the branch does not say. */
static bool
branch_types(const json_t *root, const json_t *s, const char **names, size_t *n)
{
	for (int hops = 0; json_is_object(s) && hops < JSCHEMA_MAX_DEPTH; hops++) {
		const json_t *t = json_object_get(s, "type");
		const char *ref = json_string_value(json_object_get(s, "$ref"));
		if (!t && ref) {
			s = resolve_ref(root, ref);
			continue;
		}
		if (!json_is_string(t) && !json_is_array(t))
			return false;
		size_t count = json_is_array(t) ? json_array_size(t) : 1;
		for (size_t i = 0; i < count; i++) {
			const char *name = json_is_array(t) ? json_string_value(json_array_get(t, i))
			                                    : json_string_value(t);
			if (!name)
				return false;
			add_name(names, n, name);
		}
		return true;
	}
	return false;
}

/* Every branch failed on type at this very value: say which types fit. */
static COLD bool
fail_anyof_types(struct vctx *c, const json_t *any, const json_t *v)
{
	const char *names[MAX_TYPES];
	size_t n = 0;
	bool known = true;
	for (size_t i = 0; i < json_array_size(any) && known; i++)
		known = branch_types(c->root, json_array_get(any, i), names, &n);
	if (known && n > 0)
		return fail_type(c, names, n, v);
	return fail(c, true, "matches none of the %zu anyOf alternatives (got %s)",
	            json_array_size(any), type_of(v));
}

/* Names the branch that got furthest; see the top of the file. */
static COLD bool
fail_anyof_closest(struct vctx *c, const char *msg, size_t i, size_t n, int steps, bool type)
{
	char full[MSG_LEN + 96];
	snprintf(full, sizeof full, "%s (no anyOf alternative matched; closest: #%zu of %zu)",
	         msg, i + 1, n);
	copy_msg(c->err, c->errlen, full);
	c->err_steps = steps;
	c->err_type = type;
	return false;
}

static __attribute__((noinline)) bool
check_anyof(struct vctx *c, const json_t *s, const json_t *v, int depth)
{
	const json_t *any = json_object_get(s, "anyOf");
	if (!any)
		return true;
	if (!json_is_array(any) || json_array_size(any) == 0)
		return fail(c, false, "schema error: \"anyOf\" must be a non-empty array");

	char *err = c->err;
	size_t errlen = c->errlen, n = json_array_size(any), best_i = 0;
	char tmp[MSG_LEN], best[MSG_LEN] = "";
	int best_score = -1, best_steps = 0;
	bool best_type = false;

	for (size_t i = 0; i < n; i++) {
		c->err = tmp;
		c->errlen = sizeof tmp;
		tmp[0] = '\0';
		bool ok = check(c, json_array_get(any, i), v, depth + 1);
		c->err = err;
		c->errlen = errlen;
		if (ok)
			return true;
		if (c->budget < 0) {        /* out of work: say so plainly */
			copy_msg(err, errlen, tmp);
			return false;
		}
		int score = c->err_steps * 2 + (c->err_type ? 0 : 1);
		if (score > best_score) {
			memcpy(best, tmp, sizeof best);
			best_score = score;
			best_steps = c->err_steps;
			best_type = c->err_type;
			best_i = i;
		}
	}
	if (best_score <= c->steps * 2)
		return fail_anyof_types(c, any, v);
	return fail_anyof_closest(c, best, best_i, n, best_steps, best_type);
}

static bool
check(struct vctx *c, const json_t *s, const json_t *v, int depth)
{
	if (depth > JSCHEMA_MAX_DEPTH)
		return fail(c, false, "nested too deeply (more than %d levels of schema or value)",
		            JSCHEMA_MAX_DEPTH);
	if (--c->budget < 0)
		return fail(c, false, "schema error: too much work (more than %d schema checks; "
		            "anyOf branches that $ref each other?)", JSCHEMA_MAX_WORK);
	if (json_is_true(s))
		return true;
	if (json_is_false(s))
		return fail(c, true, "no value is allowed here");
	if (!json_is_object(s))
		return fail(c, false, "schema error: a schema must be an object or a boolean");
	return check_type(c, s, v) &&
	       check_ref(c, s, v, depth) &&
	       check_anyof(c, s, v, depth) &&
	       check_const(c, s, v) &&
	       check_enum(c, s, v) &&
	       check_number(c, s, v) &&
	       check_string(c, s, v) &&
	       check_array(c, s, v, depth) &&
	       check_object(c, s, v, depth);
}

bool
jschema_validate(const json_t *schema, const json_t *value, char *err, size_t errlen)
{
	struct vctx c = { .root = schema, .err = err, .errlen = errlen,
	                  .budget = JSCHEMA_MAX_WORK };
	sb_init(&c.path, c.pathbuf, sizeof c.pathbuf);
	sb_str(&c.path, "$");
	copy_msg(err, errlen, "");
	if (!schema)
		return fail_msg(&c, false, "schema error: no schema");
	if (!value)
		return fail_msg(&c, false, "no value");
	return check(&c, schema, value, 0);
}

/* ---- strict-mode check ------------------------------------------------- */

static const char *const strict_keywords[] = {
	"type", "properties", "required", "additionalProperties", "items",
	"enum", "const", "anyOf", "$ref", "$defs", "definitions",
	"description", "title",
	"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
	"minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
};

/* The string formats OpenAI documents for strict mode. */
static const char *const strict_formats[] = {
	"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid",
};

struct sctx {
	const json_t *root;
	struct sbuf path;
	char pathbuf[PATH_LEN];
	char *err;
	size_t errlen;
};

static bool strict_node(struct sctx *c, const json_t *s, int depth);

static bool
in_list(const char *name, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(name, list[i]) == 0)
			return true;
	return false;
}

static void
sb_word_list(struct sbuf *b, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_str(b, ", ");
		sb_str(b, list[i]);
	}
}

/* Appends "/tok" (escaped as a JSON pointer) to the schema path. */
static size_t
spath_push(struct sctx *c, const char *tok)
{
	size_t old = c->path.len;
	sb_str(&c->path, "/");
	for (const char *p = tok; *p; p++) {
		if (*p == '~')
			sb_str(&c->path, "~0");
		else if (*p == '/')
			sb_str(&c->path, "~1");
		else
			sb_put(&c->path, p, 1);
	}
	return old;
}

static size_t
spath_index(struct sctx *c, size_t i)
{
	size_t old = c->path.len;
	sb_printf(&c->path, "/%zu", i);
	return old;
}

static void
spath_back(struct sctx *c, size_t old)
{
	sb_back(&c->path, old);
}

static COLD bool __attribute__((format(printf, 2, 3)))
sfail(struct sctx *c, const char *fmt, ...)
{
	char msg[MSG_LEN], full[MSG_LEN + PATH_LEN];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof msg)
		msg[utf8_cut(msg, sizeof msg - 1)] = '\0';
	struct sbuf b;
	sb_init(&b, full, sizeof full);
	sb_str(&b, c->path.p);
	sb_str(&b, ": ");
	sb_str(&b, msg);
	copy_msg(c->err, c->errlen, full);
	return false;
}

/* Checks one child schema under the path step tok. */
static bool
strict_child(struct sctx *c, const char *tok, const json_t *s, int depth)
{
	size_t old = spath_push(c, tok);
	bool ok = strict_node(c, s, depth + 1);
	spath_back(c, old);
	return ok;
}

static bool
strict_keywords_known(struct sctx *c, const json_t *s)
{
	const char *key;
	json_t *x;
	json_object_foreach((json_t *)s, key, x) {
		if (in_list(key, strict_keywords, NELEM(strict_keywords)))
			continue;
		char list[LIST_LEN];
		struct sbuf b;
		sb_init(&b, list, sizeof list);
		sb_word_list(&b, strict_keywords, NELEM(strict_keywords));
		return sfail(c, "keyword \"%s\" is not supported in strict mode (supported: %s)",
		             key, list);
	}
	return true;
}

/* "type": a known name or a non-empty array of them. */
static bool
strict_type(struct sctx *c, const json_t *s, bool *object, bool *array)
{
	const json_t *t = json_object_get(s, "type");
	*object = *array = false;
	if (!t)
		return true;
	size_t n = json_is_array(t) ? json_array_size(t) : 1;
	if (!json_is_string(t) && (!json_is_array(t) || n == 0))
		return sfail(c, "\"type\" must be a type name or a non-empty array of them");
	for (size_t i = 0; i < n; i++) {
		const char *name = json_is_array(t) ? json_string_value(json_array_get(t, i))
		                                    : json_string_value(t);
		if (!name)
			return sfail(c, "\"type\" must list type names only");
		if (!known_type(name))
			return sfail(c, "unknown type \"%s\" (use object, array, string, integer, "
			             "number, boolean or null)", name);
		*object |= strcmp(name, "object") == 0;
		*array |= strcmp(name, "array") == 0;
	}
	return true;
}

/* Keyword values of the right shape, and bounds that leave room. */
static bool
strict_values(struct sctx *c, const json_t *s)
{
	static const char *const numbers[] = {
		"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
	};
	static const char *const counts[] = { "minItems", "maxItems", "minLength", "maxLength" };
	static const char *const strings[] = { "description", "title", "pattern", "format" };
	const json_t *x;
	size_t lo, hi;

	for (size_t i = 0; i < NELEM(numbers); i++)
		if ((x = json_object_get(s, numbers[i])) && !json_is_number(x))
			return sfail(c, "\"%s\" must be a number", numbers[i]);
	x = json_object_get(s, "multipleOf");
	if (x && json_number_value(x) <= 0)
		return sfail(c, "\"multipleOf\" must be greater than 0");
	for (size_t i = 0; i < NELEM(counts); i++)
		if ((x = json_object_get(s, counts[i])) && !get_count(s, counts[i], &lo))
			return sfail(c, "\"%s\" must be a non-negative integer", counts[i]);
	for (size_t i = 0; i < NELEM(strings); i++)
		if ((x = json_object_get(s, strings[i])) && !json_is_string(x))
			return sfail(c, "\"%s\" must be a string", strings[i]);

	if (get_count(s, "minItems", &lo) && get_count(s, "maxItems", &hi) && lo > hi)
		return sfail(c, "\"minItems\" (%zu) is greater than \"maxItems\" (%zu)", lo, hi);
	if (get_count(s, "minLength", &lo) && get_count(s, "maxLength", &hi) && lo > hi)
		return sfail(c, "\"minLength\" (%zu) is greater than \"maxLength\" (%zu)", lo, hi);
	const json_t *min = json_object_get(s, "minimum"), *max = json_object_get(s, "maximum");
	if (min && max && num_cmp(min, max) > 0)
		return sfail(c, "\"minimum\" is greater than \"maximum\"");

	const char *format = json_string_value(json_object_get(s, "format"));
	if (format && !in_list(format, strict_formats, NELEM(strict_formats))) {
		char list[LIST_LEN];
		struct sbuf b;
		sb_init(&b, list, sizeof list);
		sb_word_list(&b, strict_formats, NELEM(strict_formats));
		return sfail(c, "format \"%s\" is not supported in strict mode (supported: %s)",
		             format, list);
	}
	x = json_object_get(s, "enum");
	if (x && (!json_is_array(x) || json_array_size(x) == 0))
		return sfail(c, "\"enum\" must be a non-empty array");
	return true;
}

static bool
strict_object(struct sctx *c, const json_t *s, int depth)
{
	const json_t *props = json_object_get(s, "properties");
	const json_t *req = json_object_get(s, "required");
	const char *key;
	json_t *sub;

	if (!json_is_false(json_object_get(s, "additionalProperties")))
		return sfail(c, "an object schema needs \"additionalProperties\": false in strict mode");
	if (props && !json_is_object(props))
		return sfail(c, "\"properties\" must be an object");
	if (req && !is_list(req))
		return sfail(c, "\"required\" must be an array of property names");
	for (size_t i = 0; i < list_size(req); i++) {
		const char *name = json_string_value(json_array_get(req, i));
		if (!name)
			return sfail(c, "\"required\" must be an array of property names");
		if (!props || !json_object_get(props, name))
			return sfail(c, "\"required\" lists \"%s\", which is not in \"properties\"", name);
	}
	if (!props)
		return true;
	json_object_foreach((json_t *)props, key, sub) {
		bool listed = false;
		for (size_t i = 0; i < list_size(req) && !listed; i++)
			listed = strcmp(json_string_value(json_array_get(req, i)), key) == 0;
		if (!listed)
			return sfail(c, "property \"%s\" is missing from \"required\": strict mode needs "
			             "every property required (to make one optional, let it be null: "
			             "\"type\": [\"string\", \"null\"])", key);
	}
	size_t old = spath_push(c, "properties");
	json_object_foreach((json_t *)props, key, sub) {
		if (!strict_child(c, key, sub, depth)) {
			spath_back(c, old);
			return false;
		}
	}
	spath_back(c, old);
	return true;
}

static bool
strict_anyof(struct sctx *c, const json_t *s, int depth)
{
	const json_t *any = json_object_get(s, "anyOf");
	if (!any)
		return true;
	if (!json_is_array(any) || json_array_size(any) == 0)
		return sfail(c, "\"anyOf\" must be a non-empty array of schemas");
	size_t old = spath_push(c, "anyOf");
	for (size_t i = 0; i < json_array_size(any); i++) {
		size_t mid = spath_index(c, i);
		bool ok = strict_node(c, json_array_get(any, i), depth + 1);
		spath_back(c, mid);
		if (!ok) {
			spath_back(c, old);
			return false;
		}
	}
	spath_back(c, old);
	return true;
}

static bool
strict_defs(struct sctx *c, const json_t *s, const char *kw, int depth)
{
	const json_t *defs = json_object_get(s, kw);
	const char *key;
	json_t *sub;
	if (!defs)
		return true;
	if (!json_is_object(defs))
		return sfail(c, "\"%s\" must be an object of named schemas", kw);
	size_t old = spath_push(c, kw);
	json_object_foreach((json_t *)defs, key, sub) {
		if (!strict_child(c, key, sub, depth)) {
			spath_back(c, old);
			return false;
		}
	}
	spath_back(c, old);
	return true;
}

static bool
strict_node(struct sctx *c, const json_t *s, int depth)
{
	bool object, array;
	if (depth > JSCHEMA_MAX_DEPTH)
		return sfail(c, "schema nested deeper than %d levels", JSCHEMA_MAX_DEPTH);
	if (!json_is_object(s))
		return sfail(c, "a schema must be a JSON object, got %s", type_of(s));
	if (!strict_keywords_known(c, s))
		return false;
	if (!json_object_get(s, "type") && !json_object_get(s, "anyOf") &&
	    !json_object_get(s, "$ref") && !json_object_get(s, "enum") &&
	    !json_object_get(s, "const"))
		return sfail(c, "a schema needs \"type\" (or anyOf, $ref, enum or const)");
	if (!strict_type(c, s, &object, &array) || !strict_values(c, s))
		return false;

	const json_t *ref = json_object_get(s, "$ref");
	if (ref && !json_is_string(ref))
		return sfail(c, "\"$ref\" must be a string");
	if (ref && !json_is_object(resolve_ref(c->root, json_string_value(ref))))
		return sfail(c, "$ref \"%s\" does not resolve to a schema in this document "
		             "(use \"#/$defs/<name>\")", json_string_value(ref));

	if ((object || json_object_get(s, "properties") || json_object_get(s, "required") ||
	     json_object_get(s, "additionalProperties")) && !strict_object(c, s, depth))
		return false;

	const json_t *items = json_object_get(s, "items");
	if (array && !items)
		return sfail(c, "an array schema needs \"items\"");
	if (items && !strict_child(c, "items", items, depth))
		return false;

	return strict_anyof(c, s, depth) &&
	       strict_defs(c, s, "$defs", depth) &&
	       strict_defs(c, s, "definitions", depth);
}

bool
jschema_check_strict(const json_t *schema, char *err, size_t errlen)
{
	struct sctx c = { .root = schema, .err = err, .errlen = errlen };
	sb_init(&c.path, c.pathbuf, sizeof c.pathbuf);
	sb_str(&c.path, "#");
	copy_msg(err, errlen, "");
	if (!json_is_object(schema))
		return sfail(&c, "the schema must be a JSON object");
	if (json_object_get(schema, "anyOf"))
		return sfail(&c, "the root schema must be an object schema, not anyOf");
	const char *type = json_string_value(json_object_get(schema, "type"));
	if (!type || strcmp(type, "object") != 0)
		return sfail(&c, "the root schema must have \"type\": \"object\"");
	return strict_node(&c, schema, 0);
}
