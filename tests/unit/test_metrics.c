/*
 * test_metrics — the one list of numbers and its two printers: Prometheus
 * text for GET /metrics and JSON for the admin socket, from the same
 * samples; what metrics_gather() reads from each part.
 */
#include "metrics.h"
#include "tap.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

/* The Prometheus text of m, NUL-terminated (caller frees). */
static char *
text_of(const metrics *m)
{
	struct evbuffer *b = evbuffer_new();
	metrics_prometheus(m, b);
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	evbuffer_free(b);
	return s;
}

static void
test_prometheus_text_has_help_type_and_escaped_labels(void)
{
	metrics *m = metrics_new();
	metrics_family(m, "t_things_total", "Things seen.", METRICS_COUNTER);
	metrics_int(m, 3, NULL);
	metrics_family(m, "t_level", "A level.", METRICS_GAUGE);
	metrics_real(m, 1.5, "a", "x\"y\\z\nw", "b", "2", NULL);
	metrics_int(m, -7, "a", "", NULL);
	metrics_family(m, "t_empty_total", "Nothing yet.", METRICS_COUNTER);
	char *t = text_of(m);
	ok(strcmp(t, "# HELP t_things_total Things seen.\n# TYPE t_things_total counter\n"
	             "t_things_total 3\n"
	             "# HELP t_level A level.\n# TYPE t_level gauge\n"
	             "t_level{a=\"x\\\"y\\\\z\\nw\",b=\"2\"} 1.5\n"
	             "t_level{a=\"\"} -7\n"
	             "# HELP t_empty_total Nothing yet.\n# TYPE t_empty_total counter\n") == 0,
	   "the text: HELP and TYPE per family, samples in order, label values escaped");
	free(t);
	metrics_free(m);
}

static void
test_json_keys_are_the_sample_names_of_the_text(void)
{
	metrics *m = metrics_new();
	metrics_family(m, "t_things_total", "Things seen.", METRICS_COUNTER);
	metrics_int(m, 3, NULL);
	metrics_family(m, "t_level", "A level.", METRICS_GAUGE);
	metrics_real(m, 1.5, "a", "x\"y", NULL);
	metrics_int(m, 9000000000LL, "a", "big", NULL);
	metrics_family(m, "t_empty_total", "Nothing yet.", METRICS_COUNTER);
	json_t *j = metrics_json(m);
	ok(json_object_size(j) == 3, "one key per sample, none for an empty family");
	json_t *v = json_object_get(j, "t_things_total");
	ok(json_is_integer(v) && json_integer_value(v) == 3, "an unlabelled counter is an integer");
	v = json_object_get(j, "t_level{a=\"x\\\"y\"}");
	ok(json_is_real(v) && json_real_value(v) == 1.5, "a labelled real keeps its escaped labels");
	v = json_object_get(j, "t_level{a=\"big\"}");
	ok(json_is_integer(v) && json_integer_value(v) == 9000000000LL,
	   "integers past 32 bits stay exact");
	json_decref(j);
	metrics_free(m);
}

/* Every JSON key k with value v appears in the text as the line "k v". */
static bool
json_matches_text(json_t *j, const char *text)
{
	const char *k;
	json_t *v;
	json_object_foreach(j, k, v) {
		char line[512];
		if (json_is_integer(v))
			snprintf(line, sizeof line, "\n%s %lld\n", k, (long long)json_integer_value(v));
		else
			snprintf(line, sizeof line, "\n%s %.15g\n", k, json_real_value(v));
		if (!strstr(text, line))
			return false;
	}
	return true;
}

static void
test_gather_reads_each_part_given(void)
{
	struct metrics_http h = { .requests = 12, .responses_by_class = { 0, 0, 7, 0, 4, 1 } };
	cache *c = cache_create(4096, false);
	cache_get(c, "nope", 0);
	accounting *a = acct_create();
	acct_record(a, "smart_tips", "gpt-4o-mini", 1000, 200);
	struct metrics_sources src = { .http = &h, .cache = c, .acct = a };
	metrics *m = metrics_new();
	metrics_gather(m, &src);
	char *t = text_of(m);
	json_t *j = metrics_json(m);
	ok(strstr(t, "\nrapport_http_requests_total 12\n") &&
	   strstr(t, "\nrapport_http_responses_total{class=\"2xx\"} 7\n") &&
	   strstr(t, "\nrapport_http_responses_total{class=\"5xx\"} 1\n"),
	   "the HTTP counters, by class");
	ok(strstr(t, "\nrapport_cache_misses_total 1\n") && strstr(t, "\nrapport_cache_max_bytes 4096\n"),
	   "the cache's counters and gauges");
	ok(strstr(t, "# TYPE rapport_cache_entries gauge\n") &&
	   strstr(t, "# TYPE rapport_cache_hits_total counter\n"), "counters and gauges typed as such");
	ok(!strstr(t, "rapport_db_") && !strstr(t, "rapport_upstream_") && !strstr(t, "rapport_analysis_"),
	   "a part not given adds no family");
	ok(json_integer_value(json_object_get(j, "rapport_http_responses_total{class=\"4xx\"}")) == 4,
	   "the JSON has the same sample under the text's name");
	ok(json_matches_text(j, t) && json_object_size(j) == 6 + 10 + 6,   /* http, cache, one accounting row */
	   "every JSON value is the text's, and every sample is in the JSON");
	json_decref(j);
	free(t);
	metrics_free(m);
	acct_destroy(a);
	cache_destroy(c);
}

static void
test_accounting_families_exact_text(void)
{
	accounting *a = acct_create();
	metrics *m = metrics_new();
	struct metrics_sources src = { .acct = a };
	metrics_gather(m, &src);
	char *t = text_of(m);
	ok(strstr(t, "# TYPE rapport_llm_calls_total counter\n") && !strstr(t, "{"),
	   "with no calls: family headers only");
	free(t);
	metrics_free(m);

	acct_record(a, "sum\"ma\\ry\nx", "gpt-4o-mini", 1000, 100);
	acct_record(a, "next_best_action", "gpt-4o", 10, -1);
	m = metrics_new();
	metrics_gather(m, &src);
	t = text_of(m);
	const char *want =
		"# HELP rapport_llm_calls_total Upstream model calls accounted.\n"
		"# TYPE rapport_llm_calls_total counter\n"
		"rapport_llm_calls_total{type=\"next_best_action\",model=\"gpt-4o\"} 1\n"
		"rapport_llm_calls_total{type=\"sum\\\"ma\\\\ry\\nx\",model=\"gpt-4o-mini\"} 1\n"
		"# HELP rapport_llm_tokens_total Tokens the upstream reported, by kind.\n"
		"# TYPE rapport_llm_tokens_total counter\n"
		"rapport_llm_tokens_total{type=\"next_best_action\",model=\"gpt-4o\",kind=\"prompt\"} 10\n"
		"rapport_llm_tokens_total{type=\"next_best_action\",model=\"gpt-4o\",kind=\"completion\"} 0\n"
		"rapport_llm_tokens_total{type=\"sum\\\"ma\\\\ry\\nx\",model=\"gpt-4o-mini\",kind=\"prompt\"} 1000\n"
		"rapport_llm_tokens_total{type=\"sum\\\"ma\\\\ry\\nx\",model=\"gpt-4o-mini\",kind=\"completion\"} 100\n"
		"# HELP rapport_llm_cost_usd_total Estimated cost in USD from the price table.\n"
		"# TYPE rapport_llm_cost_usd_total counter\n"
		"rapport_llm_cost_usd_total{type=\"next_best_action\",model=\"gpt-4o\"} 2.5e-05\n"
		"rapport_llm_cost_usd_total{type=\"sum\\\"ma\\\\ry\\nx\",model=\"gpt-4o-mini\"} 0.00021\n"
		"# HELP rapport_llm_unpriced_calls_total Calls to a model with no price (cost counted as 0).\n"
		"# TYPE rapport_llm_unpriced_calls_total counter\n"
		"rapport_llm_unpriced_calls_total{type=\"next_best_action\",model=\"gpt-4o\"} 0\n"
		"rapport_llm_unpriced_calls_total{type=\"sum\\\"ma\\\\ry\\nx\",model=\"gpt-4o-mini\"} 0\n"
		"# HELP rapport_llm_calls_without_usage_total Calls whose token usage was not reported (tokens not counted).\n"
		"# TYPE rapport_llm_calls_without_usage_total counter\n"
		"rapport_llm_calls_without_usage_total{type=\"next_best_action\",model=\"gpt-4o\"} 1\n"
		"rapport_llm_calls_without_usage_total{type=\"sum\\\"ma\\\\ry\\nx\",model=\"gpt-4o-mini\"} 0\n";
	ok(strcmp(t, want) == 0,
	   "the llm families' exact text: grouped by family, rows sorted, labels escaped (\\\\ \\\" \\n)");
	if (strcmp(t, want) != 0)
		printf("# got:\n%s", t);
	bool framed = true;
	for (const char *line = t, *nl; *line; line = nl + 1) {
		framed = framed && (strncmp(line, "# ", 2) == 0 || strncmp(line, "rapport_llm_", 12) == 0);
		if (!(nl = strchr(line, '\n')))
			break;
	}
	ok(framed, "every line is a comment or a sample: a newline in a label value cannot split one");
	free(t);
	metrics_free(m);
	acct_destroy(a);
}

static void
test_nothing_given_is_an_empty_list(void)
{
	struct metrics_sources src = { 0 };
	metrics *m = metrics_new();
	metrics_gather(m, &src);
	char *t = text_of(m);
	json_t *j = metrics_json(m);
	ok(t[0] == '\0' && json_object_size(j) == 0, "no parts: empty text, empty object");
	json_decref(j);
	free(t);
	metrics_free(m);
	metrics_free(NULL);
}

int
main(void)
{
	test_prometheus_text_has_help_type_and_escaped_labels();
	test_json_keys_are_the_sample_names_of_the_text();
	test_gather_reads_each_part_given();
	test_accounting_families_exact_text();
	test_nothing_given_is_an_empty_list();
	return tap_done();
}
