/*
 * change_refresh — refreshes what people look at when its data changes.
 *
 * The invalidation listener hands each changed contact to
 * change_refresh_note(). After a short quiet period (the NOTIFYs of one
 * commit arrive together, and a generation started between them would read
 * half of the change and be thrown away) it asks the analysis to refresh
 * the contact's entries a person was answered from within the window, in
 * the background lane. The next click on that contact is then a hit, not a
 * wait for the model past the grace. Owns one timer per pending contact.
 */
#ifndef RAPPORT_CHANGE_REFRESH_H
#define RAPPORT_CHANGE_REFRESH_H

#include <stdint.h>

struct event_base;
typedef struct analysis analysis;
typedef struct change_refresh change_refresh;

/* within_ms: how recently an entry must have been viewed to be refreshed
 * on a change (> 0); delay_ms: the quiet period. */
/* The NOTIFYs of one commit arrive within a few milliseconds. */
#define CHANGE_REFRESH_QUIET_MS 200

change_refresh *change_refresh_create(struct event_base *base, analysis *an, double within_ms,
                                      long delay_ms);
/* Pending contacts are dropped, nothing is started. */
void change_refresh_destroy(change_refresh *cr);
/* The contact's data changed (contact_id >= 0; a reset of every contact
 * refreshes nothing: that would be a stampede). */
void change_refresh_note(change_refresh *cr, int64_t contact_id);

#endif
