/*
 * check — `rapport check`: compile every analysis script, lint it with
 * luacheck against exactly the sandbox's globals, and run its fixture tests
 * (scripts/tests/<type>.lua: context → expected messages, model reply →
 * expected result). Prints one line per finding, file:line first, and
 * returns the process exit status (0 when everything passed).
 */
#ifndef RAPPORT_CHECK_H
#define RAPPORT_CHECK_H

#include "config.h"
#include "script.h"

/* lint: run luacheck (when it is installed; a missing luacheck is an error
 * unless lint is false). */
int check_run(const struct config *cfg, const struct script_limits *limits, bool lint);

/* A script_validator: the new version's prompt(ctx) must render the ctx of
 * the first case in scripts/tests/<type>.lua (when there is one). arg is
 * the script registry. */
bool check_prompt_smoke(void *arg, script *s, char **error);

/* A script_validator: check_prompt_smoke, then prompt(ctx) must render a
 * ctx built from its queries' columns (query_columns.h), so a placeholder
 * the script's vars cannot fill fails the load even without fixtures. */
struct qcols;
struct check_validator {
	script_registry *scripts;
	struct qcols *columns;
};
bool check_prompt(void *arg, script *s, char **error);

#endif
