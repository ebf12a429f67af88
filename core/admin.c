/*
 * admin — the unix-socket admin protocol on the server's event loop.
 *
 * Data flow: the evconnlistener accepts a local peer (same user or root,
 * checked with SO_PEERCRED on top of the 0600 file mode), gives it a
 * bufferevent, and each complete input line becomes one command. Commands
 * answer at once, except `analyze`, which hands the request to the
 * pipeline, and `feedback`, which reads the state database: each stops
 * reading that client's lines until the reply callback has written the
 * answer (so replies stay in request order). The next
 * queued line is taken from the loop, never from inside the pipeline's
 * callback.
 *
 * A client ends three ways, all through client_free(): a socket error or
 * reset (any wait is cancelled at once), end of input (what was asked is
 * answered first, then the connection closes once the output is flushed),
 * or admin_destroy().
 */
#include "admin.h"
#include "commands.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define MAX_LINE     4096      /* a command longer than this is refused */
#define MAX_CLIENTS  32        /* an operator tool: a few people at once */
#define MAX_ARGS     8
#define LIST_MAX     1000      /* cache list entries per reply */
#define OUTPUT_MAX   (1 << 20) /* unread replies before we stop reading commands */

struct admin_client {
	admin *a;
	struct bufferevent *bev;
	struct event *next_ev;    /* takes the next queued line, from the loop */
	analysis_wait *wait;      /* a running `analyze` */
	feedback_op *fb;          /* a running `feedback` */
	bool eof;                 /* the peer is done sending: close when answered */
	LIST_ENTRY(admin_client) link;
};

struct admin {
	struct admin_deps d;
	char *path;
	struct evconnlistener *listener;
	struct event *accept_resume;  /* re-enables the listener after an accept failure */
	double accept_logged;     /* last "admin accept failed" line, ms */
	dev_t dev;                /* the socket file we made: only that one is */
	ino_t ino;                /* removed at stop */
	double started_ms;
	LIST_HEAD(, admin_client) clients;
	int nclients;
};

static void client_take_lines(struct admin_client *cl);

/* ---- replies -------------------------------------------------------------- */

/* Writes {"ok": true, "result": result} (result stolen) and the blank line. */
static void
send_doc(struct admin_client *cl, json_t *doc)
{
	char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(doc);
	struct evbuffer *out = bufferevent_get_output(cl->bev);
	if (text)
		evbuffer_add(out, text, strlen(text));
	else
		evbuffer_add_printf(out, "{\"ok\": false, \"error\": {\"code\": \"internal_error\"}}");
	evbuffer_add(out, "\n\n", 2);
	free(text);
}

static void
reply_ok(struct admin_client *cl, json_t *result)
{
	json_t *doc = json_object();
	json_object_set_new(doc, "ok", json_true());
	json_object_set_new(doc, "result", result ? result : json_null());
	send_doc(cl, doc);
}

static void
reply_error(struct admin_client *cl, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void
reply_error(struct admin_client *cl, int status, const char *code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	json_t *doc = json_object();
	json_object_set_new(doc, "ok", json_false());
	if (status)
		json_object_set_new(doc, "status", json_integer(status));
	json_object_set_new(doc, "error", json_pack("{s:s,s:s}", "code", code, "message", msg));
	send_doc(cl, doc);
}

/* ---- commands --------------------------------------------------------------- */

/* The pipeline answered: write it, then let the client's next line run. */
static void
on_analysis_reply(void *arg, const struct analysis_reply *r)
{
	struct admin_client *cl = arg;
	cl->wait = NULL;
	if (r->status != 200) {
		reply_error(cl, r->status, r->error_code ? r->error_code : "error", "%s",
		            r->error_message ? r->error_message : "");
	} else {
		json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
		if (doc)
			reply_ok(cl, doc);
		else
			reply_error(cl, 500, "internal_error", "the pipeline's document is not JSON");
	}
	struct timeval zero = { 0, 0 };
	evtimer_add(cl->next_ev, &zero);
}

/* The one command that waits: it holds the client's next lines until the
 * pipeline answers. */
static void
cmd_analyze(struct admin_client *cl, int argc, char **argv)
{
	int64_t id;
	struct cmd_error e = { 0 };
	if (!cmd_arg_contact(argv[0], &id, &e)) {
		reply_error(cl, e.status, e.code, "%s", e.message);
		return;
	}
	int flags = 0;
	if (argc > 2) {
		if (strcmp(argv[2], "refresh") != 0) {
			reply_error(cl, 400, "bad_command", "the third word may only be 'refresh'");
			return;
		}
		flags |= ANALYSIS_REFRESH;
	}
	/* A cache hit replies from inside the call and gets NULL back. */
	cl->wait = analysis_get(cl->a->d.analysis, id, argv[1], flags, on_analysis_reply, NULL, cl);
}

static void
on_feedback_reply(void *arg, const struct feedback_reply *r)
{
	struct admin_client *cl = arg;
	cl->fb = NULL;
	if (r->status == 200)
		reply_ok(cl, json_incref(r->doc));
	else
		reply_error(cl, r->status, r->code, "%s", r->message);
	struct timeval zero = { 0, 0 };
	evtimer_add(cl->next_ev, &zero);
}

/* feedback <type> [n]: the latest reasons, from the state database. */
static void
cmd_feedback(struct admin_client *cl, int argc, char **argv)
{
	struct cmd_error e = { 0 };
	int n;
	if (!cmd_arg_feedback(argc, argv, &n, &e)) {
		reply_error(cl, e.status, e.code, "%s", e.message);
		return;
	}
	if (!cl->a->d.feedback) {
		reply_error(cl, 503, "feedback_unavailable", "feedback is not running in this process");
		return;
	}
	struct feedback_reply now;
	cl->fb = feedback_latest(cl->a->d.feedback, argv[0], n, on_feedback_reply, cl, &now);
	if (!cl->fb)
		reply_error(cl, now.status, now.code, "%s", now.message);
}

static void
run_command(struct admin_client *cl, char *line)
{
	char *argv[MAX_ARGS + 1], *save = NULL;
	int argc = 0;
	for (char *w = strtok_r(line, " \t\r", &save); w; w = strtok_r(NULL, " \t\r", &save)) {
		if (argc == MAX_ARGS) {
			reply_error(cl, 400, "bad_command", "too many words");
			return;
		}
		argv[argc++] = w;
	}
	if (argc == 0)
		return;
	struct cmd_error e = { 0 };
	int skip = 0;
	const struct command *c = cmd_match(argc, argv, &skip, &e);
	if (!c) {
		reply_error(cl, e.status, e.code, "%s", e.message);
		return;
	}
	int n = argc - skip;
	log_event(LOG_INFO, "admin command", LOG_S("command", argv[0]),
	          LOG_S("sub", skip > 1 ? argv[1] : NULL), LOG_S("arg", n > 0 ? argv[skip] : NULL),
	          LOG_END);
	if (c->run) {
		admin *a = cl->a;
		struct cmd_parts p = {
			.scripts = a->d.scripts, .cache = a->d.cache, .analysis = a->d.analysis,
			.db = a->d.db, .llm = a->d.llm, .http = a->d.http, .who = "admin socket",
			.started_ms = a->started_ms,
		};
		json_t *result = c->run(&p, n, argv + skip, &e);
		if (result)
			reply_ok(cl, result);
		else
			reply_error(cl, e.status, e.code, "%s", e.message);
		return;
	}
	/* The one socket row without a run function: analyze waits on the
	 * pipeline, so it lives here with the client it holds. */
	if (strcmp(c->words, "analyze") == 0) {
		cmd_analyze(cl, n, argv + skip);
		return;
	}
	if (strcmp(c->words, "feedback") == 0) {
		cmd_feedback(cl, n, argv + skip);
		return;
	}
	reply_error(cl, 500, "internal_error", "'%s' has no handler on the admin socket", c->words);
}

/* ---- clients ---------------------------------------------------------------- */

static void
client_free(struct admin_client *cl)
{
	if (cl->wait)
		analysis_wait_cancel(cl->wait);
	feedback_op_cancel(cl->fb);
	event_free(cl->next_ev);
	bufferevent_free(cl->bev);
	LIST_REMOVE(cl, link);
	cl->a->nclients--;
	free(cl);
}

/* After end of input: free once nothing is pending and the output is out.
 * True when cl is gone. */
static bool
client_maybe_close(struct admin_client *cl)
{
	if (!cl->eof || cl->wait || cl->fb || evbuffer_get_length(bufferevent_get_output(cl->bev)))
		return false;
	client_free(cl);
	return true;
}

/* Runs complete lines until one has to wait, or until the client has
 * OUTPUT_MAX of replies it has not read: then reading stops until they
 * drain (on_write), so a client that pipelines commands and never reads
 * cannot make us buffer without bound. */
static void
client_take_lines(struct admin_client *cl)
{
	struct evbuffer *in = bufferevent_get_input(cl->bev);
	struct evbuffer *out = bufferevent_get_output(cl->bev);
	while (!cl->wait && !cl->fb) {
		if (evbuffer_get_length(out) >= OUTPUT_MAX) {
			bufferevent_disable(cl->bev, EV_READ);
			return;
		}
		size_t n;
		char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
		if (!line && cl->eof && (n = evbuffer_get_length(in)) > 0 && n <= MAX_LINE) {
			/* `printf types | …`: the last command needs no newline. */
			line = xmalloc(n + 1);
			evbuffer_remove(in, line, n);
			line[n] = '\0';
		}
		if (!line) {
			if (evbuffer_get_length(in) > MAX_LINE) {
				reply_error(cl, 400, "line_too_long", "a command is at most %d bytes", MAX_LINE);
				evbuffer_drain(in, evbuffer_get_length(in));
				bufferevent_disable(cl->bev, EV_READ);
				cl->eof = true;
			}
			break;
		}
		if (n > MAX_LINE)
			reply_error(cl, 400, "line_too_long", "a command is at most %d bytes", MAX_LINE);
		else
			run_command(cl, line);
		free(line);
	}
	client_maybe_close(cl);
}

static void
on_next(evutil_socket_t fd, short what, void *arg)
{
	client_take_lines(arg);
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	client_take_lines(arg);
}

/* The output drained: take the lines held back (which closes the
 * connection when the client is done and nothing is left). */
static void
on_write(struct bufferevent *bev, void *arg)
{
	struct admin_client *cl = arg;
	if (!cl->eof)
		bufferevent_enable(bev, EV_READ);
	if (!cl->wait && !cl->fb)
		client_take_lines(cl);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	struct admin_client *cl = arg;
	if (what & BEV_EVENT_ERROR) {
		client_free(cl);          /* reset: nobody to answer */
		return;
	}
	if (what & BEV_EVENT_EOF) {
		/* `echo types | socat - UNIX-CONNECT:…` half-closes at once:
		 * answer what was sent, then close. */
		cl->eof = true;
		bufferevent_disable(bev, EV_READ);
		client_take_lines(cl);
	}
}

/* The file mode already keeps other users out; this also holds when the
 * socket's folder or mode was changed by hand. */
static bool
peer_allowed(evutil_socket_t fd)
{
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
		return false;
	return cred.uid == geteuid() || cred.uid == 0;
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
          void *arg)
{
	admin *a = arg;
	if (!peer_allowed(fd) || a->nclients >= MAX_CLIENTS) {
		log_event(LOG_WARN, "admin connection refused",
		          LOG_S("reason", a->nclients >= MAX_CLIENTS ? "too many clients" : "other user"),
		          LOG_END);
		evutil_closesocket(fd);
		return;
	}
	struct admin_client *cl = xcalloc(1, sizeof *cl);
	cl->a = a;
	cl->bev = bufferevent_socket_new(a->d.base, fd, BEV_OPT_CLOSE_ON_FREE);
	cl->next_ev = evtimer_new(a->d.base, on_next, cl);
	if (!cl->bev || !cl->next_ev) {
		if (cl->bev)
			bufferevent_free(cl->bev);
		else
			evutil_closesocket(fd);
		if (cl->next_ev)
			event_free(cl->next_ev);
		free(cl);
		return;
	}
	bufferevent_setcb(cl->bev, on_read, on_write, on_event, cl);
	/* Input waiting behind an `analyze` stays bounded too. */
	bufferevent_setwatermark(cl->bev, EV_READ, 0, 16 * MAX_LINE);
	bufferevent_enable(cl->bev, EV_READ | EV_WRITE);
	LIST_INSERT_HEAD(&a->clients, cl, link);
	a->nclients++;
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	admin *a = arg;
	evconnlistener_enable(a->listener);
}

/* Out of descriptors (EMFILE…): the peer stays in the backlog and the
 * listener would be ready again at once, so pause it for 500 ms rather
 * than spin, logging at most every 10 s (as http_conn does for the API). */
static void
on_accept_error(struct evconnlistener *l, void *arg)
{
	admin *a = arg;
	int err = EVUTIL_SOCKET_ERROR();
	evconnlistener_disable(l);
	struct timeval tv = { 0, 500 * 1000 };
	evtimer_add(a->accept_resume, &tv);
	double now = util_now_ms();
	if (a->accept_logged == 0 || now - a->accept_logged >= 10000) {
		a->accept_logged = now;
		log_event(LOG_ERROR, "admin accept failed", LOG_S("error", evutil_socket_error_to_string(err)),
		          LOG_I("retry_ms", 500), LOG_END);
	}
}

/* ---- the socket file ---------------------------------------------------------- */

/* The socket's folder, created owner-only when missing. Folders above it
 * (./var for the default path) get 0755 as tools/run.sh gives ./var: the
 * postgres user of a private cluster under ./var/pg must pass through.
 * Existing folders are left as they are. */
static bool
make_parent(const char *path, char **err)
{
	char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	bool ok = true;
	if (slash && slash != dir) {
		*slash = '\0';
		for (char *p = dir + 1; ok; p++) {
			if (*p != '/' && *p != '\0')
				continue;
			char c = *p;
			*p = '\0';
			if (mkdir(dir, c ? 0755 : 0700) != 0 && errno != EEXIST) {
				*err = xasprintf("cannot create %s: %s", dir, strerror(errno));
				ok = false;
			}
			*p = c;
			if (!c)
				break;
		}
	}
	free(dir);
	return ok;
}

/* A socket file left by a crashed server is replaced; one a live server
 * answers on, or a file that is not a socket, is an error. */
static bool
clear_stale(const char *path, const struct sockaddr_un *sa, char **err)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return errno == ENOENT ? true
		                       : (*err = xasprintf("%s: %s", path, strerror(errno)), false);
	if (!S_ISSOCK(st.st_mode)) {
		*err = xasprintf("%s exists and is not a socket", path);
		return false;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = xasprintf("socket: %s", strerror(errno));
		return false;
	}
	int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
	int e = errno;
	close(fd);
	if (rc == 0) {
		*err = xasprintf("%s is in use by a running server (set RAPPORT_ADMIN_SOCKET)", path);
		return false;
	}
	if (e != ECONNREFUSED && e != ENOENT) {
		*err = xasprintf("%s: %s", path, strerror(e));
		return false;
	}
	log_event(LOG_INFO, "replacing a stale admin socket", LOG_S("path", path), LOG_END);
	unlink(path);
	return true;
}

/* A listening socket bound at path with mode 0600 from the start (umask
 * around bind: no moment where others could connect), or -1 with *err. */
static int
bind_socket(const char *path, char **err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path) {
		*err = xasprintf("RAPPORT_ADMIN_SOCKET: path longer than %zu bytes: %s",
		                 sizeof sa.sun_path - 1, path);
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (!make_parent(path, err) || !clear_stale(path, &sa, err))
		return -1;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		*err = xasprintf("socket: %s", strerror(errno));
		return -1;
	}
	mode_t old = umask(0177);
	int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	int e = errno;
	umask(old);
	if (rc != 0 || chmod(path, 0600) != 0 || listen(fd, 16) != 0) {
		if (rc == 0)
			e = errno, unlink(path);
		*err = xasprintf("cannot listen on %s: %s", path, strerror(e));
		close(fd);
		return -1;
	}
	return fd;
}

admin *
admin_create(const struct admin_deps *deps, char **err)
{
	*err = NULL;
	int fd = bind_socket(deps->path, err);
	if (fd < 0)
		return NULL;
	admin *a = xcalloc(1, sizeof *a);
	a->d = *deps;
	a->path = xstrdup(deps->path);
	a->d.path = a->path;
	a->started_ms = util_now_ms();
	LIST_INIT(&a->clients);
	struct stat st;
	if (stat(a->path, &st) == 0) {
		a->dev = st.st_dev;
		a->ino = st.st_ino;
	}
	a->listener = evconnlistener_new(deps->base, on_accept, a,
	                                 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!a->listener) {
		*err = xasprintf("cannot watch the admin socket %s", a->path);
		close(fd);
		unlink(a->path);
		free(a->path);
		free(a);
		return NULL;
	}
	evconnlistener_set_error_cb(a->listener, on_accept_error);
	a->accept_resume = evtimer_new(deps->base, on_accept_resume, a);
	log_event(LOG_INFO, "admin socket", LOG_S("path", a->path), LOG_END);
	return a;
}

void
admin_destroy(admin *a)
{
	if (!a)
		return;
	while (!LIST_EMPTY(&a->clients))
		client_free(LIST_FIRST(&a->clients));
	if (a->accept_resume)
		event_free(a->accept_resume);
	evconnlistener_free(a->listener);
	/* Only our own file: a server started after us with the same path
	 * (after replacing ours as stale) keeps its socket. */
	struct stat st;
	if (stat(a->path, &st) == 0 && st.st_dev == a->dev && st.st_ino == a->ino)
		unlink(a->path);
	free(a->path);
	free(a);
}
