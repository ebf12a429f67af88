/*
 * config — defaults, then an optional file, then the environment, then flags.
 * Each source overwrites what the weaker one set; config_free() releases
 * every string, whichever source it came from.
 */
#include "config.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One setting: its environment/file name, its flag, and how to store it. */
enum kind { K_STR, K_INT, K_SIZE, K_KEYS, K_LEVEL, K_BOOL, K_SHARE };
struct setting {
	const char *env;
	const char *flag;
	enum kind kind;
	size_t offset;
	int64_t max;          /* K_INT: the largest value accepted; 0: INT_MAX_SETTING */
};

/* Any integer setting fits an int, and most need no tighter bound. */
#define INT_MAX_SETTING 1000000000
/* A connection timeout in seconds: a day is far more than any sane value,
 * and keeps its millisecond form (×1000) well inside an int. */
#define TIMEOUT_S_MAX 86400

#define OFF(f) offsetof(struct config, f)
static const struct setting settings[] = {
	{ "RAPPORT_LISTEN", "--listen", K_STR, OFF(listen), 0 },
	{ "DATABASE_URL", "--database-url", K_STR, OFF(database_url), 0 },
	{ "OPENAI_API_KEY", NULL, K_STR, OFF(openai_api_key), 0 },
	{ "OPENAI_BASE_URL", "--openai-base-url", K_STR, OFF(openai_base_url), 0 },
	{ "RAPPORT_UPSTREAM_CA_FILE", NULL, K_STR, OFF(upstream_ca_file), 0 },
	{ "RAPPORT_MODEL", "--model", K_STR, OFF(model), 0 },
	{ "RAPPORT_SCRIPTS", "--scripts", K_STR, OFF(scripts_dir), 0 },
	{ "RAPPORT_PROMPTS", "--prompts", K_STR, OFF(prompts_dir), 0 },
	{ "RAPPORT_API_KEYS", NULL, K_KEYS, 0, 0 },
	{ "RAPPORT_CACHE_BYTES", "--cache-bytes", K_SIZE, OFF(cache_bytes), 0 },
	{ "RAPPORT_DB_POOL", "--db-pool", K_INT, OFF(db_pool_size), 0 },
	{ "RAPPORT_DB_TIMEOUT_MS", NULL, K_INT, OFF(db_timeout_ms), 0 },
	{ "RAPPORT_DB_PREPARE", NULL, K_INT, OFF(db_prepare), 0 },
	{ "RAPPORT_DB_ALLOW_WRITE", NULL, K_BOOL, OFF(db_allow_write), 0 },
	{ "RAPPORT_DB_MAX_ROWS", NULL, K_INT, OFF(db_max_rows), 0 },
	{ "RAPPORT_DB_MAX_BYTES", NULL, K_SIZE, OFF(db_max_bytes), 0 },
	{ "RAPPORT_STATE_URL", NULL, K_STR, OFF(state_url), 0 },
	{ "RAPPORT_LLM_TIMEOUT_MS", NULL, K_INT, OFF(llm_timeout_ms), 0 },
	{ "RAPPORT_LLM_CONNECT_TIMEOUT_MS", NULL, K_INT, OFF(llm_connect_timeout_ms), 0 },
	{ "RAPPORT_LLM_RETRIES", NULL, K_INT, OFF(llm_max_retries), 0 },
	{ "RAPPORT_LLM_FIRST_TOKEN_MS", NULL, K_INT, OFF(llm_first_token_ms), 0 },
	{ "RAPPORT_LLM_MAX_IN_FLIGHT", NULL, K_INT, OFF(llm_max_in_flight), 0 },
	{ "RAPPORT_LLM_QUEUE", NULL, K_INT, OFF(llm_max_queue), 0 },
	{ "RAPPORT_LLM_MAX_IN_FLIGHT_CEILING", NULL, K_INT, OFF(llm_max_in_flight_ceiling), 100000 },
	{ "RAPPORT_LLM_BACKGROUND_PCT", NULL, K_INT, OFF(llm_background_pct), 100 },
	{ "RAPPORT_BREAKER_FAILURES", NULL, K_INT, OFF(breaker_failures), 0 },
	{ "RAPPORT_BREAKER_OPEN_MS", NULL, K_INT, OFF(breaker_open_ms), 0 },
	{ "RAPPORT_PRICES", NULL, K_STR, OFF(prices), 0 },
	{ "RAPPORT_ORPHAN_POLICY", NULL, K_STR, OFF(orphan_policy), 0 },
	{ "RAPPORT_FRESHNESS", NULL, K_STR, OFF(freshness), 0 },
	{ "REDIS_URL", NULL, K_STR, OFF(redis_url), 0 },
	{ "RAPPORT_REDIS_PREFIX", NULL, K_STR, OFF(redis_prefix), 0 },
	{ "RAPPORT_L2_TIMEOUT_MS", NULL, K_INT, OFF(l2_timeout_ms), 0 },
	{ "RAPPORT_L2_MAX_BYTES", NULL, K_SIZE, OFF(l2_max_bytes), 0 },
	{ "RAPPORT_L2_LOCK_LEASE_MS", NULL, K_INT, OFF(l2_lock_lease_ms), 0 },
	{ "RAPPORT_L2_LOCK_POLL_MS", NULL, K_INT, OFF(l2_lock_poll_ms), 0 },
	{ "RAPPORT_TTL_SCALE", NULL, K_STR, OFF(ttl_scale), 0 },
	{ "RAPPORT_HTTP_TIMEOUT", NULL, K_INT, OFF(http_timeout_s), 0 },
	{ "RAPPORT_MAX_CONNECTIONS", NULL, K_INT, OFF(max_connections), 0 },
	{ "RAPPORT_KEEPALIVE_TIMEOUT", NULL, K_INT, OFF(keepalive_timeout_s), TIMEOUT_S_MAX },
	{ "RAPPORT_HEADER_TIMEOUT", NULL, K_INT, OFF(header_timeout_s), TIMEOUT_S_MAX },
	{ "RAPPORT_SSE_HEARTBEAT_MS", NULL, K_INT, OFF(sse_heartbeat_ms), 0 },
	{ "RAPPORT_MAX_BODY", NULL, K_SIZE, OFF(max_body_bytes), 0 },
	{ "RAPPORT_MAX_HEADERS", NULL, K_SIZE, OFF(max_header_bytes), 0 },
	{ "RAPPORT_LOG_LEVEL", "--log-level", K_LEVEL, OFF(log_level), 0 },
	{ "RAPPORT_ADMIN_SOCKET", "--admin-socket", K_STR, OFF(admin_socket), 0 },
	{ "RAPPORT_METRICS_PUBLIC", NULL, K_BOOL, OFF(metrics_public), 0 },
	{ "RAPPORT_REFRESH_PER_MIN", NULL, K_INT, OFF(refresh_per_min), 0 },
	{ "RAPPORT_REFRESH_BURST", NULL, K_INT, OFF(refresh_burst), 0 },
	{ "RAPPORT_WARM_SHARE", NULL, K_SHARE, OFF(warm_share), 0 },
	{ "RAPPORT_WARM_EVERY", NULL, K_INT, OFF(warm_every_s), 30 * 86400 },
	{ "RAPPORT_WARM_TOP", NULL, K_INT, OFF(warm_top), 10000 },
	{ "RAPPORT_WARM_LEASE_S", NULL, K_INT, OFF(warm_lease_s), 3600 },
	{ "RAPPORT_REFRESH_ON_CHANGE_S", NULL, K_INT, OFF(refresh_on_change_s), 30 * 86400 },
	{ "RAPPORT_REFRESH_WARMED", NULL, K_BOOL, OFF(refresh_warmed), 0 },
	{ "RAPPORT_WEB", NULL, K_STR, OFF(web_dir), 0 },
	{ "RAPPORT_CORS_ORIGINS", NULL, K_STR, OFF(cors_origins), 0 },
	{ "RAPPORT_STREAM_SECRET", NULL, K_STR, OFF(stream_secret), 0 },
	{ "RAPPORT_STREAM_TOKEN_TTL", NULL, K_INT, OFF(stream_token_ttl_s), 3600 },
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

static void
set_defaults(struct config *c)
{
	memset(c, 0, sizeof *c);
	c->listen = xstrdup("127.0.0.1:8080");
	c->database_url = xstrdup("dbname=rapport");
	c->openai_base_url = xstrdup("https://api.openai.com/v1");
	c->model = xstrdup("gpt-4o-mini");
	c->scripts_dir = xstrdup("./scripts");
	c->prompts_dir = xstrdup("./prompts");
	c->cache_bytes = 256u << 20;
	c->db_pool_size = 8;
	c->db_timeout_ms = 5000;
	c->db_prepare = 1;
	c->db_max_rows = 10000;
	c->db_max_bytes = 8u << 20;
	c->llm_timeout_ms = 60000;
	c->llm_connect_timeout_ms = 5000;
	c->llm_max_retries = 2;
	c->llm_first_token_ms = 20000;
	c->llm_max_in_flight = 64;
	c->llm_max_queue = 256;
	c->llm_max_in_flight_ceiling = 0;   /* 4 × RAPPORT_LLM_MAX_IN_FLIGHT, in config_load */
	c->llm_background_pct = 25;
	c->breaker_failures = 5;
	c->breaker_open_ms = 5000;
	c->orphan_policy = xstrdup("finish");
	c->freshness = xstrdup("full");
	c->redis_prefix = xstrdup("rapport");
	c->l2_timeout_ms = 50;
	c->l2_max_bytes = 1u << 20;
	c->l2_lock_lease_ms = 5000;
	c->l2_lock_poll_ms = 250;
	c->ttl_scale = xstrdup("1");
	c->http_timeout_s = 60;
	c->max_connections = 0;
	c->keepalive_timeout_s = 15;
	c->header_timeout_s = 20;
	c->sse_heartbeat_ms = 15000;
	c->max_body_bytes = 64u << 10;
	c->max_header_bytes = 16u << 10;
	c->log_level = LOG_INFO;
	c->refresh_per_min = 10;
	c->refresh_burst = 10;
	c->warm_share = 0.25;
	c->warm_top = 100;
	c->warm_lease_s = 30;
	c->refresh_on_change_s = 8 * 3600;
	c->web_dir = xstrdup("./web");
	c->stream_token_ttl_s = 60;
}

static void
free_keys(struct config *c)
{
	for (int i = 0; i < c->n_api_keys; i++)
		free(c->api_keys[i]);
	free(c->api_keys);
	c->api_keys = NULL;
	c->n_api_keys = 0;
}

/* Stores `value` into the setting; false with *err on a malformed value. */
static bool
apply(struct config *c, const struct setting *s, const char *value, char **err)
{
	char *base = (char *)c;
	switch (s->kind) {
	case K_STR: {
		char **slot = (char **)(base + s->offset);
		free(*slot);
		*slot = xstrdup(value);
		return true;
	}
	case K_INT: {
		int64_t v, max = s->max ? s->max : INT_MAX_SETTING;
		if (!util_parse_i64(value, &v) || v < 0) {
			*err = xasprintf("%s: expected a non-negative integer, got \"%s\"", s->env, value);
			return false;
		}
		if (v > max) {
			*err = xasprintf("%s: at most %lld, got \"%s\"", s->env, (long long)max, value);
			return false;
		}
		*(int *)(base + s->offset) = (int)v;
		return true;
	}
	case K_SIZE: {
		char *end;
		errno = 0;
		double v = strtod(value, &end);
		double mult = 1;
		if (*end == 'k' || *end == 'K') mult = 1024, end++;
		else if (*end == 'm' || *end == 'M') mult = 1024.0 * 1024, end++;
		else if (*end == 'g' || *end == 'G') mult = 1024.0 * 1024 * 1024, end++;
		if (*end == 'i' || *end == 'I') end++;
		if (*end == 'b' || *end == 'B') end++;
		if (errno || end == value || *end || v < 0) {
			*err = xasprintf("%s: expected a size like 268435456 or 256MiB, got \"%s\"", s->env, value);
			return false;
		}
		*(size_t *)(base + s->offset) = (size_t)(v * mult);
		return true;
	}
	case K_KEYS: {
		free_keys(c);
		char *copy = xstrdup(value), *save = NULL;
		for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			while (isspace((unsigned char)*tok))
				tok++;
			size_t n = strlen(tok);
			while (n && isspace((unsigned char)tok[n - 1]))
				tok[--n] = '\0';
			if (!n)
				continue;
			c->api_keys = xrealloc(c->api_keys, sizeof(char *) * (size_t)(c->n_api_keys + 1));
			c->api_keys[c->n_api_keys++] = xstrdup(tok);
		}
		free(copy);
		if (c->n_api_keys == 0) {
			/* Set means "use keys": a value that yields none is a
			 * mistake (a template, a stray comma), not "no auth". */
			*err = xasprintf("%s is set but holds no key (only commas or blanks): give at "
			                 "least one key, or unset it to run without authentication",
			                 s->env);
			return false;
		}
		return true;
	}
	case K_BOOL: {
		static const char *yes[] = { "1", "true", "yes", "on" }, *no[] = { "0", "false", "no", "off" };
		for (int i = 0; i < 4; i++) {
			if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
				*(int *)(base + s->offset) = strcasecmp(value, yes[i]) == 0;
				return true;
			}
		}
		*err = xasprintf("%s: expected 1 or 0 (true/false, yes/no, on/off), got \"%s\"", s->env,
		                 value);
		return false;
	}
	case K_SHARE: {
		char *end;
		errno = 0;
		double v = strtod(value, &end);
		if (errno || end == value || *end || !(v > 0 && v <= 1)) {
			*err = xasprintf("%s: expected a fraction above 0 and at most 1, like 0.25, got \"%s\"",
			                 s->env, value);
			return false;
		}
		*(double *)(base + s->offset) = v;
		return true;
	}
	case K_LEVEL: {
		static const char *names[] = { "debug", "info", "warn", "error" };
		for (int i = 0; i < 4; i++)
			if (strcmp(value, names[i]) == 0) {
				*(int *)(base + s->offset) = i;
				return true;
			}
		*err = xasprintf("%s: expected debug, info, warn or error, got \"%s\"", s->env, value);
		return false;
	}
	}
	return false;
}

static const struct setting *
find_env(const char *name)
{
	for (size_t i = 0; i < NSETTINGS; i++)
		if (strcmp(settings[i].env, name) == 0)
			return &settings[i];
	return NULL;
}

/* "NAME = value" lines; '#' starts a comment; optional quotes around value. */
static bool
load_file(struct config *c, const char *path, char **err)
{
	size_t len;
	char *text = util_read_file(path, &len);
	if (!text) {
		*err = xasprintf("cannot read config file %s: %s", path, strerror(errno));
		return false;
	}
	bool ok = true;
	int lineno = 0;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line && ok; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		while (isspace((unsigned char)*line))
			line++;
		if (!*line || *line == '#')
			continue;
		char *eq = strchr(line, '=');
		if (!eq) {
			*err = xasprintf("%s:%d: expected NAME = value", path, lineno);
			ok = false;
			break;
		}
		char *name = line, *value = eq + 1;
		char *ne = eq;
		while (ne > name && isspace((unsigned char)ne[-1]))
			ne--;
		*ne = '\0';
		while (isspace((unsigned char)*value))
			value++;
		/* "value  # comment": a '#' after a blank starts a comment,
		 * unless the value is quoted. */
		if (*value != '"' && *value != '\'') {
			for (char *h = value; *h; h++)
				if (*h == '#' && h > value && isspace((unsigned char)h[-1])) {
					*h = '\0';
					break;
				}
		}
		size_t vn = strlen(value);
		while (vn && isspace((unsigned char)value[vn - 1]))
			value[--vn] = '\0';
		if (vn >= 2 && (value[0] == '"' || value[0] == '\'') && value[vn - 1] == value[0]) {
			value[vn - 1] = '\0';
			value++;
		}
		const struct setting *s = find_env(name);
		if (!s) {
			*err = xasprintf("%s:%d: unknown setting %s", path, lineno, name);
			ok = false;
			break;
		}
		ok = apply(c, s, value, err);
	}
	free(text);
	return ok;
}

/* ./var/run/rapport-<port>.sock: found from the working directory `make
 * run` uses, and one per listen port, so several servers started from the
 * same directory (the tests) never share a socket. Unset means this default;
 * "off" (or "") means no admin socket. */
static void
finish_admin_socket(struct config *c)
{
	if (c->admin_socket) {
		if (strcmp(c->admin_socket, "off") == 0)
			c->admin_socket[0] = '\0';
		return;
	}
	const char *colon = strrchr(c->listen, ':');
	const char *port = colon ? colon + 1 : c->listen;
	char safe[32];
	size_t n = 0;
	for (; *port && n < sizeof safe - 1; port++)
		if (isalnum((unsigned char)*port))
			safe[n++] = *port;
	safe[n] = '\0';
	c->admin_socket = xasprintf("./var/run/rapport-%s.sock", n ? safe : "default");
}

bool
config_load(struct config *c, int argc, char **argv, char ***rest, int *nrest, char **err)
{
	set_defaults(c);
	*err = NULL;

	/* The config file is named by the environment or a flag, and must be
	 * read before both so they can override it. */
	const char *file = getenv("RAPPORT_CONFIG");
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			file = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			file = argv[i] + 9;
	}
	if (file) {
		c->config_file = xstrdup(file);
		if (!load_file(c, file, err))
			return false;
	}

	for (size_t i = 0; i < NSETTINGS; i++) {
		const char *v = getenv(settings[i].env);
		if (v && !apply(c, &settings[i], v, err))
			return false;
	}

	*rest = xcalloc((size_t)argc + 1, sizeof(char *));
	*nrest = 0;
	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i];
		if (strncmp(arg, "--", 2) != 0 || strcmp(arg, "--") == 0) {
			(*rest)[(*nrest)++] = argv[i];
			continue;
		}
		const char *eq = strchr(arg, '=');
		size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
		const char *value = eq ? eq + 1 : NULL;
		if (nlen == 8 && strncmp(arg, "--config", 8) == 0) {
			if (!eq)
				i++;
			continue;
		}
		const struct setting *s = NULL;
		for (size_t k = 0; k < NSETTINGS; k++)
			if (settings[k].flag && strlen(settings[k].flag) == nlen &&
			    strncmp(settings[k].flag, arg, nlen) == 0)
				s = &settings[k];
		if (!s) {
			*err = xasprintf("unknown option %.*s (see rapport --help)", (int)nlen, arg);
			goto fail;
		}
		if (!value) {
			if (i + 1 >= argc) {
				*err = xasprintf("option %s needs a value", arg);
				goto fail;
			}
			value = argv[++i];
		}
		if (!apply(c, s, value, err))
			goto fail;
	}
	finish_admin_socket(c);
	/* The adaptive cap grows up to 4× its start unless told: room for a
	 * burst when the provider has it, yet a bound on sockets and spend. */
	if (c->llm_max_in_flight < 1)
		c->llm_max_in_flight = 1;
	if (c->llm_max_in_flight_ceiling == 0) {
		c->llm_max_in_flight_ceiling = c->llm_max_in_flight <= 25000
		        ? 4 * c->llm_max_in_flight : 100000;
	} else if (c->llm_max_in_flight_ceiling < c->llm_max_in_flight) {
		*err = xasprintf("RAPPORT_LLM_MAX_IN_FLIGHT_CEILING (%d) is below "
		                 "RAPPORT_LLM_MAX_IN_FLIGHT (%d)", c->llm_max_in_flight_ceiling,
		                 c->llm_max_in_flight);
		goto fail;
	}
	/* rapport's own writes default to the CRM's database (on connections
	 * of their own, when there are any). */
	if (!c->state_url)
		c->state_url = xstrdup(c->database_url);
	return true;
fail:
	free(*rest);
	*rest = NULL;
	return false;
}

void
config_free(struct config *c)
{
	free(c->listen);
	free(c->database_url);
	free(c->state_url);
	free(c->openai_api_key);
	free(c->openai_base_url);
	free(c->upstream_ca_file);
	free(c->model);
	free(c->scripts_dir);
	free(c->prompts_dir);
	free(c->config_file);
	free(c->admin_socket);
	free(c->prices);
	free(c->orphan_policy);
	free(c->freshness);
	free(c->redis_url);
	free(c->redis_prefix);
	free(c->ttl_scale);
	free(c->web_dir);
	free(c->cors_origins);
	free(c->stream_secret);
	free_keys(c);
	memset(c, 0, sizeof *c);
}
