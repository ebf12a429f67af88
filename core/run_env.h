/*
 * run_env — the demo's settings for commands run by hand next to `make run`.
 *
 * tools/run.sh writes var/run/env (KEY='value' lines: DATABASE_URL,
 * OPENAI_BASE_URL, RAPPORT_LISTEN of the live run). `rapport console`,
 * `analyze` and `check` started from the repository with no DATABASE_URL
 * (and no --database-url or config file naming one) take those values, so
 * they reach the same database and upstream as the demo server. Nothing the
 * environment or a flag already sets is overridden.
 */
#ifndef RAPPORT_RUN_ENV_H
#define RAPPORT_RUN_ENV_H

#include <stdbool.h>

#define RUN_ENV_FILE "var/run/env"

/* Reads path and setenv()s each known key not set yet. Returns true when
 * it applied the file (then *note, malloc'd, says so for stderr); false
 * when there is no such file or it names nothing. */
bool run_env_apply(const char *path, char **note);

#endif
