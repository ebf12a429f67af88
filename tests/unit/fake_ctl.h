/*
 * fake_ctl.h — the unit tests' hand on the fake upstream's control
 * endpoints (/_fake/reset, /_fake/config, /_fake/stats), shared by the
 * tests that talk to build/fake_openai (test_llm, test_analysis).
 *
 * fake_ctl_init() takes TEST_OPENAI_BASE_URL and keeps its
 * scheme://host:port; every call after it is a blocking curl_easy request,
 * made between steps when the test's loop has nothing of ours to do (never
 * what the server does). Static inline, so a test that uses only some of
 * them builds clean under -Wunused-function.
 */
#ifndef RAPPORT_TEST_FAKE_CTL_H
#define RAPPORT_TEST_FAKE_CTL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

static char ctl_root[512];    /* scheme://host:port of the fake */

/* Keeps base_url without its path (…/v1) as the control root. */
static inline void
fake_ctl_init(const char *base_url)
{
	const char *p = strstr(base_url, "://");
	p = p ? strchr(p + 3, '/') : NULL;
	snprintf(ctl_root, sizeof ctl_root, "%.*s",
	         (int)(p ? (size_t)(p - base_url) : strlen(base_url)), base_url);
}

struct fake_sink {
	char *p;
	size_t len;
};

static inline size_t
fake_sink_write(char *d, size_t s, size_t n, void *arg)
{
	struct fake_sink *k = arg;
	k->p = realloc(k->p, k->len + s * n + 1);
	memcpy(k->p + k->len, d, s * n);
	k->len += s * n;
	k->p[k->len] = '\0';
	return s * n;
}

/* GET path, or POST post_body to it. Returns the parsed JSON reply (the
 * caller decrefs) or NULL, with a TAP comment saying why. */
static inline json_t *
fake_ctl(const char *path, const char *post_body)
{
	CURL *e = curl_easy_init();
	struct fake_sink k = { 0 };
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	char url[600];
	long code = 0;
	json_t *j = NULL;
	snprintf(url, sizeof url, "%s%s", ctl_root, path);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fake_sink_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &k);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 10L);
	if (post_body)
		curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, post_body);
	if (curl_easy_perform(e) == CURLE_OK) {
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
		if (code == 200 && k.p)
			j = json_loads(k.p, 0, NULL);
		else
			printf("# %s -> HTTP %ld %s\n", path, code, k.p ? k.p : "");
	}
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	free(k.p);
	return j;
}

/* Zeroes the counters, restores the settings, empties the failure queue. */
static inline void
fake_reset(void)
{
	json_decref(fake_ctl("/_fake/reset", "{}"));
}

/* Merges a JSON object into the live settings; whether the fake took it. */
static inline int
fake_config(const char *json)
{
	json_t *j = fake_ctl("/_fake/config", json);
	int good = j != NULL;
	json_decref(j);
	return good;
}

/* One integer counter of /_fake/stats (chat_calls, in_flight, …), or -1. */
static inline long
fake_stat(const char *key)
{
	json_t *j = fake_ctl("/_fake/stats", NULL);
	long v = -1;
	if (j && json_is_integer(json_object_get(j, key)))
		v = (long)json_integer_value(json_object_get(j, key));
	json_decref(j);
	return v;
}

#endif
