/*
 * l2_coord — what instances sharing one Redis agree on beyond the cache
 * itself (l2.h): one model call per key, the streaming relay, and the
 * events that every instance hears.
 *
 * One model call per key. A flight that found nothing usable in the L2
 * claims the key: SET <prefix>:lock:<key> <token> NX PX <lease>. The owner
 * (the claim that took the lock and then saw, reading the L2 once more, that
 * no result landed meanwhile) generates; its lease is renewed every third
 * of it while it runs (a Lua check-and-PEXPIRE on its token), and released
 * when it ends (check-and-DEL, then PUBLISH "done <key>" on the events
 * channel, after the result's SET on the same connection, so a woken
 * waiter finds it; "over <key>" when it ends with no result stored). A claim that finds the lock held waits: woken by that
 * message, or by its own poll every RAPPORT_L2_LOCK_POLL_MS, it reads the
 * L2; a fresh result there is its answer; no result and no lock (the owner
 * failed, died, or its lease lapsed) and it takes the lock itself.
 *
 * The relay. The owner appends each delta to a Redis stream of its own
 * generation, <prefix>:rel:<key>:<owner token> (XADD, expiring 30 s after
 * the last write), and PUBLISHes "delta <key> <token>". A waiter reads the
 * stream from the start when it learns the owner's token, then after each
 * notification from the last entry id it has (entries at or before it are
 * skipped, so overlapping reads never duplicate text); before reading the
 * result it reads the stream's tail, on the same connection, so no delta
 * is lost. The owner token is the epoch, learnt only from the lock (the
 * ACQUIRE reply, at the first attempt and at each poll), never from a
 * delta's token: a waiter that learns of a new owner (a takeover) tells its
 * caller to discard the text so far and reads the new owner's stream; so
 * does a waiter that becomes the owner or goes on without the lock. An
 * owner whose renewal finds the lock another's (its lease lapsed) stops
 * renewing, relaying and publishing: it finishes for its own callers only.
 * At shutdown (l2_coord_shutdown) an instance releases the locks it owns.
 *
 * Redis is never in the way: no claim when Redis is not up or locking is
 * off (RAPPORT_L2_LOCK_LEASE_MS=0); the first lock attempt gets what is
 * left of the L2 deadline (RAPPORT_L2_TIMEOUT_MS) and later ones the whole
 * deadline; a timeout, an error or a lost connection means "go on without
 * the lock" (L2_CLAIM_SKIP): at worst a duplicate model call.
 *
 * Events on <prefix>:events (one channel, one SUBSCRIBE per instance, on
 * its own connection): "done <key>", "over <key>", "delta <key> <token>", and
 * "drop <instance> <contact> <type|*>" for a DELETE, which every other
 * instance applies to its L1 (its own is ignored).
 */
#ifndef RAPPORT_L2_COORD_H
#define RAPPORT_L2_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "l2.h"

typedef struct l2_claim l2_claim;

enum l2_claim_outcome {
	L2_CLAIM_OWNER,    /* the lock is ours: generate; l2_claim_end() when done */
	L2_CLAIM_RESULT,   /* another instance's fresh result (found); the claim is over */
	L2_CLAIM_SKIP,     /* no lock to be had from Redis now: generate; the claim is over */
};

/* found: only with RESULT, valid during the call. Runs once for RESULT and
 * SKIP (the claim is then freed: drop the handle), once for OWNER (keep it
 * and call l2_claim_end). Never from inside l2_claim_start. */
typedef void l2_claim_cb(void *arg, enum l2_claim_outcome o, const struct l2_found *found);
/* Text of the owner's generation, for a waiter; text NULL: discard what
 * was relayed so far (a schema repair, or a new owner). */
typedef void l2_relay_cb(void *arg, const char *text, size_t len);

/* Locking is on (lease > 0) and Redis is up. */
bool l2_locking(const l2 *l);
/* Claims key. l2_started_ms (util_now_ms) is when this request's L2 step
 * began: the first lock attempt gets what is left of the deadline. forced:
 * a forced refresh, which never takes an older result for an answer (only
 * one announced by a "done" while it waits; after "over" or its poll it
 * tries the lock). NULL (and no callback): no claim, go on without. */
l2_claim *l2_claim_start(l2 *l, const char *key, int64_t contact_id, bool forced,
                         double l2_started_ms, l2_claim_cb *cb, l2_relay_cb *relay, void *arg);
/* The owner's text, relayed to the waiters of other instances; text NULL:
 * they discard what they have (a schema repair). */
void l2_claim_delta(l2_claim *c, const char *text, size_t len);
/* The owner has written its result to the L2 (l2_put): its end says
 * "done" (else "over"). */
void l2_claim_stored(l2_claim *c);
/* The caller is done with the claim: an owner releases the lock and says
 * so ("done", after its result was stored); a waiter stops waiting. The
 * callback never runs again. NULL is a no-op. */
void l2_claim_end(l2_claim *c);

/* The process is stopping: every lock this instance owns is released now,
 * while the loop still runs to send it, so the other instances' waiters
 * take over at once instead of waiting out the lease; no new claims from
 * here on (generations go on without the lock). */
void l2_coord_shutdown(l2 *l);

/* Another instance's DELETE: cb(arg, contact, type or NULL). */
void l2_set_drop_handler(l2 *l, l2_drop_cb *cb, void *arg);
/* Tells every other instance about a DELETE of contact_id's entries
 * (type NULL: all types). */
void l2_publish_drop(l2 *l, int64_t contact_id, const char *type);

#endif
