/*
 * script_pattern — string.find, string.match, string.gmatch and string.gsub
 * for script states, with the work itself bounded.
 *
 * The stock functions do all their matching inside C, where the count hook
 * never runs: a pattern that backtracks ("a?a?…aaa…", ".-.-.-b") over a long
 * subject holds the loop for hours. These implement the same Lua 5.4
 * pattern language with the same algorithm (a backtracking matcher over the
 * pattern text), and charge every step — each pattern item tried, each
 * repetition of a quantifier, each candidate of a plain find — to the
 * calling script's instruction budget. Every CHECK_EVERY steps the charge is
 * added to the budget's spent count and the wall clock is read; past either
 * bound the call raises "pattern too expensive: N steps (…)".
 *
 * The algorithm and its error messages are those of Lua 5.4's lstrlib.c:
 *   Copyright (C) 1994-2022 Lua.org, PUC-Rio.
 *   Permission is hereby granted, free of charge, to any person obtaining a
 *   copy of this software and associated documentation files (the
 *   "Software"), to deal in the Software without restriction, including
 *   without limitation the rights to use, copy, modify, merge, publish,
 *   distribute, sublicense, and/or sell copies of the Software, and to
 *   permit persons to whom the Software is furnished to do so, subject to
 *   the following conditions: The above copyright notice and this
 *   permission notice shall be included in all copies or substantial
 *   portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT
 *   WARRANTY OF ANY KIND.
 * tests/unit/test_script.c checks them against the stock functions on a
 * corpus of patterns.
 */
#include "script_int.h"
#include "util.h"

#include <ctype.h>
#include <stddef.h>
#include <string.h>

#include <lauxlib.h>

#define L_ESC '%'
#define SPECIALS "^$*+?.([%-"
#define MAXCCALLS 200             /* recursion depth of one match */
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define CHECK_EVERY 4096          /* steps between budget and clock checks */
#ifndef LUA_MAXCAPTURES
#define LUA_MAXCAPTURES 32        /* as in lstrlib.c */
#endif

typedef struct match_state {
	const char *src_init, *src_end, *p_end;
	lua_State *L;
	script *s;                /* whose budget the steps are charged to */
	long steps;               /* this call's steps, for the message */
	long tick;                /* steps not yet added to s->spent */
	int matchdepth;
	unsigned char level;
	struct {
		const char *init;
		ptrdiff_t len;
	} capture[LUA_MAXCAPTURES];
} match_state;

static const char *match(match_state *ms, const char *s, const char *p);

static void
flush(match_state *ms)
{
	script *s = ms->s;
	s->spent += ms->tick;
	ms->tick = 0;
	char why[96] = "";
	if (s->budget > 0 && s->spent > s->budget)
		snprintf(why, sizeof why, "the call's budget of %ld instructions is spent", s->budget);
	else if (s->deadline_ms > 0 && util_now_ms() > s->deadline_ms)
		snprintf(why, sizeof why, "past the call's time limit of %ld ms", s->wall_ms);
	if (why[0])
		luaL_error(ms->L, "pattern too expensive: %I steps (%s)", (lua_Integer)ms->steps, why);
}

static inline void
charge(match_state *ms, long n)
{
	ms->steps += n;
	ms->tick += n;
	if (ms->tick >= CHECK_EVERY)
		flush(ms);
}

static int
check_capture(match_state *ms, int l)
{
	l -= '1';
	if (l < 0 || l >= ms->level || ms->capture[l].len == CAP_UNFINISHED)
		return luaL_error(ms->L, "invalid capture index %%%d", l + 1);
	return l;
}

static int
capture_to_close(match_state *ms)
{
	int level = ms->level;
	for (level--; level >= 0; level--)
		if (ms->capture[level].len == CAP_UNFINISHED)
			return level;
	return luaL_error(ms->L, "invalid pattern capture");
}

/* The end of the single-character class starting at p. */
static const char *
class_end(match_state *ms, const char *p)
{
	switch (*p++) {
	case L_ESC:
		if (p == ms->p_end)
			luaL_error(ms->L, "malformed pattern (ends with '%%')");
		return p + 1;
	case '[':
		if (*p == '^')
			p++;
		do {      /* look for a ']' */
			if (p == ms->p_end)
				luaL_error(ms->L, "malformed pattern (missing ']')");
			if (*(p++) == L_ESC && p < ms->p_end)
				p++;     /* skip escapes (e.g. '%]') */
		} while (*p != ']');
		return p + 1;
	default:
		return p;
	}
}

static int
match_class(int c, int cl)
{
	int res;
	switch (tolower(cl)) {
	case 'a': res = isalpha(c); break;
	case 'c': res = iscntrl(c); break;
	case 'd': res = isdigit(c); break;
	case 'g': res = isgraph(c); break;
	case 'l': res = islower(c); break;
	case 'p': res = ispunct(c); break;
	case 's': res = isspace(c); break;
	case 'u': res = isupper(c); break;
	case 'w': res = isalnum(c); break;
	case 'x': res = isxdigit(c); break;
	case 'z': res = c == 0; break;     /* deprecated, still accepted by 5.4 */
	default: return cl == c;
	}
	if (isupper(cl))
		res = !res;
	return res;
}

/* p at '[', ec at the class's closing ']'. */
static int
match_bracket_class(int c, const char *p, const char *ec)
{
	int sig = 1;
	if (*(p + 1) == '^') {
		sig = 0;
		p++;
	}
	while (++p < ec) {
		if (*p == L_ESC) {
			p++;
			if (match_class(c, (unsigned char)*p))
				return sig;
		} else if (*(p + 1) == '-' && p + 2 < ec) {
			p += 2;
			if ((unsigned char)*(p - 2) <= c && c <= (unsigned char)*p)
				return sig;
		} else if ((unsigned char)*p == c) {
			return sig;
		}
	}
	return !sig;
}

static int
single_match(match_state *ms, const char *s, const char *p, const char *ep)
{
	if (s >= ms->src_end)
		return 0;
	int c = (unsigned char)*s;
	switch (*p) {
	case '.': return 1;
	case L_ESC: return match_class(c, (unsigned char)*(p + 1));
	case '[': return match_bracket_class(c, p, ep - 1);
	default: return (unsigned char)*p == c;
	}
}

static const char *
match_balance(match_state *ms, const char *s, const char *p)
{
	if (p >= ms->p_end - 1)
		luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
	if (s >= ms->src_end || *s != *p)
		return NULL;
	int b = *p, e = *(p + 1), cont = 1;
	while (++s < ms->src_end) {
		charge(ms, 1);
		if (*s == e) {
			if (--cont == 0)
				return s + 1;
		} else if (*s == b) {
			cont++;
		}
	}
	return NULL;
}

static const char *
max_expand(match_state *ms, const char *s, const char *p, const char *ep)
{
	ptrdiff_t i = 0;
	while (single_match(ms, s + i, p, ep)) {
		charge(ms, 1);
		i++;
	}
	/* Tries with the most repetitions first, then one fewer each time. */
	while (i >= 0) {
		const char *res = match(ms, s + i, ep + 1);
		if (res)
			return res;
		i--;
	}
	return NULL;
}

static const char *
min_expand(match_state *ms, const char *s, const char *p, const char *ep)
{
	for (;;) {
		const char *res = match(ms, s, ep + 1);
		if (res)
			return res;
		if (!single_match(ms, s, p, ep))
			return NULL;
		s++;
	}
}

static const char *
start_capture(match_state *ms, const char *s, const char *p, int what)
{
	int level = ms->level;
	if (level >= LUA_MAXCAPTURES)
		luaL_error(ms->L, "too many captures");
	ms->capture[level].init = s;
	ms->capture[level].len = what;
	ms->level = (unsigned char)(level + 1);
	const char *res = match(ms, s, p);
	if (!res)
		ms->level--;      /* undo the capture */
	return res;
}

static const char *
end_capture(match_state *ms, const char *s, const char *p)
{
	int l = capture_to_close(ms);
	ms->capture[l].len = s - ms->capture[l].init;
	const char *res = match(ms, s, p);
	if (!res)
		ms->capture[l].len = CAP_UNFINISHED;
	return res;
}

static const char *
match_capture(match_state *ms, const char *s, int l)
{
	l = check_capture(ms, l);
	size_t len = (size_t)ms->capture[l].len;
	charge(ms, (long)(len / 16));
	if ((size_t)(ms->src_end - s) >= len && memcmp(ms->capture[l].init, s, len) == 0)
		return s + len;
	return NULL;
}

/* The matcher: s against the pattern from p; the end of the match or NULL.
 * Every pattern item tried is one step. */
static const char *
match(match_state *ms, const char *s, const char *p)
{
	if (ms->matchdepth-- == 0)
		luaL_error(ms->L, "pattern too complex");
init:
	charge(ms, 1);
	if (p != ms->p_end) {
		switch (*p) {
		case '(':
			if (*(p + 1) == ')')
				s = start_capture(ms, s, p + 2, CAP_POSITION);
			else
				s = start_capture(ms, s, p + 1, CAP_UNFINISHED);
			break;
		case ')':
			s = end_capture(ms, s, p + 1);
			break;
		case '$':
			if (p + 1 != ms->p_end)
				goto dflt;      /* an ordinary '$' */
			s = s == ms->src_end ? s : NULL;
			break;
		case L_ESC:
			switch (*(p + 1)) {
			case 'b':
				s = match_balance(ms, s, p + 2);
				if (s) {
					p += 4;
					goto init;
				}
				break;
			case 'f': {
				p += 2;
				if (*p != '[')
					luaL_error(ms->L, "missing '[' after '%%f' in pattern");
				const char *ep = class_end(ms, p);
				int previous = s == ms->src_init ? '\0' : (unsigned char)*(s - 1);
				int current = s < ms->src_end ? (unsigned char)*s : '\0';
				if (!match_bracket_class(previous, p, ep - 1) &&
				    match_bracket_class(current, p, ep - 1)) {
					p = ep;
					goto init;
				}
				s = NULL;
				break;
			}
			case '0': case '1': case '2': case '3': case '4':
			case '5': case '6': case '7': case '8': case '9':
				s = match_capture(ms, s, (unsigned char)*(p + 1));
				if (s) {
					p += 2;
					goto init;
				}
				break;
			default:
				goto dflt;
			}
			break;
		default:
		dflt: {
			const char *ep = class_end(ms, p);
			if (!single_match(ms, s, p, ep)) {
				if (*ep == '*' || *ep == '?' || *ep == '-') {
					p = ep + 1;     /* accept the empty match */
					goto init;
				}
				s = NULL;
			} else {
				switch (*ep) {
				case '?': {
					const char *res = match(ms, s + 1, ep + 1);
					if (res) {
						s = res;
					} else {
						p = ep + 1;
						goto init;
					}
					break;
				}
				case '+':
					s = max_expand(ms, s + 1, p, ep);
					break;
				case '*':
					s = max_expand(ms, s, p, ep);
					break;
				case '-':
					s = min_expand(ms, s, p, ep);
					break;
				default:
					s++;
					p = ep;
					goto init;
				}
			}
			break;
		}
		}
	}
	ms->matchdepth++;
	return s;
}

static void
prep_state(match_state *ms, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
	ms->L = L;
	ms->s = script_owner(L);
	ms->steps = 0;
	ms->tick = 0;
	ms->matchdepth = MAXCCALLS;
	ms->src_init = s;
	ms->src_end = s + ls;
	ms->p_end = p + lp;
	ms->level = 0;
}

static void
reprep_state(match_state *ms)
{
	ms->level = 0;
	ms->matchdepth = MAXCCALLS;
}

/* The capture i as a length and start (CAP_POSITION: pushed already). */
static ptrdiff_t
get_onecapture(match_state *ms, int i, const char *s, const char *e, const char **cap)
{
	if (i >= ms->level) {
		if (i != 0)
			luaL_error(ms->L, "invalid capture index %%%d", i + 1);
		*cap = s;
		return e - s;     /* the whole match */
	}
	ptrdiff_t capl = ms->capture[i].len;
	*cap = ms->capture[i].init;
	if (capl == CAP_UNFINISHED)
		luaL_error(ms->L, "unfinished capture");
	else if (capl == CAP_POSITION)
		lua_pushinteger(ms->L, (ms->capture[i].init - ms->src_init) + 1);
	return capl;
}

static void
push_onecapture(match_state *ms, int i, const char *s, const char *e)
{
	const char *cap;
	ptrdiff_t l = get_onecapture(ms, i, s, e, &cap);
	if (l != CAP_POSITION)
		lua_pushlstring(ms->L, cap, (size_t)l);
}

static int
push_captures(match_state *ms, const char *s, const char *e)
{
	int nlevels = ms->level == 0 && s ? 1 : ms->level;
	luaL_checkstack(ms->L, nlevels, "too many captures");
	for (int i = 0; i < nlevels; i++)
		push_onecapture(ms, i, s, e);
	return nlevels;
}

/* Whether the pattern has no special characters (embedded zeros too). */
static int
no_specials(const char *p, size_t l)
{
	size_t upto = 0;
	do {
		if (strpbrk(p + upto, SPECIALS))
			return 0;
		upto += strlen(p + upto) + 1;
	} while (upto <= l);
	return 1;
}

/* A plain find, one step per candidate position (plus the compare). */
static const char *
mem_find(match_state *ms, const char *s1, size_t l1, const char *s2, size_t l2)
{
	if (l2 == 0)
		return s1;
	if (l2 > l1)
		return NULL;
	const char *init;
	l2--;
	l1 = l1 - l2;
	while (l1 > 0 && (init = memchr(s1, *s2, l1)) != NULL) {
		charge(ms, 1 + (long)(l2 / 16));
		init++;
		if (memcmp(init, s2 + 1, l2) == 0)
			return init - 1;
		l1 -= (size_t)(init - s1);
		s1 = init;
	}
	return NULL;
}

static size_t
posrelat(lua_Integer pos, size_t len)
{
	if (pos > 0)
		return (size_t)pos;
	if (pos == 0)
		return 1;
	if (pos < -(lua_Integer)len)
		return 1;
	return len + (size_t)pos + 1;
}

static int
find_aux(lua_State *L, int find)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
	match_state ms;
	if (init > ls) {
		luaL_pushfail(L);
		return 1;
	}
	if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
		prep_state(&ms, L, s, ls, p, lp);
		const char *s2 = mem_find(&ms, s + init, ls - init, p, lp);
		if (s2) {
			lua_pushinteger(L, (s2 - s) + 1);
			lua_pushinteger(L, (lua_Integer)((size_t)(s2 - s) + lp));
			return 2;
		}
	} else {
		const char *s1 = s + init;
		int anchor = *p == '^';
		if (anchor) {
			p++;
			lp--;
		}
		prep_state(&ms, L, s, ls, p, lp);
		do {
			reprep_state(&ms);
			const char *res = match(&ms, s1, p);
			if (res) {
				if (find) {
					lua_pushinteger(L, (s1 - s) + 1);
					lua_pushinteger(L, res - s);
					return push_captures(&ms, NULL, 0) + 2;
				}
				return push_captures(&ms, s1, res);
			}
		} while (s1++ < ms.src_end && !anchor);
	}
	luaL_pushfail(L);
	return 1;
}

static int
str_find(lua_State *L)
{
	return find_aux(L, 1);
}

static int
str_match(lua_State *L)
{
	return find_aux(L, 0);
}

struct gmatch_state {
	const char *src;          /* where the next search starts */
	const char *p;
	const char *lastmatch;    /* end of the last match */
	match_state ms;
};

static int
gmatch_aux(lua_State *L)
{
	struct gmatch_state *gm = lua_touserdata(L, lua_upvalueindex(3));
	gm->ms.L = L;
	gm->ms.s = script_owner(L);
	gm->ms.steps = 0;
	gm->ms.tick = 0;
	for (const char *src = gm->src; src <= gm->ms.src_end; src++) {
		reprep_state(&gm->ms);
		const char *e = match(&gm->ms, src, gm->p);
		if (e && e != gm->lastmatch) {
			gm->src = gm->lastmatch = e;
			return push_captures(&gm->ms, src, e);
		}
	}
	return 0;
}

static int
str_gmatch(lua_State *L)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
	lua_settop(L, 2);         /* the strings stay alive as upvalues */
	struct gmatch_state *gm = lua_newuserdatauv(L, sizeof *gm, 0);
	if (init > ls)
		init = ls + 1;        /* start after the end: no match */
	prep_state(&gm->ms, L, s, ls, p, lp);
	gm->src = s + init;
	gm->p = p;
	gm->lastmatch = NULL;
	lua_pushcclosure(L, gmatch_aux, 3);
	return 1;
}

static void
add_s(match_state *ms, luaL_Buffer *b, const char *s, const char *e)
{
	size_t l;
	lua_State *L = ms->L;
	const char *news = lua_tolstring(L, 3, &l);
	const char *p;
	while ((p = memchr(news, L_ESC, l)) != NULL) {
		luaL_addlstring(b, news, (size_t)(p - news));
		p++;
		if (*p == L_ESC) {
			luaL_addchar(b, *p);
		} else if (*p == '0') {
			luaL_addlstring(b, s, (size_t)(e - s));
		} else if (isdigit((unsigned char)*p)) {
			const char *cap;
			ptrdiff_t resl = get_onecapture(ms, *p - '1', s, e, &cap);
			if (resl == CAP_POSITION)
				luaL_addvalue(b);
			else
				luaL_addlstring(b, cap, (size_t)resl);
		} else {
			luaL_error(L, "invalid use of '%c' in replacement string", L_ESC);
		}
		l -= (size_t)(p + 1 - news);
		news = p + 1;
	}
	luaL_addlstring(b, news, l);
}

/* Adds the replacement of one match; whether anything changed. */
static int
add_value(match_state *ms, luaL_Buffer *b, const char *s, const char *e, int tr)
{
	lua_State *L = ms->L;
	switch (tr) {
	case LUA_TFUNCTION: {
		lua_pushvalue(L, 3);
		int n = push_captures(ms, s, e);
		lua_call(L, n, 1);
		break;
	}
	case LUA_TTABLE:
		push_onecapture(ms, 0, s, e);
		lua_gettable(L, 3);
		break;
	default:
		add_s(ms, b, s, e);
		return 1;
	}
	if (!lua_toboolean(L, -1)) {      /* nil or false: keep the original */
		lua_pop(L, 1);
		luaL_addlstring(b, s, (size_t)(e - s));
		return 0;
	}
	if (!lua_isstring(L, -1))
		return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
	luaL_addvalue(b);
	return 1;
}

static int
str_gsub(lua_State *L)
{
	size_t srcl, lp;
	const char *src = luaL_checklstring(L, 1, &srcl);
	const char *p = luaL_checklstring(L, 2, &lp);
	const char *lastmatch = NULL;
	int tr = lua_type(L, 3);
	lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1);
	int anchor = *p == '^';
	lua_Integer n = 0;
	int changed = 0;
	match_state ms;
	luaL_Buffer b;
	luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION ||
	                 tr == LUA_TTABLE, 3, "string/function/table");
	luaL_buffinit(L, &b);
	if (anchor) {
		p++;
		lp--;
	}
	prep_state(&ms, L, src, srcl, p, lp);
	while (n < max_s) {
		reprep_state(&ms);
		const char *e = match(&ms, src, p);
		if (e && e != lastmatch) {
			n++;
			changed = add_value(&ms, &b, src, e, tr) | changed;
			src = lastmatch = e;
		} else if (src < ms.src_end) {
			luaL_addchar(&b, *src++);
		} else {
			break;
		}
		if (anchor)
			break;
	}
	if (!changed) {
		lua_pushvalue(L, 1);
	} else {
		luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
		luaL_pushresult(&b);
	}
	lua_pushinteger(L, n);
	return 2;
}

void
script_pattern_install(lua_State *L, int strtab)
{
	static const luaL_Reg fns[] = {
		{ "find", str_find },
		{ "match", str_match },
		{ "gmatch", str_gmatch },
		{ "gsub", str_gsub },
		{ NULL, NULL },
	};
	strtab = lua_absindex(L, strtab);
	for (const luaL_Reg *f = fns; f->name; f++) {
		lua_pushcfunction(L, f->func);
		lua_setfield(L, strtab, f->name);
	}
}
