/*
 * metrics — the numbers a rapport process reports, gathered once into a
 * list of families {name, help, type} and their samples {labels, value},
 * then printed as Prometheus text (GET /metrics) or as JSON (the admin
 * socket's and the console's `metrics`). Both printers read the same list,
 * so the two can never disagree, and nothing parses one back into the
 * other.
 *
 * Data flow: metrics_gather() reads the stats of every part it is given
 * (the HTTP server's counters, cache, database pool, upstream client,
 * limiter, breaker, accounting, analysis; a NULL part adds nothing) into a
 * metrics list the caller made with metrics_new() and frees with
 * metrics_free(). The list owns copies of label values; names and help
 * texts are static strings.
 *
 * Prometheus text: for each family "# HELP name help", "# TYPE name
 * counter|gauge", then one line per sample, `name{k="v",…} value`, label
 * values escaped (\\, \", \n). JSON: one object whose keys are those
 * sample names with their labels, exactly as the text spells them, and
 * whose values are numbers: {"rapport_http_responses_total{class=\"2xx\"}": 3, …}.
 */
#ifndef RAPPORT_METRICS_H
#define RAPPORT_METRICS_H

#include <jansson.h>

#include "accounting.h"
#include "analysis.h"
#include "breaker.h"
#include "cache.h"
#include "db.h"
#include "limiter.h"
#include "llm.h"
#include "http_conn.h"

struct evbuffer;
typedef struct metrics metrics;

/* A histogram family's samples carry a suffix: _bucket{le=…}, _sum, _count. */
enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

/* The HTTP API's own counters. */
struct metrics_http {
	long requests;
	long responses_by_class[6];   /* [1] … [5]: 1xx … 5xx */
	const struct http_conn_stats *conns;   /* the connection subsystem's; may be NULL */
};

/* What metrics_gather() reads; any member may be NULL. */
struct metrics_sources {
	const struct metrics_http *http;
	const cache *cache;
	const db_pool *db;
	const llm_client *llm;
	const limiter *limiter;
	const breaker *breaker;
	const accounting *acct;
	const analysis *analysis;
};

metrics *metrics_new(void);
void metrics_free(metrics *m);

/* Starts a family: the samples added next belong to it. name and help
 * must outlive m (string literals). */
void metrics_family(metrics *m, const char *name, const char *help, enum metrics_type type);
/* A sample of the current family; the labels are name, value pairs ended
 * by NULL (values copied). */
void metrics_int(metrics *m, long long value, ...) __attribute__((sentinel));
void metrics_real(metrics *m, double value, ...) __attribute__((sentinel));
/* The same, named the family's name plus suffix (a static string). */
void metrics_int_suffix(metrics *m, const char *suffix, long long value, ...)
        __attribute__((sentinel));
void metrics_real_suffix(metrics *m, const char *suffix, double value, ...)
        __attribute__((sentinel));

/* Every family rapport reports, from the parts in src. */
void metrics_gather(metrics *m, const struct metrics_sources *src);

void metrics_prometheus(const metrics *m, struct evbuffer *out);
/* A new object {"name{labels}": value}. */
json_t *metrics_json(const metrics *m);

#endif
