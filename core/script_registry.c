/*
 * script_registry — type names → their serving script. A reload compiles
 * every file of the folder into new scripts and swaps in what compiled (and
 * passed the validator); a file that fails keeps its previous version.
 * Each type also keeps the last REG_RETIRED_MAX versions it served, so a
 * vote on a result of an earlier version is told from a made-up one
 * (script_registry_knows_version, http_feedback.c).
 */
#include "script_int.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the registry ----------------------------------------------------- */

script_registry *
script_registry_create(const char *scripts_dir, const char *prompts_dir,
                       const char *default_model, const struct script_limits *limits)
{
	script_registry *r = xcalloc(1, sizeof *r);
	r->scripts_dir = xstrdup(scripts_dir);
	r->prompts_dir = xstrdup(prompts_dir);
	r->default_model = xstrdup(default_model);
	r->limits = *limits;
	return r;
}

static bool
valid_type_name(const char *n)
{
	if (!*n)
		return false;
	for (; *n; n++)
		if (!islower((unsigned char)*n) && !isdigit((unsigned char)*n) && *n != '_')
			return false;
	return true;
}

static void
entry_clear(struct reg_entry *e)
{
	free(e->name);
	free(e->error);
	script_unref(e->current);
}

/* version stops serving: first in e's retired list (once), the oldest
 * dropped past REG_RETIRED_MAX. */
static void
entry_retire(struct reg_entry *e, const char *version)
{
	int k = 0;
	while (k < e->nretired && strcmp(e->retired[k], version) != 0)
		k++;
	if (k == e->nretired && e->nretired < REG_RETIRED_MAX)
		e->nretired++;
	if (k == REG_RETIRED_MAX)
		k--;
	memmove(e->retired[1], e->retired[0], (size_t)k * sizeof e->retired[0]);
	snprintf(e->retired[0], sizeof e->retired[0], "%s", version);
}

void
script_registry_destroy(script_registry *r)
{
	if (!r)
		return;
	for (int i = 0; i < r->n; i++)
		entry_clear(&r->entries[i]);
	free(r->entries);
	script_service_free(&r->service);
	free(r->scripts_dir);
	free(r->prompts_dir);
	free(r->default_model);
	free(r);
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static struct reg_entry *
find_entry(const script_registry *r, const char *name)
{
	for (int i = 0; i < r->n; i++)
		if (strcmp(r->entries[i].name, name) == 0)
			return &r->entries[i];
	return NULL;
}

int
script_registry_reload(script_registry *r)
{
	DIR *d = opendir(r->scripts_dir);
	if (!d) {
		log_event(LOG_ERROR, "cannot open scripts folder", LOG_S("path", r->scripts_dir),
		          LOG_S("error", strerror(errno)), LOG_END);
		return 1;
	}
	char **names = NULL;
	int nnames = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		if (len <= 4 || strcmp(de->d_name + len - 4, ".lua") != 0 || de->d_name[0] == '.')
			continue;
		names = xrealloc(names, sizeof(char *) * (size_t)(nnames + 1));
		names[nnames++] = xstrndup(de->d_name, len - 4);
	}
	closedir(d);
	if (nnames > 1)
		qsort(names, (size_t)nnames, sizeof(char *), cmp_names);

	struct reg_entry *next = xcalloc((size_t)nnames + 1, sizeof *next);
	int failures = 0;
	for (int i = 0; i < nnames; i++) {
		struct reg_entry *old = find_entry(r, names[i]);
		struct reg_entry *e = &next[i];
		e->name = names[i];
		char *error = NULL;
		script *s = NULL;
		if (!valid_type_name(names[i]))
			error = xasprintf("%s/%s.lua: type names may only use a-z, 0-9 and _",
			                  r->scripts_dir, names[i]);
		else
			s = script_load(r, names[i], &error);
		/* Compiled is not enough: a version that cannot render its own
		 * fixture's prompt must not replace one that can. */
		if (s && r->validate && !r->validate(r->validate_arg, s, &error)) {
			script_unref(s);
			s = NULL;
		}
		if (old) {
			memcpy(e->retired, old->retired, sizeof e->retired);
			e->nretired = old->nretired;
		}
		if (s) {
			e->current = s;
			if (old && old->current && strcmp(old->current->version, s->version) != 0)
				entry_retire(e, old->current->version);
			if (!old || !old->current || strcmp(old->current->version, s->version) != 0)
				log_event(LOG_INFO, "script loaded", LOG_S("type", e->name),
				          LOG_S("version", s->version), LOG_END);
		} else {
			failures++;
			e->error = error;
			/* The previous version keeps serving until a good edit. */
			if (old && old->current) {
				e->current = old->current;
				script_ref(e->current);
			}
			log_event(LOG_ERROR, "script failed to load", LOG_S("type", e->name),
			          LOG_S("error", error),
			          LOG_S("serving", e->current ? e->current->version : NULL), LOG_END);
		}
	}
	for (int i = 0; i < r->n; i++) {
		if (!find_entry(&(script_registry){ .entries = next, .n = nnames }, r->entries[i].name))
			log_event(LOG_INFO, "script removed", LOG_S("type", r->entries[i].name), LOG_END);
		entry_clear(&r->entries[i]);
	}
	free(r->entries);
	free(names);
	r->entries = next;
	r->n = nnames;
	/* A queries.lua that fails keeps the previous service queries (each
	 * script that requires it reports the error as its own load error). */
	script_service_load(r->scripts_dir, &r->service);
	return failures;
}

void
script_registry_set_validator(script_registry *r, script_validator *fn, void *arg)
{
	r->validate = fn;
	r->validate_arg = arg;
}

const char *
script_registry_scripts_dir(const script_registry *r)
{
	return r->scripts_dir;
}

script *
script_registry_get(script_registry *r, const char *type)
{
	struct reg_entry *e = find_entry(r, type);
	return e ? e->current : NULL;
}

bool
script_registry_knows_version(const script_registry *r, const char *type, const char *version8)
{
	const struct reg_entry *e = find_entry(r, type);
	if (!e || !version8 || strlen(version8) != 8)
		return false;
	if (e->current && strncmp(e->current->version, version8, 8) == 0)
		return true;
	for (int k = 0; k < e->nretired; k++)
		if (strncmp(e->retired[k], version8, 8) == 0)
			return true;
	return false;
}

json_t *
script_registry_describe(const script_registry *r)
{
	json_t *list = json_array();
	int n = script_registry_count(r);
	for (int i = 0; i < n; i++) {
		const char *name, *error;
		script *cur;
		script_registry_entry(r, i, &name, &cur, &error);
		json_t *t = json_object();
		json_object_set_new(t, "name", json_string(name));
		if (cur) {
			const struct script_info *si = script_info(cur);
			json_object_set_new(t, "version", json_stringn(si->version, 8));
			json_object_set_new(t, "description", json_string(si->description));
			json_object_set_new(t, "model", json_string(si->model));
			json_object_set_new(t, "ttl", json_real(si->ttl_ms / 1000.0));
			json_object_set_new(t, "stale_ttl", json_real(si->stale_ttl_ms / 1000.0));
			json_t *qs = json_array();
			for (int k = 0; k < si->nqueries; k++)
				json_array_append_new(qs, json_string(si->queries[k].name));
			json_object_set_new(t, "queries", qs);
			json_object_set_new(t, "structured", json_boolean(si->schema != NULL));
			json_object_set_new(t, "has_fallback", json_boolean(si->has_fallback));
		}
		json_object_set_new(t, "loaded", json_boolean(cur != NULL));
		json_object_set_new(t, "error", error ? json_string(error) : json_null());
		json_array_append_new(list, t);
	}
	return list;
}

json_t *
script_registry_errors(const script_registry *r)
{
	json_t *list = json_array();
	for (int i = 0; i < r->n; i++) {
		const struct reg_entry *e = &r->entries[i];
		if (e->error)
			json_array_append_new(list, json_pack("{s:s,s:s,s:b}", "type", e->name, "error",
			                                      e->error, "serving_old_version",
			                                      e->current != NULL));
	}
	return list;
}

int
script_registry_count(const script_registry *r)
{
	return r->n;
}

void
script_registry_entry(const script_registry *r, int i, const char **name, script **current,
                      const char **error)
{
	*name = r->entries[i].name;
	*current = r->entries[i].current;
	*error = r->entries[i].error;
}
