/*
 * change_refresh — see change_refresh.h. A contact already pending is not
 * re-armed: its timer fires delay_ms after the first NOTIFY of a burst, so
 * a contact written to without pause is still refreshed, once per period.
 */
#include "change_refresh.h"
#include "analysis.h"
#include "log.h"
#include "util.h"

#include <event2/event.h>
#include <stdlib.h>

struct pending {
	change_refresh *cr;
	int64_t contact_id;
	struct event *timer;
	struct pending *next;
};

struct change_refresh {
	struct event_base *base;
	analysis *an;
	double within_ms;
	long delay_ms;
	struct pending *head;       /* few at a time: a list is enough */
};

change_refresh *
change_refresh_create(struct event_base *base, analysis *an, double within_ms, long delay_ms)
{
	change_refresh *cr = xcalloc(1, sizeof *cr);
	cr->base = base;
	cr->an = an;
	cr->within_ms = within_ms;
	cr->delay_ms = delay_ms < 0 ? 0 : delay_ms;
	return cr;
}

static void
pending_free(struct pending *p)
{
	event_free(p->timer);
	free(p);
}

void
change_refresh_destroy(change_refresh *cr)
{
	if (!cr)
		return;
	while (cr->head) {
		struct pending *p = cr->head;
		cr->head = p->next;
		pending_free(p);
	}
	free(cr);
}

static void
on_quiet(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pending *p = arg;
	change_refresh *cr = p->cr;
	for (struct pending **pp = &cr->head; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	int n = analysis_refresh_viewed(cr->an, p->contact_id, cr->within_ms);
	if (n > 0)
		log_event(LOG_DEBUG, "refresh on change", LOG_I("contact", p->contact_id),
		          LOG_I("entries", n), LOG_END);
	pending_free(p);
}

void
change_refresh_note(change_refresh *cr, int64_t contact_id)
{
	if (!cr || contact_id < 0)
		return;
	for (struct pending *p = cr->head; p; p = p->next)
		if (p->contact_id == contact_id)
			return;
	struct pending *p = xcalloc(1, sizeof *p);
	p->cr = cr;
	p->contact_id = contact_id;
	p->timer = evtimer_new(cr->base, on_quiet, p);
	p->next = cr->head;
	cr->head = p;
	struct timeval tv = { cr->delay_ms / 1000, (cr->delay_ms % 1000) * 1000 };
	evtimer_add(p->timer, &tv);
}
