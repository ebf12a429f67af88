/*
 * fake_chat.c — POST /v1/chat/completions, as OpenAI answers it.
 *
 * Owns one `struct chat` per accepted request, from validation to the last
 * byte: the latency timer, the MSG_PEEK watcher that notices a client leaving
 * before the first byte, the streaming state machine and the scripted
 * failures. A chat is freed exactly once, by chat_free, on one of four paths:
 *
 *   1. The reply or stream ended: chat_release (clears the closecb, stops
 *      the timer and watcher), then the last evhttp call, then chat_free.
 *      The closecb belongs to the connection and would otherwise fire for a
 *      later request on the same keep-alive connection, on a freed chat.
 *   2. The client left before the first byte (peek watcher): evhttp has not
 *      noticed, since it stops reading while we own the request, so we answer
 *      into the void with Connection: close and evhttp frees request and
 *      connection once the write is done (or fails).
 *   3. The connection closed under us (chat_on_close): evhttp either still
 *      holds the request and frees it when the callback returns, or detached
 *      it (client EOF mid-stream) and left the orphan to us. We finish on the
 *      next tick (PH_GONE), never from inside evhttp's teardown.
 *   4. Shutdown: chat_shutdown_all, before evhttp_free.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "fake.h"

/* What invalid_json mode says: cut-off JSON, as a confused model would. */
#define INVALID_JSON	"{\"oops\": tru"
#define MSG_SERVER_ERROR \
	"The server had an error while processing your request. " \
	"Sorry about that!"
#define MAX_FAIL_MS	(3600 * 1000)

enum fail_kind {
	FAIL_NONE,
	FAIL_STATUS,		/* an HTTP error with an OpenAI error body */
	FAIL_SLOW,		/* a different latency for this call */
	FAIL_STALL,		/* never answer */
	FAIL_CUT,		/* drop the connection mid-reply */
	FAIL_STREAM_ERROR,	/* data: {"error":…} inside a 200 stream */
	FAIL_INVALID_JSON,	/* content that is not JSON */
	FAIL_GARBAGE,		/* a 200 that is not the API at all */
	FAIL_CONTENT,		/* this content, this once */
};

static const struct {
	const char *name;
	enum fail_kind kind;
} fail_modes[] = {
	{ "slow",		FAIL_SLOW },
	{ "stall",		FAIL_STALL },
	{ "cut",		FAIL_CUT },
	{ "stream_error",	FAIL_STREAM_ERROR },
	{ "invalid_json",	FAIL_INVALID_JSON },
	{ "garbage",		FAIL_GARBAGE },
	{ "content",		FAIL_CONTENT },
};

enum chat_phase {
	PH_WAIT,	/* timer armed for the time to first byte */
	PH_STALL,	/* no timer: waiting for the client to give up */
	PH_STREAM,	/* reply started; the timer paces the chunks */
	PH_CUTTING,	/* waiting for the drain, then for our own hang-up */
	PH_GONE,	/* connection closed; timer armed to finish next tick */
};

struct chat {
	struct fake *f;
	struct chat *prev, *next;	/* f->chats */
	struct evhttp_request *req;	/* NULL once evhttp frees it */
	struct event *timer;
	struct event *peek;		/* close watcher before the first byte */
	struct evbuffer *out;		/* reused for every chunk */
	enum chat_phase phase;
	struct timespec t0;		/* arrival, for openai-processing-ms */

	json_t *fail;			/* the scripted entry, or NULL */
	enum fail_kind kind;

	char id[48];			/* chatcmpl-… */
	char req_id[48];		/* req_… */
	char *model;
	time_t created;
	bool stream;
	bool include_usage;
	bool obfuscation;
	int chunk_delay_ms;
	uint64_t rng;			/* obfuscation padding */

	char *content;
	size_t content_len;
	const char *finish_reason;	/* "stop" or "length" */
	long prompt_tokens;
	long completion_tokens;

	size_t piece_len;		/* bytes per streamed piece, about */
	size_t off;			/* content bytes already streamed */
	int npieces, pieces_sent;
	int trip_at;			/* cut / stream_error after this many */

	struct fake_rl_view rl;		/* x-ratelimit-* as of the arrival */
	struct fake_rl_refusal refused;	/* kind != NULL: answer 429 at once */
};

/* A validated request, borrowed from the parsed body. */
struct chat_req {
	const char *model;
	json_t *messages;
	json_t *response_format;
	bool stream;
	bool include_usage;
	bool obfuscation;
	json_int_t max_tokens;		/* 0 = no limit */
};

/* Why a request is refused: the API's message, param and code. */
struct bad_request {
	char message[512];
	char param[96];
	const char *code;
};

/* ---- small helpers ----------------------------------------------------- */

static uint64_t
mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Ids look like the API's (prefix + base62 or hex) and never repeat within a
 * run; the nonce keeps two runs apart. */
static void
make_id(struct fake *f, char *out, size_t n, const char *prefix,
    size_t len, bool hex)
{
	static const char b62[] =
	    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	static uint64_t nonce;
	uint64_t x;
	size_t p;

	if (nonce == 0)
		nonce = mix64((uint64_t)time(NULL) << 20 ^ (uint64_t)getpid());
	x = mix64(nonce + ++f->id_seq * 0x9e3779b97f4a7c15ULL);
	p = (size_t)snprintf(out, n, "%s", prefix);
	for (size_t i = 0; i < len && p + 1 < n; i++) {
		if (i % 10 == 9)
			x = mix64(x + i);
		out[p++] = hex ? "0123456789abcdef"[x & 15] : b62[x % 62];
		x = hex ? x >> 4 : x / 62;
	}
	out[p] = '\0';
}

static long
elapsed_ms(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t0->tv_sec) * 1000 +
	    (now.tv_nsec - t0->tv_nsec) / 1000000;
}

static const char *
json_type_name(json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:	return "an object";
	case JSON_ARRAY:	return "an array";
	case JSON_STRING:	return "a string";
	case JSON_INTEGER:	return "an integer";
	case JSON_REAL:		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:	return "a boolean";
	default:		return "null";
	}
}

/* A string field of a failure entry: its value, NULL for JSON null (so the
 * error body gets null), or dflt when absent. */
static const char *
entry_str(json_t *e, const char *key, const char *dflt)
{
	json_t *v = json_object_get(e, key);

	if (v == NULL)
		return dflt;
	return json_is_string(v) ? json_string_value(v) : NULL;
}

static enum fail_kind
fail_kind_of(json_t *e)
{
	const char *mode;

	if (e == NULL)
		return FAIL_NONE;
	if (json_object_get(e, "status"))
		return FAIL_STATUS;
	if ((mode = json_string_value(json_object_get(e, "mode"))) != NULL)
		for (size_t i = 0; i < sizeof(fail_modes) /
		    sizeof(fail_modes[0]); i++)
			if (strcmp(mode, fail_modes[i].name) == 0)
				return fail_modes[i].kind;
	return FAIL_NONE;
}

/* ---- failure entries --------------------------------------------------- */

static bool
opt_int(json_t *e, const char *key, json_int_t lo, json_int_t hi)
{
	json_t *v = json_object_get(e, key);

	return v == NULL || (json_is_integer(v) &&
	    json_integer_value(v) >= lo && json_integer_value(v) <= hi);
}

bool
chat_fail_entry_valid(json_t *e, char *err, size_t errlen)
{
	static const char *const strs[] = { "message", "type", "code",
	    "param" };
	static const char *const retry[] = { "retry_after",
	    "retry_after_ms" };
	enum fail_kind kind;

	if (!json_is_object(e)) {
		snprintf(err, errlen, "a fail entry must be an object");
		return false;
	}
	if (!opt_int(e, "count", 1, 1000000)) {
		snprintf(err, errlen, "fail count must be an integer >= 1");
		return false;
	}
	kind = fail_kind_of(e);
	if (kind == FAIL_NONE) {
		snprintf(err, errlen, "a fail entry needs \"status\" or a "
		    "known \"mode\" (slow, stall, cut, stream_error, "
		    "invalid_json, garbage, content)");
		return false;
	}
	if (kind == FAIL_STATUS || kind == FAIL_STREAM_ERROR) {
		if (kind == FAIL_STATUS && !opt_int(e, "status", 400, 599)) {
			snprintf(err, errlen, "fail status must be 400..599");
			return false;
		}
		for (size_t i = 0; i < 4; i++) {
			json_t *v = json_object_get(e, strs[i]);

			if (v && !json_is_string(v) && !json_is_null(v)) {
				snprintf(err, errlen, "fail %s must be a "
				    "string or null", strs[i]);
				return false;
			}
		}
		for (size_t i = 0; i < 2; i++) {
			json_t *v = json_object_get(e, retry[i]);

			if (v && !json_is_string(v) && !json_is_number(v)) {
				snprintf(err, errlen, "fail %s must be a "
				    "string or a number", retry[i]);
				return false;
			}
		}
	}
	if (kind == FAIL_SLOW && (!json_object_get(e, "latency_ms") ||
	    !opt_int(e, "latency_ms", 0, MAX_FAIL_MS))) {
		snprintf(err, errlen, "slow needs latency_ms >= 0");
		return false;
	}
	if ((kind == FAIL_CUT || kind == FAIL_STREAM_ERROR) &&
	    !opt_int(e, "after_chunks", 0, 1000000)) {
		snprintf(err, errlen, "after_chunks must be an integer >= 0");
		return false;
	}
	if (kind == FAIL_CONTENT &&
	    !json_is_string(json_object_get(e, "content"))) {
		snprintf(err, errlen, "content mode needs a content string");
		return false;
	}
	return true;
}

/* ---- request validation ------------------------------------------------ */

static bool
refuse(struct bad_request *bad, const char *param, const char *code,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static bool
refuse(struct bad_request *bad, const char *param, const char *code,
    const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(bad->message, sizeof(bad->message), fmt, ap);
	va_end(ap);
	snprintf(bad->param, sizeof(bad->param), "%s", param ? param : "");
	bad->code = code;
	return false;
}

static bool
valid_role(const char *r)
{
	static const char *const roles[] = { "system", "developer", "user",
	    "assistant", "tool", "function" };

	for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
		if (strcmp(r, roles[i]) == 0)
			return true;
	return false;
}

static bool
check_messages(json_t *messages, struct bad_request *bad)
{
	char param[64];
	size_t i;
	json_t *m;

	if (messages == NULL)
		return refuse(bad, "messages", "missing_required_parameter",
		    "Missing required parameter: 'messages'.");
	if (!json_is_array(messages))
		return refuse(bad, "messages", "invalid_type",
		    "Invalid type for 'messages': expected an array, but got "
		    "%s instead.", json_type_name(messages));
	if (json_array_size(messages) == 0)
		return refuse(bad, "messages", "empty_array",
		    "Invalid 'messages': empty array. Expected an array with "
		    "minimum length 1, but got an empty array instead.");
	json_array_foreach(messages, i, m) {
		json_t *role = json_object_get(m, "role");
		json_t *content = json_object_get(m, "content");

		snprintf(param, sizeof(param), "messages[%zu]", i);
		if (!json_is_object(m))
			return refuse(bad, param, "invalid_type",
			    "Invalid type for '%s': expected an object, but "
			    "got %s instead.", param, json_type_name(m));
		snprintf(param, sizeof(param), "messages[%zu].role", i);
		if (role == NULL)
			return refuse(bad, param, "missing_required_parameter",
			    "Missing required parameter: '%s'.", param);
		if (!json_is_string(role) || !valid_role(json_string_value(
		    role)))
			return refuse(bad, param, "invalid_value",
			    "Invalid value: '%.64s'. Supported values are: "
			    "'system', 'assistant', 'user', 'function', "
			    "'tool', and 'developer'.", json_is_string(role) ?
			    json_string_value(role) : "?");
		snprintf(param, sizeof(param), "messages[%zu].content", i);
		/* An assistant turn may carry only tool_calls. */
		if (content == NULL && strcmp(json_string_value(role),
		    "assistant") != 0)
			return refuse(bad, param, "missing_required_parameter",
			    "Missing required parameter: '%s'.", param);
		if (content && !json_is_string(content) &&
		    !json_is_array(content) && !json_is_null(content))
			return refuse(bad, param, "invalid_type",
			    "Invalid type for '%s': expected one of a string "
			    "or array of objects, but got %s instead.", param,
			    json_type_name(content));
	}
	return true;
}

/* Strict structured outputs accept a schema only if every object closes
 * itself (additionalProperties:false) and requires all its properties; the
 * API refuses the request otherwise, and so do we, so rapport's schemas are
 * checked here before they ever reach OpenAI. ctx is the API's
 * "context=(…)" path. */
static bool
strict_walk(json_t *s, const char *name, char *ctx, size_t ctxlen,
    size_t ctxcap, struct bad_request *bad)
{
	static const char *const subs[] = { "anyOf", "oneOf", "allOf" };
	static const char *const defs[] = { "$defs", "definitions" };
	json_t *props, *req, *v;
	const char *key, *type;
	size_t i;
	bool ok = true;

	if (!json_is_object(s))
		return true;
	props = json_object_get(s, "properties");
	req = json_object_get(s, "required");
	type = json_string_value(json_object_get(s, "type"));
	if (json_is_object(props) || (type && strcmp(type, "object") == 0)) {
		if (!json_is_false(json_object_get(s,
		    "additionalProperties")))
			return refuse(bad, "response_format", NULL,
			    "Invalid schema for response_format '%s': In "
			    "context=(%s), 'additionalProperties' is required "
			    "to be supplied and to be false.", name, ctx);
		json_object_foreach(props, key, v) {
			bool found = false;
			size_t j;
			json_t *r;

			json_array_foreach(req, j, r)
				if (json_is_string(r) &&
				    strcmp(json_string_value(r), key) == 0)
					found = true;
			if (!found)
				return refuse(bad, "response_format", NULL,
				    "Invalid schema for response_format '%s': "
				    "In context=(%s), 'required' is required to "
				    "be supplied and to be an array including "
				    "every key in properties. Missing '%s'.",
				    name, ctx, key);
		}
	}

/* Appends one path element to ctx for the recursive call, then restores. */
#define WALK(child, fmt, ...) do {					\
	snprintf(ctx + ctxlen, ctxcap - ctxlen, "%s" fmt,		\
	    ctxlen ? ", " : "", __VA_ARGS__);				\
	ok = strict_walk((child), name, ctx, strlen(ctx), ctxcap, bad);	\
	ctx[ctxlen] = '\0';						\
	if (!ok)							\
		return false;						\
} while (0)

	json_object_foreach(props, key, v)
		WALK(v, "'properties', '%.40s'", key);
	if (json_is_object(v = json_object_get(s, "items")))
		WALK(v, "'%s'", "items");
	for (size_t k = 0; k < 3; k++) {
		json_t *alt, *arr = json_object_get(s, subs[k]);

		json_array_foreach(arr, i, alt)
			WALK(alt, "'%s', '%zu'", subs[k], i);
	}
	for (size_t k = 0; k < 2; k++) {
		json_object_foreach(json_object_get(s, defs[k]), key, v)
			WALK(v, "'%s', '%.40s'", defs[k], key);
	}
#undef WALK
	return ok;
}

static bool
check_response_format(json_t *rf, struct bad_request *bad)
{
	const char *type, *name;
	json_t *js, *schema;
	char ctx[512] = "";

	if (rf == NULL || json_is_null(rf))
		return true;
	if (!json_is_object(rf))
		return refuse(bad, "response_format", "invalid_type",
		    "Invalid type for 'response_format': expected an object, "
		    "but got %s instead.", json_type_name(rf));
	type = json_string_value(json_object_get(rf, "type"));
	if (type == NULL)
		return refuse(bad, "response_format.type",
		    "missing_required_parameter",
		    "Missing required parameter: 'response_format.type'.");
	if (strcmp(type, "text") == 0 || strcmp(type, "json_object") == 0)
		return true;
	if (strcmp(type, "json_schema") != 0)
		return refuse(bad, "response_format.type", "invalid_value",
		    "Invalid value: '%.64s'. Supported values are: "
		    "'json_object', 'json_schema', and 'text'.", type);
	js = json_object_get(rf, "json_schema");
	if (!json_is_object(js))
		return refuse(bad, "response_format.json_schema",
		    "missing_required_parameter", "Missing required "
		    "parameter: 'response_format.json_schema'.");
	name = json_string_value(json_object_get(js, "name"));
	if (name == NULL)
		return refuse(bad, "response_format.json_schema.name",
		    "missing_required_parameter", "Missing required "
		    "parameter: 'response_format.json_schema.name'.");
	if (*name == '\0' || strlen(name) > 64 ||
	    strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789_-") != strlen(name))
		return refuse(bad, "response_format.json_schema.name",
		    "invalid_value", "Invalid 'response_format.json_schema."
		    "name': string does not match pattern. Expected a string "
		    "that matches the pattern '^[a-zA-Z0-9_-]+$'.");
	schema = json_object_get(js, "schema");
	if (schema && !json_is_object(schema))
		return refuse(bad, "response_format.json_schema.schema",
		    "invalid_type", "Invalid type for 'response_format."
		    "json_schema.schema': expected an object, but got %s "
		    "instead.", json_type_name(schema));
	if (json_is_true(json_object_get(js, "strict")) && schema)
		return strict_walk(schema, name, ctx, 0, sizeof(ctx), bad);
	return true;
}

static bool
check_max_tokens(json_t *body, const char *key, json_int_t *limit,
    struct bad_request *bad)
{
	json_t *v = json_object_get(body, key);

	if (v == NULL || json_is_null(v))
		return true;
	if (!json_is_integer(v))
		return refuse(bad, key, "invalid_type", "Invalid type for "
		    "'%s': expected an integer, but got %s instead.", key,
		    json_type_name(v));
	if (json_integer_value(v) < 1)
		return refuse(bad, key, "integer_below_min_value", "Invalid "
		    "'%s': integer below minimum value. Expected a value >= 1, "
		    "but got %lld instead.", key,
		    (long long)json_integer_value(v));
	if (*limit == 0 || json_integer_value(v) < *limit)
		*limit = json_integer_value(v);
	return true;
}

/* Checks what the API checks (and what rapport could get wrong); fills r
 * with borrowed pointers into body. */
static bool
check_request(json_t *body, struct chat_req *r, struct bad_request *bad)
{
	json_t *model = json_object_get(body, "model");
	json_t *stream = json_object_get(body, "stream");
	json_t *opts = json_object_get(body, "stream_options");

	memset(r, 0, sizeof(*r));
	if (model == NULL)
		return refuse(bad, "model", "missing_required_parameter",
		    "Missing required parameter: 'model'.");
	if (!json_is_string(model) || json_string_length(model) == 0)
		return refuse(bad, "model", "invalid_type", "Invalid type for "
		    "'model': expected a string, but got %s instead.",
		    json_type_name(model));
	r->model = json_string_value(model);
	r->messages = json_object_get(body, "messages");
	if (!check_messages(r->messages, bad))
		return false;
	if (stream && !json_is_boolean(stream) && !json_is_null(stream))
		return refuse(bad, "stream", "invalid_type", "Invalid type for "
		    "'stream': expected a boolean, but got %s instead.",
		    json_type_name(stream));
	r->stream = json_is_true(stream);
	r->obfuscation = true;
	if (opts && !json_is_null(opts)) {
		if (!r->stream)
			return refuse(bad, "stream_options", NULL, "The "
			    "'stream_options' parameter is only allowed when "
			    "'stream' is enabled.");
		if (!json_is_object(opts))
			return refuse(bad, "stream_options", "invalid_type",
			    "Invalid type for 'stream_options': expected an "
			    "object, but got %s instead.",
			    json_type_name(opts));
		r->include_usage = json_is_true(json_object_get(opts,
		    "include_usage"));
		r->obfuscation = !json_is_false(json_object_get(opts,
		    "include_obfuscation"));
	}
	r->response_format = json_object_get(body, "response_format");
	if (!check_response_format(r->response_format, bad))
		return false;
	return check_max_tokens(body, "max_completion_tokens", &r->max_tokens,
	    bad) && check_max_tokens(body, "max_tokens", &r->max_tokens, bad);
}

/* Returns true when the Authorization header carries the required key;
 * otherwise answers 401 the way the API does. */
static bool
check_auth(struct fake *f, struct evhttp_request *req, const char *auth,
    const char *req_id)
{
	const char *key = NULL;
	char msg[512];
	size_t n;

	if (f->require_key == NULL)
		return true;
	if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
		for (key = auth + 7; *key == ' '; key++)
			;
	if (key && strcmp(key, f->require_key) == 0)
		return true;
	fake_add_openai_headers(f, req, req_id, 0, NULL);
	if (key == NULL || *key == '\0') {
		fake_reply_error(req, 401, "You didn't provide an API key. You "
		    "need to provide your API key in an Authorization header "
		    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
		    "or as the password field (with blank username) if you're "
		    "accessing the API from your browser and are prompted for "
		    "a username and password. You can obtain an API key from "
		    "https://platform.openai.com/account/api-keys.",
		    "invalid_request_error", NULL, NULL);
		return false;
	}
	/* Only the last four characters, never the key itself. */
	n = strlen(key);
	snprintf(msg, sizeof(msg), "Incorrect API key provided: sk-...%s. You "
	    "can find your API key at "
	    "https://platform.openai.com/account/api-keys.",
	    key + (n > 4 ? n - 4 : 0));
	fake_reply_error(req, 401, msg, "invalid_request_error", NULL,
	    "invalid_api_key");
	return false;
}

/* ---- chat lifecycle ---------------------------------------------------- */

static void chat_on_timer(evutil_socket_t fd, short what, void *arg);
static void chat_on_peek(evutil_socket_t fd, short what, void *arg);
static void chat_on_close(struct evhttp_connection *evcon, void *arg);

static void
drop_peek(struct chat *c)
{
	if (c->peek) {
		event_free(c->peek);
		c->peek = NULL;
	}
}

static void
arm_timer(struct chat *c, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	evtimer_add(c->timer, &tv);
}

/* Detaches the chat from its connection before the final evhttp call, so
 * nothing of ours can be called back once evhttp owns the request again. */
static void
chat_release(struct chat *c)
{
	struct evhttp_connection *evcon = c->req ?
	    evhttp_request_get_connection(c->req) : NULL;

	if (evcon)
		evhttp_connection_set_closecb(evcon, NULL, NULL);
	drop_peek(c);
	evtimer_del(c->timer);
}

static void
chat_free(struct chat *c)
{
	struct fake *f = c->f;

	if (c->prev)
		c->prev->next = c->next;
	else
		f->chats = c->next;
	if (c->next)
		c->next->prev = c->prev;
	drop_peek(c);
	event_free(c->timer);
	evbuffer_free(c->out);
	json_decref(c->fail);
	free(c->model);
	free(c->content);
	f->in_flight--;
	free(c);
}

/* The reply is the whole answer: hand it to evhttp and forget the chat. */
static void
chat_finish_json(struct chat *c, int status, json_t *body)
{
	struct evhttp_request *req = c->req;

	chat_release(c);
	fake_reply_json(req, status, body);
	c->req = NULL;
	chat_free(c);
}

/* The read timeout stays armed while we stream (evhttp keeps EV_READ on to
 * see the client close), so a slow pace would get the stream killed: keep
 * only the write timeout, which still catches a client that stops reading,
 * and put both back for the next request on the connection. */
static void
stream_timeouts(struct chat *c, bool streaming)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(
	    c->req);
	struct timeval tv = { c->f->timeout_sec, 0 };

	if (evcon)
		bufferevent_set_timeouts(
		    evhttp_connection_get_bufferevent(evcon),
		    streaming ? NULL : &tv, &tv);
}

/* ---- reply bodies ------------------------------------------------------ */

static json_t *
usage_json(struct chat *c)
{
	return json_pack("{s:i, s:i, s:i, s:{s:i, s:i}, s:{s:i, s:i, s:i, "
	    "s:i}}",
	    "prompt_tokens", (int)c->prompt_tokens,
	    "completion_tokens", (int)c->completion_tokens,
	    "total_tokens", (int)(c->prompt_tokens + c->completion_tokens),
	    "prompt_tokens_details", "cached_tokens", 0, "audio_tokens", 0,
	    "completion_tokens_details", "reasoning_tokens", 0,
	    "audio_tokens", 0, "accepted_prediction_tokens", 0,
	    "rejected_prediction_tokens", 0);
}

static json_t *
completion_json(struct chat *c)
{
	json_t *body = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, "
	    "s:[{s:i, s:{s:s, s:o, s:n, s:[]}, s:n, s:s}], s:o}",
	    "id", c->id, "object", "chat.completion",
	    "created", (json_int_t)c->created, "model", c->model,
	    "service_tier", "default", "system_fingerprint", "fp_fake",
	    "choices", "index", 0, "message", "role", "assistant",
	    "content", json_stringn(c->content, c->content_len),
	    "refusal", "annotations", "logprobs",
	    "finish_reason", c->finish_reason,
	    "usage", usage_json(c));

	if (body == NULL) {
		fprintf(stderr, "fake_openai: cannot build a reply\n");
		abort();
	}
	return body;
}

/* The fields every chunk repeats: same id, created and model throughout. */
static json_t *
chunk_json(struct chat *c, json_t *choices)
{
	json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:o}",
	    "id", c->id, "object", "chat.completion.chunk",
	    "created", (json_int_t)c->created, "model", c->model,
	    "service_tier", "default", "system_fingerprint", "fp_fake",
	    "choices", choices);

	if (o == NULL) {
		fprintf(stderr, "fake_openai: cannot build a chunk\n");
		abort();
	}
	if (c->include_usage)
		json_object_set_new(o, "usage", json_null());
	/* The API pads chunks with random characters against length side
	 * channels; clients must ignore the field, so we send it too. */
	if (c->obfuscation) {
		char pad[16];
		size_t n = 1 + (c->rng = mix64(c->rng + 1)) % 12;

		for (size_t i = 0; i < n; i++)
			pad[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"
			    [(c->rng >> (i * 5)) % 36];
		pad[n] = '\0';
		json_object_set_new(o, "obfuscation", json_string(pad));
	}
	return o;
}

static json_t *
delta_chunk(struct chat *c, json_t *delta, const char *finish_reason)
{
	return chunk_json(c, json_pack("[{s:i, s:o, s:n, s:s?}]", "index", 0,
	    "delta", delta, "logprobs", "finish_reason", finish_reason));
}

/* The mid-stream and status errors: defaults are the API's own wording for
 * that status, each overridable by the failure entry. */
static json_t *
error_json(struct chat *c, int status)
{
	const char *msg = MSG_SERVER_ERROR, *type = "server_error";
	const char *code = NULL;
	char buf[512];

	if (status == 429) {
		snprintf(buf, sizeof(buf), "Rate limit reached for %s in "
		    "organization org-fake on requests per min (RPM): Limit "
		    "500, Used 500, Requested 1. Please try again in 120ms. "
		    "Visit https://platform.openai.com/account/rate-limits to "
		    "learn more.", c->model);
		msg = buf;
		type = "requests";
		code = "rate_limit_exceeded";
	} else if (status == 401) {
		msg = "Incorrect API key provided.";
		type = "invalid_request_error";
		code = "invalid_api_key";
	} else if (status == 403) {
		msg = "Country, region, or territory not supported";
		type = "request_forbidden";
		code = "unsupported_country_region_territory";
	} else if (status == 404) {
		snprintf(buf, sizeof(buf), "The model `%s` does not exist or "
		    "you do not have access to it.", c->model);
		msg = buf;
		type = "invalid_request_error";
		code = "model_not_found";
	} else if (status == 503) {
		msg = "The engine is currently overloaded, please try again "
		    "later.";
	} else if (status == 502) {
		msg = "Bad gateway.";
	} else if (status == 504) {
		msg = "Gateway timeout.";
	} else if (status >= 400 && status < 500) {
		msg = status == 408 ? "Request timed out." :
		    "Invalid request.";
		type = "invalid_request_error";
	}
	return fake_error_body(entry_str(c->fail, "message", msg),
	    entry_str(c->fail, "type", type),
	    entry_str(c->fail, "param", NULL),
	    entry_str(c->fail, "code", code));
}

/* ---- non-streaming ----------------------------------------------------- */

static void
add_retry_header(struct evhttp_request *req, json_t *fail, const char *key,
    const char *header)
{
	json_t *v = json_object_get(fail, key);
	char num[64];

	if (json_is_string(v)) {
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    header, json_string_value(v));
	} else if (json_is_number(v)) {
		snprintf(num, sizeof(num), "%g", json_number_value(v));
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    header, num);
	}
}

/* Over the rate limit: OpenAI's 429, with retry-after (whole seconds,
 * rounded up) and retry-after-ms. */
static void
send_rate_limited(struct chat *c)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
	const struct fake_rl_refusal *r = &c->refused;
	char msg[512], wait[32], num[32];

	fake_rl_format_duration(r->retry_ms, wait, sizeof(wait));
	snprintf(msg, sizeof(msg), "Rate limit reached for %s in organization "
	    "org-fake on %s: Limit %ld, Used %ld, Requested %ld. Please try "
	    "again in %s. Visit https://platform.openai.com/account/"
	    "rate-limits to learn more.", c->model, r->unit, r->limit, r->used,
	    r->requested, wait);
	fake_add_openai_headers(c->f, c->req, c->req_id, elapsed_ms(&c->t0),
	    &c->rl);
	snprintf(num, sizeof(num), "%ld", (r->retry_ms + 999) / 1000);
	evhttp_add_header(h, "retry-after", num);
	snprintf(num, sizeof(num), "%ld", r->retry_ms);
	evhttp_add_header(h, "retry-after-ms", num);
	chat_finish_json(c, 429, fake_error_body(msg, r->kind, NULL,
	    "rate_limit_exceeded"));
}

static void
send_status_failure(struct chat *c, int status)
{
	fake_add_openai_headers(c->f, c->req, c->req_id, elapsed_ms(&c->t0), &c->rl);
	add_retry_header(c->req, c->fail, "retry_after", "retry-after");
	add_retry_header(c->req, c->fail, "retry_after_ms", "retry-after-ms");
	chat_finish_json(c, status, error_json(c, status));
}

/* A 200 from something in between that is not the API (a proxy page). */
static void
send_garbage(struct chat *c)
{
	struct evhttp_request *req = c->req;

	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/html");
	evbuffer_add_printf(c->out, "<html>Bad gateway</html>");
	chat_release(c);
	evhttp_send_reply(req, 200, "OK", c->out);
	c->req = NULL;
	chat_free(c);
}

/* Hangs up once everything queued so far has reached the kernel: the client
 * sees a reply that just stops. evhttp then reads EOF, detaches the request
 * and closes the connection, which brings us to chat_on_close. */
static void
chat_on_drained_cut(struct evhttp_connection *evcon, void *arg)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);

	shutdown(bufferevent_getfd(bev), SHUT_RDWR);
}

/* Half of the body, under a Content-Length for all of it, then the hang-up. */
static void
send_cut_completion(struct chat *c, json_t *body)
{
	char *s = json_dumps(body, JSON_COMPACT);
	size_t len = s ? strlen(s) : 0;
	char cl[32];

	json_decref(body);
	snprintf(cl, sizeof(cl), "%zu", len);
	fake_add_openai_headers(c->f, c->req, c->req_id, elapsed_ms(&c->t0), &c->rl);
	evhttp_add_header(evhttp_request_get_output_headers(c->req),
	    "Content-Type", "application/json");
	evhttp_add_header(evhttp_request_get_output_headers(c->req),
	    "Content-Length", cl);
	evhttp_send_reply_start(c->req, 200, "OK");
	evbuffer_add(c->out, s, len / 2);
	free(s);
	c->phase = PH_CUTTING;
	evhttp_send_reply_chunk_with_cb(c->req, c->out, chat_on_drained_cut,
	    c);
}

/* ---- streaming --------------------------------------------------------- */

/* Frames one event; with `cut` the connection is dropped once it is out. */
static void
send_event(struct chat *c, json_t *chunk, bool cut)
{
	char *s = json_dumps(chunk, JSON_COMPACT);

	json_decref(chunk);
	if (s == NULL) {
		fprintf(stderr, "fake_openai: cannot encode a chunk\n");
		abort();
	}
	evbuffer_add(c->out, "data: ", 6);
	evbuffer_add(c->out, s, strlen(s));
	evbuffer_add(c->out, "\n\n", 2);
	free(s);
	if (cut) {
		c->phase = PH_CUTTING;
		evhttp_send_reply_chunk_with_cb(c->req, c->out,
		    chat_on_drained_cut, c);
	} else {
		evhttp_send_reply_chunk(c->req, c->out);
	}
	/* evhttp drains the buffer it sends; a dead connection would not. */
	evbuffer_drain(c->out, evbuffer_get_length(c->out));
}

static void
stream_end(struct chat *c)
{
	struct evhttp_request *req = c->req;

	stream_timeouts(c, false);
	chat_release(c);
	evhttp_send_reply_end(req);
	c->req = NULL;
	chat_free(c);
}

/* Called after the role chunk and after each content piece: when the
 * scripted stream_error is due, sends it inside the 200 stream (as the API
 * does, no [DONE] after it), ends the stream and returns true. */
static bool
stream_trip(struct chat *c)
{
	json_t *err;
	char *s;

	if (c->kind != FAIL_STREAM_ERROR || c->pieces_sent != c->trip_at)
		return false;
	err = error_json(c, 500);
	s = json_dumps(err, JSON_COMPACT);
	json_decref(err);
	if (s == NULL) {
		fprintf(stderr, "fake_openai: cannot encode an error\n");
		abort();
	}
	evbuffer_add_printf(c->out, "data: %s\n\n", s);
	free(s);
	evhttp_send_reply_chunk(c->req, c->out);
	evbuffer_drain(c->out, evbuffer_get_length(c->out));
	stream_end(c);
	return true;
}

static void
stream_begin(struct chat *c)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);

	fake_add_openai_headers(c->f, c->req, c->req_id, elapsed_ms(&c->t0), &c->rl);
	evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
	evhttp_add_header(h, "Cache-Control", "no-cache");
	evhttp_send_reply_start(c->req, 200, "OK");
	stream_timeouts(c, true);
	c->phase = PH_STREAM;
	send_event(c, delta_chunk(c, json_pack("{s:s, s:s, s:n}", "role",
	    "assistant", "content", "", "refusal"), NULL),
	    c->kind == FAIL_CUT && c->trip_at == 0);
	if (c->phase == PH_CUTTING || stream_trip(c))
		return;
	arm_timer(c, c->chunk_delay_ms);
}

static void
stream_next(struct chat *c)
{
	if (c->pieces_sent < c->npieces) {
		/* Advance to a character boundary: never split a UTF-8
		 * sequence across two chunks. */
		size_t end = c->off + c->piece_len;

		if (end >= c->content_len)
			end = c->content_len;
		while (end < c->content_len &&
		    ((unsigned char)c->content[end] & 0xC0) == 0x80)
			end++;
		c->pieces_sent++;
		if (c->pieces_sent == 1) {
			/* The benchmark's reference point for time to first
			 * delta: CLOCK_MONOTONIC is one clock for every process
			 * on the machine. */
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			c->f->last_first_content_ms = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
		}
		send_event(c, delta_chunk(c, json_pack("{s:o}", "content",
		    json_stringn(c->content + c->off, end - c->off)), NULL),
		    c->kind == FAIL_CUT && c->pieces_sent == c->trip_at);
		c->off = end;
		if (c->phase == PH_CUTTING || stream_trip(c))
			return;
		arm_timer(c, c->chunk_delay_ms);
		return;
	}
	send_event(c, delta_chunk(c, json_object(), c->finish_reason), false);
	if (c->include_usage) {
		json_t *u = chunk_json(c, json_array());

		json_object_set_new(u, "usage", usage_json(c));
		send_event(c, u, false);
	}
	evbuffer_add(c->out, "data: [DONE]\n\n", 14);
	evhttp_send_reply_chunk(c->req, c->out);
	evbuffer_drain(c->out, evbuffer_get_length(c->out));
	stream_end(c);
}

/* ---- events ------------------------------------------------------------ */

static void
chat_first_byte(struct chat *c)
{
	drop_peek(c);
	if (c->refused.kind) {
		send_rate_limited(c);
		return;
	}
	switch (c->kind) {
	case FAIL_STATUS:
		send_status_failure(c, (int)json_integer_value(
		    json_object_get(c->fail, "status")));
		return;
	case FAIL_GARBAGE:
		send_garbage(c);
		return;
	case FAIL_STREAM_ERROR:
		/* Without a stream there is no "mid-stream": a plain 500. */
		if (!c->stream) {
			send_status_failure(c, 500);
			return;
		}
		break;
	default:
		break;
	}
	if (c->stream) {
		stream_begin(c);
	} else if (c->kind == FAIL_CUT) {
		send_cut_completion(c, completion_json(c));
	} else {
		fake_add_openai_headers(c->f, c->req, c->req_id, elapsed_ms(&c->t0), &c->rl);
		chat_finish_json(c, 200, completion_json(c));
	}
}

static void
chat_on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct chat *c = arg;

	/* evhttp tells us through chat_on_close when the connection goes;
	 * this is only a guard against writing through a NULL one. */
	if (c->phase != PH_GONE && evhttp_request_get_connection(c->req) ==
	    NULL)
		c->phase = PH_GONE;

	switch (c->phase) {
	case PH_WAIT:
		chat_first_byte(c);
		break;
	case PH_STREAM:
		stream_next(c);
		break;
	case PH_GONE:
		/* An orphan (connection gone, request detached) is freed by
		 * reply_end; a request evhttp kept was freed with it. */
		if (c->req)
			evhttp_send_reply_end(c->req);
		c->req = NULL;
		chat_free(c);
		break;
	case PH_STALL:
	case PH_CUTTING:
		break;
	}
}

/* The client left before we wrote anything (evhttp does not read while we
 * own the request, so only this watcher can tell). Answering into the void
 * with Connection: close makes evhttp free the request and the connection. */
static void
chat_abandon(struct chat *c)
{
	struct evhttp_request *req = c->req;

	fake_log(c->f, "%s: client left before the reply", c->req_id);
	chat_release(c);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Connection",
	    "close");
	evhttp_send_reply(req, 499, "Client Closed Request", NULL);
	c->req = NULL;
	chat_free(c);
}

static void
chat_on_peek(evutil_socket_t fd, short what, void *arg)
{
	struct chat *c = arg;
	char ch;
	ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
	    errno == EINTR)) {
		event_add(c->peek, NULL);
		return;
	}
	if (n > 0) {
		/* A pipelined request is waiting; evhttp reads it after our
		 * reply. We can no longer tell a close from it, so stop. */
		drop_peek(c);
		return;
	}
	chat_abandon(c);
}

static void
chat_on_close(struct evhttp_connection *evcon, void *arg)
{
	struct chat *c = arg;

	/* Still attached: evhttp frees the request when we return. Detached
	 * (evcon NULL): the request is an orphan only we can free. */
	if (c->req && evhttp_request_get_connection(c->req) != NULL)
		c->req = NULL;
	drop_peek(c);
	c->phase = PH_GONE;
	evtimer_del(c->timer);
	arm_timer(c, 0);
}

/* ---- the endpoint ------------------------------------------------------ */

/* Picks the reply text: a scripted one-off beats the configured fixed text,
 * which beats generated text; then applies max tokens like the API (a
 * length stop cuts JSON mid-way too). */
static void
chat_content(struct chat *c, const struct chat_req *r)
{
	struct fake *f = c->f;
	size_t chars, prompt_chars;
	uint64_t seed = content_hash_messages(r->messages, &prompt_chars);

	if (c->kind == FAIL_INVALID_JSON) {
		c->content = xstrdup(INVALID_JSON);
		c->content_len = strlen(INVALID_JSON);
	} else if (c->kind == FAIL_CONTENT) {
		json_t *v = json_object_get(c->fail, "content");

		c->content = xstrndup(json_string_value(v),
		    json_string_length(v));
		c->content_len = json_string_length(v);
	} else if (f->live.content) {
		c->content = xstrdup(f->live.content);
		c->content_len = strlen(c->content);
	} else {
		c->content = content_insight(r->messages, r->response_format,
		    seed, &c->content_len);
	}
	c->finish_reason = "stop";
	chars = utf8_count(c->content, c->content_len);
	c->prompt_tokens = (long)((prompt_chars + 3) / 4);
	if (c->prompt_tokens < 1)
		c->prompt_tokens = 1;
	c->completion_tokens = (long)((chars + 3) / 4);
	if (r->max_tokens > 0 && c->completion_tokens > r->max_tokens) {
		c->content_len = utf8_prefix(c->content, c->content_len,
		    (size_t)r->max_tokens * 4);
		c->content[c->content_len] = '\0';
		c->completion_tokens = (long)r->max_tokens;
		c->finish_reason = "length";
	}
}

static void
chat_start(struct fake *f, struct evhttp_request *req, const
    struct chat_req *r, const char *req_id, const struct timespec *t0)
{
	struct chat *c = calloc(1, sizeof(*c));
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	int latency = f->live.latency_ms, chunks = f->live.chunks;

	if (c == NULL || (c->out = evbuffer_new()) == NULL) {
		fprintf(stderr, "fake_openai: out of memory\n");
		abort();
	}
	c->f = f;
	c->req = req;
	c->t0 = *t0;
	c->fail = fake_fail_next(f);
	c->kind = fail_kind_of(c->fail);
	snprintf(c->req_id, sizeof(c->req_id), "%s", req_id);
	make_id(f, c->id, sizeof(c->id), "chatcmpl-", 29, false);
	c->rng = f->id_seq;
	c->model = xstrdup(r->model);
	c->created = time(NULL);
	c->stream = r->stream;
	c->include_usage = r->include_usage;
	c->obfuscation = r->obfuscation;
	c->chunk_delay_ms = f->live.chunk_delay_ms;
	if (c->kind == FAIL_SLOW)
		latency = (int)json_integer_value(json_object_get(c->fail,
		    "latency_ms"));
	chat_content(c, r);
	/* The provider decides at arrival: a refusal is answered at once. */
	if (!fake_rl_admit(f, c->prompt_tokens + c->completion_tokens, &c->rl,
	    &c->refused)) {
		latency = 0;
		c->kind = FAIL_NONE;	/* the limit wins over a scripted one */
	}

	/* About `chunks` pieces; stream_next moves each end forward to a
	 * character boundary, so count them the same way. */
	c->piece_len = (c->content_len + (size_t)chunks - 1) / (size_t)chunks;
	if (c->piece_len == 0)
		c->piece_len = 1;
	for (size_t off = 0; off < c->content_len; c->npieces++) {
		off += c->piece_len;
		while (off < c->content_len &&
		    ((unsigned char)c->content[off] & 0xC0) == 0x80)
			off++;
	}
	c->trip_at = (int)json_integer_value(json_object_get(c->fail,
	    "after_chunks"));
	if (json_object_get(c->fail, "after_chunks") == NULL)
		c->trip_at = 2;
	if (c->trip_at > c->npieces)
		c->trip_at = c->npieces;

	c->next = f->chats;
	if (f->chats)
		f->chats->prev = c;
	f->chats = c;
	if (++f->in_flight > f->max_in_flight)
		f->max_in_flight = f->in_flight;

	if ((c->timer = evtimer_new(f->base, chat_on_timer, c)) == NULL) {
		fprintf(stderr, "fake_openai: out of memory\n");
		abort();
	}
	evhttp_connection_set_closecb(evcon, chat_on_close, c);
	/* Only a wait can outlive a client; a 0 ms reply needs no watcher. */
	if (c->kind == FAIL_STALL || latency > 0) {
		c->peek = event_new(f->base, bufferevent_getfd(
		    evhttp_connection_get_bufferevent(evcon)), EV_READ,
		    chat_on_peek, c);
		event_add(c->peek, NULL);
	}
	if (c->kind == FAIL_STALL) {
		c->phase = PH_STALL;
	} else {
		c->phase = PH_WAIT;
		arm_timer(c, latency);
	}
	fake_log(f, "%s: %s model=%s stream=%d%s%s%s latency=%dms",
	    c->req_id, c->id, c->model, c->stream,
	    c->fail ? " fail=" : "",
	    c->fail ? (c->kind == FAIL_STATUS ? "status" :
	    json_string_value(json_object_get(c->fail, "mode"))) : "",
	    c->kind == FAIL_STALL ? " (stall)" : "", latency);
}

void
chat_handle(struct fake *f, struct evhttp_request *req)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(req);
	const char *auth = evhttp_find_header(in, "Authorization");
	struct bad_request bad;
	struct chat_req r;
	struct timespec t0;
	json_error_t jerr;
	json_t *body;
	char req_id[48], msg[512];

	clock_gettime(CLOCK_MONOTONIC, &t0);
	make_id(f, req_id, sizeof(req_id), "req_", 32, true);
	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		snprintf(msg, sizeof(msg), "Invalid method for URL (%s %s)",
		    fake_method_name(req), evhttp_uri_get_path(
		    evhttp_request_get_evhttp_uri(req)));
		fake_add_openai_headers(f, req, req_id, 0, NULL);
		fake_reply_error(req, 405, msg, "invalid_request_error", NULL,
		    NULL);
		return;
	}

	f->chat_calls++;
	f->last_auth_present = auth != NULL;
	body = fake_body_json(req, &jerr);
	json_decref(f->last_request);
	f->last_request = json_incref(body);
	if (json_is_true(json_object_get(body, "stream")))
		f->stream_calls++;

	if (!check_auth(f, req, auth, req_id))
		goto out;
	if (body == NULL) {
		fake_add_openai_headers(f, req, req_id, 0, NULL);
		fake_reply_error(req, 400, "We could not parse the JSON body of "
		    "your request. (HINT: This likely means you aren't using "
		    "your HTTP library correctly. The OpenAI API expects a "
		    "JSON payload, but what was sent was not valid JSON. If "
		    "you have trouble figuring out how to fix this, please "
		    "contact us through our help center at "
		    "help.openai.com.)", "invalid_request_error", NULL, NULL);
		goto out;
	}
	if (!check_request(body, &r, &bad)) {
		fake_add_openai_headers(f, req, req_id, 0, NULL);
		fake_reply_error(req, 400, bad.message,
		    "invalid_request_error", bad.param[0] ? bad.param : NULL,
		    bad.code);
		goto out;
	}
	chat_start(f, req, &r, req_id, &t0);
out:
	json_decref(body);
}

void
chat_shutdown_all(struct fake *f)
{
	struct chat *c;

	while ((c = f->chats) != NULL) {
		if (c->req) {
			struct evhttp_connection *evcon =
			    evhttp_request_get_connection(c->req);

			/* On its connection: evhttp_free frees both. An
			 * orphan waiting for PH_GONE is ours. */
			if (evcon)
				evhttp_connection_set_closecb(evcon, NULL,
				    NULL);
			else
				evhttp_send_reply_end(c->req);
			c->req = NULL;
		}
		chat_free(c);
	}
}
