/*
 * accounting — two small arrays: prices (searched linearly, a dozen entries
 * at most in practice) and rows kept sorted by (type, model) so the metrics
 * text comes out in a stable order. Both own their strings.
 *
 * acct_set_prices() parses the whole spec into a scratch list before it
 * touches the table, which is what makes it all or nothing.
 */
#include "accounting.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_NAME_MAX 128
#define OTHER          "_other"

struct price {
	char *model;
	struct acct_price p;
};

struct accounting {
	struct price *prices;
	size_t nprices;
	struct acct_row *rows;
	size_t nrows;
	struct acct_row totals;
};

static const struct price default_prices[] = {
	{ "gpt-4o-mini", { 0.15, 0.60 } },
	{ "gpt-4o", { 2.50, 10.00 } },
	{ "gpt-4.1-mini", { 0.40, 1.60 } },
	{ "gpt-4.1-nano", { 0.10, 0.40 } },
};

/* ---- prices ---- */

static void
price_put(accounting *a, const char *model, struct acct_price p)
{
	for (size_t i = 0; i < a->nprices; i++) {
		if (strcmp(a->prices[i].model, model) == 0) {
			a->prices[i].p = p;
			return;
		}
	}
	a->prices = xrealloc(a->prices, (a->nprices + 1) * sizeof *a->prices);
	a->prices[a->nprices].model = xstrdup(model);
	a->prices[a->nprices].p = p;
	a->nprices++;
}

accounting *
acct_create(void)
{
	accounting *a = xcalloc(1, sizeof *a);
	for (size_t i = 0; i < sizeof default_prices / sizeof *default_prices; i++)
		price_put(a, default_prices[i].model, default_prices[i].p);
	return a;
}

void
acct_destroy(accounting *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->nprices; i++)
		free(a->prices[i].model);
	for (size_t i = 0; i < a->nrows; i++) {
		free((char *)a->rows[i].type);
		free((char *)a->rows[i].model);
	}
	free(a->prices);
	free(a->rows);
	free(a);
}

/* Exact name, else the longest table name that is a prefix followed by '-'. */
static const struct price *
price_find(const accounting *a, const char *model)
{
	const struct price *best = NULL;
	size_t best_len = 0;
	for (size_t i = 0; i < a->nprices; i++) {
		const char *name = a->prices[i].model;
		size_t n = strlen(name);
		if (strcmp(name, model) == 0)
			return &a->prices[i];
		if (n > best_len && strncmp(model, name, n) == 0 && model[n] == '-') {
			best = &a->prices[i];
			best_len = n;
		}
	}
	return best;
}

bool
acct_price(const accounting *a, const char *model, struct acct_price *out, const char **matched)
{
	const struct price *p = price_find(a, model ? model : "");
	if (matched)
		*matched = p ? p->model : NULL;
	if (out)
		*out = p ? p->p : (struct acct_price){ 0, 0 };
	return p != NULL;
}

/* ---- RAPPORT_PRICES parsing ---- */

static void __attribute__((format(printf, 3, 4)))
set_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || !errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static char *
trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static bool
valid_model_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MODEL_NAME_MAX)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	return true;
}

/* A finite, non-negative number at *p; advances *p past it and any spaces. */
static bool
parse_price(const char **p, double *out)
{
	char *end;
	while (isspace((unsigned char)**p))
		(*p)++;
	if (!isdigit((unsigned char)**p) && **p != '.')
		return false;
	double v = strtod(*p, &end);
	if (end == *p || !isfinite(v) || v < 0)
		return false;
	*out = v == 0 ? 0 : v;
	*p = end;
	while (isspace((unsigned char)**p))
		(*p)++;
	return true;
}

/* One "model=prompt/completion" item, already trimmed, into *out. */
static bool
parse_item(char *item, int idx, struct price *out, char *err, size_t errlen)
{
	char *eq = strchr(item, '=');
	if (!eq) {
		set_err(err, errlen, "price %d \"%.60s\": expected model=prompt/completion", idx, item);
		return false;
	}
	*eq = '\0';
	char *name = trim(item);
	if (!valid_model_name(name)) {
		set_err(err, errlen, "price %d: bad model name \"%.60s\" (1-%d characters, no spaces)",
		        idx, name, MODEL_NAME_MAX);
		return false;
	}
	const char *p = eq + 1;
	if (!parse_price(&p, &out->p.prompt_per_m) || *p++ != '/' ||
	    !parse_price(&p, &out->p.completion_per_m) || *p != '\0') {
		set_err(err, errlen, "price %d (%.60s): expected two non-negative numbers "
		        "as prompt/completion USD per 1M tokens, got \"%.60s\"", idx, name, eq + 1);
		return false;
	}
	out->model = name;
	return true;
}

bool
acct_set_prices(accounting *a, const char *spec, char *err, size_t errlen)
{
	char *copy = xstrdup(spec ? spec : "");
	if (*trim(copy) == '\0') {
		free(copy);
		return true;
	}
	size_t cap = 1;
	for (const char *c = copy; *c; c++)
		cap += *c == ',';
	struct price *parsed = xcalloc(cap, sizeof *parsed);
	size_t n = 0;
	bool ok = true;
	for (char *item = copy, *next; item && ok; item = next) {
		next = strchr(item, ',');
		if (next)
			*next++ = '\0';
		char *t = trim(item);
		if (*t == '\0') {
			set_err(err, errlen, "price %zu is empty", n + 1);
			ok = false;
		} else {
			ok = parse_item(t, (int)n + 1, &parsed[n], err, errlen);
			n++;
		}
	}
	for (size_t i = 0; ok && i < n; i++)
		price_put(a, parsed[i].model, parsed[i].p);
	free(parsed);
	free(copy);
	return ok;
}

/* ---- rows ---- */

static int
row_cmp(const struct acct_row *r, const char *type, const char *model)
{
	int c = strcmp(r->type, type);
	return c ? c : strcmp(r->model, model);
}

/* The row of (type, model), created in sorted position if new. */
static struct acct_row *
row_get(accounting *a, const char *type, const char *model)
{
	size_t i = 0;
	for (; i < a->nrows; i++) {
		int c = row_cmp(&a->rows[i], type, model);
		if (c == 0)
			return &a->rows[i];
		if (c > 0)
			break;
	}
	bool other = strcmp(type, OTHER) == 0 && strcmp(model, OTHER) == 0;
	if (a->nrows >= ACCT_MAX_ROWS && !other)
		return row_get(a, OTHER, OTHER);
	a->rows = xrealloc(a->rows, (a->nrows + 1) * sizeof *a->rows);
	memmove(&a->rows[i + 1], &a->rows[i], (a->nrows - i) * sizeof *a->rows);
	a->rows[i] = (struct acct_row){ .type = xstrdup(type), .model = xstrdup(model) };
	a->nrows++;
	return &a->rows[i];
}

static void
row_add(struct acct_row *r, long pt, long ct, double cost, bool priced)
{
	r->calls++;
	if (pt >= 0)
		r->prompt_tokens += pt;
	if (ct >= 0)
		r->completion_tokens += ct;
	if (pt < 0 || ct < 0)
		r->no_usage_calls++;
	if (!priced)
		r->unpriced_calls++;
	r->cost_usd += cost;
}

double
acct_record(accounting *a, const char *type, const char *model, long prompt_tokens,
            long completion_tokens)
{
	type = type ? type : "unknown";
	model = model ? model : "unknown";
	struct acct_price p;
	bool priced = acct_price(a, model, &p, NULL);
	double cost = 0;
	if (priced && prompt_tokens > 0)
		cost += (double)prompt_tokens * p.prompt_per_m / 1e6;
	if (priced && completion_tokens > 0)
		cost += (double)completion_tokens * p.completion_per_m / 1e6;
	struct acct_row *r = row_get(a, type, model);
	row_add(r, prompt_tokens, completion_tokens, cost, priced);
	row_add(&a->totals, prompt_tokens, completion_tokens, cost, priced);
	if (!priced && r->unpriced_calls == 1)
		log_event(LOG_WARN, "no price for model: cost counted as 0", LOG_S("model", model),
		          LOG_S("type", type), LOG_S("hint", "set RAPPORT_PRICES"), LOG_END);
	return cost;
}

void
acct_each(const accounting *a, acct_each_cb *cb, void *arg)
{
	for (size_t i = 0; i < a->nrows; i++)
		cb(&a->rows[i], arg);
}

void
acct_totals(const accounting *a, struct acct_row *out)
{
	*out = a->totals;
	out->type = out->model = NULL;
}
