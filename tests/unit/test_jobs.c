/*
 * test_jobs — the pure parts of warm jobs: the slots a job may hold
 * (ceil(share × cap), at least 1), the ETA, the request body's checks
 * (jobs_spec_parse), and `rapport warm`'s options, request body and
 * progress line.
 */
#include "jobs.h"
#include "luajson.h"
#include "tap.h"
#include "warm_cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const known[] = { "smart_tips", "relationship_health" };

static bool
parse(const char *body, struct jobs_spec *s, const char **code, char *msg)
{
	return jobs_spec_parse(body, strlen(body), known, 2, s, code, msg, 256);
}

int
main(void)
{
	luajson_init();

	/* slots */
	ok(jobs_slots(0.25, 64) == 16, "0.25 of 64 is 16 (%d)", jobs_slots(0.25, 64));
	ok(jobs_slots(0.25, 8) == 2, "0.25 of 8 is 2");
	ok(jobs_slots(0.25, 2) == 1, "0.25 of 2 rounds up to 1");
	ok(jobs_slots(0.25, 10) == 3, "0.25 of 10 rounds up to 3 (%d)", jobs_slots(0.25, 10));
	ok(jobs_slots(0.01, 1) == 1, "never below 1");
	ok(jobs_slots(1.0, 5) == 5, "a share of 1 is the whole cap");
	ok(jobs_slots(0.1, 30) == 3, "0.1 of 30 is 3, not 4 from rounding noise (%d)",
	   jobs_slots(0.1, 30));

	/* eta */
	ok(jobs_eta_s(0, 10, 5.0) == -1, "no rate before the first item");
	ok(jobs_eta_s(5, 0, 5.0) == 0, "nothing left: 0");
	ok(jobs_eta_s(10, 40, 5.0) == 20, "10 in 5 s, 40 left: 20 s (%ld)", jobs_eta_s(10, 40, 5.0));
	ok(jobs_eta_s(3, 1, 1.0) == 1, "rounded up (%ld)", jobs_eta_s(3, 1, 1.0));
	ok(jobs_eta_s(3, 10, 0) == -1, "no elapsed time: unknown");

	/* request bodies */
	struct jobs_spec s;
	const char *code;
	char msg[256];
	ok(parse("{\"contacts\":[5,3,5,1]}", &s, &code, msg) && s.ncontacts == 3 &&
	   s.contacts[0] == 1 && s.contacts[2] == 5 && !s.types && s.top == 0,
	   "contacts: sorted, duplicates dropped, no types = every type");
	jobs_spec_free(&s);
	ok(parse("{\"top\":100,\"types\":[\"smart_tips\",\"smart_tips\"]}", &s, &code, msg) &&
	   s.top == 100 && s.ntypes == 1 && strcmp(s.types[0], "smart_tips") == 0,
	   "top with types, duplicates dropped");
	jobs_spec_free(&s);
	ok(!parse("{\"top\":1,\"types\":[\"x\"]}", &s, &code, msg) &&
	   strcmp(code, "unknown_analysis_type") == 0 && strstr(msg, "\"x\""),
	   "unknown type: its own code, named (%s)", msg);
	ok(!parse("{\"top\":10001}", &s, &code, msg) && strcmp(code, "invalid_body") == 0 &&
	   strstr(msg, "1 to 10000"), "top over the cap (%s)", msg);
	ok(!parse("{\"top\":1,\"contacts\":[1]}", &s, &code, msg) && strstr(msg, "not both"),
	   "both (%s)", msg);
	ok(!parse("{}", &s, &code, msg) && strstr(msg, "\"top\""), "neither (%s)", msg);
	ok(!parse("{\"contacts\":[1,-2]}", &s, &code, msg) && strstr(msg, "[1]"),
	   "a bad id is pointed at (%s)", msg);
	ok(!parse("nope", &s, &code, msg) && strstr(msg, "not valid JSON"), "not JSON (%s)", msg);
	ok(!parse("{\"top\":1,\"extra\":2}", &s, &code, msg) && strstr(msg, "\"extra\""),
	   "unknown field named (%s)", msg);
	char big[8192];
	size_t n = (size_t)snprintf(big, sizeof big, "{\"contacts\":[");
	for (int i = 1; i <= JOBS_MAX_CONTACTS + 1; i++)
		n += (size_t)snprintf(big + n, sizeof big - n, "%s%d", i > 1 ? "," : "", i);
	snprintf(big + n, sizeof big - n, "]}");
	ok(!parse(big, &s, &code, msg) && strstr(msg, "too many contacts: 1001"),
	   "more contacts than the cap (%s)", msg);
	ok(!jobs_spec_parse("", 0, known, 2, &s, &code, msg, sizeof msg) &&
	   strstr(msg, "JSON object"), "empty body (%s)", msg);

	/* rapport warm: options and body */
	struct warm_opts o = { 0 };
	char *err = NULL;
	char *argv[] = { "--top", "5", "--types=smart_tips", "--listen", "x:1", "--local", NULL };
	int argc = 6;
	ok(warm_take_flags(&argc, argv, &o, &err) && argc == 2 && o.top == 5 && o.local &&
	   strcmp(o.types, "smart_tips") == 0 && strcmp(argv[0], "--listen") == 0,
	   "warm's flags taken out, the rest left for config_load");
	json_t *b = warm_request_body(&o, &err);
	char *t = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS);
	ok(t && strcmp(t, "{\"top\":5,\"types\":[\"smart_tips\"]}") == 0, "body %s", t);
	free(t);
	json_decref(b);
	warm_opts_free(&o);
	char *argv2[] = { "--contacts", " 1, 2 ,3", NULL };
	argc = 2;
	warm_take_flags(&argc, argv2, &o, &err);
	b = warm_request_body(&o, &err);
	t = json_dumps(b, JSON_COMPACT);
	ok(t && strcmp(t, "{\"contacts\":[1,2,3]}") == 0, "contacts list, blanks allowed: %s", t);
	free(t);
	json_decref(b);
	warm_opts_free(&o);
	char *argv3[] = { "--top", "0", NULL };
	argc = 2;
	ok(!warm_take_flags(&argc, argv3, &o, &err) && strstr(err, "--top"), "--top 0: %s", err);
	free(err);
	warm_opts_free(&o);
	char *argv4[] = { "--contacts", "1,a", NULL };
	argc = 2;
	warm_take_flags(&argc, argv4, &o, &err);
	ok(!warm_request_body(&o, &err) && strstr(err, "\"a\""), "a bad id: %s", err);
	free(err);
	warm_opts_free(&o);
	argc = 0;
	ok(!warm_request_body(&o, &err) && strstr(err, "--top N"), "neither: %s", err);
	free(err);

	/* the progress line */
	json_t *job = json_loads("{\"id\":7,\"state\":\"running\",\"total\":40,\"completed\":10,"
	                         "\"done\":6,\"skipped\":{\"fresh\":3,\"revalidated\":1},"
	                         "\"failed\":0,\"eta_s\":12}", 0, NULL);
	char line[256];
	warm_progress_line(job, false, 0, line, sizeof line);
	ok(strcmp(line, "job 7 running: 10/40 (25%)  done 6  fresh 3  revalidated 1  failed 0  "
	                "eta 12s") == 0, "plain line: %s", line);
	warm_progress_line(job, true, 8, line, sizeof line);
	ok(strncmp(line, "[##......] job 7", 16) == 0, "bar of 8 cells, a quarter full: %s", line);
	json_object_set_new(job, "eta_s", json_null());
	warm_progress_line(job, false, 0, line, sizeof line);
	ok(strstr(line, "eta ?") != NULL, "unknown eta: %s", line);
	warm_progress_line(job, true, 8, line, 12);
	ok(strlen(line) <= 11, "a short buffer is never overrun");
	json_decref(job);
	return tap_done();
}
