/*
 * accounting — tokens and cost of upstream model calls, per analysis type
 * and model, and the price table behind the cost.
 *
 * Owns a price table (USD per 1M prompt tokens and per 1M completion tokens,
 * by model name) and one row of counters per (type, model) seen, with copies
 * of every string it keeps. No I/O except a warn log line the first time a
 * (type, model) has no price.
 *
 * Prices: built-in defaults for gpt-4o-mini (0.15/0.60), gpt-4o (2.50/10.00),
 * gpt-4.1-mini (0.40/1.60) and gpt-4.1-nano (0.10/0.40), overridden or
 * extended by acct_set_prices() from RAPPORT_PRICES. A model name is looked
 * up exactly, else by the longest table name followed by '-' in it
 * ("gpt-4o-mini-2024-07-18" costs as gpt-4o-mini; "gpt-4.1" does not cost as
 * a configured "gpt-4"), else it is unpriced: its cost is 0 and the call is
 * counted in unpriced_calls. Cached prompt tokens are charged at the full
 * prompt price, so the cost is an upper bound.
 *
 * How the caller uses it: once per finished upstream call,
 *   acct_record(a, type, model, usage.prompt_tokens, usage.completion_tokens)
 * passing -1 for a count the upstream did not report (an interrupted stream
 * has no usage chunk); the call is then counted in no_usage_calls and the
 * missing tokens add nothing. For /metrics, metrics.c reads the rows with
 * acct_each() and prints them.
 *
 * Rows are few (types come from the scripts, models from the scripts and
 * config), but the number is capped anyway: past ACCT_MAX_ROWS, new pairs
 * are added to one row labelled type "_other", model "_other".
 */
#ifndef RAPPORT_ACCOUNTING_H
#define RAPPORT_ACCOUNTING_H

#include <stdbool.h>
#include <stddef.h>

#define ACCT_MAX_ROWS 512

typedef struct accounting accounting;

struct acct_price {
	double prompt_per_m;        /* USD per 1M prompt tokens */
	double completion_per_m;    /* USD per 1M completion tokens */
};

struct acct_row {
	const char *type, *model;   /* NULL in acct_totals() */
	long calls;
	long prompt_tokens, completion_tokens;
	double cost_usd;
	long unpriced_calls;        /* model had no price: cost counted as 0 */
	long no_usage_calls;        /* a token count was unknown (< 0) */
};

typedef void acct_each_cb(const struct acct_row *row, void *arg);

accounting *acct_create(void);        /* with the default prices */
void acct_destroy(accounting *a);

/* Sets or replaces prices from "model=prompt/completion,…" (USD per 1M
 * tokens; spaces around items and numbers are allowed). All or nothing: on
 * an error nothing changes, and err (if given) says which item was wrong. */
bool acct_set_prices(accounting *a, const char *spec, char *err, size_t errlen);
/* The price of a model by the rule above; false if unpriced. *matched (if
 * given) gets the table name used, valid until the next acct_set_prices(). */
bool acct_price(const accounting *a, const char *model, struct acct_price *out,
                const char **matched);

/* Adds one call and returns its cost in USD (0 if unpriced). NULL type or
 * model count as "unknown". */
double acct_record(accounting *a, const char *type, const char *model, long prompt_tokens,
                   long completion_tokens);

/* Rows sorted by type, then model. The row is valid during the callback. */
void acct_each(const accounting *a, acct_each_cb *cb, void *arg);
void acct_totals(const accounting *a, struct acct_row *out);

#endif
