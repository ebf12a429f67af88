"""`rapport check`: compile every script, run its fixture tests
(scripts/tests/<type>.lua) and lint it with luacheck.

    /usr/bin/python3 -m pytest -q tests/test_check.py

Needs the built binary (RAPPORT_BIN, default ./rapport from the repo root)
and luacheck; no database or model provider. Tests that break something work
on a copy of scripts/ and prompts/ (the scripts_copy fixture, under
tmp_path) passed through RAPPORT_SCRIPTS / RAPPORT_PROMPTS.
"""

import os
import re
import shutil
import signal
import subprocess

import pytest

from helpers.server import REPO, rapport_binary

SUMMARY = re.compile(r"^(\d+) scripts, (\d+) failed to compile; (\d+) fixture cases passed, "
                     r"(\d+) failed; lint (clean|failed)$", re.M)
CASE_LINE = re.compile(r"^\s*case\s*\{")
CASE_NAME = re.compile(r'^\s*name\s*=\s*"((?:[^"\\]|\\.)*)"')


class Check:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.lines = self.out.splitlines()
        found = SUMMARY.findall(self.out)
        assert len(found) == 1, "no single summary line in:\n" + self.out
        n, bad, passed, failed, lint = found[0]
        self.scripts, self.compile_failures = int(n), int(bad)
        self.passed, self.failed, self.lint = int(passed), int(failed), lint

    def __str__(self):
        return "rapport check exited %d:\n%s" % (self.rc, self.out)


def run_check(scripts=None, prompts=None, timeout=120):
    """`rapport check`: on the repo (cwd = repo root, default ./scripts and
    ./prompts) or, given dirs, through RAPPORT_SCRIPTS / RAPPORT_PROMPTS."""
    binary = rapport_binary()
    if not binary.exists():
        pytest.fail("%s does not exist: build it with `make`" % binary, pytrace=False)
    if shutil.which("luacheck") is None:
        pytest.fail("luacheck not found (Debian package lua-check)", pytrace=False)
    env = dict(os.environ)
    for k in ("RAPPORT_SCRIPTS", "RAPPORT_PROMPTS", "RAPPORT_CONFIG"):
        env.pop(k, None)
    if scripts is not None:
        env["RAPPORT_SCRIPTS"] = str(scripts)
        env["RAPPORT_PROMPTS"] = str(prompts)
    proc = subprocess.run([str(binary), "check"], cwd=str(REPO), env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, timeout=timeout)
    return Check(proc)


def types_in(scripts):
    return sorted(p.stem for p in scripts.glob("*.lua") if not p.name.startswith("."))


def case_lines(fixture):
    """{line of each `case{` in a fixture file: its name}."""
    lines = fixture.read_text(encoding="utf-8").splitlines()
    cases = {}
    for i, line in enumerate(lines):
        if CASE_LINE.match(line):
            name = next(m.group(1) for m in map(CASE_NAME.match, lines[i:]) if m)
            cases[i + 1] = name
    return cases


def case_around(path, needle):
    """(line, name) of the case{ that contains the first line with needle."""
    lines = path.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if needle in line)
    start = next(i for i in range(at, -1, -1) if CASE_LINE.match(lines[i]))
    name = next(m.group(1) for m in map(CASE_NAME.match, lines[start:]) if m)
    return start + 1, name


def replace_once(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, "%s: expected %r exactly once (fixture edited?)" % (path, old)
    path.write_text(text.replace(old, new), encoding="utf-8")


# ---- the repo as it is -------------------------------------------------------------------

def test_repo_check_passes_with_every_type_compiled_every_fixture_case_ok_and_lint_clean():
    scripts = REPO / "scripts"
    types = types_in(scripts)
    assert types, "no scripts in %s" % scripts
    c = run_check()
    assert c.rc == 0, str(c)
    assert not [l for l in c.lines if l.startswith("FAIL")], str(c)
    total = 0
    for t in types:
        assert any(l.startswith("ok   %s compiles (version " % t) for l in c.lines), \
            "%s not reported compiled\n%s" % (t, c)
        fixture = scripts / "tests" / ("%s.lua" % t)
        assert fixture.exists(), "type %s has no fixture tests: add %s" % (t, fixture)
        cases = case_lines(fixture)
        assert len(cases) >= 3, "%s: only %d cases" % (fixture, len(cases))
        for line, name in cases.items():
            want = "ok   ./scripts/tests/%s.lua:%d: %s" % (t, line, name)
            assert want in c.lines, "missing %r\n%s" % (want, c)
        total += len(cases)
    assert "ok   luacheck ./scripts" in c.lines, str(c)
    assert (c.scripts, c.compile_failures, c.passed, c.failed, c.lint) == \
        (len(types), 0, total, 0, "clean"), str(c)


# ---- a copy with one thing broken --------------------------------------------------------

@pytest.mark.parametrize("type_name, old, new, why", [
    # a result value
    ("relationship_health", 'score = 58, trend = "cooling", source = "model",',
     'score = 59, trend = "cooling", source = "model",',
     "result.score differs: expected "),
    # a messages_contain substring
    ("smart_tips", '"Notes: Prefers email over calls.",', '"Notes: Prefers calls over email.",',
     'no message contains "Notes: Prefers calls over email."'),
    # an expected error
    ("contextual_research", 'error = "model reply is not a JSON object",', 'error = "cut off",',
     'expected an error containing "cut off", got: '),
], ids=["result", "messages_contain", "error"])
def test_changed_fixture_expectation_fails_with_file_line_and_case_name(
        scripts_copy, type_name, old, new, why):
    fixture = scripts_copy.scripts / "tests" / ("%s.lua" % type_name)
    replace_once(fixture, old, new)
    line, name = case_around(fixture, new)
    total = sum(len(case_lines(f)) for f in (scripts_copy.scripts / "tests").glob("*.lua"))
    c = run_check(scripts_copy.scripts, scripts_copy.prompts)
    assert c.rc != 0, str(c)
    want = "FAIL %s:%d: %s: %s" % (fixture, line, name, why)
    fails = [l for l in c.lines if l.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith(want), "want %r\n%s" % (want, c)
    assert (c.compile_failures, c.passed, c.failed, c.lint) == (0, total - 1, 1, "clean"), str(c)


def test_script_with_syntax_error_fails_to_compile_with_file_and_line(scripts_copy):
    bad = scripts_copy.scripts / "broken_type.lua"
    bad.write_text('-- a missing comma after the description\n'
                   'return {\n'
                   '  description = "broken"\n'
                   '  queries = { "contact" },\n'       # line 4: the parser stops here
                   '}\n', encoding="utf-8")
    c = run_check(scripts_copy.scripts, scripts_copy.prompts)
    assert c.rc != 0, str(c)
    # Lua names the chunk by its path, shortened to "...<end of the path>"
    # when long (LUA_IDSIZE), as under tmp_path
    where = [m.group(1) for m in (re.match(r"FAIL (.*broken_type\.lua):4: '}' expected", l)
                                  for l in c.lines) if m]
    assert len(where) == 1 and str(bad).endswith(where[0].lstrip(".")), str(c)
    # the other types still compile and pass
    for t in types_in(REPO / "scripts"):
        assert any(l.startswith("ok   %s compiles" % t) for l in c.lines), str(c)
    assert (c.scripts, c.compile_failures, c.failed) == \
        (len(types_in(REPO / "scripts")) + 1, 1, 0), str(c)


def test_script_using_io_open_fails_lint_with_file_line_and_column(scripts_copy):
    bad = scripts_copy.scripts / "reads_files.lua"
    source = ('-- compiles, but io is not in the sandbox\n'
              'return {\n'
              '  description = "reads a file",\n'
              '  queries = { "contact" },\n'
              '  prompt = function(ctx)\n'
              '    local f = io.open("/etc/passwd")\n'
              '    return { { role = "user", content = (f and ctx.contact_id) and "x" or "y" } }\n'
              '  end,\n'
              '}\n')
    bad.write_text(source, encoding="utf-8")
    line, text = next((i + 1, l) for i, l in enumerate(source.splitlines()) if "io.open" in l)
    col = text.index("io.open") + 1
    c = run_check(scripts_copy.scripts, scripts_copy.prompts)
    assert c.rc != 0, str(c)
    # it compiles (io is only touched when prompt runs); luacheck catches it
    assert any(l.startswith("ok   reads_files compiles") for l in c.lines), str(c)
    want = "%s:%d:%d: (W113) accessing undefined variable 'io'" % (bad, line, col)
    assert want in c.lines, "want %r\n%s" % (want, c)
    assert "FAIL luacheck %s" % scripts_copy.scripts in c.lines, str(c)
    assert (c.compile_failures, c.failed, c.lint) == (0, 0, "failed"), str(c)


def test_script_using_cjson_fails_lint_as_it_would_fail_at_run_time(scripts_copy):
    """The lint globals are the sandbox's own list: cjson is not offered, so
    a script that uses it is reported by luacheck instead of passing lint
    and failing at its first request."""
    bad = scripts_copy.scripts / "uses_cjson.lua"
    source = ('return {\n'
              '  description = "encodes with cjson",\n'
              '  prompt = function(ctx)\n'
              '    return { { role = "user", content = cjson.encode({ id = ctx.contact_id }) } }\n'
              '  end,\n'
              '}\n')
    bad.write_text(source, encoding="utf-8")
    c = run_check(scripts_copy.scripts, scripts_copy.prompts)
    assert c.rc != 0, str(c)
    col = source.splitlines()[3].index("cjson") + 1
    want = "%s:4:%d: (W113) accessing undefined variable 'cjson'" % (bad, col)
    assert want in c.lines, "want %r\n%s" % (want, c)
    assert c.lint == "failed", str(c)


def test_script_using_a_library_field_the_sandbox_leaves_out_fails_lint(scripts_copy):
    bad = scripts_copy.scripts / "dumps.lua"
    bad.write_text('return {\n'
                   '  description = "dumps bytecode",\n'
                   '  prompt = function(ctx)\n'
                   '    return { { role = "user", content = string.dump(print) .. os.getenv("HOME") } }\n'
                   '  end,\n'
                   '}\n', encoding="utf-8")
    c = run_check(scripts_copy.scripts, scripts_copy.prompts)
    assert c.rc != 0, str(c)
    assert any("dumps.lua:4:" in l and "field 'dump' of global 'string'" in l for l in c.lines), str(c)
    assert any("dumps.lua:4:" in l and "field 'getenv' of global 'os'" in l for l in c.lines), str(c)


# A fixture file runs under the script's guards: each of these fails the
# check with the fixture's file:line, where before it hung `rapport check`
# (and every reload of the server) for good.
FIXTURE_TRAPS = {
    "looping_gc": ('local _trap = setmetatable({}, { __gc = function() while true do end end })\n',
                   "__gc metamethods are not allowed"),
    "pattern_bomb": ('local _trap = (("a"):rep(40)):find(("a?"):rep(40) .. ("a"):rep(40))\n',
                     "pattern too expensive"),
    "endless_loop": ("while true do end\n", "script exceeded its"),   # budget or time limit
}


@pytest.mark.parametrize("trap", sorted(FIXTURE_TRAPS))
def test_a_fixture_that_would_hang_fails_check_with_its_file_line(scripts_copy, trap):
    text, why = FIXTURE_TRAPS[trap]
    fixture = scripts_copy.scripts / "tests" / "smart_tips.lua"
    fixture.write_text(text + fixture.read_text(encoding="utf-8"), encoding="utf-8")
    c = run_check(scripts_copy.scripts, scripts_copy.prompts, timeout=60)
    assert c.rc != 0, str(c)
    fails = [l for l in c.lines if l.startswith("FAIL")]
    assert len(fails) == 1 and "smart_tips.lua:1:" in fails[0] and why in fails[0], str(c)
    # the other types' fixtures still ran
    assert any(l.startswith("ok   ") and "relationship_health.lua:" in l for l in c.lines), str(c)


def test_module_level_state_of_one_case_is_not_seen_by_the_next(scripts_copy):
    """Each case is its own request: a table at the top of the script that
    prompt() fills starts empty for the next case (and the next contact)."""
    (scripts_copy.scripts / "remembers.lua").write_text(
        'local seen = {}\n'
        'return {\n'
        '  description = "remembers contacts in a module-level table",\n'
        '  prompt = function(ctx)\n'
        '    seen[#seen + 1] = ctx.contact_id\n'
        '    return { { role = "user", content = "seen " .. table.concat(seen, ",") } }\n'
        '  end,\n'
        '}\n', encoding="utf-8")
    (scripts_copy.scripts / "tests" / "remembers.lua").write_text(
        'return {\n'
        '  case{ name = "first contact", ctx = { contact_id = 1 },\n'
        '        messages = { { role = "user", content = "seen 1" } } },\n'
        '  case{ name = "second contact sees only itself", ctx = { contact_id = 2 },\n'
        '        messages = { { role = "user", content = "seen 2" } } },\n'
        '}\n', encoding="utf-8")
    c = run_check(scripts_copy.scripts, scripts_copy.prompts)
    assert not [l for l in c.lines if l.startswith("FAIL")], str(c)
    assert any(l.startswith("ok   ") and "second contact sees only itself" in l for l in c.lines), str(c)


# ---- the luacheck child --------------------------------------------------------------------

def test_luacheck_runs_with_sighup_and_sigpipe_at_their_defaults_not_ignored(tmp_path):
    """rapport ignores SIGHUP and SIGPIPE itself (core/main.c); an ignored
    signal stays ignored across exec, so check resets them in the child. A
    stand-in luacheck early on PATH prints the mask it was started with."""
    fake = tmp_path / "bin" / "luacheck"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ngrep '^SigIgn:' /proc/$$/status\nexit 0\n")
    fake.chmod(0o755)
    binary = rapport_binary()
    env = dict(os.environ)
    for k in ("RAPPORT_SCRIPTS", "RAPPORT_PROMPTS", "RAPPORT_CONFIG"):
        env.pop(k, None)
    env["PATH"] = "%s:%s" % (fake.parent, env.get("PATH", ""))
    proc = subprocess.run([str(binary), "check"], cwd=str(REPO), env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, timeout=120)
    masks = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("SigIgn:")]
    assert len(masks) == 1, proc.stdout
    ignored = int(masks[0], 16)
    for sig in (signal.SIGHUP, signal.SIGPIPE):
        assert not ignored & (1 << (sig - 1)), "%s ignored in luacheck: %s" % (sig.name, masks[0])
