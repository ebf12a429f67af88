/*
 * l2 — Redis as the shared second-level cache. See l2.h for what it owns.
 *
 * Two connections (l2_int.h): cmd for every command, and sub, subscribed
 * to <prefix>:events, whose messages go to l2_coord.c (locks, relay,
 * drops). Each is in one state, with its own timer and backoff:
 *   L2_DOWN        no context; the timer starts the next attempt (backoff
 *                  100 ms doubling to 5 s, back to 100 ms once up)
 *   L2_CONNECTING  redisAsyncConnect*() is out, then AUTH/SELECT and a PING;
 *                  the timer is the 2 s budget for all of it (hiredis 0.14
 *                  has no connect timeout of its own)
 *   L2_UP          the PING was answered: lookups and writes go out (sub:
 *                  its SUBSCRIBE is sent)
 * Each change of state is one log line ("l2 …" for cmd, "l2 pubsub …" for
 * sub); a request never logs about Redis. l2_up() is cmd's state: without
 * sub, waiters poll instead of being woken, nothing else changes.
 *
 * A lookup (struct l2_get) lives until hiredis calls its reply callback,
 * which it always does: with the reply, or with NULL when the connection
 * ends or is freed. Its deadline timer or its owner's cancel may come
 * first; then the owner has had its answer (or has gone) and the late reply
 * only frees the struct. So the owner's callback runs exactly once, and the
 * struct is freed exactly once, by the reply callback.
 *
 * Values: "RL2 1\n" <JSON meta> "\n" <body>. The meta is read with jansson;
 * a value with another magic or version, or one that does not parse, is a
 * miss (and an error in the stats), so a format change retires old values
 * instead of misreading them.
 *
 * Caveat, as for libpq: a host name (not an address) in REDIS_URL is
 * resolved with a blocking getaddrinfo inside redisAsyncConnect.
 */
#include "l2.h"
#include "l2_int.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L2_CONNECT_BUDGET_MS 2000
#define L2_BACKOFF_MIN_MS     100
#define L2_BACKOFF_MAX_MS    5000
#define L2_MAX_PENDING        256   /* lookups out at once; past that, skip */
#define L2_MAGIC "RL2 1\n"

const double l2_latency_bounds_ms[7] = { 1, 2, 5, 10, 25, 50, 100 };

struct l2_get {
	l2 *l;
	l2_get_cb *cb;                /* NULL once answered or cancelled */
	void *arg;
	struct event *deadline;
	double t0;
};

static void l2_connect(struct l2_conn *c);

/* ---- configuration ------------------------------------------------------ */

static char *
url_part(CURLU *u, CURLUPart part)
{
	char *v = NULL;
	if (curl_url_get(u, part, &v, CURLU_URLDECODE) != CURLUE_OK)
		return NULL;
	char *copy = xstrdup(v);
	curl_free(v);
	return copy;
}

/* redis://[user[:password]@]host[:port][/db] (read with
 * libcurl's URL parser) or unix:///path. */
static bool
parse_url(l2 *l, const char *url, char *err, size_t errlen)
{
	if (strncmp(url, "rediss://", 9) == 0) {
		snprintf(err, errlen, "REDIS_URL: rediss:// (TLS) needs hiredis 1.x with hiredis_ssl; "
		         "this build has hiredis %d.%d, so put a TLS tunnel (stunnel, haproxy) in "
		         "front of Redis and use redis://", HIREDIS_MAJOR, HIREDIS_MINOR);
		return false;
	}
	bool is_unix = strncmp(url, "unix://", 7) == 0;
	if (!is_unix && strncmp(url, "redis://", 8) != 0) {
		snprintf(err, errlen, "REDIS_URL must be redis://[user:password@]host[:port][/db] or "
		         "unix:///path (got '%.60s')", url);
		return false;
	}
	if (is_unix) {
		/* unix:///path: everything after the scheme is the socket's path
		 * (libcurl reads an unknown scheme's first segment as a host). */
		const char *path = url + 7;
		if (path[0] != '/' || !path[1]) {
			snprintf(err, errlen, "REDIS_URL: unix:///path needs an absolute socket path");
			return false;
		}
		l->unix_path = xstrdup(path);
		return true;
	}
	CURLU *u = curl_url();
	bool ok = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK;
	if (!ok) {
		snprintf(err, errlen, "REDIS_URL is not a URL libcurl can read ('%.60s')", url);
		curl_url_cleanup(u);
		return false;
	}
	l->user = url_part(u, CURLUPART_USER);
	l->password = url_part(u, CURLUPART_PASSWORD);
	char *path = url_part(u, CURLUPART_PATH);
	l->host = url_part(u, CURLUPART_HOST);
	char *port = url_part(u, CURLUPART_PORT);
	l->port = port ? atoi(port) : 6379;
	free(port);
	if (!l->host || !*l->host || l->port <= 0 || l->port > 65535) {
		snprintf(err, errlen, "REDIS_URL: no host, or a bad port, in '%.60s'", url);
		ok = false;
	}
	if (ok && path && strcmp(path, "/") != 0) {
		char *end;
		long db = strtol(path + 1, &end, 10);
		if (*end || db < 0 || db > 10000) {
			snprintf(err, errlen, "REDIS_URL: the path must be a database number (got '%s')",
			         path);
			ok = false;
		}
		l->db = (int)db;
	}
	free(path);
	curl_url_cleanup(u);
	return ok;
}

/* ---- the connections ------------------------------------------------------ */

/* One line per change of state, for each connection: "l2 up" / "l2 down" /
 * "l2 unreachable" for the command connection, "l2 pubsub …" for the
 * subscriber (so an operator sees when only the notifications are gone). */
static void
set_state(struct l2_conn *c, enum l2_state to, const char *why)
{
	l2 *l = c->l;
	enum l2_state from = c->state;
	/* Same state: only a failed attempt with a new reason is worth a line. */
	if (from == to && !(to == L2_DOWN && strcmp(c->last_error, why ? why : "") != 0))
		return;
	c->state = to;
	if (c->sub)
		l->st.pubsub_up = to == L2_UP;
	else
		l->st.up = to == L2_UP;
	if (to == L2_UP) {
		if (!c->sub)
			l->st.connects++;
		log_event(LOG_INFO, c->sub ? "l2 pubsub up" : "l2 up",
		          LOG_S("redis", l->unix_path ? l->unix_path : l->host), LOG_END);
	} else if (to == L2_DOWN && from == L2_UP) {
		if (!c->sub)
			l->st.disconnects++;
		log_event(LOG_WARN, c->sub ? "l2 pubsub down" : "l2 down", LOG_S("error", why),
		          LOG_S("effect", c->sub
		                ? "waits for other instances poll instead of being woken; reconnecting"
		                : "requests go on from L1 and the model; reconnecting"), LOG_END);
	} else if (to == L2_DOWN && strcmp(c->last_error, why ? why : "") != 0) {
		/* A failed attempt: logged when the reason changes, not each time. */
		log_event(LOG_WARN, c->sub ? "l2 pubsub unreachable" : "l2 unreachable",
		          LOG_S("error", why), LOG_END);
	}
	snprintf(c->last_error, sizeof c->last_error, "%s", why ? why : "");
}

static void
arm_timer(struct l2_conn *c, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
}

/* The context is gone (hiredis frees it after the callback that told us,
 * or we freed it): back off and try again. */
static void
lost(struct l2_conn *c, const char *why)
{
	c->ac = NULL;
	set_state(c, L2_DOWN, why);
	if (c->l->destroying)
		return;
	evtimer_del(c->timer);
	arm_timer(c, c->backoff_ms);
	c->backoff_ms = c->backoff_ms * 2 > L2_BACKOFF_MAX_MS ? L2_BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
	struct l2_conn *c = ac->data;
	if (c)
		lost(c, status == REDIS_OK ? "disconnected" : (ac->errstr[0] ? ac->errstr : "lost"));
}

/* Every message on the events channel (and the SUBSCRIBE's own answer).
 * NULL: the connection ends, on_disconnect tells. */
static void
on_message(redisAsyncContext *ac, void *r, void *privdata)
{
	struct l2_conn *c = privdata;
	redisReply *reply = r;
	if (!reply || c->ac != ac || c->l->destroying)
		return;
	if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
	    reply->element[0]->type == REDIS_REPLY_STRING &&
	    strcmp(reply->element[0]->str, "message") == 0 &&
	    reply->element[2]->type == REDIS_REPLY_STRING)
		l2_coord_message(c->l, reply->element[2]->str, reply->element[2]->len);
}

static void
on_ping(redisAsyncContext *ac, void *r, void *privdata)
{
	struct l2_conn *c = privdata;
	redisReply *reply = r;
	if (!reply || c->ac != ac)
		return;                 /* the connection ends; on_disconnect tells */
	if (reply->type != REDIS_REPLY_STATUS) {
		char why[160];
		snprintf(why, sizeof why, "%s", reply->type == REDIS_REPLY_ERROR ? reply->str
		         : "unexpected reply to PING");
		/* Wrong password, unknown db…: free it (not from inside the
		 * callback: hiredis defers that for us). */
		ac->data = NULL;
		redisAsyncFree(ac);
		lost(c, why);
		return;
	}
	evtimer_del(c->timer);
	c->backoff_ms = L2_BACKOFF_MIN_MS;
	if (c->sub) {
		/* From here on this connection only hears messages. */
		const char *argv[] = { "SUBSCRIBE", c->l->channel };
		redisAsyncCommandArgv(ac, on_message, c, 2, argv, NULL);
	}
	set_state(c, L2_UP, NULL);
}

/* AUTH and SELECT replies: an error shows in the PING's place below, since
 * Redis answers in order; here they only must not be lost. */
static void
on_setup_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	struct l2_conn *c = privdata;
	redisReply *reply = r;
	if (reply && reply->type == REDIS_REPLY_ERROR && c->ac == ac) {
		char why[160];
		snprintf(why, sizeof why, "%s", reply->str);
		ac->data = NULL;
		redisAsyncFree(ac);
		lost(c, why);
	}
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
	struct l2_conn *c = ac->data;
	if (!c)
		return;
	if (status != REDIS_OK)
		/* hiredis frees the context after this callback */
		lost(c, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct l2_conn *c = arg;
	if (c->state == L2_CONNECTING) {
		redisAsyncContext *ac = c->ac;
		if (ac) {
			ac->data = NULL;
			redisAsyncFree(ac);
		}
		lost(c, "no answer within 2 s");
		return;
	}
	if (c->state == L2_DOWN)
		l2_connect(c);
}

static void
l2_connect(struct l2_conn *c)
{
	l2 *l = c->l;
	redisAsyncContext *ac = l->unix_path ? redisAsyncConnectUnix(l->unix_path)
	                                     : redisAsyncConnect(l->host, l->port);
	if (!ac || ac->err) {
		char why[160];
		snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
		if (ac)
			redisAsyncFree(ac);
		lost(c, why);
		return;
	}
	ac->data = c;
	c->ac = ac;
	redisLibeventAttach(ac, l->base);
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	c->state = L2_CONNECTING;
	/* Queued now, written once connected; answered in order. */
	if (l->password) {
		if (l->user && *l->user) {
			const char *argv[] = { "AUTH", l->user, l->password };
			redisAsyncCommandArgv(ac, on_setup_reply, c, 3, argv, NULL);
		} else {
			const char *argv[] = { "AUTH", l->password };
			redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
		}
	}
	if (l->db) {
		char db[16];
		snprintf(db, sizeof db, "%d", l->db);
		const char *argv[] = { "SELECT", db };
		redisAsyncCommandArgv(ac, on_setup_reply, c, 2, argv, NULL);
	}
	const char *ping[] = { "PING" };
	redisAsyncCommandArgv(ac, on_ping, c, 1, ping, NULL);
	evtimer_del(c->timer);
	arm_timer(c, L2_CONNECT_BUDGET_MS);
}

static void
conn_init(l2 *l, struct l2_conn *c, bool sub)
{
	c->l = l;
	c->sub = sub;
	c->state = L2_DOWN;
	c->backoff_ms = L2_BACKOFF_MIN_MS;
	c->timer = evtimer_new(l->base, on_timer, c);
}

static void
conn_free(struct l2_conn *c)
{
	if (c->ac) {
		redisAsyncContext *ac = c->ac;
		c->ac = NULL;
		ac->data = NULL;
		redisAsyncFree(ac);    /* pending callbacks run with NULL: structs freed */
	}
	if (c->timer)
		event_free(c->timer);
	c->timer = NULL;
}

l2 *
l2_create(struct event_base *base, const struct l2_config *cfg, char *err, size_t errlen)
{
	l2 *l = xcalloc(1, sizeof *l);
	l->base = base;
	l->prefix = xstrdup(cfg->prefix && *cfg->prefix ? cfg->prefix : "rapport");
	l->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 50;
	l->max_value_bytes = cfg->max_value_bytes > 0 ? cfg->max_value_bytes : 1u << 20;
	l->lease_ms = cfg->lock_lease_ms > 0 ? cfg->lock_lease_ms : 0;
	l->poll_ms = cfg->lock_poll_ms > 0 ? cfg->lock_poll_ms : 250;
	l->cmd.l = l->sub.l = l;
	if (!parse_url(l, cfg->url, err, errlen)) {
		l2_destroy(l);
		return NULL;
	}
	l2_coord_init(l);
	conn_init(l, &l->cmd, false);
	conn_init(l, &l->sub, true);
	l2_connect(&l->cmd);
	l2_connect(&l->sub);
	return l;
}

void
l2_destroy(l2 *l)
{
	if (!l)
		return;
	l->destroying = true;
	conn_free(&l->cmd);
	conn_free(&l->sub);
	free(l->host);
	free(l->unix_path);
	free(l->user);
	free(l->password);
	free(l->prefix);
	free(l);
}

bool
l2_up(const l2 *l)
{
	return l && l->cmd.state == L2_UP;
}

const char *
l2_state_name(const l2 *l)
{
	return l->cmd.state == L2_UP ? "up" : l->cmd.state == L2_CONNECTING ? "connecting" : "down";
}

/* ---- values ------------------------------------------------------------------- */

static char *
encode(const struct l2_value *v, int64_t contact_id, size_t *len)
{
	char fp[CACHE_FP_LEN * 2 + 1] = "";
	if (v->meta.has_fingerprint)
		for (int i = 0; i < CACHE_FP_LEN; i++)
			snprintf(fp + 2 * i, 3, "%02x", v->meta.fingerprint[i]);
	json_t *m = json_pack("{s:I, s:s, s:I, s:I, s:f, s:f, s:s?, s:I, s:I, s:f}",
	                      "contact", (json_int_t)contact_id, "etag", v->etag,
	                      "created", (json_int_t)v->created_wall_ms,
	                      "validated", (json_int_t)v->validated_wall_ms, "ttl_ms", v->ttl_ms,
	                      "grace_ms", v->grace_ms, "fp", v->meta.has_fingerprint ? fp : NULL,
	                      "prompt_tokens", (json_int_t)v->meta.prompt_tokens,
	                      "completion_tokens", (json_int_t)v->meta.completion_tokens,
	                      "cost_usd", v->meta.cost_usd);
	char *meta = m ? json_dumps(m, JSON_COMPACT) : NULL;
	json_decref(m);
	if (!meta)
		return NULL;
	size_t ml = strlen(meta), n = strlen(L2_MAGIC) + ml + 1 + v->body_len;
	char *out = xmalloc(n);
	memcpy(out, L2_MAGIC, strlen(L2_MAGIC));
	memcpy(out + strlen(L2_MAGIC), meta, ml);
	out[strlen(L2_MAGIC) + ml] = '\n';
	memcpy(out + strlen(L2_MAGIC) + ml + 1, v->body, v->body_len);
	free(meta);
	*len = n;
	return out;
}

/* Reads a stored value; the strings in *v point into text and meta. */
static bool
decode(const char *text, size_t len, struct l2_value *v, json_t **meta)
{
	size_t ml = strlen(L2_MAGIC);
	if (len < ml || memcmp(text, L2_MAGIC, ml) != 0)
		return false;
	const char *nl = memchr(text + ml, '\n', len - ml);
	if (!nl)
		return false;
	json_error_t je;
	json_t *m = json_loadb(text + ml, (size_t)(nl - (text + ml)), 0, &je);
	json_int_t created, validated, pt, ct;
	const char *etag, *fp = NULL;
	double ttl, grace, cost;
	if (!m || json_unpack(m, "{s:s, s:I, s:I, s:F, s:F, s?s, s:I, s:I, s:F}", "etag", &etag,
	                      "created", &created, "validated", &validated, "ttl_ms", &ttl,
	                      "grace_ms", &grace, "fp", &fp, "prompt_tokens", &pt,
	                      "completion_tokens", &ct, "cost_usd", &cost) != 0) {
		json_decref(m);
		return false;
	}
	memset(v, 0, sizeof *v);
	v->body = nl + 1;
	v->body_len = len - (size_t)(nl + 1 - text);
	v->etag = etag;
	v->created_wall_ms = created;
	v->validated_wall_ms = validated;
	v->ttl_ms = ttl;
	v->grace_ms = grace;
	v->meta.prompt_tokens = pt;
	v->meta.completion_tokens = ct;
	v->meta.cost_usd = cost;
	if (fp && strlen(fp) == CACHE_FP_LEN * 2) {
		v->meta.has_fingerprint = true;
		for (int i = 0; i < CACHE_FP_LEN; i++) {
			unsigned b;
			if (sscanf(fp + 2 * i, "%2x", &b) != 1) {
				v->meta.has_fingerprint = false;
				break;
			}
			v->meta.fingerprint[i] = (unsigned char)b;
		}
	}
	*meta = m;
	return true;
}

void
l2_key_of(const l2 *l, char *out, size_t n, const char *kind, const char *rest)
{
	snprintf(out, n, "%s:%s:%s", l->prefix, kind, rest);
}

static int64_t
reply_int(const redisReply *r)
{
	if (!r || r->type != REDIS_REPLY_STRING)
		return -1;
	return strtoll(r->str, NULL, 10);
}

/* ---- lookups ------------------------------------------------------------------ */

static void
count_latency(l2 *l, double ms)
{
	int i = 0;
	while (i < 7 && ms > l2_latency_bounds_ms[i])
		i++;
	l->st.lat_buckets[i]++;
	l->st.lat_sum_ms += ms;
}

static void
answer(l2_get *g, const struct l2_found *found)
{
	l2_get_cb *cb = g->cb;
	g->cb = NULL;
	if (g->deadline) {
		event_free(g->deadline);
		g->deadline = NULL;
	}
	if (cb)
		cb(g->arg, found);
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	l2_get *g = arg;
	g->l->st.timeouts++;
	answer(g, NULL);
}

/* What the entry is now, from its times and the contact's change and drop
 * times. */
static bool
evaluate(struct l2_found *f, int64_t changed, int64_t dropped)
{
	const struct l2_value *v = &f->v;
	if (dropped >= v->validated_wall_ms)
		return false;
	double now = (double)util_wall_ms();
	double fresh_end = (double)v->validated_wall_ms + v->ttl_ms;
	double grace_end = fresh_end + v->grace_ms;
	bool changed_since = changed >= v->validated_wall_ms;
	if (changed_since && grace_end > (double)changed + v->grace_ms)
		grace_end = (double)changed + v->grace_ms;
	f->fresh_left_ms = !changed_since && fresh_end > now ? fresh_end - now : 0;
	f->grace_left_ms = grace_end > now ? grace_end - now : 0;
	f->state = f->fresh_left_ms > 0 ? CACHE_FRESH
	         : f->grace_left_ms > 0 ? CACHE_STALE : CACHE_EXPIRED;
	return true;
}

static void
on_get_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	l2_get *g = privdata;
	l2 *l = g->l;
	redisReply *reply = r;
	l->pending--;
	if (g->cb) {
		count_latency(l, util_now_ms() - g->t0);
		struct l2_found f;
		json_t *meta = NULL;
		bool found = false;
		if (!reply) {
			l->st.errors++;
		} else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
			l->st.errors++;
		} else if (reply->element[0]->type == REDIS_REPLY_STRING) {
			int64_t chg = reply_int(reply->element[1]), all = reply_int(reply->element[3]);
			if (decode(reply->element[0]->str, reply->element[0]->len, &f.v, &meta))
				found = evaluate(&f, chg > all ? chg : all, reply_int(reply->element[2]));
			else
				l->st.errors++;
		}
		if (found && f.state == CACHE_FRESH)
			l->st.hits++;
		else if (found && f.state == CACHE_STALE)
			l->st.stale_hits++;
		else
			l->st.misses++;
		answer(g, found ? &f : NULL);
		json_decref(meta);
	}
	free(g);
}

l2_get *
l2_get_start(l2 *l, const char *key, int64_t contact_id, l2_get_cb *cb, void *arg)
{
	if (!l2_up(l) || l->pending >= L2_MAX_PENDING) {
		if (l)
			l->st.skipped++;
		return NULL;
	}
	char k[256], chg[96], drop[96], all[96], id[24];
	l2_key_of(l, k, sizeof k, "a", key);
	snprintf(id, sizeof id, "%lld", (long long)contact_id);
	l2_key_of(l, chg, sizeof chg, "chg", id);
	l2_key_of(l, drop, sizeof drop, "drop", id);
	l2_key_of(l, all, sizeof all, "chg", "all");
	l2_get *g = xcalloc(1, sizeof *g);
	g->l = l;
	g->cb = cb;
	g->arg = arg;
	g->t0 = util_now_ms();
	const char *argv[] = { "MGET", k, chg, drop, all };
	if (redisAsyncCommandArgv(l->cmd.ac, on_get_reply, g, 5, argv, NULL) != REDIS_OK) {
		free(g);
		l->st.errors++;
		return NULL;
	}
	l->pending++;
	g->deadline = evtimer_new(l->base, on_deadline, g);
	struct timeval tv = { l->timeout_ms / 1000, (l->timeout_ms % 1000) * 1000 };
	evtimer_add(g->deadline, &tv);
	return g;
}

void
l2_get_cancel(l2_get *g)
{
	if (!g)
		return;
	g->cb = NULL;
	if (g->deadline) {
		event_free(g->deadline);
		g->deadline = NULL;
	}
}

/* ---- writes ------------------------------------------------------------------- */

void
l2_write_reply(redisAsyncContext *ac, void *r, void *privdata)
{
	struct l2_conn *c = ac->data;
	l2 *l = c ? c->l : NULL;
	redisReply *reply = r;
	if (l && (!reply || reply->type == REDIS_REPLY_ERROR))
		l->st.errors++;
}

bool
l2_put(l2 *l, const char *key, int64_t contact_id, const struct l2_value *v)
{
	if (!l2_up(l)) {
		if (l)
			l->st.skipped++;
		return false;
	}
	size_t len;
	char *value = encode(v, contact_id, &len);
	if (!value)
		return false;
	if (len > l->max_value_bytes) {
		l->st.too_large++;
		free(value);
		return false;
	}
	char k[256], px[32];
	l2_key_of(l, k, sizeof k, "a", key);
	long long ms = (long long)(v->ttl_ms + v->grace_ms);
	snprintf(px, sizeof px, "%lld", ms > 0 ? ms : 1);
	const char *argv[] = { "SET", k, value, "PX", px };
	size_t argvlen[] = { 3, strlen(k), len, 2, strlen(px) };
	bool queued = redisAsyncCommandArgv(l->cmd.ac, l2_write_reply, NULL, 5, argv, argvlen) ==
	              REDIS_OK;
	if (queued)
		l->st.stores++;
	else
		l->st.errors++;
	free(value);
	return queued;
}

/* Change and drop marks outlive any entry they could concern: 30 days, the
 * longest ttl, twice (ttl + grace). */
#define L2_MARK_PX "5184000000"

static void
mark(l2 *l, const char *kind, int64_t contact_id, int64_t wall_ms)
{
	if (!l2_up(l)) {
		if (l)
			l->st.skipped++;
		return;
	}
	char id[24], k[96], v[24];
	if (contact_id < 0)
		snprintf(id, sizeof id, "all");
	else
		snprintf(id, sizeof id, "%lld", (long long)contact_id);
	l2_key_of(l, k, sizeof k, kind, id);
	snprintf(v, sizeof v, "%lld", (long long)wall_ms);
	const char *argv[] = { "SET", k, v, "PX", L2_MARK_PX };
	redisAsyncCommandArgv(l->cmd.ac, l2_write_reply, NULL, 5, argv, NULL);
}

void
l2_contact_changed(l2 *l, int64_t contact_id, int64_t wall_ms)
{
	mark(l, "chg", contact_id, wall_ms);
}

void
l2_contact_dropped(l2 *l, int64_t contact_id, int64_t wall_ms)
{
	mark(l, "drop", contact_id, wall_ms);
}

void
l2_stats(const l2 *l, struct l2_stats *out)
{
	*out = l->st;
}
