/*
 * test_db — the asynchronous PostgreSQL pool against a real server.
 *
 * TEST_DATABASE_URL: libpq conninfo or URI of a throwaway database (exit 77,
 * "skip", when unset). Optional TEST_PG_STOP / TEST_PG_START: shell commands
 * that stop and start that server, for the restart test (skipped otherwise).
 * TEST_DB_DEBUG=1 shows the pool's debug logs.
 *
 * Prints TAP ("ok N - name"); exits 1 if any check failed.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "db.h"
#include "log.h"
#include "util.h"

static struct event_base *base;
static int ntest, nfail;
static bool in_send;            /* set around db_query_send: callbacks must not see it */
static bool cb_in_send;         /* a callback ran inside db_query_send */

static void check(bool cond, const char *name)
{
	ntest++;
	if (!cond)
		nfail++;
	printf("%s %d - %s\n", cond ? "ok" : "not ok", ntest, name);
	fflush(stdout);
}

/* What a callback saw. */
struct res {
	int done;                   /* callback count (must end at 1) */
	bool ok;
	bool unavailable;
	char sqlstate[8];
	char msg[256];
	char val[64];               /* first column of the first row */
	int ntuples;
	double at_ms;
};

static int ncallbacks;

static void on_result(void *arg, const PGresult *res, const struct db_error *err)
{
	struct res *r = arg;

	if (in_send)
		cb_in_send = true;
	ncallbacks++;
	r->done++;
	r->at_ms = util_now_ms();
	if (res) {
		r->ok = true;
		r->ntuples = PQntuples(res);
		if (r->ntuples > 0 && PQnfields(res) > 0)
			snprintf(r->val, sizeof r->val, "%s",
			         PQgetisnull(res, 0, 0) ? "(null)" : PQgetvalue(res, 0, 0));
	} else {
		r->ok = false;
		r->unavailable = err->unavailable;
		snprintf(r->sqlstate, sizeof r->sqlstate, "%s", err->sqlstate ? err->sqlstate : "");
		snprintf(r->msg, sizeof r->msg, "%s", err->message);
	}
}

static db_query *qsend(db_pool *p, const char *sql, int n, const char *const *params, struct res *r)
{
	db_query *q;

	in_send = true;
	q = db_query_send(p, sql, n, params, on_result, r);
	in_send = false;
	return q;
}

/* Runs the loop until *count reaches target or timeout_ms passes. */
static bool run_until(const int *count, int target, int timeout_ms)
{
	double end = util_now_ms() + timeout_ms;
	struct timeval tick = { 0, 5000 };

	while (*count < target && util_now_ms() < end) {
		/* The pool may have nothing armed while we wait on stats. */
		event_base_loopexit(base, &tick);
		event_base_loop(base, EVLOOP_ONCE);
	}
	return *count >= target;
}

static void run_for(int ms)
{
	int never = 0;
	run_until(&never, 1, ms);
}

/* Waits until `connected` reaches want; returns whether it did. */
static bool wait_connected(db_pool *p, int want, int timeout_ms)
{
	double end = util_now_ms() + timeout_ms;
	struct db_stats st;

	for (;;) {
		db_pool_stats(p, &st);
		if (st.connected >= want)
			return true;
		if (util_now_ms() >= end)
			return false;
		run_for(10);
	}
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int port = 1;

	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0
	    && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);   /* nothing listens there now */
	return port;
}

/* ---- tests -------------------------------------------------------------- */

static void test_parallel(db_pool *p)
{
	struct res r[3] = { 0 };
	int before = ncallbacks;
	double t0 = util_now_ms();

	for (int i = 0; i < 3; i++)
		qsend(p, "SELECT pg_sleep(0.2)", 0, NULL, &r[i]);
	bool all = run_until(&ncallbacks, before + 3, 3000);
	double dt = 0;
	for (int i = 0; i < 3; i++)
		if (r[i].at_ms - t0 > dt)
			dt = r[i].at_ms - t0;
	check(all && r[0].ok && r[1].ok && r[2].ok, "three pg_sleep(0.2) succeed");
	printf("# three pg_sleep(0.2) took %.1f ms\n", dt);
	check(all && dt < 500, "three pg_sleep(0.2) overlap (< 500 ms)");
}

static void test_params(db_pool *p)
{
	const char *one[] = { "41" };
	const char *two[] = { NULL, "it's \"quoted\"; DROP TABLE x" };
	struct res a = { 0 }, b = { 0 }, c = { 0 };
	int before = ncallbacks;

	qsend(p, "SELECT $1::int + 1", 1, one, &a);
	qsend(p, "SELECT ($1::text IS NULL)::text || ' ' || $2::text", 2, two, &b);
	qsend(p, "SELECT now()::text", 0, NULL, &c);
	run_until(&ncallbacks, before + 3, 3000);
	check(a.ok && strcmp(a.val, "42") == 0, "$1 passed as text, result readable");
	check(b.ok && strcmp(b.val, "true it's \"quoted\"; DROP TABLE x") == 0,
	      "NULL and text params are passed verbatim");
	/* DateStyle=ISO and TimeZone=UTC: "2026-11-25 21:00:00.123456+00" */
	size_t n = strlen(c.val);
	check(c.ok && n > 3 && strcmp(c.val + n - 3, "+00") == 0 && c.val[4] == '-',
	      "session is TimeZone=UTC, DateStyle=ISO");
	printf("# now() = %s\n", c.val);
}

static void test_sql_error(db_pool *p)
{
	struct res a = { 0 }, b = { 0 }, c = { 0 };
	int before = ncallbacks;

	qsend(p, "SELECT * FROM no_such_table_rapport", 0, NULL, &a);
	qsend(p, "SELECT 1/0", 0, NULL, &b);
	run_until(&ncallbacks, before + 2, 3000);
	check(!a.ok && strcmp(a.sqlstate, "42P01") == 0 && !a.unavailable && a.msg[0],
	      "SQL error reaches the callback with sqlstate 42P01, not unavailable");
	printf("# message: %s\n", a.msg);
	check(!b.ok && strcmp(b.sqlstate, "22012") == 0 && !b.unavailable, "division by zero is 22012");
	/* Errors that never reach the server are still not "unavailable". */
	enum { TOO_MANY = 70000 };
	const char **many = calloc(TOO_MANY, sizeof *many);
	struct res d = { 0 }, e = { 0 };
	for (int i = 0; i < TOO_MANY; i++)
		many[i] = "1";
	before = ncallbacks;
	qsend(p, "SELECT $1", TOO_MANY, many, &d);
	free(many);
	qsend(p, "", 0, NULL, &e);
	check(d.done == 0, "refused query: callback not inside db_query_send");
	run_until(&ncallbacks, before + 2, 3000);
	printf("# refused: %s / empty: %s\n", d.msg, e.msg);
	check(d.done == 1 && !d.ok && !d.unavailable, "query refused by libpq fails, not unavailable");
	check(e.done == 1 && !e.ok && !e.unavailable, "empty query fails, not unavailable");
	before = ncallbacks;
	qsend(p, "SELECT 'still here'", 0, NULL, &c);
	run_until(&ncallbacks, before + 1, 3000);
	check(c.ok && strcmp(c.val, "still here") == 0, "pool keeps working after SQL errors");
}

static void test_queue(db_pool *p, int size)
{
	enum { N = 20 };
	struct res r[N] = { 0 };
	char num[N][16];
	struct db_stats st;
	int before = ncallbacks;
	bool all_ok = true;

	for (int i = 0; i < N; i++) {
		const char *params[] = { num[i] };
		snprintf(num[i], sizeof num[i], "%d", i);
		qsend(p, "SELECT $1::int * 10 FROM pg_sleep(0.02)", 1, params, &r[i]);
	}
	db_pool_stats(p, &st);
	check(st.busy == size && st.queued == N - size, "more queries than connections are queued");
	printf("# stats after send: size=%d connected=%d busy=%d queued=%d\n",
	       st.size, st.connected, st.busy, st.queued);
	run_until(&ncallbacks, before + N, 5000);
	for (int i = 0; i < N; i++) {
		char want[16];
		snprintf(want, sizeof want, "%d", i * 10);
		if (!r[i].ok || r[i].done != 1 || strcmp(r[i].val, want) != 0)
			all_ok = false;
	}
	check(all_ok, "all queued queries complete, each with its own result");
	/* FIFO: completion times never go backwards by more than one batch. */
	bool fifo = true;
	for (int i = size; i < N; i++)
		if (r[i].at_ms + 0.001 < r[i - size].at_ms)
			fifo = false;
	check(fifo, "queue is served first in, first out");
	db_pool_stats(p, &st);
	check(st.busy == 0 && st.queued == 0 && st.connected == size, "pool idle again");
}

static void test_cancel(db_pool *p, int size)
{
	struct res running = { 0 }, queued = { 0 }, fillers[16] = { { 0 } }, next = { 0 };
	struct db_stats st;
	int before = ncallbacks;

	/* Running: cancelled while on a connection. */
	db_query *q = qsend(p, "SELECT pg_sleep(0.1)", 0, NULL, &running);
	db_query_cancel(q);
	/* Queued: fill every other connection, then one more. */
	for (int i = 0; i < size - 1; i++)
		qsend(p, "SELECT pg_sleep(0.1)", 0, NULL, &fillers[i]);
	q = qsend(p, "SELECT 'cancelled'", 0, NULL, &queued);
	db_pool_stats(p, &st);
	int queued_before = st.queued;
	db_query_cancel(q);
	db_pool_stats(p, &st);
	check(queued_before == 1 && st.queued == 0, "cancelling a queued query removes it from the queue");
	qsend(p, "SELECT 'next'", 0, NULL, &next);
	run_until(&ncallbacks, before + size, 3000);
	run_for(150);   /* let the cancelled one finish on its connection */
	check(running.done == 0 && queued.done == 0, "cancelled queries' callbacks never run");
	check(next.ok && strcmp(next.val, "next") == 0 && next.done == 1, "pool serves the next query after cancel");
	db_pool_stats(p, &st);
	check(st.busy == 0 && st.connected == size, "connection of the cancelled query is idle again");
	db_query_cancel(NULL);
}

static void test_terminated_backend(db_pool *p, int size)
{
	struct res victim = { 0 }, killer = { 0 }, after = { 0 };
	int before = ncallbacks;

	qsend(p, "SELECT pg_sleep(5) /* rapport-test-victim */", 0, NULL, &victim);
	run_for(100);
	qsend(p, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
	        "WHERE query LIKE '%rapport-test-victim */' AND pid <> pg_backend_pid()",
	     0, NULL, &killer);
	run_until(&ncallbacks, before + 2, 3000);
	check(killer.ok && strcmp(killer.val, "1") == 0, "backend of a running query terminated");
	check(victim.done == 1 && !victim.ok && victim.unavailable,
	      "query on a killed connection fails with unavailable");
	printf("# victim: %s [%s]\n", victim.msg, victim.sqlstate);
	check(wait_connected(p, size, 3000), "pool reconnects the killed connection");
	before = ncallbacks;
	qsend(p, "SELECT 'after'", 0, NULL, &after);
	run_until(&ncallbacks, before + 1, 3000);
	check(after.ok, "pool works after a connection was killed");
}

/* The user's options from the conninfo are kept; TimeZone stays ours. */
static void test_user_options(const char *url)
{
	if (strstr(url, "://") || !strchr(url, '=')) {
		printf("# user options test skipped (needs a key=value conninfo)\n");
		return;
	}
	char *u = xasprintf("%s options='-c search_path=rapport_x -c TimeZone=Asia/Tokyo'", url);
	db_pool *p = db_pool_create(base, u, 1, 5000);
	struct res r = { 0 };
	int before = ncallbacks;

	qsend(p, "SELECT current_setting('search_path') || ' ' || current_setting('TimeZone') "
	         "|| ' ' || current_setting('application_name') || ' ' "
	         "|| current_setting('statement_timeout')", 0, NULL, &r);
	run_until(&ncallbacks, before + 1, 3000);
	printf("# settings: %s\n", r.val);
	check(r.ok && strcmp(r.val, "rapport_x UTC rapport 6s") == 0,
	      "conninfo options kept, TimeZone=UTC wins, application_name and statement_timeout set");
	db_pool_destroy(p);
	free(u);
}

static void test_timeout(const char *url)
{
	db_pool *p = db_pool_create(base, url, 1, 300);
	struct res slow = { 0 }, queued = { 0 }, next = { 0 };
	int before = ncallbacks;
	double t0 = util_now_ms();

	check(p && wait_connected(p, 1, 3000), "pool with 300 ms timeout connects");
	t0 = util_now_ms();
	qsend(p, "SELECT pg_sleep(3)", 0, NULL, &slow);
	qsend(p, "SELECT 'queued behind'", 0, NULL, &queued);
	run_until(&ncallbacks, before + 2, 3000);
	double dt = slow.at_ms - t0;
	printf("# timeout after %.1f ms: %s\n", dt, slow.msg);
	check(slow.done == 1 && !slow.ok && slow.unavailable && strstr(slow.msg, "timed out")
	      && dt >= 250 && dt < 800, "query timeout fails the query with unavailable");
	check(queued.done == 1 && (queued.ok || queued.unavailable),
	      "query queued behind a timed-out one gets its callback");
	check(wait_connected(p, 1, 3000), "timed-out connection is replaced");
	before = ncallbacks;
	qsend(p, "SELECT 'next'", 0, NULL, &next);
	run_until(&ncallbacks, before + 1, 3000);
	check(next.ok, "pool works after a timeout");
	db_pool_destroy(p);
}

static void test_bad_conninfo(void)
{
	char url[128];
	struct res a = { 0 }, b = { 0 }, c = { 0 };
	int before = ncallbacks;

	snprintf(url, sizeof url, "host=127.0.0.1 port=%d dbname=nothing user=nobody", free_port());
	double t0 = util_now_ms();
	db_pool *p = db_pool_create(base, url, 2, 5000);
	check(p != NULL, "pool with unreachable server is created");
	qsend(p, "SELECT 1", 0, NULL, &a);
	run_until(&ncallbacks, before + 1, 3000);
	double dt = a.at_ms - t0;
	printf("# failed after %.1f ms: %s\n", dt, a.msg);
	check(a.done == 1 && !a.ok && a.unavailable && dt < 1200,
	      "unreachable server: query fails with unavailable within a second");
	check(!db_pool_is_up(p), "pool is not up");

	/* Down now: new queries fail on the next tick, not inside send. */
	before = ncallbacks;
	t0 = util_now_ms();
	qsend(p, "SELECT 1", 0, NULL, &b);
	check(b.done == 0, "fail-fast callback does not run inside db_query_send");
	run_until(&ncallbacks, before + 1, 3000);
	check(b.done == 1 && b.unavailable && b.at_ms - t0 < 100, "down pool fails new queries fast");

	/* A query that is pending at destroy gets its callback. */
	before = ncallbacks;
	qsend(p, "SELECT 1", 0, NULL, &c);
	db_pool_destroy(p);
	check(c.done == 1 && c.unavailable, "destroy fails pending queries with unavailable");

	check(db_pool_create(base, "host=127.0.0.1 port='oops", 1, 1000) == NULL,
	      "malformed conninfo is refused at create");
	check(db_pool_create(base, "dbname=x", 0, 1000) == NULL, "size 0 is refused");
}

/* A callback that destroys the pool (shutdown from a query result). */
struct destroy_ctx { db_pool *p; int calls; struct res other; };

static void on_destroy_cb(void *arg, const PGresult *res, const struct db_error *err)
{
	struct destroy_ctx *d = arg;
	d->calls++;
	db_pool_destroy(d->p);
}

static void test_destroy(const char *url)
{
	db_pool *p = db_pool_create(base, url, 2, 5000);
	struct res r[4] = { { 0 } };
	int before = ncallbacks;

	/* Destroy right away: connections still connecting, queries queued. */
	for (int i = 0; i < 4; i++)
		qsend(p, "SELECT 1", 0, NULL, &r[i]);
	db_pool_destroy(p);
	bool all = true;
	for (int i = 0; i < 4; i++)
		all = all && r[i].done == 1 && r[i].unavailable;
	check(all && ncallbacks == before + 4, "destroy while connecting fails queued queries");

	/* Destroy with queries running and one cancelled. */
	p = db_pool_create(base, url, 2, 5000);
	struct res a = { 0 }, b = { 0 };
	wait_connected(p, 2, 3000);
	qsend(p, "SELECT pg_sleep(1)", 0, NULL, &a);
	db_query *q = qsend(p, "SELECT pg_sleep(1)", 0, NULL, &b);
	run_for(50);
	db_query_cancel(q);
	db_pool_destroy(p);
	check(a.done == 1 && a.unavailable && b.done == 0, "destroy fails running queries, skips cancelled");

	/* Destroy from inside a callback. */
	struct destroy_ctx d = { 0 };
	d.p = db_pool_create(base, url, 2, 5000);
	wait_connected(d.p, 2, 3000);
	before = ncallbacks;
	db_query_send(d.p, "SELECT 1", 0, NULL, on_destroy_cb, &d);
	qsend(d.p, "SELECT pg_sleep(1)", 0, NULL, &d.other);
	run_until(&d.calls, 1, 3000);
	run_for(50);
	check(d.calls == 1 && d.other.done == 1 && d.other.unavailable,
	      "destroy from inside a callback fails the rest and is safe");
}

static void test_restart(const char *url, const char *stop, const char *start)
{
	db_pool *p = db_pool_create(base, url, 4, 5000);
	struct res r[3] = { { 0 } }, during = { 0 }, after = { 0 };
	int before;

	check(wait_connected(p, 4, 3000), "restart: pool up");
	before = ncallbacks;
	qsend(p, "SELECT pg_sleep(10)", 0, NULL, &r[0]);
	run_for(50);
	printf("# stopping server: %s\n", stop);
	if (system(stop) != 0)
		printf("# stop command failed\n");
	run_until(&ncallbacks, before + 1, 3000);
	check(r[0].done == 1 && r[0].unavailable, "restart: in-flight query fails with unavailable");
	printf("# in-flight: %s [%s]\n", r[0].msg, r[0].sqlstate);

	run_for(300);
	before = ncallbacks;
	double t0 = util_now_ms();
	qsend(p, "SELECT 1", 0, NULL, &during);
	run_until(&ncallbacks, before + 1, 3000);
	printf("# while down: failed after %.1f ms: %s\n", during.at_ms - t0, during.msg);
	check(during.done == 1 && during.unavailable && during.at_ms - t0 < 1000,
	      "restart: query while down fails with unavailable within a second");
	check(!db_pool_is_up(p), "restart: pool reports down");

	printf("# starting server: %s\n", start);
	if (system(start) != 0)
		printf("# start command failed\n");
	t0 = util_now_ms();
	bool ok = false;
	while (!ok && util_now_ms() - t0 < 8000) {
		struct res x = { 0 };
		before = ncallbacks;
		qsend(p, "SELECT 'back'", 0, NULL, &x);
		run_until(&ncallbacks, before + 1, 3000);
		ok = x.ok;
		if (!ok)
			run_for(100);
	}
	printf("# queries work again %.0f ms after start returned\n", util_now_ms() - t0);
	check(ok && util_now_ms() - t0 < 5000, "restart: queries succeed again within a few seconds");
	check(wait_connected(p, 4, 3000), "restart: every connection is back");
	before = ncallbacks;
	qsend(p, "SELECT 1", 0, NULL, &after);
	run_until(&ncallbacks, before + 1, 3000);
	check(after.ok, "restart: pool fully usable");
	db_pool_destroy(p);
}

/* Runs one query on p and waits for it. */
static struct res run1(db_pool *p, const char *sql, bool adhoc)
{
	struct res r = { 0 };
	int before = ncallbacks;
	in_send = true;
	if (adhoc)
		db_query_send_adhoc(p, sql, 0, NULL, on_result, &r);
	else
		db_query_send(p, sql, 0, NULL, on_result, &r);
	in_send = false;
	run_until(&ncallbacks, before + 1, 5000);
	return r;
}

/* Every query runs in a READ ONLY transaction, whatever its SQL did to
 * the session before; the SQL's SETs end with it. */
static void test_read_only(const char *url)
{
	db_pool *p = db_pool_create(base, url, 1, 5000);
	struct res r = run1(p, "SELECT current_setting('transaction_read_only')", false);
	check(r.ok && strcmp(r.val, "on") == 0, "a query runs in a read-only transaction");
	r = run1(p, "SELECT set_config('default_transaction_read_only', 'off', false)", false);
	check(r.ok, "the session default can be changed by SQL ...");
	r = run1(p, "SELECT current_setting('transaction_read_only') || ' '"
	            " || current_setting('default_transaction_read_only')", false);
	check(r.ok && strcmp(r.val, "on on") == 0, "... but the next query is read-only all the same");
	r = run1(p, "COMMIT", false);
	check(r.ok, "a COMMIT ends rapport's transaction without an error");
	r = run1(p, "CREATE TEMP TABLE rapport_t (x int)", false);
	check(!r.ok && strstr(r.msg, "read-only transaction"), "a write is refused after it too");
	r = run1(p, "SELECT 'still fine'", false);
	check(r.ok && strcmp(r.val, "still fine") == 0, "the session is clean after a failed query");
	db_pool_destroy(p);
}

/* Ad-hoc SQL's session is reset (DISCARD ALL); named queries' prepared
 * statements are prepared again afterwards. */
static void test_adhoc_reset(const char *url)
{
	db_pool *p = db_pool_create(base, url, 1, 5000);
	const char *named = "SELECT current_setting('application_name')";
	struct res r = run1(p, named, false);
	r = run1(p, named, false);
	check(r.ok && strcmp(r.val, "rapport") == 0, "named query prepared and reused");
	r = run1(p, "SELECT pg_advisory_lock(7001)", true);
	check(r.ok, "ad-hoc SQL takes a session lock");
	r = run1(p, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7001"
	            " AND pid = pg_backend_pid()", false);
	check(r.ok && strcmp(r.val, "0") == 0, "the lock went with the session reset");
	r = run1(p, named, false);
	check(r.ok && strcmp(r.val, "rapport") == 0, "the named query is prepared again after the reset");
	r = run1(p, "DEALLOCATE ALL", false);
	check(r.ok, "a statement may deallocate the session's prepared statements ...");
	r = run1(p, named, false);
	check(r.ok && strcmp(r.val, "rapport") == 0, "... and the named query is prepared again at once");
	db_pool_destroy(p);
}

/* Over a cap the query fails naming it; the pool goes on. */
static void test_caps(const char *url)
{
	db_pool *p = db_pool_create(base, url, 1, 30000);
	db_pool_set_result_caps(p, 100, 0);
	struct res r = run1(p, "SELECT generate_series(1, 100)", false);
	check(r.ok && r.ntuples == 100 && strcmp(r.val, "1") == 0, "a result at the row cap is whole");
	double t0 = util_now_ms();
	r = run1(p, "SELECT generate_series(1, 200000000)", false);
	check(!r.ok && !r.unavailable && strstr(r.msg, "more than 100 rows (RAPPORT_DB_MAX_ROWS)"),
	      "a result over the row cap fails naming the cap");
	printf("# 200M-row query stopped after %.0f ms: %s\n", util_now_ms() - t0, r.msg);
	r = run1(p, "SELECT 'after the cap'", false);
	check(r.ok && strcmp(r.val, "after the cap") == 0, "the pool serves after a capped query");
	db_pool_set_result_caps(p, 0, 1000);
	r = run1(p, "SELECT repeat('x', 600) FROM generate_series(1, 2)", false);
	check(!r.ok && strstr(r.msg, "more than 1000 bytes (RAPPORT_DB_MAX_BYTES)"),
	      "a result over the byte cap fails naming the cap");
	r = run1(p, "SELECT NULL::text, 'b' FROM generate_series(1, 3)", false);
	check(r.ok && r.ntuples == 3 && strcmp(r.val, "(null)") == 0, "NULLs survive the row rebuild");
	db_pool_destroy(p);
}

int main(void)
{
	const char *url = getenv("TEST_DATABASE_URL");
	enum { SIZE = 4 };

	if (!url || !*url) {
		printf("1..0 # SKIP TEST_DATABASE_URL not set\n");
		return 77;
	}
	log_set_level(getenv("TEST_DB_DEBUG") ? LOG_DEBUG : LOG_ERROR);
	base = util_event_base();

	db_pool *p = db_pool_create(base, url, SIZE, 5000);
	check(p != NULL, "pool created");
	check(wait_connected(p, SIZE, 3000), "all connections come up");
	check(db_pool_is_up(p), "pool reports up");

	test_parallel(p);
	test_params(p);
	test_sql_error(p);
	test_queue(p, SIZE);
	test_cancel(p, SIZE);
	test_terminated_backend(p, SIZE);
	db_pool_destroy(p);

	test_user_options(url);
	test_read_only(url);
	test_adhoc_reset(url);
	test_caps(url);
	test_timeout(url);
	test_bad_conninfo();
	test_destroy(url);

	const char *stop = getenv("TEST_PG_STOP"), *start = getenv("TEST_PG_START");
	if (stop && start)
		test_restart(url, stop, start);
	else
		printf("# restart test skipped (TEST_PG_STOP / TEST_PG_START unset)\n");

	check(!cb_in_send, "no callback ever ran inside db_query_send");
	event_base_free(base);
	printf("1..%d\n", ntest);
	return nfail ? 1 : 0;
}
