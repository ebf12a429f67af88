/*
 * test_accounting — prices (defaults, RAPPORT_PRICES parsing and its errors,
 * exact and prefix lookup, unknown models), per-row counters and totals, the
 * and the row cap. The Prometheus text of the rows is test_metrics' part.
 */
#include "accounting.h"
#include "log.h"
#include "tap.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NEAR(a, b) (fabs((a) - (b)) < 1e-12)

static void
test_default_prices(void)
{
	accounting *a = acct_create();
	struct acct_price p;
	const char *m;
	ok(acct_price(a, "gpt-4o-mini", &p, &m) && p.prompt_per_m == 0.15 && p.completion_per_m == 0.60 &&
	   strcmp(m, "gpt-4o-mini") == 0, "gpt-4o-mini 0.15/0.60");
	ok(acct_price(a, "gpt-4o", &p, NULL) && p.prompt_per_m == 2.50 && p.completion_per_m == 10.00,
	   "gpt-4o 2.50/10.00");
	ok(acct_price(a, "gpt-4.1-mini", &p, NULL) && p.prompt_per_m == 0.40 && p.completion_per_m == 1.60,
	   "gpt-4.1-mini 0.40/1.60");
	ok(acct_price(a, "gpt-4.1-nano", &p, NULL) && p.prompt_per_m == 0.10 && p.completion_per_m == 0.40,
	   "gpt-4.1-nano 0.10/0.40");
	acct_destroy(a);
}

static void
test_prefix_matching(void)
{
	accounting *a = acct_create();
	struct acct_price p;
	const char *m = "x";
	ok(acct_price(a, "gpt-4o-mini-2024-07-18", &p, &m) && strcmp(m, "gpt-4o-mini") == 0 &&
	   p.prompt_per_m == 0.15, "a dated snapshot uses the longest prefix (gpt-4o-mini, not gpt-4o)");
	ok(acct_price(a, "gpt-4o-2024-08-06", &p, &m) && strcmp(m, "gpt-4o") == 0,
	   "gpt-4o-2024-08-06 uses gpt-4o");
	ok(!acct_price(a, "gpt-4o1", &p, &m) && m == NULL && p.prompt_per_m == 0,
	   "a prefix must be followed by '-': gpt-4o1 is unpriced");
	ok(!acct_price(a, "gpt-4.1", &p, NULL), "gpt-4.1 is not priced as gpt-4.1-mini (that is longer)");
	ok(!acct_price(a, "gpt-4", &p, NULL), "a shorter name is no match");
	ok(!acct_price(a, "GPT-4O-MINI", &p, NULL), "names are case-sensitive");
	ok(!acct_price(a, "", &p, NULL) && !acct_price(a, NULL, &p, NULL), "empty and NULL are unpriced");
	ok(acct_set_prices(a, "gpt-4=30/60", NULL, 0), "add gpt-4");
	ok(!acct_price(a, "gpt-4.1", &p, NULL), "gpt-4.1 does not cost as gpt-4 (no '-' after the prefix)");
	ok(acct_price(a, "gpt-4-0613", &p, &m) && strcmp(m, "gpt-4") == 0 && p.completion_per_m == 60,
	   "gpt-4-0613 costs as gpt-4");
	ok(acct_price(a, "gpt-4o-mini", &p, &m) && strcmp(m, "gpt-4o-mini") == 0,
	   "an exact match wins over every prefix");
	acct_destroy(a);
}

static void
test_set_prices(void)
{
	accounting *a = acct_create();
	char err[256] = "";
	struct acct_price p;
	ok(acct_set_prices(a, "gpt-4o-mini=0.2/0.8,my-model=1/2", err, sizeof err),
	   "override one default and add a model");
	ok(acct_price(a, "gpt-4o-mini", &p, NULL) && p.prompt_per_m == 0.2 && p.completion_per_m == 0.8,
	   "the default was overridden");
	ok(acct_price(a, "my-model", &p, NULL) && p.prompt_per_m == 1 && p.completion_per_m == 2,
	   "the new model is priced");
	ok(acct_price(a, "gpt-4o", &p, NULL) && p.prompt_per_m == 2.5, "other defaults kept");
	ok(acct_set_prices(a, "  spaced = 1.5 / 2.5 ,\tz=.5/0 ", err, sizeof err),
	   "spaces around items, names and numbers are allowed");
	ok(acct_price(a, "spaced", &p, NULL) && p.prompt_per_m == 1.5 && p.completion_per_m == 2.5 &&
	   acct_price(a, "z", &p, NULL) && p.prompt_per_m == 0.5 && p.completion_per_m == 0,
	   "spaced=1.5/2.5, z=.5/0");
	ok(acct_set_prices(a, "dup=1/1,dup=3/4", err, sizeof err) && acct_price(a, "dup", &p, NULL) &&
	   p.prompt_per_m == 3 && p.completion_per_m == 4, "a repeated name: the last wins");
	ok(acct_set_prices(a, "", err, sizeof err) && acct_set_prices(a, "   ", err, sizeof err) &&
	   acct_set_prices(a, NULL, err, sizeof err), "an empty spec changes nothing and is fine");
	ok(acct_set_prices(a, "e=1e-1/2E0", err, sizeof err) && acct_price(a, "e", &p, NULL) &&
	   NEAR(p.prompt_per_m, 0.1) && p.completion_per_m == 2, "exponents are accepted");

	static const struct { const char *spec, *want; } bad[] = {
		{ "nomodel", "expected model=prompt/completion" },
		{ "=1/2", "bad model name" },
		{ "a b=1/2", "bad model name" },
		{ "m=1", "expected two non-negative numbers" },
		{ "m=1/", "expected two non-negative numbers" },
		{ "m=/2", "expected two non-negative numbers" },
		{ "m=-1/2", "expected two non-negative numbers" },
		{ "m=1/-2", "expected two non-negative numbers" },
		{ "m=abc/2", "expected two non-negative numbers" },
		{ "m=1/2x", "expected two non-negative numbers" },
		{ "m=1/2/3", "expected two non-negative numbers" },
		{ "m=inf/1", "expected two non-negative numbers" },
		{ "m=nan/1", "expected two non-negative numbers" },
		{ "m=1e999/1", "expected two non-negative numbers" },
		{ "m=1 2/3", "expected two non-negative numbers" },
		{ "a=1/2,,b=1/2", "price 2 is empty" },
		{ "a=1/2,", "price 2 is empty" },
		{ ",a=1/2", "price 1 is empty" },
		{ "a=1/2,b=oops", "price 2 (b)" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		err[0] = '\0';
		bool r = acct_set_prices(a, bad[i].spec, err, sizeof err);
		ok(!r && strstr(err, bad[i].want), "rejects \"%s\": %s", bad[i].spec, err);
	}
	ok(!acct_price(a, "a", &p, NULL), "all or nothing: a valid item before a bad one is not applied");
	ok(acct_price(a, "gpt-4o-mini", &p, NULL) && p.prompt_per_m == 0.2,
	   "a rejected spec leaves the table as it was");

	char name[200];
	memset(name, 'n', 129);
	strcpy(name + 129, "=1/2");
	ok(!acct_set_prices(a, name, err, sizeof err) && strstr(err, "bad model name"),
	   "a model name over 128 characters is rejected");
	ok(!acct_set_prices(a, "m=x/1", NULL, 0), "err may be NULL");
	char tiny[8];
	ok(!acct_set_prices(a, "m=x/1", tiny, sizeof tiny) && strlen(tiny) == 7,
	   "a short err buffer is truncated and terminated");
	acct_destroy(a);
}

struct collect {
	struct acct_row *rows;
	int *n;
};

static void
collect_row(const struct acct_row *r, void *arg)
{
	struct collect *c = arg;
	c->rows[(*c->n)++] = *r;
}

static void
test_record(void)
{
	accounting *a = acct_create();
	log_set_level(LOG_ERROR);
	double c = acct_record(a, "summary", "gpt-4o-mini", 1000000, 1000000);
	ok(NEAR(c, 0.75), "1M + 1M tokens of gpt-4o-mini cost 0.15 + 0.60 (%.6f)", c);
	c = acct_record(a, "summary", "gpt-4o-mini-2024-07-18", 2000, 500);
	ok(NEAR(c, 2000 * 0.15 / 1e6 + 500 * 0.60 / 1e6), "a dated snapshot is priced by prefix (%.9f)", c);
	c = acct_record(a, "summary", "gpt-4o-mini", 1000, 100);
	ok(NEAR(c, 0.00021), "1000 prompt + 100 completion = 0.00021 (%.9f)", c);
	c = acct_record(a, "risk", "mystery-model", 5000, 5000);
	ok(c == 0, "an unknown model costs 0");
	c = acct_record(a, "risk", "gpt-4o", -1, -1);
	ok(c == 0, "unknown usage costs 0");
	c = acct_record(a, "risk", "gpt-4o", 1000, -1);
	ok(NEAR(c, 0.0025), "a known prompt count is still charged when completion is unknown (%.6f)", c);
	acct_record(a, NULL, NULL, 1, 1);

	struct acct_row rows[8];
	int n = 0;
	struct acct_row t;
	acct_totals(a, &t);
	ok(t.calls == 7 && t.type == NULL && t.model == NULL, "totals: 7 calls");
	ok(t.prompt_tokens == 1000000 + 2000 + 1000 + 5000 + 1000 + 1 &&
	   t.completion_tokens == 1000000 + 500 + 100 + 5000 + 1,
	   "totals: negative counts are not added (%ld/%ld)", t.prompt_tokens, t.completion_tokens);
	ok(t.unpriced_calls == 2 && t.no_usage_calls == 2, "totals: 2 unpriced (mystery, unknown), 2 without usage");
	ok(NEAR(t.cost_usd, 0.75 + 0.0006 + 0.00021 + 0.0025), "totals: cost %.9f", t.cost_usd);

	/* rows, sorted by type then model */
	struct collect col = { rows, &n };
	acct_each(a, collect_row, &col);
	ok(n == 5, "5 rows: one per (type, model)");
	ok(n == 5 && strcmp(rows[0].type, "risk") == 0 && strcmp(rows[0].model, "gpt-4o") == 0 &&
	   strcmp(rows[1].model, "mystery-model") == 0 &&
	   strcmp(rows[2].type, "summary") == 0 && strcmp(rows[2].model, "gpt-4o-mini") == 0 &&
	   strcmp(rows[3].model, "gpt-4o-mini-2024-07-18") == 0 &&
	   strcmp(rows[4].type, "unknown") == 0 && strcmp(rows[4].model, "unknown") == 0,
	   "rows sorted by type then model; NULL type and model are \"unknown\"");
	ok(rows[0].calls == 2 && rows[0].prompt_tokens == 1000 && rows[0].completion_tokens == 0 &&
	   rows[0].no_usage_calls == 2 && rows[0].unpriced_calls == 0 && NEAR(rows[0].cost_usd, 0.0025),
	   "risk/gpt-4o: 2 calls, 1000 prompt tokens, 2 without usage");
	ok(rows[1].calls == 1 && rows[1].unpriced_calls == 1 && rows[1].prompt_tokens == 5000 &&
	   rows[1].cost_usd == 0, "risk/mystery-model: tokens counted, cost 0, flagged unpriced");
	ok(rows[2].calls == 2 && rows[2].prompt_tokens == 1001000 && rows[2].completion_tokens == 1000100 &&
	   NEAR(rows[2].cost_usd, 0.75021), "summary/gpt-4o-mini: 2 calls summed");
	acct_destroy(a);
}

static void
count_row(const struct acct_row *r, void *arg)
{
	(*(long *)arg)++;
}

static void
other_calls(const struct acct_row *r, void *arg)
{
	if (strcmp(r->type, "_other") == 0 && strcmp(r->model, "_other") == 0)
		*(long *)arg = r->calls;
}

static void
test_row_cap(void)
{
	accounting *a = acct_create();
	char type[32];
	for (int i = 0; i < ACCT_MAX_ROWS + 10; i++) {
		snprintf(type, sizeof type, "t%04d", i);
		acct_record(a, type, "gpt-4o-mini", 1, 1);
	}
	acct_record(a, "_other", "some-model", 1, 1);
	long rows = 0;
	acct_each(a, count_row, &rows);
	ok(rows == ACCT_MAX_ROWS + 1, "rows stop at the cap plus one overflow row (%ld)", rows);
	struct acct_row t;
	acct_totals(a, &t);
	ok(t.calls == ACCT_MAX_ROWS + 11, "totals still count every call");
	long other = -1;
	acct_each(a, other_calls, &other);
	ok(other == 11, "the 11 calls past the cap land in the _other row (%ld)", other);
	acct_destroy(a);
}

static void
test_unpriced_logs_once(void)
{
	log_set_level(LOG_DEBUG);
	accounting *a = acct_create();
	acct_record(a, "t", "nope", 1, 1);
	acct_record(a, "t", "nope", 1, 1);
	struct acct_row t;
	acct_totals(a, &t);
	ok(t.unpriced_calls == 2, "both unpriced calls counted (one warn line above)");
	acct_destroy(a);
	acct_destroy(NULL);
	log_set_level(LOG_ERROR);
}

int
main(void)
{
	test_default_prices();
	test_prefix_matching();
	test_set_prices();
	test_record();
	test_row_cap();
	test_unpriced_logs_once();
	return tap_done();
}
