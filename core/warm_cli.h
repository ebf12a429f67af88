/*
 * warm_cli — `rapport warm`: start a warm job and follow it to the end.
 *
 * Against a running server (default): POST /v1/warm, then GET
 * /v1/jobs/{id} every half second, over libcurl's easy API (a CLI may
 * block), JSON by jansson. With --local: the same job run in this process
 * (main builds the pipeline, the state connection and a jobs runner that
 * claims only this job's items) on its event loop.
 *
 * Output on stdout: on a terminal a progress bar redrawn in place, else one
 * plain line whenever the counts change; a summary at the end. Exit status:
 * 0 when every item was done or skipped, 1 when items failed or the job
 * could not run, 2 on usage errors, 130 after Ctrl-C. Ctrl-C on a terminal
 * asks "cancel job N? [y/N]": y cancels it (DELETE), anything else leaves
 * it running on the server and exits; without a terminal it cancels
 * without asking.
 */
#ifndef RAPPORT_WARM_CLI_H
#define RAPPORT_WARM_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "config.h"
#include "jobs.h"
#include "state.h"

struct event_base;

struct warm_opts {
	int top;                 /* --top N */
	char *contacts;          /* --contacts 1,2,3 */
	char *types;             /* --types a,b */
	char *url;               /* --url http://host:port */
	char *key;               /* --key KEY */
	bool local;              /* --local */
};

/* Takes warm's own flags out of args (before config_load sees them as
 * unknown); returns the count left. false with *err (caller frees) on a
 * bad value. */
bool warm_take_flags(int *nargs, char **args, struct warm_opts *o, char **err);
void warm_opts_free(struct warm_opts *o);

/* The request body for the options: {"top":N} or {"contacts":[…]}, and
 * "types" when given. NULL with *err (caller frees) on bad values. */
json_t *warm_request_body(const struct warm_opts *o, char **err);

/* One progress line for a job document ({"id",…}): with bar, a bar of
 * `width` cells first. Pure, for the unit tests. */
void warm_progress_line(const json_t *job, bool bar, int width, char *out, size_t len);

/* What --local runs on (built by main). */
struct warm_local {
	struct event_base *base;
	jobs *jobs;
	state_db *state;
	script_registry *scripts;
};

int warm_main(const struct config *cfg, const struct warm_opts *o, const struct warm_local *local);

#endif
