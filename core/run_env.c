/*
 * run_env — reads var/run/env (see run_env.h). The file is shell syntax so
 * people can `. var/run/env` too; only KEY=value and KEY='value' lines of
 * the known keys are taken, anything else is ignored.
 */
#include "run_env.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const run_env_keys[] = { "DATABASE_URL", "OPENAI_BASE_URL", "RAPPORT_LISTEN",
                                            NULL };

bool
run_env_apply(const char *path, char **note)
{
	*note = NULL;
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	char line[4096];
	int applied = 0;
	char *db = NULL;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = '\0';
		char *eq = strchr(line, '=');
		if (!eq || line[0] == '#')
			continue;
		*eq = '\0';
		char *v = eq + 1;
		size_t n = strlen(v);
		if (n >= 2 && v[0] == '\'' && v[n - 1] == '\'') {
			v[n - 1] = '\0';
			v++;
		}
		for (const char *const *k = run_env_keys; *k; k++) {
			if (strcmp(line, *k) != 0 || getenv(*k))
				continue;
			setenv(*k, v, 0);
			applied++;
			if (strcmp(*k, "DATABASE_URL") == 0) {
				free(db);
				db = xstrdup(v);
			}
		}
	}
	fclose(f);
	if (!applied || !db) {
		free(db);
		return applied > 0;
	}
	*note = xasprintf("rapport: using the demo of 'make run' from %s (DATABASE_URL=%s); "
	                  "set DATABASE_URL to use another database", path, db);
	free(db);
	return true;
}
