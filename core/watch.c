/*
 * watch — inotify descriptors and a debounce timer. Owns the inotify fd, its
 * read event and the timer; the callback only learns "something changed",
 * since a reload recompiles and compares versions anyway.
 */
#include "watch.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <event2/event.h>

#define QUIET_MS 100

struct watch {
	int fd;
	struct event *read_ev, *timer;
	watch_cb *cb;
	void *arg;
};

static void
on_quiet(evutil_socket_t fd, short what, void *arg)
{
	watch *w = arg;
	w->cb(w->arg);
}

static void
on_inotify(evutil_socket_t fd, short what, void *arg)
{
	watch *w = arg;
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
	bool changed = false;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n <= 0)
			break;
		for (char *p = buf; p < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)p;
			/* Editors' swap and backup files are not sources. */
			if (!(ev->len && (ev->name[0] == '.' || ev->name[strlen(ev->name) - 1] == '~')))
				changed = true;
			p += sizeof *ev + ev->len;
		}
	}
	if (changed) {
		struct timeval tv = { 0, QUIET_MS * 1000 };
		evtimer_add(w->timer, &tv);     /* re-arming restarts the quiet period */
	}
}

watch *
watch_create(struct event_base *base, const char *const *dirs, watch_cb *cb, void *arg)
{
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fd < 0) {
		log_event(LOG_WARN, "inotify unavailable: edits need SIGHUP to go live",
		          LOG_S("error", strerror(errno)), LOG_END);
		return NULL;
	}
	for (; *dirs; dirs++) {
		if (inotify_add_watch(fd, *dirs, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
		                                 IN_CREATE | IN_DELETE | IN_ATTRIB) < 0)
			log_event(LOG_WARN, "cannot watch folder", LOG_S("path", *dirs),
			          LOG_S("error", strerror(errno)), LOG_END);
	}
	watch *w = xcalloc(1, sizeof *w);
	w->fd = fd;
	w->cb = cb;
	w->arg = arg;
	w->timer = evtimer_new(base, on_quiet, w);
	w->read_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_inotify, w);
	event_add(w->read_ev, NULL);
	return w;
}

void
watch_destroy(watch *w)
{
	if (!w)
		return;
	event_free(w->read_ev);
	event_free(w->timer);
	close(w->fd);
	free(w);
}
