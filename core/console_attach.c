/*
 * console_attach — `rapport console --attach`: the client of a running
 * server's admin socket (admin.h) and the functions that send its
 * commands and return the reply's result.
 *
 * One connection, one command at a time: a line is written, the loop runs
 * (console_wait) until the reply's blank line is in, and Ctrl-C drops the
 * connection (the late reply would answer the next request); a connection
 * the server closed (a restart) is reopened on the next request.
 */
#include "console_int.h"
#include "commands.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>
#include <lauxlib.h>

#include "luajson.h"

/* ---- attached: the admin socket ------------------------------------------------------ */

static void
on_conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct console *c = arg;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		c->conn_dead = true;
}

void
console_conn_close(struct console *c)
{
	if (c->conn)
		bufferevent_free(c->conn);
	c->conn = NULL;
	c->conn_dead = false;
}

bool
console_conn_open(struct console *c, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(c->sock_path) >= sizeof sa.sun_path) {
		snprintf(err, errlen, "socket path too long: %s", c->sock_path);
		return false;
	}
	memcpy(sa.sun_path, c->sock_path, strlen(c->sock_path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		snprintf(err, errlen, "cannot connect to %s: %s (is `rapport serve` running with the "
		         "same RAPPORT_LISTEN or RAPPORT_ADMIN_SOCKET?)", c->sock_path, strerror(e));
		return false;
	}
	evutil_make_socket_nonblocking(fd);
	c->conn = bufferevent_socket_new(c->d.base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->conn, NULL, NULL, on_conn_event, c);
	bufferevent_enable(c->conn, EV_READ | EV_WRITE);
	c->conn_dead = false;
	return true;
}

static bool
reply_ready(void *arg)
{
	struct console *c = arg;
	struct evbuffer *in = bufferevent_get_input(c->conn);
	return c->conn_dead || evbuffer_search(in, "\n\n", 2, NULL).pos >= 0;
}

/* Sends one command line and waits for its reply: the reply text (without
 * the blank line, caller frees), or NULL with err. A connection closed by
 * the server (restart) is reopened on the next request. */
static char *
admin_request(struct console *c, const char *line, char *err, size_t errlen)
{
	if (c->conn && c->conn_dead)
		console_conn_close(c);
	if (!c->conn && !console_conn_open(c, err, errlen))
		return NULL;
	bufferevent_write(c->conn, line, strlen(line));
	bufferevent_write(c->conn, "\n", 1);
	if (!console_wait(c, reply_ready, c)) {
		/* The reply would arrive for the next request: start afresh. */
		console_conn_close(c);
		snprintf(err, errlen, "interrupted: stopped waiting for the server");
		return NULL;
	}
	struct evbuffer *in = bufferevent_get_input(c->conn);
	ev_ssize_t pos = evbuffer_search(in, "\n\n", 2, NULL).pos;
	if (pos < 0) {
		console_conn_close(c);
		snprintf(err, errlen, "the server closed the connection");
		return NULL;
	}
	char *text = xmalloc((size_t)pos + 1);
	evbuffer_remove(in, text, (size_t)pos);
	text[pos] = '\0';
	evbuffer_drain(in, 2);
	return text;
}

/* Parses a reply; on ok:false fills err with "code: message". */
static json_t *
admin_reply_doc(const char *text, char *err, size_t errlen)
{
	json_t *doc = json_loads(text, 0, NULL);
	if (!json_is_object(doc)) {
		json_decref(doc);
		snprintf(err, errlen, "the server's reply is not a JSON object");
		return NULL;
	}
	return doc;
}

/* Pushes reply.result, or raises with reply.error. */
static int
push_admin_result(lua_State *L, struct console *c, const char *line)
{
	char err[1024];
	char *text = admin_request(c, line, err, sizeof err);
	json_t *doc = text ? admin_reply_doc(text, err, sizeof err) : NULL;
	free(text);
	if (!doc)
		return luaL_error(L, "%s", err);
	if (!json_is_true(json_object_get(doc, "ok"))) {
		json_t *e = json_object_get(doc, "error");
		snprintf(err, sizeof err, "%s: %s", json_string_value(json_object_get(e, "code")),
		         json_string_value(json_object_get(e, "message")));
		json_decref(doc);
		return luaL_error(L, "%s", err);
	}
	json_t *result = json_incref(json_object_get(doc, "result"));
	json_decref(doc);
	luajson_push_owned(L, result ? result : json_null());
	return 1;
}

/* A row the admin socket serves (upvalue 1): its words and the arguments,
 * sent as one line; the reply's result, or its error raised. */
int
console_attach_send(lua_State *L)
{
	const struct command *r = lua_touserdata(L, lua_upvalueindex(1));
	char *words[CONSOLE_MAX_WORDS];
	int n = console_words(L, r, words);
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	luaL_addstring(&b, r->words);
	for (int i = 0; i < n; i++) {
		luaL_addchar(&b, ' ');
		luaL_addstring(&b, words[i]);
	}
	luaL_pushresult(&b);
	return push_admin_result(L, console_cur, lua_tostring(L, -1));
}

static int
l_att_analyze(lua_State *L)
{
	int64_t id = console_check_contact(L, 1);
	const char *type = console_word(L, 2);
	if (!lua_isnoneornil(L, 3))
		luaL_checktype(L, 3, LUA_TTABLE);
	bool use_cache = console_opt_bool(L, 3, "cache", true);
	const char *line = lua_pushfstring(L, "analyze %I %s%s", (LUAI_UACINT)id, type,
	                                   use_cache ? "" : " refresh");
	return push_admin_result(L, console_cur, line);
}

/* admin("cache list 42") → the whole reply {ok, result | error}. */
static int
l_admin(lua_State *L)
{
	const char *line = luaL_checkstring(L, 1);
	luaL_argcheck(L, !strchr(line, '\n'), 1, "one line expected");
	char err[1024];
	char *text = admin_request(console_cur, line, err, sizeof err);
	json_t *doc = text ? admin_reply_doc(text, err, sizeof err) : NULL;
	free(text);
	if (!doc)
		return luaL_error(L, "%s", err);
	luajson_push_owned(L, doc);
	return 1;
}

/* ":cache list" at the prompt: the reply as the server wrote it. */
void
console_raw_command(struct console *c, const char *line)
{
	char err[1024];
	char *text = admin_request(c, line, err, sizeof err);
	if (!text) {
		console_report(c, err);
		c->failures++;
		return;
	}
	puts(text);
	fflush(stdout);
	free(text);
}

/* The attached console's own functions for rows without a plain send. */
const struct console_handler console_attach_handlers[] = {
	{ "analyze", l_att_analyze },
	{ "admin", l_admin },
	{ NULL, NULL },
};
