/*
 * check — compile, lint, test every script; see check.h.
 *
 * Fixture files are test data, but Lua: each is read by the script host
 * (script_read_fixtures) in a state of its own with the script's guards
 * and a `case{…}` constructor that remembers the line it was written on;
 * its cases cross into the script's sandbox as JSON, exactly as a real
 * context would.
 */
#include "check.h"
#include "luajson.h"
#include "query_columns.h"
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>


/* luacheck, against exactly the sandbox's globals (script_sandbox_globals):
 * anything else a script touches is an undefined global there, as it would
 * be at run time; a library's fields are named one by one, so a field the
 * sandbox leaves out (string.dump, os.execute) is reported too. */
static int
lint(const char *dir)
{
	char **argv = NULL;
	int n = 0, cap = 0;
	char **owned = NULL;
	int nowned = 0;
#define ARG(x) do { if (n == cap) argv = xrealloc(argv, sizeof *argv * (size_t)(cap = cap ? cap * 2 : 64)); argv[n++] = (x); } while (0)
	ARG("luacheck");
	ARG("--no-config");
	ARG("--std");
	ARG("none");
	ARG("--formatter");
	ARG("plain");
	ARG("--codes");
	ARG("--no-max-line-length");
	/* Fixture files are data read with case{}: not linted. luacheck
	 * matches the glob against the path as given, so name it under dir. */
	char *fixtures = xasprintf("%s/tests/*", dir);
	ARG("--exclude-files");
	ARG("*/tests/*");
	ARG(fixtures);
	ARG("--read-globals");
	for (const struct script_global *g = script_sandbox_globals; g->name; g++) {
		if (!g->fields) {
			ARG((char *)g->name);
			continue;
		}
		for (const char *const *f = g->fields; *f; f++) {
			owned = xrealloc(owned, sizeof *owned * (size_t)(nowned + 1));
			owned[nowned] = xasprintf("%s.%s", g->name, *f);
			ARG(owned[nowned++]);
		}
	}
	ARG("--");
	ARG((char *)dir);
	ARG(NULL);
#undef ARG
	fflush(stdout);
	pid_t pid = fork();
	int rc = -1;
	if (pid == 0) {
		/* main() ignores SIGHUP and SIGPIPE for rapport's own sake, and an
		 * ignored signal stays ignored across exec: give luacheck the
		 * defaults it would get from a shell. */
		signal(SIGHUP, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		dup2(STDOUT_FILENO, STDERR_FILENO);
		execvp(argv[0], argv);
		fprintf(stderr, "luacheck: %s (install Debian's lua-check)\n", strerror(errno));
		_exit(127);
	}
	if (pid > 0) {
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	}
	for (int i = 0; i < nowned; i++)
		free(owned[i]);
	free(owned);
	free(fixtures);
	free(argv);
	return rc;
}

/* Whether every key of want is in got with an equal (or, for objects,
 * recursively contained) value. path gets where they differ. */
static bool
subset(const json_t *want, const json_t *got, char *path, size_t len)
{
	if (json_is_object(want)) {
		if (!json_is_object(got))
			return false;
		const char *k;
		json_t *v;
		json_object_foreach((json_t *)want, k, v) {
			size_t n = strlen(path);
			snprintf(path + n, len - n, ".%s", k);
			if (!subset(v, json_object_get(got, k), path, len))
				return false;
			path[n] = '\0';
		}
		return true;
	}
	if (json_is_number(want) && json_is_number(got))
		return json_number_value(want) == json_number_value(got);
	return json_equal(want, got);
}

static char *
dump(const json_t *v)
{
	return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS) : xstrdup("(nothing)");
}

static int check_prompt_sample(qcols *qc, script *s, char **error, char **note);

struct tally {
	int passed, failed;
};

/* One case: ctx → prompt → (reply → post) against the expectations. */
static void
run_case(script *s, const char *file, const json_t *c, struct tally *t)
{
	const char *name = json_string_value(json_object_get(c, "name"));
	int line = (int)json_integer_value(json_object_get(c, "_line"));
	char err[1024] = "", path[256] = "";
	char why[2048] = "";
	json_t *req = NULL, *result = NULL;
	const char *want_error = json_string_value(json_object_get(c, "error"));
	script_run *run = script_run_new(s, 1, "1970-01-01T00:00:00Z");
	const json_t *ctx = json_object_get(c, "ctx");
	if (!ctx || !script_run_set_ctx_json(run, ctx, err, sizeof err)) {
		snprintf(why, sizeof why, "bad ctx: %s", ctx ? err : "the case has no ctx");
		goto done;
	}
	req = script_run_request(run, err, sizeof err);
	if (!req)
		goto check_error;
	const json_t *msgs = json_object_get(req, "messages");
	const json_t *want_msgs = json_object_get(c, "messages");
	if (want_msgs && !json_equal(want_msgs, msgs)) {
		char *g = dump(msgs);
		snprintf(why, sizeof why, "messages differ; got %.1500s", g);
		free(g);
		goto done;
	}
	const json_t *contain = json_object_get(c, "messages_contain");
	size_t i;
	json_t *needle;
	json_array_foreach(contain, i, needle) {
		bool found = false;
		size_t k;
		json_t *m;
		json_array_foreach(msgs, k, m)
			if (strstr(json_string_value(json_object_get(m, "content")), json_string_value(needle)))
				found = true;
		if (!found) {
			snprintf(why, sizeof why, "no message contains \"%s\"", json_string_value(needle));
			goto done;
		}
	}
	const char *reply = json_string_value(json_object_get(c, "reply"));
	if (reply) {
		const char *fr = json_string_value(json_object_get(c, "finish_reason"));
		result = script_run_post(run, reply, fr ? fr : "stop", "fixture", err, sizeof err);
		if (!result)
			goto check_error;
		const json_t *want = json_object_get(c, "result");
		if (want && !subset(want, result, path, sizeof path)) {
			char *w = dump(json_object_get(c, "result")), *g = dump(result);
			snprintf(why, sizeof why, "result%s differs: expected %.600s, got %.900s", path, w, g);
			free(w);
			free(g);
		}
	}
	if (!why[0] && want_error)
		snprintf(why, sizeof why, "expected an error containing \"%s\", got none", want_error);
	goto done;
check_error:
	if (!want_error)
		snprintf(why, sizeof why, "%s", err);
	else if (!strstr(err, want_error))
		snprintf(why, sizeof why, "expected an error containing \"%s\", got: %s", want_error, err);
done:
	if (why[0]) {
		printf("FAIL %s:%d: %s: %s\n", file, line, name ? name : "(unnamed case)", why);
		t->failed++;
	} else {
		printf("ok   %s:%d: %s\n", file, line, name ? name : "(unnamed case)");
		t->passed++;
	}
	json_decref(req);
	json_decref(result);
	script_run_free(run);
}

/* Loads scripts/tests/<type>.lua (if any) and runs its cases. */
static void
run_fixtures(const char *scripts_dir, const char *type, script *s, struct tally *t)
{
	char *file = xasprintf("%s/tests/%s.lua", scripts_dir, type);
	struct stat st;
	if (stat(file, &st) != 0) {
		printf("note %s: no fixture tests (%s)\n", type, file);
		free(file);
		return;
	}
	char err[1024];
	json_t *cases = script_read_fixtures(s, file, err, sizeof err);
	if (!cases) {
		printf("FAIL %s\n", err);
		t->failed++;
	} else if (!json_is_array(cases)) {
		printf("FAIL %s: must return a list of case{...}\n", file);
		t->failed++;
	} else {
		size_t i;
		json_t *c;
		json_array_foreach(cases, i, c)
			run_case(s, file, c, t);
	}
	json_decref(cases);
	free(file);
}

int
check_run(const struct config *cfg, const struct script_limits *limits, bool do_lint)
{
	script_registry *r = script_registry_create(cfg->scripts_dir, cfg->prompts_dir, cfg->model,
	                                            limits);
	int failed = script_registry_reload(r);
	int n = script_registry_count(r);
	struct tally t = { 0, 0 };
	qcols *qc = qcols_create(cfg->database_url);
	int unchecked = 0;
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *s;
		script_registry_entry(r, i, &name, &s, &error);
		if (error) {
			printf("FAIL %s\n", error);
			continue;
		}
		printf("ok   %s compiles (version %.8s)\n", name, script_info(s)->version);
		run_fixtures(cfg->scripts_dir, name, s, &t);
		char *perr = NULL, *note = NULL;
		int rc = check_prompt_sample(qc, s, &perr, &note);
		if (rc > 0) {
			printf("ok   %s: prompt renders on a sample context from its queries' columns\n", name);
		} else if (rc < 0) {
			printf("FAIL %s\n", perr);
			t.failed++;
		} else if (note && strstr(note, "sample context")) {
			printf("note %s\n", note);
		} else if (note) {
			unchecked++;
		}
		free(perr);
		free(note);
	}
	if (unchecked)
		printf("note placeholders of %d script%s not checked against their queries' columns: the "
		       "database cannot be reached (%s). Start the demo with 'make run' (its "
		       "var/run/env is read here) or set DATABASE_URL.\n",
		       unchecked, unchecked == 1 ? "" : "s",
		       qcols_unreachable(qc) ? qcols_unreachable(qc) : "unknown");
	qcols_destroy(qc);
	int lint_rc = 0;
	if (do_lint) {
		lint_rc = lint(cfg->scripts_dir);
		printf("%s luacheck %s\n", lint_rc == 0 ? "ok  " : "FAIL", cfg->scripts_dir);
	}
	printf("%d scripts, %d failed to compile; %d fixture cases passed, %d failed; lint %s\n",
	       n, failed, t.passed, t.failed, !do_lint ? "skipped" : lint_rc == 0 ? "clean" : "failed");
	script_registry_destroy(r);
	return failed || t.failed || lint_rc || n == 0 ? 1 : 0;
}

bool
check_prompt_smoke(void *arg, script *s, char **error)
{
	const struct script_info *si = script_info(s);
	char *file = xasprintf("%s/tests/%s.lua", script_registry_scripts_dir(arg), si->name);
	struct stat st;
	bool ok = true;
	if (si->has_run || stat(file, &st) != 0) {
		free(file);              /* nothing to render it with */
		return true;
	}
	char err[1024] = "";
	/* A fixture that cannot be read is `rapport check`'s to report: the
	 * version is refused only when the file fails (it cannot hang: it runs
	 * under the script's own guards). */
	json_t *cases = script_read_fixtures(s, file, err, sizeof err);
	if (!cases) {
		*error = xasprintf("scripts/%s.lua: its fixture file cannot be read: %s", si->name, err);
		free(file);
		return false;
	}
	const json_t *first = json_array_get(cases, 0);
	const json_t *ctx = json_object_get(first, "ctx");
	if (ctx && !json_object_get(first, "error")) {
		script_run *run = script_run_new(s, 1, "1970-01-01T00:00:00Z");
		json_t *req = NULL;
		if (!script_run_set_ctx_json(run, ctx, err, sizeof err) ||
		    !(req = script_run_request(run, err, sizeof err))) {
			*error = xasprintf("scripts/%s.lua: prompt(ctx) fails on its fixture %s:%d: %s", si->name, file,
			                   (int)json_integer_value(json_object_get(first, "_line")), err);
			ok = false;
		}
		json_decref(req);
		script_run_free(run);
	}
	json_decref(cases);
	free(file);
	return ok;
}

/* prompt(ctx) on a ctx made from the queries' columns: 1 rendered, 0 not
 * checked (columns unknown, or an error that is not a placeholder's; *note
 * says why), -1 failed (*error). */
static int
check_prompt_sample(qcols *qc, script *s, char **error, char **note)
{
	const struct script_info *si = script_info(s);
	if (si->has_run)
		return 0;       /* run(ctx) does its own I/O: nothing to render */
	script_run *run = script_run_new(s, 1, "2026-02-01T09:00:00Z");
	char *why = NULL;
	int built = qcols_sample_ctx(qc, s, run, &why);
	int rc = built;
	if (built == 0) {
		*note = why;
	} else if (built < 0) {
		*error = xasprintf("scripts/%s.lua: %s", si->name, why);
		free(why);
	} else {
		char err[1024] = "";
		json_t *req = script_run_request(run, err, sizeof err);
		/* Only a placeholder the vars cannot fill is the script's fault
		 * for sure: sample values are not real data, so any other error
		 * on them (a helper that wants a real date, a runaway loop the
		 * guards stopped) is reported, not refused. */
		if (!req && strstr(err, "placeholder")) {
			*error = xasprintf("scripts/%s.lua: prompt(ctx) fails on a sample context built from "
			                   "its queries' columns (one row each): %s",
			                   si->name, err);
			rc = -1;
		} else if (!req) {
			*note = xasprintf("%s: prompt(ctx) fails on a sample context built from its queries' "
			                  "columns (not counted: sample values are not real data): %s",
			                  si->name, err);
			rc = 0;
		}
		json_decref(req);
	}
	script_run_free(run);
	return rc;
}

bool
check_prompt(void *arg, script *s, char **error)
{
	struct check_validator *cv = arg;
	if (!check_prompt_smoke(cv->scripts, s, error))
		return false;
	if (!cv->columns)
		return true;
	char *note = NULL;
	int rc = check_prompt_sample(cv->columns, s, error, &note);
	free(note);
	return rc >= 0;
}
