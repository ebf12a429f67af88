/*
 * config — the settings of one rapport process. Sources, weakest first:
 * built-in defaults, an optional file (key = value lines, same names as the
 * environment), the environment, then command-line flags. config_load()
 * fills a struct config that main owns and frees with config_free().
 */
#ifndef RAPPORT_CONFIG_H
#define RAPPORT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct config {
	char *listen;              /* RAPPORT_LISTEN "host:port" */
	char *database_url;        /* DATABASE_URL: the scripts' connections; a read-only role */
	char *state_url;           /* RAPPORT_STATE_URL (DATABASE_URL): rapport's own schema
	                            * (warm jobs), on a connection of its own (state.h) */
	char *openai_api_key;      /* OPENAI_API_KEY: never logged */
	char *openai_base_url;     /* OPENAI_BASE_URL */
	char *upstream_ca_file;    /* RAPPORT_UPSTREAM_CA_FILE: extra CA bundle for a private upstream */
	char *model;               /* RAPPORT_MODEL */
	char *scripts_dir;         /* RAPPORT_SCRIPTS */
	char *prompts_dir;         /* RAPPORT_PROMPTS */
	char **api_keys;           /* RAPPORT_API_KEYS, comma-separated */
	int n_api_keys;
	size_t cache_bytes;        /* RAPPORT_CACHE_BYTES */
	int db_pool_size;          /* RAPPORT_DB_POOL (8) */
	int db_timeout_ms;         /* RAPPORT_DB_TIMEOUT_MS (5000): per query */
	int db_prepare;            /* RAPPORT_DB_PREPARE (1): named prepared statements */
	int db_allow_write;        /* RAPPORT_DB_ALLOW_WRITE (0; a bool): run on a role that may write */
	int db_max_rows;           /* RAPPORT_DB_MAX_ROWS (10000): per result, 0 = no cap */
	size_t db_max_bytes;       /* RAPPORT_DB_MAX_BYTES (8 MiB): per result, 0 = no cap */
	int llm_timeout_ms;        /* RAPPORT_LLM_TIMEOUT_MS (60000): whole call */
	int llm_connect_timeout_ms;/* RAPPORT_LLM_CONNECT_TIMEOUT_MS (5000) */
	int llm_max_retries;       /* RAPPORT_LLM_RETRIES (2) */
	int llm_first_token_ms;    /* RAPPORT_LLM_FIRST_TOKEN_MS (20000): stalled-stream cut-off */
	int llm_max_in_flight;     /* RAPPORT_LLM_MAX_IN_FLIGHT (64): upstream calls at once */
	int llm_max_queue;         /* RAPPORT_LLM_QUEUE (256): waiting beyond that → 429 */
	int llm_max_in_flight_ceiling; /* RAPPORT_LLM_MAX_IN_FLIGHT_CEILING (4 × the start) */
	int llm_background_pct;    /* RAPPORT_LLM_BACKGROUND_PCT (25): warm calls' share of the cap */
	int breaker_failures;      /* RAPPORT_BREAKER_FAILURES (5): consecutive, to open */
	int breaker_open_ms;       /* RAPPORT_BREAKER_OPEN_MS (5000): first open period */
	char *prices;              /* RAPPORT_PRICES "model=in/out,…" USD per 1M tokens */
	char *orphan_policy;       /* RAPPORT_ORPHAN_POLICY finish|cancel (finish) */
	char *freshness;           /* RAPPORT_FRESHNESS full|ttl (full) */
	char *redis_url;           /* REDIS_URL: the shared L2 (NULL: none) */
	char *redis_prefix;        /* RAPPORT_REDIS_PREFIX (rapport) */
	int l2_timeout_ms;         /* RAPPORT_L2_TIMEOUT_MS: a lookup's deadline (50) */
	size_t l2_max_bytes;       /* RAPPORT_L2_MAX_BYTES: larger values are not stored (1 MiB) */
	int l2_lock_lease_ms;      /* RAPPORT_L2_LOCK_LEASE_MS: the per-key lock's lease (5000; 0: off) */
	int l2_lock_poll_ms;       /* RAPPORT_L2_LOCK_POLL_MS: a waiter's safety-net poll (250) */
	char *ttl_scale;           /* RAPPORT_TTL_SCALE, a factor > 0 on every ttl (1) */
	int http_timeout_s;        /* RAPPORT_HTTP_TIMEOUT (60): per read/write on a client connection */
	int max_connections;       /* RAPPORT_MAX_CONNECTIONS (0 = from the descriptor limit) */
	int keepalive_timeout_s;   /* RAPPORT_KEEPALIVE_TIMEOUT (15): idle between requests; 0 = off */
	int header_timeout_s;      /* RAPPORT_HEADER_TIMEOUT (20): whole request, from its first
	                            * byte (or from accept); 0 = off */
	int sse_heartbeat_ms;      /* RAPPORT_SSE_HEARTBEAT_MS (15000): comment line in quiet streams */
	size_t max_body_bytes;     /* RAPPORT_MAX_BODY (64 KiB) */
	size_t max_header_bytes;   /* RAPPORT_MAX_HEADERS (16 KiB) */
	int log_level;             /* RAPPORT_LOG_LEVEL debug|info|warn|error */
	char *admin_socket;        /* RAPPORT_ADMIN_SOCKET: unix socket of `serve` for
	                            * `console --attach`; "" = off. Default
	                            * ./var/run/rapport-<listen port>.sock */
	char *config_file;         /* RAPPORT_CONFIG or --config */
	int metrics_public;        /* RAPPORT_METRICS_PUBLIC (0): /metrics without an API key */
	int refresh_per_min;       /* RAPPORT_REFRESH_PER_MIN (10): forced regenerations per
	                            * client key a minute; 0 = no limit */
	int refresh_burst;         /* RAPPORT_REFRESH_BURST (10): how many at once */
	double warm_share;         /* RAPPORT_WARM_SHARE (0.25): warm items' share of the
	                            * upstream in-flight cap, in (0, 1] */
	int warm_every_s;          /* RAPPORT_WARM_EVERY (0 = off): a periodic warm job */
	int warm_top;              /* RAPPORT_WARM_TOP (100): its N (warm_candidates) */
	int warm_lease_s;          /* RAPPORT_WARM_LEASE_S (30): an item's lease */
	int refresh_on_change_s;   /* RAPPORT_REFRESH_ON_CHANGE_S (8 h; 0 = off): a change
	                            * refreshes entries viewed within that long */
	int refresh_warmed;        /* RAPPORT_REFRESH_WARMED (0): a warm item's result counts
	                            * as viewed when it is made */
	char *web_dir;             /* RAPPORT_WEB (./web): the panel's static files; "" = no panel */
	char *cors_origins;        /* RAPPORT_CORS_ORIGINS: browser origins allowed ("a,b" or "*") */
	char *stream_secret;       /* RAPPORT_STREAM_SECRET: HMAC key of stream tokens, shared by
	                            * instances; unset = random per process */
	int stream_token_ttl_s;    /* RAPPORT_STREAM_TOKEN_TTL (60): seconds a stream token lasts */
};

/* Parses argv flags (--listen, --database-url, --scripts, --prompts,
 * --model, --config, --cache-bytes, --admin-socket) after the subcommand; unknown flags are
 * an error. Leftover positional arguments are returned in rest and nrest.
 * Returns false and writes a message to *err (caller frees) on bad input. */
bool config_load(struct config *cfg, int argc, char **argv,
                 char ***rest, int *nrest, char **err);
void config_free(struct config *cfg);

#endif
