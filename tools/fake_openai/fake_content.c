/*
 * fake_content.c — what the fake model says.
 *
 * Owns the reply text of a chat completion: a ~60-word paragraph for plain
 * requests, {"text": …} for response_format json_object, and a JSON document
 * built from the schema for response_format json_schema. Everything is drawn
 * from a small PRNG seeded with a hash of the request's messages, so the same
 * prompt always gets the same reply (streamed or not) and different prompts
 * get different ones. No state, no I/O.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake.h"

/* Arrays nested deeper than this get only minItems elements, so recursive
 * schemas ($ref to themselves through an array) terminate. */
#define SHALLOW_DEPTH	6
/* Beyond this we give up on the schema and emit null. */
#define MAX_DEPTH	32

/* ---- PRNG -------------------------------------------------------------- */

/* splitmix64: tiny, fast, and good enough to make replies look varied. */
struct rng {
	uint64_t s;
};

static uint64_t
rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static size_t
rng_below(struct rng *r, size_t n)
{
	return n ? (size_t)(rng_next(r) % n) : 0;
}

/* ---- growable string --------------------------------------------------- */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void
sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 128;

		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
sb_puts(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* ---- sentences --------------------------------------------------------- */

/* CRM flavoured, so demo output reads like an insight and not lorem ipsum. */
static const char *const subjects[] = {
	"The contact", "Their team", "The buyer", "Our champion",
	"The account", "The decision maker", "Their procurement lead",
	"The customer", "The new stakeholder", "Their finance team",
};
static const char *const verbs[] = {
	"responded well to", "asked detailed questions about",
	"is still evaluating", "raised concerns about",
	"showed strong interest in", "postponed the discussion of",
	"requested an update on", "shared positive feedback on",
	"compared competitors on", "wants clarity on",
};
static const char *const objects[] = {
	"the pricing proposal", "a follow-up call", "the renewal terms",
	"the product demo", "the integration timeline", "the quarterly review",
	"the onboarding plan", "the security questionnaire",
	"the expansion opportunity", "the support experience",
};
static const char *const tails[] = {
	"last week", "this quarter", "after the demo", "before the deadline",
	"in the latest email", "during the last meeting", "on the recent call",
	"since the kickoff", "ahead of the budget cycle", "this month",
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static size_t
word_count(const char *s)
{
	size_t n = 1;

	for (; *s; s++)
		if (*s == ' ')
			n++;
	return n;
}

/* Appends one sentence; returns the number of words it added. */
static size_t
sentence(struct rng *r, struct sbuf *b)
{
	const char *parts[4] = {
		subjects[rng_below(r, NELEM(subjects))],
		verbs[rng_below(r, NELEM(verbs))],
		objects[rng_below(r, NELEM(objects))],
		tails[rng_below(r, NELEM(tails))],
	};
	size_t words = 0;

	for (int i = 0; i < 4; i++) {
		if (i)
			sb_add(b, " ", 1);
		sb_puts(b, parts[i]);
		words += word_count(parts[i]);
	}
	sb_add(b, ".", 1);
	return words;
}

static void
paragraph(struct rng *r, struct sbuf *b, size_t min_words)
{
	size_t words = 0;

	while (words < min_words) {
		if (b->len)
			sb_add(b, " ", 1);
		words += sentence(r, b);
	}
}

/* ---- UTF-8 ------------------------------------------------------------- */

size_t
utf8_count(const char *s, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		if (((unsigned char)s[i] & 0xC0) != 0x80)
			n++;
	return n;
}

size_t
utf8_prefix(const char *s, size_t len, size_t n)
{
	size_t i = 0, seen = 0;

	for (; i < len; i++) {
		if (((unsigned char)s[i] & 0xC0) != 0x80) {
			if (seen == n)
				break;
			seen++;
		}
	}
	return i;
}

/* ---- hashing the prompt ------------------------------------------------ */

static uint64_t
fnv1a(uint64_t h, const void *data, size_t len)
{
	const unsigned char *p = data;

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static uint64_t
hash_text(uint64_t h, json_t *s, size_t *chars)
{
	const char *v = json_string_value(s);
	size_t n = json_string_length(s);

	*chars += utf8_count(v, n);
	/* The separator keeps ["ab","c"] and ["a","bc"] apart. */
	return fnv1a(fnv1a(h, v, n), "\x1f", 1);
}

uint64_t
content_hash_messages(json_t *messages, size_t *chars)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i, j;
	json_t *m, *part;

	*chars = 0;
	json_array_foreach(messages, i, m) {
		json_t *role = json_object_get(m, "role");
		json_t *content = json_object_get(m, "content");

		if (json_is_string(role))
			h = fnv1a(h, json_string_value(role),
			    json_string_length(role));
		h = fnv1a(h, "\x1e", 1);
		if (json_is_string(content)) {
			h = hash_text(h, content, chars);
		} else if (json_is_array(content)) {
			/* Content parts: [{"type":"text","text":…}, …] */
			json_array_foreach(content, j, part) {
				json_t *text = json_object_get(part, "text");

				if (json_is_string(text))
					h = hash_text(h, text, chars);
			}
		}
	}
	return h;
}

/* ---- values from a JSON schema ----------------------------------------- */

struct gen {
	struct rng rng;
	json_t *root;		/* for resolving "#/…" references */
};

static json_t *gen_value(struct gen *g, json_t *schema, int depth,
    size_t nth);

/* Resolves a local JSON pointer reference ("#/$defs/Name"); NULL if the
 * reference is remote or does not resolve. */
static json_t *
resolve_ref(json_t *root, const char *ref)
{
	json_t *node = root;
	char key[256];

	if (ref[0] != '#')
		return NULL;
	ref++;
	while (*ref == '/') {
		size_t k = 0;

		ref++;
		while (*ref && *ref != '/' && k < sizeof(key) - 1) {
			if (ref[0] == '~' && ref[1] == '1') {
				key[k++] = '/';
				ref += 2;
			} else if (ref[0] == '~' && ref[1] == '0') {
				key[k++] = '~';
				ref += 2;
			} else {
				key[k++] = *ref++;
			}
		}
		key[k] = '\0';
		if (json_is_array(node))
			node = json_array_get(node, strtoul(key, NULL, 10));
		else
			node = json_object_get(node, key);
		if (node == NULL)
			return NULL;
	}
	return *ref ? NULL : node;
}

/* The first type that is not "null": nullable fields get a real value. */
static const char *
schema_type(json_t *schema)
{
	json_t *t = json_object_get(schema, "type");
	size_t i;
	json_t *v;

	if (json_is_string(t))
		return json_string_value(t);
	if (json_is_array(t)) {
		json_array_foreach(t, i, v)
			if (json_is_string(v) &&
			    strcmp(json_string_value(v), "null") != 0)
				return json_string_value(v);
		return json_array_size(t) ? "null" : NULL;
	}
	if (json_object_get(schema, "properties"))
		return "object";
	if (json_object_get(schema, "items") ||
	    json_object_get(schema, "prefixItems"))
		return "array";
	return NULL;
}

static bool
num_field(json_t *schema, const char *key, double *out)
{
	json_t *v = json_object_get(schema, key);

	if (!json_is_number(v))
		return false;
	*out = json_number_value(v);
	return true;
}

/* Bounds of a numeric schema, with draft-4 boolean and draft-6 numeric
 * exclusive bounds. Returns which bounds exist in *has_lo / *has_hi. */
static void
num_bounds(json_t *schema, double *lo, bool *has_lo, bool *lo_excl,
    double *hi, bool *has_hi, bool *hi_excl)
{
	double v;

	*has_lo = num_field(schema, "minimum", lo);
	*has_hi = num_field(schema, "maximum", hi);
	*lo_excl = json_is_true(json_object_get(schema, "exclusiveMinimum"));
	*hi_excl = json_is_true(json_object_get(schema, "exclusiveMaximum"));
	if (num_field(schema, "exclusiveMinimum", &v) &&
	    (!*has_lo || v >= *lo)) {
		*lo = v;
		*has_lo = *lo_excl = true;
	}
	if (num_field(schema, "exclusiveMaximum", &v) &&
	    (!*has_hi || v <= *hi)) {
		*hi = v;
		*has_hi = *hi_excl = true;
	}
	*lo_excl = *lo_excl && *has_lo;
	*hi_excl = *hi_excl && *has_hi;
}

static json_t *
gen_integer(struct gen *g, json_t *schema, size_t nth)
{
	double lo, hi, mult;
	bool has_lo, has_hi, lo_excl, hi_excl;
	long long a, b, m = 1;

	num_bounds(schema, &lo, &has_lo, &lo_excl, &hi, &has_hi, &hi_excl);
	/* Unbounded sides get a window of 100 so values stay plausible. */
	if (!has_lo && !has_hi) {
		lo = 0;
		hi = 100;
	} else if (!has_lo) {
		lo = hi - 100;
	} else if (!has_hi) {
		hi = lo + 100;
	}
	/* Keep clear of doubles that no long long can hold. */
	lo = fmax(lo, -9e15);
	hi = fmin(hi, 9e15);
	a = (long long)ceil(lo);
	b = (long long)floor(hi);
	if (lo_excl && (double)a == lo)
		a++;
	if (hi_excl && (double)b == hi)
		b--;
	if (num_field(schema, "multipleOf", &mult) && mult >= 1 &&
	    mult == floor(mult))
		m = (long long)mult;
	if (m > 1) {
		long long first = a >= 0 ? (a + m - 1) / m * m : -((-a) / m * m);

		if (first > b)
			return json_integer(first);
		return json_integer(first +
		    m * (long long)((rng_next(&g->rng) + nth) %
		    (uint64_t)((b - first) / m + 1)));
	}
	if (a > b)	/* unsatisfiable; the lower bound is the best guess */
		return json_integer(a);
	return json_integer(a + (long long)((rng_next(&g->rng) + nth) %
	    ((uint64_t)(b - a) + 1)));
}

static json_t *
gen_number(struct gen *g, json_t *schema, size_t nth)
{
	double lo, hi, v;
	bool has_lo, has_hi, lo_excl, hi_excl;

	num_bounds(schema, &lo, &has_lo, &lo_excl, &hi, &has_hi, &hi_excl);
	if (!has_lo && !has_hi) {
		lo = 0;
		hi = 100;
	} else if (!has_lo) {
		lo = hi - 100;
	} else if (!has_hi) {
		hi = lo + 100;
	}
	if (lo > hi)
		return json_real(lo);
	/* Two decimals look like a model's numbers; fall back to the middle
	 * when rounding leaves the range (narrow or exclusive bounds). */
	v = lo + (hi - lo) *
	    (double)((rng_next(&g->rng) + nth) % 10001) / 10000.0;
	v = round(v * 100) / 100;
	if (v < lo || v > hi || (lo_excl && v <= lo) || (hi_excl && v >= hi))
		v = lo + (hi - lo) / 2;
	return json_real(v);
}

static const char *const first_names[] = {
	"alex", "sam", "jordan", "maria", "li", "noah", "priya", "lena",
};
static const char *const last_names[] = {
	"morgan", "garcia", "chen", "novak", "patel", "keller", "silva",
};

/* Strings with a well-known format get a value in that format; the rest
 * get a short sentence. */
static json_t *
gen_string(struct gen *g, json_t *schema)
{
	const char *format = json_string_value(json_object_get(schema,
	    "format"));
	struct rng *r = &g->rng;
	struct sbuf b = {0};
	char tmp[128];
	double minlen = 0, maxlen = -1;
	json_t *out;

	if (format && strcmp(format, "date-time") == 0) {
		snprintf(tmp, sizeof(tmp), "2026-%02zu-%02zuT%02zu:%02zu:00Z",
		    1 + rng_below(r, 12), 1 + rng_below(r, 28),
		    8 + rng_below(r, 10), 5 * rng_below(r, 12));
		sb_puts(&b, tmp);
	} else if (format && strcmp(format, "date") == 0) {
		snprintf(tmp, sizeof(tmp), "2026-%02zu-%02zu",
		    1 + rng_below(r, 12), 1 + rng_below(r, 28));
		sb_puts(&b, tmp);
	} else if (format && strcmp(format, "time") == 0) {
		snprintf(tmp, sizeof(tmp), "%02zu:%02zu:00",
		    8 + rng_below(r, 10), 5 * rng_below(r, 12));
		sb_puts(&b, tmp);
	} else if (format && strcmp(format, "email") == 0) {
		snprintf(tmp, sizeof(tmp), "%s.%s@example.com",
		    first_names[rng_below(r, NELEM(first_names))],
		    last_names[rng_below(r, NELEM(last_names))]);
		sb_puts(&b, tmp);
	} else if (format && (strcmp(format, "uri") == 0 ||
	    strcmp(format, "url") == 0 ||
	    strcmp(format, "uri-reference") == 0)) {
		snprintf(tmp, sizeof(tmp), "https://example.com/crm/notes/%zu",
		    1000 + rng_below(r, 9000));
		sb_puts(&b, tmp);
	} else if (format && strcmp(format, "uuid") == 0) {
		uint64_t hi = rng_next(r), lo = rng_next(r);

		snprintf(tmp, sizeof(tmp), "%08x-%04x-4%03x-%04x-%012llx",
		    (unsigned)(hi >> 32), (unsigned)(hi >> 16) & 0xffff,
		    (unsigned)hi & 0xfff, 0x8000 | ((unsigned)(lo >> 48) &
		    0x3fff), (unsigned long long)(lo & 0xffffffffffffULL));
		sb_puts(&b, tmp);
	} else if (format && strcmp(format, "hostname") == 0) {
		sb_puts(&b, "crm.example.com");
	} else if (format && strcmp(format, "ipv4") == 0) {
		snprintf(tmp, sizeof(tmp), "192.0.2.%zu", 1 + rng_below(r, 254));
		sb_puts(&b, tmp);
	} else {
		sentence(r, &b);
	}

	num_field(schema, "minLength", &minlen);
	num_field(schema, "maxLength", &maxlen);
	while ((double)b.len < minlen) {
		sb_add(&b, " ", 1);
		sentence(r, &b);
	}
	/* Our text is ASCII, so bytes are characters here. */
	if (maxlen >= 0 && (double)b.len > maxlen) {
		b.len = (size_t)maxlen;
		while (b.len > 0 && (double)b.len > minlen &&
		    b.p[b.len - 1] == ' ')
			b.len--;
	}
	out = json_stringn(b.p ? b.p : "", b.len);
	free(b.p);
	return out;
}

static json_t *
gen_array(struct gen *g, json_t *schema, int depth)
{
	json_t *items = json_object_get(schema, "items");
	json_t *prefix = json_object_get(schema, "prefixItems");
	json_t *arr = json_array();
	double minitems = 0, maxitems = -1;
	size_t n;

	/* Draft-4 tuples put the array of schemas in "items". */
	if (json_is_array(items)) {
		prefix = items;
		items = NULL;
	}
	num_field(schema, "minItems", &minitems);
	num_field(schema, "maxItems", &maxitems);
	n = depth >= SHALLOW_DEPTH ? (size_t)minitems :
	    (size_t)fmax(minitems, 2);
	if (json_is_array(prefix) && json_array_size(prefix) > n)
		n = json_array_size(prefix);
	if (maxitems >= 0 && (double)n > maxitems)
		n = (size_t)maxitems;
	for (size_t i = 0; i < n; i++) {
		json_t *s = i < json_array_size(prefix) ?
		    json_array_get(prefix, i) : items;

		/* nth varies enums and numbers between items, which keeps
		 * uniqueItems arrays unique whenever the schema allows it. */
		json_array_append_new(arr, gen_value(g, s, depth + 1, i));
	}
	return arr;
}

static json_t *
gen_object(struct gen *g, json_t *schema, int depth)
{
	json_t *props = json_object_get(schema, "properties");
	json_t *required = json_object_get(schema, "required");
	json_t *obj = json_object();
	const char *key;
	json_t *sub;
	size_t i;

	/* Every property, in schema order, as strict mode expects. */
	json_object_foreach(props, key, sub)
		json_object_set_new(obj, key, gen_value(g, sub, depth + 1, 0));
	/* Required names without a property schema still get a value. */
	json_array_foreach(required, i, sub)
		if (json_is_string(sub) &&
		    !json_object_get(obj, json_string_value(sub)))
			json_object_set_new(obj, json_string_value(sub),
			    gen_value(g, NULL, depth + 1, 0));
	return obj;
}

/* The first alternative that is not plain {"type":"null"}. */
static json_t *
first_alternative(json_t *alts)
{
	size_t i;
	json_t *a;

	json_array_foreach(alts, i, a) {
		const char *t = json_string_value(json_object_get(a, "type"));

		if (!t || strcmp(t, "null") != 0)
			return a;
	}
	return json_array_get(alts, 0);
}

static json_t *
gen_value(struct gen *g, json_t *schema, int depth, size_t nth)
{
	json_t *v;
	const char *type;

	if (depth > MAX_DEPTH)
		return json_null();
	/* `true`, `{}` or a missing schema: anything goes, say something. */
	if (!json_is_object(schema))
		return gen_string(g, NULL);

	v = json_object_get(schema, "$ref");
	if (json_is_string(v)) {
		json_t *target = resolve_ref(g->root, json_string_value(v));

		return target ? gen_value(g, target, depth + 1, nth) :
		    gen_string(g, NULL);
	}
	if ((v = json_object_get(schema, "const")) != NULL)
		return json_deep_copy(v);
	v = json_object_get(schema, "enum");
	if (json_is_array(v) && json_array_size(v) > 0)
		return json_deep_copy(json_array_get(v,
		    (rng_next(&g->rng) + nth) % json_array_size(v)));
	if (json_is_array(v = json_object_get(schema, "anyOf")) ||
	    json_is_array(v = json_object_get(schema, "oneOf")) ||
	    json_is_array(v = json_object_get(schema, "allOf"))) {
		if (json_array_size(v) > 0)
			return gen_value(g, first_alternative(v), depth + 1,
			    nth);
	}

	type = schema_type(schema);
	if (type == NULL || strcmp(type, "string") == 0)
		return gen_string(g, schema);
	if (strcmp(type, "object") == 0)
		return gen_object(g, schema, depth);
	if (strcmp(type, "array") == 0)
		return gen_array(g, schema, depth);
	if (strcmp(type, "integer") == 0)
		return gen_integer(g, schema, nth);
	if (strcmp(type, "number") == 0)
		return gen_number(g, schema, nth);
	if (strcmp(type, "boolean") == 0)
		return json_boolean(((rng_next(&g->rng) >> 7) + nth) & 1);
	return json_null();
}

/* ---- the reply --------------------------------------------------------- */

static char *
dump_value(json_t *v, size_t *len)
{
	/* Precision 15 prints 0.1 as 0.1 and still round-trips the short
	 * decimal literals a schema's enum or const may hold. */
	char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
	    JSON_REAL_PRECISION(15));

	if (s == NULL) {
		fprintf(stderr, "fake_openai: out of memory\n");
		abort();
	}
	*len = strlen(s);
	return s;
}

char *
content_generate(json_t *response_format, uint64_t seed, size_t *len)
{
	const char *type = json_string_value(json_object_get(response_format,
	    "type"));
	struct gen g = { .rng = { seed } };
	struct sbuf b = {0};
	json_t *v;
	char *out;

	if (type && strcmp(type, "json_schema") == 0) {
		json_t *schema = json_object_get(json_object_get(
		    response_format, "json_schema"), "schema");

		/* No schema at all: any JSON object is conforming. */
		if (!json_is_object(schema)) {
			paragraph(&g.rng, &b, 20);
			v = json_pack("{s:s}", "text", b.p);
			free(b.p);
		} else {
			g.root = schema;
			v = gen_value(&g, schema, 0, 0);
		}
		out = dump_value(v, len);
		json_decref(v);
		return out;
	}
	if (type && strcmp(type, "json_object") == 0) {
		paragraph(&g.rng, &b, 30);
		v = json_pack("{s:s}", "text", b.p);
		free(b.p);
		out = dump_value(v, len);
		json_decref(v);
		return out;
	}
	paragraph(&g.rng, &b, 60);
	*len = b.len;
	return b.p;
}
