/*
 * fake_insight.c — makes the fake model's structured answers follow the
 * CRM data in the prompt, so the demo shows believable insights without a
 * key.
 *
 * content_generate() builds a reply that fits the schema from a PRNG; this
 * reads the facts rapport's shipped prompts carry ("Name: …", "Company: …",
 * the deal lines, "Last touch: … (N days ago)", the touch counts) and then
 * rewrites the fields whose names say what they are: a relationship `score`
 * computed from those signals (and a `trend` that agrees with it), and text
 * fields (summary, reasons, tips' title/action/why, the brief's overview)
 * that name the contact, the company and the deals. Every rewrite stays
 * inside the schema (enum values, integer bounds, maxLength). A prompt with
 * none of these facts (tests' own prompts) gets the PRNG reply unchanged, so
 * the fake stays deterministic and schema-true for everything else.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake.h"

struct facts {
	char name[80], first[40], company[80], industry[60];
	char deals[4][80];        /* open deals first, then the rest */
	int ndeals, nopen;
	long last_touch_days;     /* -1 unknown */
	long touches_30, touches_90;
	long unanswered;
	bool any;
};

/* The rest of the line after `key` at the start of a line, trimmed, into
 * out; false when there is no such line. */
static bool
line_value(const char *text, const char *key, char *out, size_t len)
{
	size_t klen = strlen(key);
	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, key, klen) != 0)
			continue;
		const char *v = p + klen, *end = strchr(v, '\n');
		size_t n = end ? (size_t)(end - v) : strlen(v);
		while (n && isspace((unsigned char)v[n - 1]))
			n--;
		snprintf(out, len, "%.*s", (int)n, v);
		return n > 0;
	}
	return false;
}

/* "(186 days ago)" on the line after key: 186, or -1. */
static long
days_ago(const char *text, const char *key)
{
	char v[160];
	if (!line_value(text, key, v, sizeof v))
		return -1;
	const char *p = strstr(v, "(");
	long d;
	if (p && sscanf(p, "(%ld days ago)", &d) == 1)
		return d;
	if (p && strncmp(p, "(today", 6) == 0)
		return 0;
	return -1;
}

static void
read_facts(const char *text, struct facts *f)
{
	memset(f, 0, sizeof *f);
	f->last_touch_days = -1;
	if (line_value(text, "Name: ", f->name, sizeof f->name)) {
		f->any = true;
		snprintf(f->first, sizeof f->first, "%.*s", (int)strcspn(f->name, " "), f->name);
	}
	if (line_value(text, "Company: ", f->company, sizeof f->company))
		f->any = true;
	line_value(text, "Industry: ", f->industry, sizeof f->industry);
	f->last_touch_days = days_ago(text, "Last touch: ");
	char v[200];
	if (line_value(text, "Touches (emails, calls, meetings): ", v, sizeof v))
		sscanf(v, "30 days %ld | 90 days %ld", &f->touches_30, &f->touches_90);
	if (line_value(text, "Emails from us without a reply (90 days): ", v, sizeof v))
		f->unanswered = strtol(v, NULL, 10);
	/* "- <deal name> | <stage> | …" under "## Deals". */
	const char *d = strstr(text, "## Deals");
	const char *stop = d ? strstr(d + 8, "\n## ") : NULL;
	for (const char *p = d ? strchr(d, '\n') : NULL; p && (!stop || p < stop) && f->ndeals < 4;
	     p = strchr(p + 1, '\n')) {
		if (strncmp(p, "\n- ", 3) != 0)
			continue;
		const char *name = p + 3, *bar = strstr(name, " | ");
		const char *eol = strchr(name, '\n');
		if (!bar || (eol && bar > eol))
			continue;
		bool closed = strncmp(bar, " | closed", 9) == 0;
		char *slot;
		if (!closed) {
			/* open deals go first */
			memmove(f->deals[1], f->deals[0], sizeof f->deals[0] * 3);
			slot = f->deals[0];
			f->nopen++;
		} else {
			slot = f->deals[f->ndeals];
		}
		snprintf(slot, sizeof f->deals[0], "%.*s", (int)(bar - name), name);
		f->ndeals++;
	}
}

/* 0..100 from recency, activity and unanswered outreach. */
static long
health_score(const struct facts *f)
{
	long s = 50;
	if (f->last_touch_days >= 0) {
		if (f->last_touch_days <= 14)
			s += 25;
		else if (f->last_touch_days <= 30)
			s += 12;
		else if (f->last_touch_days > 90)
			s -= 25;
		else if (f->last_touch_days > 45)
			s -= 10;
	}
	if (f->touches_90 >= 8)
		s += 15;
	else if (f->touches_90 >= 3)
		s += 5;
	else if (f->touches_90 == 0)
		s -= 10;
	if (f->unanswered >= 3)
		s -= 15;
	if (f->nopen > 0)
		s += 5;
	return s < 3 ? 3 : s > 97 ? 97 : s;
}

/* The schema of property `key` of an object schema (or NULL). */
static json_t *
prop(json_t *schema, const char *key)
{
	return json_object_get(json_object_get(schema, "properties"), key);
}

/* A string that fits the schema's maxLength (ASCII-safe cut at a space). */
static json_t *
fit(json_t *schema, const char *text)
{
	json_t *ml = json_object_get(schema, "maxLength");
	size_t n = strlen(text);
	if (json_is_integer(ml) && (size_t)json_integer_value(ml) < n) {
		n = (size_t)json_integer_value(ml);
		n = utf8_prefix(text, strlen(text), n);
	}
	return json_stringn(text, n);
}

/* The first of the wanted values the schema's enum has, else NULL. */
static const char *
enum_pick(json_t *schema, const char *const *wanted)
{
	json_t *e = json_object_get(schema, "enum");
	for (; *wanted; wanted++) {
		size_t i;
		json_t *v;
		json_array_foreach(e, i, v)
			if (json_is_string(v) && strcmp(json_string_value(v), *wanted) == 0)
				return *wanted;
	}
	return NULL;
}

static void
set_text(json_t *obj, json_t *schema, const char *key, const char *text)
{
	json_t *s = prop(schema, key);
	if (json_is_string(json_object_get(obj, key)) && !json_object_get(s, "enum"))
		json_object_set_new(obj, key, fit(s, text));
}

static const char *
deal(const struct facts *f, int i)
{
	return f->ndeals ? f->deals[i % f->ndeals] : NULL;
}

static void
recency(const struct facts *f, char *out, size_t len)
{
	if (f->last_touch_days >= 0)
		snprintf(out, len, "last touch %ld day%s ago, %ld touch%s in 90 days", f->last_touch_days,
		         f->last_touch_days == 1 ? "" : "s", f->touches_90, f->touches_90 == 1 ? "" : "es");
	else
		snprintf(out, len, "no recorded touches");
}

/* relationship_health-like objects: score, trend, summary, reasons. */
static void
shape_health(json_t *v, json_t *schema, const struct facts *f)
{
	long score = health_score(f);
	json_t *ss = prop(schema, "score");
	if (json_is_integer(json_object_get(v, "score"))) {
		json_t *lo = json_object_get(ss, "minimum"), *hi = json_object_get(ss, "maximum");
		if (json_is_number(lo) && score < json_number_value(lo))
			score = (long)json_number_value(lo);
		if (json_is_number(hi) && score > json_number_value(hi))
			score = (long)json_number_value(hi);
		json_object_set_new(v, "score", json_integer(score));
	}
	static const char *const up[] = { "improving", "stable", NULL };
	static const char *const mid[] = { "stable", NULL };
	static const char *const down[] = { "at_risk", "cooling", "declining", NULL };
	static const char *const cool[] = { "cooling", "declining", "at_risk", NULL };
	const char *t = enum_pick(prop(schema, "trend"),
	                          score >= 70 ? up : score >= 45 ? mid : score >= 25 ? cool : down);
	if (t && json_is_string(json_object_get(v, "trend")))
		json_object_set_new(v, "trend", json_string(t));
	char rec[120], buf[1024];
	recency(f, rec, sizeof rec);
	snprintf(buf, sizeof buf, "%s at %s: %s relationship, %s%s%s.", f->name[0] ? f->name : "The contact",
	         f->company[0] ? f->company : "the account",
	         score >= 70 ? "a healthy" : score >= 45 ? "a steady" : "a weakening", rec,
	         f->nopen ? "; an open deal: " : "", f->nopen ? f->deals[0] : "");
	set_text(v, schema, "summary", buf);
	json_t *reasons = json_object_get(v, "reasons");
	json_t *rs = json_object_get(prop(schema, "reasons"), "items");
	if (json_is_array(reasons) && json_array_size(reasons) > 0 && !json_object_get(rs, "enum")) {
		size_t n = json_array_size(reasons);
		for (size_t i = 0; i < n; i++) {
			if (i == 0)
				snprintf(buf, sizeof buf, "%s.", rec);
			else if (i == 1 && f->unanswered > 0)
				snprintf(buf, sizeof buf, "%ld emails from us without a reply in 90 days.", f->unanswered);
			else if (i <= 2 && f->ndeals)
				snprintf(buf, sizeof buf, "%s: %s.", deal(f, (int)i),
				         f->nopen && i - 1 < (size_t)f->nopen ? "open" : "closed");
			else
				snprintf(buf, sizeof buf, "%ld touches in the last 30 days.", f->touches_30);
			if (json_is_string(json_array_get(reasons, i)))
				json_array_set_new(reasons, i, fit(rs, buf));
		}
	}
}

/* smart_tips-like objects: tips[] of title/action/why/timing. */
static void
shape_tips(json_t *v, json_t *schema, const struct facts *f)
{
	json_t *tips = json_object_get(v, "tips");
	json_t *ts = json_object_get(prop(schema, "tips"), "items");
	const char *who = f->first[0] ? f->first : "the contact";
	const char *co = f->company[0] ? f->company : "the account";
	char rec[120], buf[1024];
	recency(f, rec, sizeof rec);
	for (size_t i = 0; i < json_array_size(tips); i++) {
		json_t *t = json_array_get(tips, i);
		const char *d = deal(f, (int)i);
		if (!json_is_object(t))
			continue;
		switch (i % 3) {
		case 0:
			if (f->nopen)
				snprintf(buf, sizeof buf, "Move %s forward", f->deals[0]);
			else if (d)
				snprintf(buf, sizeof buf, "Build on %s", d);
			else
				snprintf(buf, sizeof buf, "Reconnect with %s", who);
			set_text(t, ts, "title", buf);
			snprintf(buf, sizeof buf, "Ask %s for a short call about %s and agree on the next step.",
			         who, d ? d : co);
			set_text(t, ts, "action", buf);
			snprintf(buf, sizeof buf, "%s at %s: %s.", f->name[0] ? f->name : "The contact", co, rec);
			break;
		case 1:
			snprintf(buf, sizeof buf, "Share a %s case study", f->industry[0] ? f->industry : "customer");
			set_text(t, ts, "title", buf);
			snprintf(buf, sizeof buf, "Send %s a short case study relevant to %s%s%s.", who, co,
			         d ? " and " : "", d ? d : "");
			set_text(t, ts, "action", buf);
			snprintf(buf, sizeof buf, f->unanswered ? "%ld emails without a reply: give %s a reason to answer."
			                                        : "%ld touches in 90 days: keep %s engaged.",
			         f->unanswered ? f->unanswered : f->touches_90, who);
			if (!f->unanswered && f->touches_90 == 1)
				snprintf(buf, sizeof buf, "One touch in 90 days: keep %s engaged.", who);
			break;
		default:
			snprintf(buf, sizeof buf, "Plan the next review with %s", co);
			set_text(t, ts, "title", buf);
			snprintf(buf, sizeof buf, "Book a review with %s to cover %s.", who,
			         d ? d : "their priorities for next quarter");
			set_text(t, ts, "action", buf);
			snprintf(buf, sizeof buf, "The CRM shows %d deal%s with %s.", f->ndeals,
			         f->ndeals == 1 ? "" : "s", co);
			break;
		}
		set_text(t, ts, "why", buf);
		snprintf(buf, sizeof buf, f->last_touch_days > 30 ? "This week: the last touch was %ld days ago."
		                                                    : "Within the next two weeks.",
		         f->last_touch_days);
		set_text(t, ts, "timing", buf);
	}
}

/* contextual_research-like objects: company_overview. */
static void
shape_brief(json_t *v, json_t *schema, const struct facts *f)
{
	char buf[1024], rec[120];
	recency(f, rec, sizeof rec);
	snprintf(buf, sizeof buf, "%s%s%s%s: %d deal%s in the CRM%s%s; %s.",
	         f->company[0] ? f->company : "The company", f->industry[0] ? " (" : "",
	         f->industry, f->industry[0] ? ")" : "", f->ndeals, f->ndeals == 1 ? "" : "s",
	         f->ndeals ? ", among them " : "", f->ndeals ? f->deals[0] : "", rec);
	set_text(v, schema, "company_overview", buf);
}

char *
content_insight(json_t *messages, json_t *response_format, uint64_t seed, size_t *len)
{
	char *out = content_generate(response_format, seed, len);
	const char *type = json_string_value(json_object_get(response_format, "type"));
	json_t *schema = json_object_get(json_object_get(response_format, "json_schema"), "schema");
	if (!type || strcmp(type, "json_schema") != 0 || !json_is_object(schema))
		return out;
	const char *text = NULL;
	size_t i;
	json_t *m;
	json_array_foreach(messages, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));
		if (role && strcmp(role, "user") == 0 && json_is_string(json_object_get(m, "content")))
			text = json_string_value(json_object_get(m, "content"));
	}
	struct facts f;
	if (!text)
		return out;
	read_facts(text, &f);
	if (!f.any)
		return out;
	json_t *v = json_loads(out, 0, NULL);
	if (!json_is_object(v)) {
		json_decref(v);
		return out;
	}
	if (prop(schema, "score"))
		shape_health(v, schema, &f);
	if (prop(schema, "tips"))
		shape_tips(v, schema, &f);
	if (prop(schema, "company_overview"))
		shape_brief(v, schema, &f);
	char *shaped = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
	json_decref(v);
	if (!shaped)
		return out;
	free(out);
	*len = strlen(shaped);
	return shaped;
}
