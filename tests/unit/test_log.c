/*
 * test_log — every line log_event() writes is one JSON object (checked with
 * jansson, which refuses invalid UTF-8), whatever the bytes or the length of
 * the values: invalid UTF-8 becomes U+FFFD, long values are cut and the line
 * is still closed and says "truncated":true.
 */
#include "log.h"
#include "tap.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Runs the logging in f with stderr sent to a fresh temporary file;
 * returns what was written (caller frees). */
static char *
one_line(void (*f)(void))
{
	FILE *capture = tmpfile();
	fflush(stderr);
	int saved = dup(2);
	dup2(fileno(capture), 2);
	f();
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	fseek(capture, 0, SEEK_END);
	long len = ftell(capture);
	rewind(capture);
	char *buf = calloc(1, (size_t)len + 1);
	if (fread(buf, 1, (size_t)len, capture) != (size_t)len)
		buf[0] = '\0';
	fclose(capture);
	return buf;
}

static json_t *
parse(const char *line, size_t *len)
{
	*len = strlen(line);
	if (*len == 0 || line[*len - 1] != '\n' || memchr(line, '\n', *len - 1))
		return NULL;            /* exactly one line */
	json_error_t e;
	return json_loadb(line, *len - 1, 0, &e);
}

static char *big;

static void log_bad_utf8(void)
{
	log_event(LOG_INFO, "request", LOG_S("path", "/v1/\xff\xfe/\xc3(/\xed\xa0\x80/\xf4\x90\x80\x80/ok\xc3\xa9"),
	          LOG_I("status", 404), LOG_END);
}
static void log_controls(void)
{
	log_event(LOG_INFO, "a\x01" "b\x7f\"\\\n", LOG_S("k", "\x1b[31m"), LOG_END);
}
static void log_long(void)
{
	log_event(LOG_INFO, "request", LOG_S("path", big), LOG_I("status", 200), LOG_END);
}
static void log_many(void)
{
	log_event(LOG_INFO, "many", LOG_S("a", big), LOG_S("b", big), LOG_S("c", big),
	          LOG_S("d", big), LOG_S("e", big), LOG_I("last", 7), LOG_END);
}
static void log_cut_in_char(void)
{
	log_msg(LOG_INFO, "%s", big);   /* log_msg's own buffer cuts it */
}

int
main(void)
{
	size_t len;
	char *line = one_line(log_bad_utf8);
	json_t *doc = parse(line, &len);
	ok(doc != NULL, "invalid UTF-8 in a value: the line is still JSON");
	const char *path = json_string_value(json_object_get(doc, "path"));
	ok(path && strstr(path, "\xef\xbf\xbd") && strstr(path, "ok\xc3\xa9"),
	   "bad bytes are U+FFFD, good ones kept");
	ok(json_integer_value(json_object_get(doc, "status")) == 404, "the next field is intact");
	json_decref(doc);
	free(line);

	line = one_line(log_controls);
	doc = parse(line, &len);
	ok(doc && strcmp(json_string_value(json_object_get(doc, "msg")), "a\x01" "b\x7f\"\\\n") == 0,
	   "control bytes, quotes and newlines round-trip");
	json_decref(doc);
	free(line);

	/* 100 000 bytes of two-byte characters: any cut must fall between them. */
	big = malloc(100001);
	for (int i = 0; i < 100000; i += 2)
		memcpy(big + i, "\xc3\xa9", 2);
	big[100000] = '\0';
	line = one_line(log_long);
	doc = parse(line, &len);
	ok(doc != NULL && len <= 8192, "a 100 kB value: one closed line of at most 8 KiB (%zu)", len);
	ok(json_is_true(json_object_get(doc, "truncated")), "it says truncated");
	ok(json_integer_value(json_object_get(doc, "status")) == 200, "the field after it is kept");
	json_decref(doc);
	free(line);

	line = one_line(log_many);
	doc = parse(line, &len);
	ok(doc != NULL && len <= 8192, "five long values: still one closed line");
	ok(json_is_true(json_object_get(doc, "truncated")), "fields left out are flagged");
	json_decref(doc);
	free(line);

	big[4095] = '\xc3';   /* log_msg cuts at 4095 bytes: inside a character */
	line = one_line(log_cut_in_char);
	doc = parse(line, &len);
	ok(doc != NULL, "a message cut inside a character by log_msg is still JSON");
	json_decref(doc);
	free(line);
	free(big);
	return tap_done();
}
