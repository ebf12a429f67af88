/*
 * watch — tells when files under the script and prompt folders change, so a
 * saved edit goes live without a restart. inotify on the event loop, with a
 * short quiet period so an editor's burst of writes is one reload.
 */
#ifndef RAPPORT_WATCH_H
#define RAPPORT_WATCH_H

struct event_base;
typedef struct watch watch;
typedef void watch_cb(void *arg);

/* Watches each folder of the NULL-terminated list (missing ones are
 * skipped); cb runs once per burst of changes. NULL if inotify fails. */
watch *watch_create(struct event_base *base, const char *const *dirs, watch_cb *cb, void *arg);
void watch_destroy(watch *w);

#endif
