/*
 * l2_int — what core/l2.c shares with core/l2_coord.c and nobody else: the
 * l2 struct and its two Redis connections.
 *
 *   cmd  every command: lookups, writes, locks, relay appends, PUBLISH
 *   sub  SUBSCRIBE <prefix>:events and nothing else (a connection in
 *        subscribe mode cannot send other commands); its messages go to
 *        l2_coord_message()
 *
 * Each connection has its own state, reconnect timer and backoff (l2.c);
 * l2_coord.c only sends on cmd while it is up and reads what sub hears.
 */
#ifndef RAPPORT_L2_INT_H
#define RAPPORT_L2_INT_H

#include <stdbool.h>
#include <sys/queue.h>

#include "l2.h"

struct redisAsyncContext;
struct event;

enum l2_state { L2_DOWN, L2_CONNECTING, L2_UP };

struct l2_conn {
	l2 *l;
	bool sub;                     /* the subscriber */
	enum l2_state state;
	struct redisAsyncContext *ac;
	struct event *timer;          /* DOWN: reconnect; CONNECTING: budget */
	long backoff_ms;
	char last_error[160];
};

struct l2_claim;

struct l2 {
	struct event_base *base;
	char *host, *unix_path, *user, *password, *prefix;
	int port, db;
	long timeout_ms;
	size_t max_value_bytes;
	struct l2_conn cmd, sub;
	long pending;                 /* lookups whose reply has not come */
	bool destroying;
	struct l2_stats st;
	/* coordination (l2_coord.c) */
	long lease_ms, poll_ms;       /* lease 0: no locks, no relay */
	char instance[24];            /* this process's token: hex, random at start */
	unsigned long next_claim;     /* claim tokens are <instance>.<n> */
	char channel[96];             /* <prefix>:events */
	TAILQ_HEAD(, l2_claim) waiting;   /* claims waiting for another instance */
	TAILQ_HEAD(, l2_claim) owned;     /* claims whose lock is ours: released at shutdown */
	bool stopping;                /* l2_coord_shutdown: no new claims */
	l2_drop_cb *on_drop;
	void *drop_arg;
};

/* key_of: "<prefix>:<kind>:<rest>" */
void l2_key_of(const l2 *l, char *out, size_t n, const char *kind, const char *rest);
/* A message on <prefix>:events (l2_coord.c). */
void l2_coord_message(l2 *l, const char *payload, size_t len);
void l2_coord_init(l2 *l);
/* Reply callback for fire-and-forget commands: counts error replies. */
void l2_write_reply(struct redisAsyncContext *ac, void *r, void *privdata);

#endif
