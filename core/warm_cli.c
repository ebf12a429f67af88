/*
 * warm_cli — `rapport warm` (see warm_cli.h).
 *
 * Data flow, remote: options ─► warm_request_body() ─► curl POST /v1/warm
 * ─► 202 {"job"} ─► every 500 ms curl GET /v1/jobs/{id} ─► draw ─► until
 * the job's state is final ─► summary, exit status. Local: the same body ─►
 * jobs_spec_parse ─► jobs_start() on this process's runner ─► jobs_get()
 * on a 500 ms timer ─► the same drawing. Ctrl-C sets a flag (remote) or
 * fires a signal event (local); the prompt reads /dev/tty.
 */
#include "warm_cli.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>

#define POLL_MS 500
#define MAX_RESPONSE (4u << 20)

/* ---- options -------------------------------------------------------------- */

void
warm_opts_free(struct warm_opts *o)
{
	free(o->contacts);
	free(o->types);
	free(o->url);
	free(o->key);
	memset(o, 0, sizeof *o);
}

/* "--name value" or "--name=value": the value, or NULL when args[i] is not
 * this flag; *used is how many arguments it took. */
static const char *
flag_value(int n, char **args, int i, const char *name, int *used, bool *missing)
{
	size_t len = strlen(name);
	if (strncmp(args[i], name, len) != 0)
		return NULL;
	if (args[i][len] == '=') {
		*used = 1;
		return args[i] + len + 1;
	}
	if (args[i][len] != '\0')
		return NULL;
	if (i + 1 >= n) {
		*missing = true;
		return NULL;
	}
	*used = 2;
	return args[i + 1];
}

bool
warm_take_flags(int *nargs, char **args, struct warm_opts *o, char **err)
{
	static const char *const names[] = { "--top", "--contacts", "--types", "--url", "--key" };
	int out = 0;
	*err = NULL;
	for (int i = 0; i < *nargs;) {
		if (strcmp(args[i], "--local") == 0) {
			o->local = true;
			i++;
			continue;
		}
		int used = 0;
		bool missing = false;
		const char *v = NULL;
		int which = -1;
		for (int k = 0; k < 5 && !v && !missing; k++) {
			v = flag_value(*nargs, args, i, names[k], &used, &missing);
			which = k;
		}
		if (missing) {
			*err = xasprintf("option %s needs a value", args[i]);
			return false;
		}
		if (!v) {
			args[out++] = args[i++];
			continue;
		}
		int64_t n;
		switch (which) {
		case 0:
			if (!util_parse_i64(v, &n) || n < 1 || n > JOBS_MAX_TOP) {
				*err = xasprintf("--top: expected an integer from 1 to %d, got \"%s\"",
				                 JOBS_MAX_TOP, v);
				return false;
			}
			o->top = (int)n;
			break;
		case 1: free(o->contacts); o->contacts = xstrdup(v); break;
		case 2: free(o->types); o->types = xstrdup(v); break;
		case 3: free(o->url); o->url = xstrdup(v); break;
		case 4: free(o->key); o->key = xstrdup(v); break;
		}
		i += used;
	}
	*nargs = out;
	return true;
}

/* Splits "a,b,c" (blanks around items allowed) into a JSON array of
 * strings, or of positive integers when ints. */
static json_t *
split_list(const char *s, bool ints, const char *what, char **err)
{
	json_t *list = json_array();
	char *copy = xstrdup(s), *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		size_t n = strlen(tok);
		while (n && tok[n - 1] == ' ')
			tok[--n] = '\0';
		if (!n)
			continue;
		int64_t id;
		if (ints && (!util_parse_i64(tok, &id) || id < 1)) {
			*err = xasprintf("%s: \"%s\" is not a positive contact id", what, tok);
			free(copy);
			json_decref(list);
			return NULL;
		}
		json_array_append_new(list, ints ? json_integer(id) : json_string(tok));
	}
	free(copy);
	if (json_array_size(list) == 0) {
		*err = xasprintf("%s: give at least one value (comma-separated)", what);
		json_decref(list);
		return NULL;
	}
	return list;
}

json_t *
warm_request_body(const struct warm_opts *o, char **err)
{
	*err = NULL;
	if (!!o->top == !!o->contacts) {
		*err = xstrdup(o->top ? "give either --top N or --contacts 1,2,3, not both"
		                      : "give --top N (the N contacts of warm_candidates) or "
		                        "--contacts 1,2,3");
		return NULL;
	}
	json_t *body = json_object();
	if (o->top) {
		json_object_set_new(body, "top", json_integer(o->top));
	} else {
		json_t *c = split_list(o->contacts, true, "--contacts", err);
		if (!c) {
			json_decref(body);
			return NULL;
		}
		json_object_set_new(body, "contacts", c);
	}
	if (o->types) {
		json_t *t = split_list(o->types, false, "--types", err);
		if (!t) {
			json_decref(body);
			return NULL;
		}
		json_object_set_new(body, "types", t);
	}
	return body;
}

/* ---- drawing --------------------------------------------------------------- */

static long
num(const json_t *o, const char *key)
{
	return (long)json_integer_value(json_object_get(o, key));
}

void
warm_progress_line(const json_t *job, bool bar, int width, char *out, size_t len)
{
	long total = num(job, "total"), completed = num(job, "completed");
	const json_t *skipped = json_object_get(job, "skipped");
	const json_t *eta = json_object_get(job, "eta_s");
	const char *state = json_string_value(json_object_get(job, "state"));
	int pct = total > 0 ? (int)(completed * 100 / total) : 100;
	char eta_s[32];
	if (json_is_integer(eta))
		snprintf(eta_s, sizeof eta_s, "eta %llds", (long long)json_integer_value(eta));
	else
		snprintf(eta_s, sizeof eta_s, "eta ?");
	size_t n = 0;
	if (bar && width > 0) {
		if (width > 200)
			width = 200;
		int full = total > 0 ? (int)(completed * width / total) : width;
		n += (size_t)snprintf(out + n, len - n, "[");
		for (int i = 0; i < width && n + 2 < len; i++)
			out[n++] = i < full ? '#' : '.';
		n += (size_t)snprintf(out + n, len - n, "] ");
		if (n >= len)
			return;
	}
	snprintf(out + n, len - n,
	         "job %lld %s: %ld/%ld (%d%%)  done %ld  fresh %ld  revalidated %ld  failed %ld  %s",
	         (long long)json_integer_value(json_object_get(job, "id")), state ? state : "?",
	         completed, total, pct, num(job, "done"), num(skipped, "fresh"),
	         num(skipped, "revalidated"), num(job, "failed"), eta_s);
}

struct view {
	bool tty;
	char last[512];
	bool drawn;              /* a bar is on the current line */
	double t_start;
};

static void
draw(struct view *v, const json_t *job)
{
	char line[512];
	warm_progress_line(job, v->tty, 30, line, sizeof line);
	if (v->tty) {
		printf("\r\033[K%s", line);
		v->drawn = true;
	} else if (strcmp(line, v->last) != 0) {
		printf("%s\n", line);
	}
	snprintf(v->last, sizeof v->last, "%s", line);
	fflush(stdout);
}

static bool
final_state(const json_t *job)
{
	const char *s = json_string_value(json_object_get(job, "state"));
	return s && strcmp(s, "queued") != 0 && strcmp(s, "running") != 0;
}

/* The summary; returns the exit status. */
static int
summary(struct view *v, const json_t *job)
{
	if (v->drawn)
		printf("\n");
	const json_t *skipped = json_object_get(job, "skipped");
	const char *state = json_string_value(json_object_get(job, "state"));
	long failed = num(job, "failed");
	printf("job %lld %s in %.1f s: %ld items, %ld generated, %ld fresh, %ld revalidated, "
	       "%ld failed, %ld cancelled\n",
	       (long long)json_integer_value(json_object_get(job, "id")), state ? state : "?",
	       (util_now_ms() - v->t_start) / 1000.0, num(job, "total"), num(job, "done"),
	       num(skipped, "fresh"), num(skipped, "revalidated"), failed, num(job, "cancelled"));
	size_t i;
	json_t *e;
	json_array_foreach(json_object_get(job, "errors"), i, e)
		printf("  failed: contact %lld %s: %s\n",
		       (long long)json_integer_value(json_object_get(e, "contact")),
		       json_string_value(json_object_get(e, "type")) ?: "?",
		       json_string_value(json_object_get(e, "error")) ?: "");
	fflush(stdout);
	return failed > 0 || (state && strcmp(state, "failed") == 0) ? 1 : 0;
}

/* "cancel job N? [y/N]" on the terminal; true for yes. Without a terminal
 * the answer is yes (nobody can be asked; a script that interrupts us wants
 * the work stopped). */
static bool
ask_cancel(struct view *v, long long id)
{
	if (!isatty(STDIN_FILENO))
		return true;
	int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return true;
	char q[96], a[16] = "";
	int n = snprintf(q, sizeof q, "%scancel job %lld? [y/N] ", v->drawn ? "\n" : "", id);
	v->drawn = false;
	if (write(fd, q, (size_t)n) < 0) {
		close(fd);
		return true;
	}
	ssize_t r = read(fd, a, sizeof a - 1);
	close(fd);
	return r > 0 && (a[0] == 'y' || a[0] == 'Y');
}

/* ---- remote: libcurl ---------------------------------------------------------- */

struct buf {
	char *data;
	size_t len;
};

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
	struct buf *b = arg;
	size_t add = size * n;
	if (b->len + add > MAX_RESPONSE)
		return 0;
	b->data = xrealloc(b->data, b->len + add + 1);
	memcpy(b->data + b->len, p, add);
	b->len += add;
	b->data[b->len] = '\0';
	return add;
}

/* One request; *doc is the parsed JSON answer (or NULL). Returns the HTTP
 * status, or 0 with *err (caller frees) when there was no answer. */
static long
http_call(CURL *curl, const char *method, const char *url, const char *key, const char *body,
          json_t **doc, char **err)
{
	struct buf b = { NULL, 0 };
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *h = NULL;
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	char *auth = NULL;
	if (key && *key) {
		auth = xasprintf("Authorization: Bearer %s", key);
		h = curl_slist_append(h, auth);
	}
	curl_easy_reset(curl);
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	if (body)
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
	CURLcode rc = curl_easy_perform(curl);
	long status = 0;
	*doc = NULL;
	if (rc != CURLE_OK) {
		*err = xasprintf("%s %s: %s", method, url, *errbuf ? errbuf : curl_easy_strerror(rc));
	} else {
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
		*doc = b.data ? json_loads(b.data, 0, NULL) : NULL;
	}
	curl_slist_free_all(h);
	free(auth);
	free(b.data);
	return status;
}

static void
print_error(long status, const json_t *doc, const char *what)
{
	const json_t *e = json_object_get(doc, "error");
	fprintf(stderr, "rapport warm: %s: %ld %s%s%s\n", what, status,
	        json_string_value(json_object_get(e, "code")) ?: "",
	        e ? ": " : "", json_string_value(json_object_get(e, "message")) ?: "");
}

static volatile sig_atomic_t interrupted;

static void
on_sigint(int sig)
{
	interrupted = 1;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);     /* EINTR on Ctrl-C: fine, the loop checks */
}

static char *
default_url(const struct config *cfg)
{
	const char *listen = cfg->listen;
	const char *colon = strrchr(listen, ':');
	if (colon && (strncmp(listen, "0.0.0.0:", 8) == 0 || strncmp(listen, "[::]:", 5) == 0 ||
	              colon == listen))
		return xasprintf("http://127.0.0.1%s", colon);
	return xasprintf("http://%s", listen);
}

static int
warm_remote(const struct config *cfg, const struct warm_opts *o, const char *body)
{
	char *base = o->url ? xstrdup(o->url) : default_url(cfg);
	size_t bl = strlen(base);
	while (bl && base[bl - 1] == '/')
		base[--bl] = '\0';
	const char *key = o->key ? o->key : cfg->n_api_keys ? cfg->api_keys[0] : NULL;
	CURL *curl = curl_easy_init();
	char *url = xasprintf("%s/v1/warm", base), *err = NULL;
	json_t *doc = NULL;
	int rc = 1;
	struct view v = { .tty = isatty(STDOUT_FILENO), .t_start = util_now_ms() };
	long status = http_call(curl, "POST", url, key, body, &doc, &err);
	free(url);
	if (status != 202) {
		if (!status)
			fprintf(stderr, "rapport warm: %s (is `rapport serve` running there? --url sets "
			        "the address)\n", err);
		else
			print_error(status, doc, "starting the job");
		goto out;
	}
	json_t *job = json_object_get(doc, "job");
	long long id = (long long)json_integer_value(json_object_get(job, "id"));
	struct sigaction sa = { .sa_handler = on_sigint }, old;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old);
	draw(&v, job);
	char *job_url = xasprintf("%s/v1/jobs/%lld", base, id);
	int failures = 0;
	while (!final_state(job)) {
		sleep_ms(POLL_MS);
		if (interrupted) {
			interrupted = 0;
			if (!ask_cancel(&v, id)) {
				printf("job %lld keeps running on the server (GET /v1/jobs/%lld)\n", id, id);
				rc = 130;
				goto done;
			}
			json_t *d2 = NULL;
			free(err);
			err = NULL;
			long s = http_call(curl, "DELETE", job_url, key, NULL, &d2, &err);
			if (s != 200)
				print_error(s, d2, "cancelling the job");
			json_decref(d2);
			rc = 130;
		}
		json_t *next = NULL;
		free(err);
		err = NULL;
		status = http_call(curl, "GET", job_url, key, NULL, &next, &err);
		if (status != 200) {
			/* A restart of the server, say: keep asking a while. */
			json_decref(next);
			if (++failures >= 20) {
				fprintf(stderr, "rapport warm: lost the job: %s\n", err ? err : "bad answer");
				rc = 1;
				goto done;
			}
			continue;
		}
		failures = 0;
		json_decref(doc);
		doc = next;
		job = json_object_get(doc, "job");
		draw(&v, job);
	}
	if (rc != 130)
		rc = summary(&v, job);
	else
		summary(&v, job);
done:
	sigaction(SIGINT, &old, NULL);
	free(job_url);
out:
	json_decref(doc);
	free(err);
	free(base);
	curl_easy_cleanup(curl);
	return rc;
}

/* ---- local: this process's runner ------------------------------------------------ */

struct local_run {
	const struct warm_local *l;
	struct view v;
	json_t *spec_body;
	struct event *tick, *sig;
	jobs_op *op;
	int64_t id;
	double t_wait_state;
	int rc;
	bool finished;
};

static void local_poll(struct local_run *lr);

static void
local_stop(struct local_run *lr, int rc)
{
	lr->rc = rc;
	lr->finished = true;
	event_base_loopbreak(lr->l->base);
}

static void
on_local_job(void *arg, const struct jobs_reply *r)
{
	struct local_run *lr = arg;
	lr->op = NULL;
	if (r->status != 200 && r->status != 202) {
		fprintf(stderr, "rapport warm: %d %s: %s\n", r->status, r->code ? r->code : "",
		        r->message ? r->message : "");
		local_stop(lr, 1);
		return;
	}
	json_t *job = json_object_get(r->doc, "job");
	if (!lr->id) {
		lr->id = r->job_id;
		jobs_run_only(lr->l->jobs, lr->id);
	}
	draw(&lr->v, job);
	if (final_state(job)) {
		int rc = summary(&lr->v, job);
		local_stop(lr, lr->rc == 130 ? 130 : rc);
	}
}

static void
local_start(struct local_run *lr)
{
	int nknown;
	const char **known = jobs_loaded_types(lr->l->scripts, &nknown);
	struct jobs_spec spec;
	const char *code;
	char msg[256];
	char *text = json_dumps(lr->spec_body, JSON_COMPACT);
	/* The same checks as POST /v1/warm. */
	bool ok = jobs_spec_parse(text, strlen(text), known, nknown, &spec, &code, msg, sizeof msg);
	free(text);
	free(known);
	if (!ok) {
		fprintf(stderr, "rapport warm: %s\n", msg);
		local_stop(lr, 2);
		return;
	}
	spec.origin = "cli";
	jobs_op *op = jobs_start(lr->l->jobs, &spec, on_local_job, lr);
	if (op)
		lr->op = op;
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	local_poll(arg);
}

static void
local_poll(struct local_run *lr)
{
	if (lr->op || lr->finished)
		return;
	if (!lr->id) {
		if (state_is_up(lr->l->state)) {
			local_start(lr);
			return;
		}
		if (util_now_ms() - lr->t_wait_state > 10000) {
			const char *err = "";
			state_status(lr->l->state, &err);
			fprintf(stderr, "rapport warm: the state database (RAPPORT_STATE_URL) is not "
			        "available: %s\n", *err ? err : "no answer");
			local_stop(lr, 1);
		}
		return;
	}
	jobs_op *op = jobs_get(lr->l->jobs, lr->id, on_local_job, lr);
	if (op)
		lr->op = op;
}

static void
on_local_sigint(evutil_socket_t fd, short what, void *arg)
{
	struct local_run *lr = arg;
	if (!lr->id) {
		local_stop(lr, 130);
		return;
	}
	if (!ask_cancel(&lr->v, (long long)lr->id)) {
		printf("job %lld stays in the state database: a server on it resumes it\n",
		       (long long)lr->id);
		local_stop(lr, 130);
		return;
	}
	lr->rc = 130;
	if (lr->op) {
		jobs_op_cancel(lr->op);
		lr->op = NULL;
	}
	jobs_op *op = jobs_cancel(lr->l->jobs, lr->id, on_local_job, lr);
	if (op)
		lr->op = op;
}

static int
warm_local_run(const struct warm_local *l, json_t *body)
{
	struct local_run lr = { .l = l, .spec_body = body, .rc = 1 };
	lr.v.tty = isatty(STDOUT_FILENO);
	lr.v.t_start = lr.t_wait_state = util_now_ms();
	lr.tick = event_new(l->base, -1, EV_PERSIST, on_tick, &lr);
	lr.sig = evsignal_new(l->base, SIGINT, on_local_sigint, &lr);
	struct timeval tv = { 0, POLL_MS * 1000 };
	event_add(lr.tick, &tv);
	event_add(lr.sig, NULL);
	event_base_dispatch(l->base);
	if (lr.op)
		jobs_op_cancel(lr.op);
	event_free(lr.tick);
	event_free(lr.sig);
	return lr.rc;
}

int
warm_main(const struct config *cfg, const struct warm_opts *o, const struct warm_local *local)
{
	char *err = NULL;
	json_t *body = warm_request_body(o, &err);
	if (!body) {
		fprintf(stderr, "rapport warm: %s\n", err);
		free(err);
		return 2;
	}
	int rc;
	if (local) {
		rc = warm_local_run(local, body);
	} else {
		char *text = json_dumps(body, JSON_COMPACT);
		rc = warm_remote(cfg, o, text);
		free(text);
	}
	json_decref(body);
	return rc;
}
