/*
 * l2_coord — locks, the relay and the events channel. See l2_coord.h for
 * the protocol; the connections are l2.c's (l2_int.h).
 *
 * A claim is in one state:
 *   C_ACQUIRE  the lock script is out (a deadline timer runs)
 *   C_VERIFY   the lock is ours and a value is there: read once more first
 *   C_OWNER    ours: the caller generates; the timer renews the lease
 *   C_WAIT     another instance holds it; the timer is the poll
 *   C_CHECK    waiting, and reading the L2 (woken, or the poll)
 *   C_ENDED    over; the struct lives on until the last reply is in
 *
 * Memory: a claim is freed when its count of references drops to 0: one
 * for the caller (until the claim ends) and one for each command whose
 * reply has not come (hiredis calls every reply callback, with NULL when
 * the connection ends or is freed). The L2 lookups it starts are its own
 * l2_get handles, cancelled when it ends. A lock that a timed-out attempt
 * took after all is released when its late reply comes.
 */
#include "l2_coord.h"
#include "l2_int.h"
#include "log.h"
#include "util.h"

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define RELAY_PX "30000"            /* a relay stream outlives its last delta by this */
#define KEY_MAX 320

/* The lock: taken (1; 2 when a value is there, which the claim reads
 * before generating: the last holder may have stored it after our lookup),
 * or the holder's token. */
static const char ACQUIRE_LUA[] =
	"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then "
	"return 1 + redis.call('EXISTS', KEYS[2]) end "
	"return redis.call('GET', KEYS[1]) or 0";
/* The lease renewed only while it is still ours. */
static const char RENEW_LUA[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then "
	"return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";
/* Released only if ours, then "done" or "over" for the waiters. */
static const char RELEASE_LUA[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end "
	"if ARGV[2] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[2]) end return 1";
/* One delta (field t) or a reset (field r) on the generation's stream. */
static const char RELAY_LUA[] =
	"redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2]) "
	"redis.call('PEXPIRE', KEYS[1], ARGV[3]) "
	"redis.call('PUBLISH', KEYS[2], ARGV[4]) return 1";

enum claim_state { C_ACQUIRE, C_VERIFY, C_OWNER, C_WAIT, C_CHECK, C_ENDED };

struct l2_claim {
	l2 *l;
	enum claim_state state;
	int refs;
	char *key;
	char lock_key[KEY_MAX];
	int64_t contact_id;
	bool forced;
	bool waited;                  /* it found the lock held: taking it now is a takeover */
	bool listed;                  /* in l->waiting */
	char token[48];               /* ours */
	char owner[48];               /* the holder we wait for: the relay's epoch */
	unsigned epoch;               /* bumped with each new owner */
	bool have_last;               /* the relay's position: the last entry id read */
	uint64_t last_ms, last_seq;
	bool relayed;                 /* text went to the caller since the last reset */
	bool stored;                  /* owner: its result is in the L2 ("done", not "over") */
	bool lost;                    /* owner: the lock is no longer ours (lease lapsed, or
	                               * given back at shutdown): no renewal, relay or release */
	bool owned_listed;            /* in l->owned */
	bool done_seen;               /* forced: a "done" came while it was not in C_WAIT */
	bool by_done;                 /* this check was woken by "done" (else the poll, "over") */
	bool tail_read;               /* the relay was read once more after the result was seen */
	struct event *timer;          /* ACQUIRE: deadline; WAIT: poll; OWNER: renewal */
	l2_get *get;
	l2_claim_cb *cb;
	l2_relay_cb *relay;
	void *arg;
	TAILQ_ENTRY(l2_claim) link;
	TAILQ_ENTRY(l2_claim) olink;
};

/* An XRANGE out: which owner's stream it reads. */
struct range_req {
	l2_claim *c;
	unsigned epoch;
};

static void acquire(l2_claim *c, long budget_ms);
static void check(l2_claim *c, bool woken);

void
l2_coord_init(l2 *l)
{
	unsigned char r[8] = { 0 };
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
		/* No entropy: the pid and the time still tell instances apart. */
		uint64_t x = (uint64_t)getpid() << 40 ^ (uint64_t)util_wall_ms();
		memcpy(r, &x, sizeof r);
	}
	for (size_t i = 0; i < sizeof r; i++)
		snprintf(l->instance + 2 * i, 3, "%02x", r[i]);
	snprintf(l->channel, sizeof l->channel, "%s:events", l->prefix);
	TAILQ_INIT(&l->waiting);
	TAILQ_INIT(&l->owned);
}

bool
l2_locking(const l2 *l)
{
	return l && l->lease_ms > 0 && l2_up(l);
}

/* ---- the claim's life --------------------------------------------------- */

static void
claim_unref(l2_claim *c)
{
	if (--c->refs > 0)
		return;
	if (c->timer)
		event_free(c->timer);
	free(c->key);
	free(c);
}

static void
arm(l2_claim *c, long ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_del(c->timer);
	evtimer_add(c->timer, &tv);
}

static void
unlist(l2_claim *c)
{
	if (c->listed)
		TAILQ_REMOVE(&c->l->waiting, c, link);
	c->listed = false;
	if (c->owned_listed)
		TAILQ_REMOVE(&c->l->owned, c, olink);
	c->owned_listed = false;
}

/* Over: no callback, no timer, no lookup; freed with its last reference. */
static void
claim_stop(l2_claim *c)
{
	c->state = C_ENDED;
	c->cb = NULL;
	c->relay = NULL;
	unlist(c);
	evtimer_del(c->timer);
	l2_get_cancel(c->get);
	c->get = NULL;
}

/* Sends a command whose reply comes to cb with c; false when it cannot go. */
static bool
claim_send(l2_claim *c, redisCallbackFn *cb, void *priv, int argc, const char **argv,
     const size_t *argvlen)
{
	l2 *l = c->l;
	if (!l2_up(l) || l->destroying)
		return false;
	if (redisAsyncCommandArgv(l->cmd.ac, cb, priv, argc, argv, argvlen) != REDIS_OK) {
		l->st.errors++;
		return false;
	}
	return true;
}

/* RESULT or SKIP: the caller's last callback, then the claim is over. A
 * waiter that goes on without the lock generates its own text: what it
 * relayed of the other owner's is discarded first, as when it becomes the
 * owner, or its callers would get both texts run together. */
static void
conclude(l2_claim *c, enum l2_claim_outcome o, const struct l2_found *found)
{
	if (o == L2_CLAIM_SKIP)
		c->l->st.lock_skipped++;
	c->refs++;               /* the reset's callbacks may end the claim */
	if (o == L2_CLAIM_SKIP && c->relayed && c->relay) {
		c->relayed = false;
		c->relay(c->arg, NULL, 0);
	}
	if (c->state != C_ENDED) {
		l2_claim_cb *cb = c->cb;
		void *arg = c->arg;
		claim_stop(c);
		if (cb)
			cb(arg, o, found);
		c->refs--;           /* the caller's (l2_claim_end drops it otherwise); ours is held */
	}
	claim_unref(c);
}

/* Releases the lock if it is still ours and tells the waiters: "done" when
 * a result was stored, "over" when not (a failure, an uncacheable result, a
 * lock taken too late to be used), so a forced refresh waiting for a new
 * result takes over instead of reading the old one. */
static void
release_as(l2_claim *c, bool tell)
{
	l2 *l = c->l;
	if (c->lost)
		return;              /* not ours to release, nor to speak for: the new owner does */
	char msg[KEY_MAX + 8] = "";
	if (tell)
		snprintf(msg, sizeof msg, "%s %s", c->stored ? "done" : "over", c->key);
	const char *argv[] = { "EVAL", RELEASE_LUA, "2", c->lock_key, l->channel, c->token, msg };
	if (l2_up(l) && !l->destroying)
		redisAsyncCommandArgv(l->cmd.ac, l2_write_reply, NULL, 7, argv, NULL);
}

static void
release(l2_claim *c)
{
	release_as(c, true);
}

static void
become_owner(l2_claim *c)
{
	l2 *l = c->l;
	c->state = C_OWNER;
	unlist(c);
	TAILQ_INSERT_TAIL(&l->owned, c, olink);
	c->owned_listed = true;
	l->st.lock_acquired++;
	if (c->waited)
		l->st.lock_takeovers++;
	long every = l->lease_ms / 3 > 10 ? l->lease_ms / 3 : 10;
	arm(c, every);
	c->refs++;               /* the callback may end the claim */
	if (c->relayed && c->relay) {
		c->relayed = false;  /* the other's text is not ours: start over */
		c->relay(c->arg, NULL, 0);
	}
	if (c->cb && c->state == C_OWNER)
		c->cb(c->arg, L2_CLAIM_OWNER, NULL);
	claim_unref(c);
}

/* ---- the relay ------------------------------------------------------------ */

static void
rel_key(const l2_claim *c, const char *owner, char *out, size_t n)
{
	char rest[KEY_MAX];
	snprintf(rest, sizeof rest, "%s:%s", c->key, owner);
	l2_key_of(c->l, out, n, "rel", rest);
}

/* A new holder: its stream is another one, and what came from the last
 * holder's is discarded. */
static void
adopt(l2_claim *c, const char *owner)
{
	if (strcmp(c->owner, owner) == 0)
		return;
	snprintf(c->owner, sizeof c->owner, "%s", owner);
	c->epoch++;
	c->have_last = false;
	if (c->relayed && c->relay) {
		c->relayed = false;
		c->relay(c->arg, NULL, 0);
	}
}

static bool
parse_id(const char *s, uint64_t *ms, uint64_t *seq)
{
	char *end;
	*ms = strtoull(s, &end, 10);
	if (*end != '-')
		return false;
	*seq = strtoull(end + 1, &end, 10);
	return *end == '\0';
}

static void
on_range(redisAsyncContext *ac, void *r, void *privdata)
{
	struct range_req *rq = privdata;
	l2_claim *c = rq->c;
	redisReply *reply = r;
	bool current = rq->epoch == c->epoch && (c->state == C_WAIT || c->state == C_CHECK);
	free(rq);
	if (current && reply && reply->type == REDIS_REPLY_ARRAY) {
		for (size_t i = 0; i < reply->elements && c->relay; i++) {
			redisReply *e = reply->element[i];
			uint64_t ms, seq;
			if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
			    e->element[0]->type != REDIS_REPLY_STRING ||
			    !parse_id(e->element[0]->str, &ms, &seq))
				continue;
			/* Reads overlap (a notification and a check): each entry once. */
			if (c->have_last && (ms < c->last_ms || (ms == c->last_ms && seq <= c->last_seq)))
				continue;
			c->have_last = true;
			c->last_ms = ms;
			c->last_seq = seq;
			redisReply *kv = e->element[1];
			if (kv->type != REDIS_REPLY_ARRAY || kv->elements != 2 ||
			    kv->element[0]->type != REDIS_REPLY_STRING ||
			    kv->element[1]->type != REDIS_REPLY_STRING)
				continue;
			if (strcmp(kv->element[0]->str, "t") == 0) {
				c->relayed = true;
				c->l->st.relay_deltas++;
				c->relay(c->arg, kv->element[1]->str, kv->element[1]->len);
			} else if (c->relayed) {            /* "r": the owner's schema repair */
				c->relayed = false;
				c->relay(c->arg, NULL, 0);
			}
		}
	} else if (current && reply && reply->type == REDIS_REPLY_ERROR) {
		c->l->st.errors++;
	}
	claim_unref(c);
}

/* Reads the owner's stream from where this claim is. */
static void
fetch(l2_claim *c)
{
	if (!c->owner[0] || !c->relay)
		return;
	char key[KEY_MAX + 64], from[48];
	rel_key(c, c->owner, key, sizeof key);
	if (c->have_last)
		snprintf(from, sizeof from, "(%" PRIu64 "-%" PRIu64, c->last_ms, c->last_seq);
	else
		snprintf(from, sizeof from, "-");
	struct range_req *rq = xmalloc(sizeof *rq);
	rq->c = c;
	rq->epoch = c->epoch;
	const char *argv[] = { "XRANGE", key, from, "+" };
	if (!claim_send(c, on_range, rq, 4, argv, NULL)) {
		free(rq);
		return;
	}
	c->refs++;
}

void
l2_claim_delta(l2_claim *c, const char *text, size_t len)
{
	/* A lost lease: another instance generates and its waiters follow
	 * its relay, not ours. */
	if (!c || c->state != C_OWNER || c->lost)
		return;
	l2 *l = c->l;
	char key[KEY_MAX + 64], msg[KEY_MAX + 64];
	rel_key(c, c->token, key, sizeof key);
	snprintf(msg, sizeof msg, "delta %s %s", c->key, c->token);
	const char *argv[] = { "EVAL", RELAY_LUA, "2", key, l->channel, text ? "t" : "r",
	                       text ? text : "1", RELAY_PX, msg };
	size_t argvlen[9];
	for (int i = 0; i < 9; i++)
		argvlen[i] = strlen(argv[i]);
	if (text)
		argvlen[6] = len;
	if (l2_up(l) && !l->destroying &&
	    redisAsyncCommandArgv(l->cmd.ac, l2_write_reply, NULL, 9, argv, argvlen) == REDIS_OK &&
	    text)
		l->st.relay_published++;
}

/* ---- lock, wait, take over ------------------------------------------------ */

static void
on_verify(void *arg, const struct l2_found *found)
{
	l2_claim *c = arg;
	c->get = NULL;
	if (found && found->state == CACHE_FRESH) {
		/* The last holder stored it just before we took the lock. */
		c->stored = true;
		release(c);
		c->l->st.lock_results++;
		conclude(c, L2_CLAIM_RESULT, found);
		return;
	}
	become_owner(c);
}

static void
wait_for_owner(l2_claim *c)
{
	l2 *l = c->l;
	c->state = C_WAIT;
	if (!c->listed) {
		TAILQ_INSERT_TAIL(&l->waiting, c, link);
		c->listed = true;
	}
	arm(c, l->poll_ms);
	fetch(c);
}

static void
on_acquire(redisAsyncContext *ac, void *r, void *privdata)
{
	l2_claim *c = privdata;
	l2 *l = c->l;
	redisReply *reply = r;
	if (c->state != C_ACQUIRE) {
		/* Past its deadline, or the caller has gone: a lock taken after
		 * all is given back at once instead of making others wait out
		 * its lease. */
		if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer >= 1)
			release(c);
		claim_unref(c);
		return;
	}
	evtimer_del(c->timer);
	if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer >= 1) {
		if ((c->forced && !c->done_seen) || reply->integer == 1) {
			become_owner(c);
		} else {
			c->state = C_VERIFY;
			c->get = l2_get_start(l, c->key, c->contact_id, on_verify, c);
			if (!c->get && c->waited) {
				/* Too many lookups out: a result is there but cannot be
				 * read now. The lock goes back, quietly, and the poll
				 * reads the value later instead of generating it again. */
				release_as(c, false);
				wait_for_owner(c);
			} else if (!c->get) {
				become_owner(c);
			}
		}
	} else if (reply && reply->type == REDIS_REPLY_STRING) {
		if (!c->waited) {
			c->waited = true;
			l->st.lock_waits++;
		}
		adopt(c, reply->str);
		wait_for_owner(c);
	} else {
		/* An error reply, a lost connection, or the lock gone between
		 * SET and GET (its lease ended that very moment): no lock. */
		if (!reply || reply->type == REDIS_REPLY_ERROR)
			l->st.errors++;
		conclude(c, L2_CLAIM_SKIP, NULL);
	}
	claim_unref(c);
}

static void
acquire(l2_claim *c, long budget_ms)
{
	l2 *l = c->l;
	char lease[24];
	snprintf(lease, sizeof lease, "%ld", l->lease_ms);
	char value_key[KEY_MAX];
	l2_key_of(l, value_key, sizeof value_key, "a", c->key);
	const char *argv[] = { "EVAL", ACQUIRE_LUA, "2", c->lock_key, value_key, c->token, lease };
	c->state = C_ACQUIRE;
	if (!claim_send(c, on_acquire, c, 7, argv, NULL)) {
		conclude(c, L2_CLAIM_SKIP, NULL);
		return;
	}
	c->refs++;
	arm(c, budget_ms > 0 ? budget_ms : 1);
}

static void
on_check(void *arg, const struct l2_found *found)
{
	l2_claim *c = arg;
	c->get = NULL;
	if (found && found->state == CACHE_FRESH) {
		if (!c->by_done && c->relayed && c->relay && !c->tail_read) {
			/* Woken by the poll: the owner's last deltas may have been
			 * written between our XRANGE and this read. They are all in
			 * before its result (the SET follows them), so the stream
			 * once more, then the result again, in order on one
			 * connection, and the text is whole. */
			c->tail_read = true;
			fetch(c);
			c->get = l2_get_start(c->l, c->key, c->contact_id, on_check, c);
			if (c->get)
				return;
		}
		c->l->st.lock_results++;
		conclude(c, L2_CLAIM_RESULT, found);
		return;
	}
	if (!l2_up(c->l)) {
		conclude(c, L2_CLAIM_SKIP, NULL);
		return;
	}
	acquire(c, c->l->timeout_ms);
}

/* Woken by "done", or the poll: the stream's tail first (in order on the
 * same connection, so the text is complete before the result), then the
 * L2; nothing there, and the lock is tried. A forced refresh takes no
 * result it was not told about: its poll only tries the lock. */
static void
check(l2_claim *c, bool woken)
{
	if (c->state != C_WAIT)
		return;
	c->state = C_CHECK;
	c->by_done = woken;
	evtimer_del(c->timer);
	fetch(c);
	if (c->forced && !woken && !c->done_seen) {
		acquire(c, c->l->timeout_ms);
		return;
	}
	c->get = l2_get_start(c->l, c->key, c->contact_id, on_check, c);
	if (!c->get) {
		if (!l2_up(c->l)) {
			conclude(c, L2_CLAIM_SKIP, NULL);
		} else {
			/* Too many lookups out (l2.c's cap): the result may be
			 * there, unread; taking the lock now would generate it
			 * again. The next poll reads it. */
			c->state = C_WAIT;
			arm(c, c->l->poll_ms);
		}
	}
}

static void
on_renew(redisAsyncContext *ac, void *r, void *privdata)
{
	l2_claim *c = privdata;
	redisReply *reply = r;
	if (c->state == C_OWNER && !c->lost && reply && reply->type == REDIS_REPLY_INTEGER &&
	    reply->integer == 0 && !c->l->destroying) {
		/* Our lease lapsed (a stall longer than the lease) and another
		 * instance may have taken over: we finish for our own callers
		 * (at worst a duplicate call) but no longer renew, relay or
		 * release, so the other instances' waiters follow one owner. */
		c->lost = true;
		c->l->st.lock_lost++;
		evtimer_del(c->timer);
	}
	claim_unref(c);
}

static void
on_claim_timer(evutil_socket_t fd, short what, void *arg)
{
	l2_claim *c = arg;
	l2 *l = c->l;
	switch (c->state) {
	case C_ACQUIRE:
		/* Redis is slow: the request goes on without the lock. */
		l->st.timeouts++;
		conclude(c, L2_CLAIM_SKIP, NULL);
		return;
	case C_WAIT:
		check(c, false);
		return;
	case C_OWNER: {
		if (c->lost)
			return;
		char lease[24];
		snprintf(lease, sizeof lease, "%ld", l->lease_ms);
		const char *argv[] = { "EVAL", RENEW_LUA, "1", c->lock_key, c->token, lease };
		if (claim_send(c, on_renew, c, 6, argv, NULL))
			c->refs++;
		arm(c, l->lease_ms / 3 > 10 ? l->lease_ms / 3 : 10);
		return;
	}
	case C_VERIFY:
	case C_CHECK:
	case C_ENDED:
		return;
	}
}

l2_claim *
l2_claim_start(l2 *l, const char *key, int64_t contact_id, bool forced, double l2_started_ms,
               l2_claim_cb *cb, l2_relay_cb *relay, void *arg)
{
	if (!l || l->lease_ms <= 0)
		return NULL;
	if (!l2_up(l) || l->stopping) {
		l->st.lock_skipped++;
		return NULL;
	}
	long budget = l->timeout_ms - (long)(util_now_ms() - l2_started_ms);
	if (budget < 1) {
		/* The lookup used the deadline up: Redis is slow, go on. */
		l->st.lock_skipped++;
		return NULL;
	}
	l2_claim *c = xcalloc(1, sizeof *c);
	c->l = l;
	c->refs = 1;
	c->key = xstrdup(key);
	l2_key_of(l, c->lock_key, sizeof c->lock_key, "lock", key);
	c->contact_id = contact_id;
	c->forced = forced;
	snprintf(c->token, sizeof c->token, "%s.%lu", l->instance, ++l->next_claim);
	c->timer = evtimer_new(l->base, on_claim_timer, c);
	/* No callback yet: a send that fails here concludes without one. */
	c->refs++;
	acquire(c, budget);
	if (c->state == C_ENDED) {
		claim_unref(c);
		return NULL;
	}
	c->cb = cb;
	c->relay = relay;
	c->arg = arg;
	claim_unref(c);
	return c;
}

void
l2_claim_stored(l2_claim *c)
{
	if (c)
		c->stored = true;
}

void
l2_claim_end(l2_claim *c)
{
	if (!c)
		return;
	if (c->state == C_OWNER || c->state == C_VERIFY)
		release(c);
	claim_stop(c);
	claim_unref(c);
}

void
l2_coord_shutdown(l2 *l)
{
	if (!l)
		return;
	l->stopping = true;
	l2_claim *c;
	while ((c = TAILQ_FIRST(&l->owned))) {
		TAILQ_REMOVE(&l->owned, c, olink);
		c->owned_listed = false;
		release(c);          /* "over" (or "done" if stored): a waiter takes the key */
		c->lost = true;      /* the generation goes on for our callers only */
		evtimer_del(c->timer);
	}
}

/* ---- events ---------------------------------------------------------------- */

void
l2_set_drop_handler(l2 *l, l2_drop_cb *cb, void *arg)
{
	l->on_drop = cb;
	l->drop_arg = arg;
}

void
l2_publish_drop(l2 *l, int64_t contact_id, const char *type)
{
	if (!l2_up(l))
		return;
	if (type && !util_type_name_ok(type))
		return;
	char msg[200];
	snprintf(msg, sizeof msg, "drop %s %lld %s", l->instance, (long long)contact_id,
	         type && *type ? type : "*");
	const char *argv[] = { "PUBLISH", l->channel, msg };
	redisAsyncCommandArgv(l->cmd.ac, l2_write_reply, NULL, 3, argv, NULL);
}

/* Wakes the claims waiting on key (token NULL: its owner has ended, with
 * a result stored when stored; else a delta of that owner's). The next
 * claim is taken first: a woken one may conclude and leave the list. */
static void
wake(l2 *l, const char *key, const char *token, bool stored)
{
	l2_claim *c, *next;
	for (c = TAILQ_FIRST(&l->waiting); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (strcmp(c->key, key) != 0)
			continue;
		if (!token) {
			/* A forced refresh busy reading or locking when a new result
			 * is announced takes it instead of missing it and generating
			 * once more. */
			if (stored && c->state != C_WAIT)
				c->done_seen = true;
			check(c, stored);
		} else if (strcmp(c->owner, token) == 0) {
			/* Another token's delta is not followed: a waiter learns its
			 * owner only from the lock (the ACQUIRE reply), so an owner
			 * whose lease lapsed and that still writes cannot pull it
			 * back and forth between two generations. */
			fetch(c);
		}
	}
}

void
l2_coord_message(l2 *l, const char *payload, size_t len)
{
	char m[512];
	if (len >= sizeof m)
		return;               /* not one of ours */
	memcpy(m, payload, len);
	m[len] = '\0';
	if (strncmp(m, "done ", 5) == 0 || strncmp(m, "over ", 5) == 0) {
		wake(l, m + 5, NULL, m[0] == 'd');
	} else if (strncmp(m, "delta ", 6) == 0) {
		char *sp = strrchr(m + 6, ' ');
		if (!sp)
			return;
		*sp = '\0';
		wake(l, m + 6, sp + 1, false);
	} else if (strncmp(m, "drop ", 5) == 0) {
		char inst[32], type[96];
		long long id;
		int end = 0;
		if (sscanf(m + 5, "%31s %lld %95s%n", inst, &id, type, &end) != 3 ||
		    m[5 + end] != '\0' || (strcmp(type, "*") != 0 && !util_type_name_ok(type)) ||
		    strcmp(inst, l->instance) == 0)
			return;           /* not one of ours, or ours, applied when it was made */
		l->st.remote_drops++;
		if (l->on_drop)
			l->on_drop(l->drop_arg, id, strcmp(type, "*") == 0 ? NULL : type);
	}
}
