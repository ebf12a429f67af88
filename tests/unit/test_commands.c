/*
 * test_commands — the one command table: how an admin line finds its row,
 * what `help` lists, and that every row a console mode shows has a handler
 * there (the console refuses to start otherwise).
 */
#include "commands.h"
#include "console_int.h"
#include "luajson.h"
#include "tap.h"

#include <string.h>

static const struct command *
match(const char *line, int *skip, struct cmd_error *e)
{
	static char buf[256];
	char *argv[8], *save = NULL;
	int argc = 0;
	snprintf(buf, sizeof buf, "%s", line);
	for (char *w = strtok_r(buf, " ", &save); w && argc < 8; w = strtok_r(NULL, " ", &save))
		argv[argc++] = w;
	memset(e, 0, sizeof *e);
	*skip = 0;
	return cmd_match(argc, argv, skip, e);
}

static void
test_a_line_finds_its_row_by_its_words(void)
{
	struct cmd_error e;
	int skip;
	const struct command *c = match("cache list 42", &skip, &e);
	ok(c && strcmp(c->fn, "cache_list") == 0 && skip == 2, "two-word command, its argument after");
	c = match("types", &skip, &e);
	ok(c && strcmp(c->words, "types") == 0 && skip == 1 && c->run, "one-word command with a run");
	c = match("analyze 1 smart_tips refresh", &skip, &e);
	ok(c && !c->run && skip == 1, "analyze has no run: the admin socket serves it itself");
	ok(!match("nope", &skip, &e) && strcmp(e.code, "unknown_command") == 0 && e.status == 400,
	   "an unknown word is unknown_command");
	ok(!match("cache", &skip, &e) && strcmp(e.code, "bad_command") == 0 &&
	   strstr(e.message, "needs a subcommand"), "a group word alone needs a subcommand");
	ok(!match("cache frob", &skip, &e) && strcmp(e.code, "bad_command") == 0,
	   "an unknown subcommand is a bad command");
	ok(!match("cache drop", &skip, &e) && strcmp(e.message, "usage: cache drop <contact> [type]") == 0,
	   "too few arguments: the usage");
	ok(!match("types x", &skip, &e) && strcmp(e.message, "usage: types") == 0,
	   "too many arguments: the usage");
	ok(!match("context 1 x", &skip, &e) && strcmp(e.code, "unknown_command") == 0,
	   "a console-only function is no admin command");
}

static void
test_help_lists_every_admin_row_in_order(void)
{
	json_t *h = cmd_help_json();
	size_t i = 0;
	bool same = true;
	for (const struct command *c = cmd_table; c->fn || c->words; c++) {
		if (!(c->where & CMD_ADMIN))
			continue;
		json_t *row = json_array_get(h, i++);
		same = same && row &&
		       strcmp(json_string_value(json_object_get(row, "command")), c->usage) == 0 &&
		       strcmp(json_string_value(json_object_get(row, "does")), c->does) == 0;
	}
	ok(same && i == json_array_size(h) && i >= 10, "help: one {command, does} per admin row");
	json_decref(h);
}

static bool
has_handler(const struct console_handler *h, const char *name)
{
	for (; h->name; h++)
		if (strcmp(h->name, name) == 0)
			return true;
	return false;
}

static void
test_every_row_is_complete_and_served(void)
{
	bool complete = true, local = true, attach = true;
	for (const struct command *c = cmd_table; c->fn || c->words; c++) {
		if (c->where & CMD_ADMIN)
			complete = complete && c->words && c->usage && c->does;
		if (c->where & (CMD_LOCAL | CMD_ATTACH | CMD_REPL))
			complete = complete && c->fn && c->fn_usage && c->does;
		if ((c->where & CMD_LOCAL) && !(c->where & CMD_REPL) && !c->run)
			local = local && has_handler(console_local_handlers, c->fn);
		if ((c->where & CMD_ATTACH) && !(c->where & CMD_REPL))
			attach = attach && has_handler(console_attach_handlers, c->fn);
	}
	ok(complete, "every row has the words, names and texts its places need");
	ok(local, "every standalone row without a run has a standalone handler");
	ok(attach, "every attach-only row has an attach handler");
	ok(has_handler(console_attach_handlers, "analyze"),
	   "attached analyze() has its own handler (the {cache = false} option)");
}

int
main(void)
{
	luajson_init();
	test_a_line_finds_its_row_by_its_words();
	test_help_lists_every_admin_row_in_order();
	test_every_row_is_complete_and_served();
	return tap_done();
}
