"""`rapport console`: the REPL for people on call, and the admin socket of
`rapport serve` it attaches to.

Standalone, the console is driven through stdin (no terminal: plain line
reading, no prompt), through -e and a script file, and through a
pseudo-terminal for readline's path (line editing, history, Ctrl-C). It
runs against the real PostgreSQL cluster (pg) and the fake upstream (fake),
with the environment a server would get (make_server(start=False).env).
Attached, it talks to a running server over its unix socket.
"""

import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers.server import SANITIZER_PATTERNS, ServerError

REPO = Path(__file__).resolve().parents[2]
TYPE = "relationship_health"
REPLY = {"score": 77, "trend": "stable", "summary": "Steady and friendly.",
         "reasons": ["Met last week"]}


# ---- helpers ---------------------------------------------------------------

def sanitizer_report(text):
    for pat in SANITIZER_PATTERNS:
        m = pat.search(text)
        if m:
            return text[max(0, m.start() - 200):m.start() + 4000]
    return ""


class Run:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout.decode("utf-8", "replace")
        self.err = proc.stderr.decode("utf-8", "replace")

    def __repr__(self):
        return "<console rc=%s\n--- stdout\n%s\n--- stderr\n%s>" % (
            self.rc, self.out, self.err)


def console(srv, stdin="", args=(), env=None, timeout=60):
    """Runs `rapport console ARGS` with the server's environment; stdin is
    a pipe, so readline is not used. Fails on a sanitizer report."""
    e = dict(srv.env)
    e.update(env or {})
    proc = subprocess.run([str(srv.binary), "console", *args], input=stdin.encode(),
                          env=e, cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)
    r = Run(proc)
    report = sanitizer_report(r.err)
    assert not report, "sanitizer report from the console:\n%s" % report
    return r


def lines(*code):
    return "\n".join(code) + "\n"


@pytest.fixture
def env_srv(make_server, tmp_path):
    """A server object that is never started: its env and binary are what a
    console needs (DATABASE_URL, OPENAI_BASE_URL, scripts, a free port).
    Info-level logs off, HOME private (history)."""
    home = tmp_path / "home"
    home.mkdir()
    return make_server(start=False, RAPPORT_LOG_LEVEL=None, HOME=str(home))


@pytest.fixture
def contact(pg):
    cid = int(pg.scalar("SELECT id FROM contacts ORDER BY id LIMIT 1"))
    first = pg.scalar("SELECT first_name FROM contacts WHERE id = %d" % cid)
    return cid, first


class Pty:
    """The console on a pseudo-terminal: readline's path."""

    def __init__(self, argv, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # child
            try:
                os.chdir(str(REPO))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.buf = b""
        self.pos = 0
        self.status = None

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:       # EIO: the child closed the terminal
            return False
        self.buf += data
        return bool(data)

    def expect(self, text, timeout=20):
        """Waits for text after what earlier expects consumed."""
        want = text.encode() if isinstance(text, str) else text
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(want, self.pos)
            if i >= 0:
                self.pos = i + len(want)
                return
            if time.monotonic() > deadline or not self._read(0.1) and \
                    self.buf.find(want, self.pos) < 0 and not self.alive():
                raise AssertionError("no %r on the terminal; got:\n%s" % (
                    want, self.text()))

    def send(self, text):
        os.write(self.fd, text.encode() if isinstance(text, str) else text)

    def alive(self):
        if self.status is not None:
            return False
        pid, st = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = st
            return False
        return True

    def wait(self, timeout=20):
        deadline = time.monotonic() + timeout
        while self.alive():
            self._read(0.05)
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError("the console did not exit; terminal:\n" + self.text())
        while self._read(0.05):
            pass
        os.close(self.fd)
        return os.waitstatus_to_exitcode(self.status)

    def text(self):
        return self.buf.decode("utf-8", "replace")


def pty_console(srv, *args, env=None):
    e = dict(srv.env)
    e["TERM"] = "dumb"
    e.update(env or {})
    return Pty([str(srv.binary), "console", *args], e)


def default_socket(srv):
    """Where `serve` puts the admin socket by default (cwd is the repo)."""
    return REPO / "var" / "run" / ("rapport-%d.sock" % srv.port)


def admin_socket(srv):
    p = srv.env.get("RAPPORT_ADMIN_SOCKET")
    return Path(p) if p else default_socket(srv)


def admin_talk(path, data, timeout=10):
    """Sends raw bytes, half-closes, returns every reply until the server
    closes (the admin socket answers what was asked, then closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data.encode())
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    return [json.loads(r) for r in out.decode().split("\n\n") if r.strip()]


# ---- standalone: every stage through stdin ------------------------------------

def test_stages_for_a_seeded_contact(env_srv, fake, contact):
    cid, first = contact
    fake.config(content=json.dumps(REPLY))
    r = console(env_srv, lines(
        'ctx = context(%d, "%s")' % (cid, TYPE),
        '=ctx.contact.first_name',
        'req = messages(ctx)',
        '=req.messages[1].role .. "," .. req.messages[2].role',
        '=req.messages[2].content:find(ctx.contact.first_name, 1, true) ~= nil',
        '=req.model, req.response_format.type',
        'reply = chat(req)',
        '=reply.finish_reason, reply.data.score, reply.usage.prompt_tokens > 0',
        'result = post(reply, ctx)',
        '=result.score, result.trend, result.source, type(result.signals)',
    ))
    assert r.rc == 0, r
    out = r.out
    # the context: db time, the row counts, the contact's name
    assert "-- db " in out and "queries at once" in out and "contact 1" in out, r
    assert '"%s"' % first in out, r
    # the messages: system + user, the contact's name inside
    assert '"system,user"' in out and "\ntrue\n" in out, r
    assert '"gpt-4o-mini"\n"json_schema"' in out, r
    # the raw reply text from the fake, streamed as is
    assert json.dumps(REPLY) in out, r
    assert "-- llm " in out, r
    assert '"stop"\n77\ntrue' in out, r
    # the post result's structure
    assert '77\n"stable"\n"model"\n"table"' in out, r
    assert "-- post(reply, ctx)" in out, r
    st = fake.stats()
    assert st["chat_calls"] == 1
    # what chat() sent is exactly what messages() built
    sent = st["last_request"]
    assert sent["messages"][0]["role"] == "system"
    assert first in sent["messages"][1]["content"]
    assert sent["response_format"]["type"] == "json_schema"


def test_messages_and_post_by_contact_id(env_srv, fake, contact):
    """messages(id, type) fetches the context itself; post() takes the
    reply's text too."""
    cid, first = contact
    r = console(env_srv, lines(
        'req = messages(%d, "smart_tips")' % cid,
        '=#req.messages',
        'ctx = context(%d, "smart_tips")' % cid,
        'r = post(%s, ctx)' % json.dumps(json.dumps(
            {"tips": [{"title": "Call", "action": "Call them", "why": "Quiet",
                       "channel": "phone", "timing": "today"}]})),
        '=type(r)',
        'fb = fallback(ctx)',
        '=fb.source',
    ))
    assert r.rc == 0, r
    assert "\n2\n" in r.out and '"table"' in r.out and '"heuristic"' in r.out, r
    assert fake.stats()["chat_calls"] == 0


def test_analyze_with_and_without_cache(env_srv, fake, contact):
    cid, _ = contact
    r = console(env_srv, lines(
        'a = analyze(%d, "smart_tips", {stream = false})' % cid,
        '=a.cache.status, a.contact_id, a.type',
        'b = analyze(%d, "smart_tips")' % cid,
        '=b.cache.status',
        'c = analyze(%d, "smart_tips", {cache = false})' % cid,
        '=c.cache.status, type(c.result)',
        '=cache_list(%d).total' % cid,
        '=cache_drop(%d).dropped' % cid,
        '=cache_list().total',
    ))
    assert r.rc == 0, r
    assert '"miss"\n%d\n"smart_tips"' % cid in r.out, r
    assert '"hit"' in r.out, r
    assert '"miss"\n"table"' in r.out, r
    assert "-- hit: age" in r.out and "-- miss: db" in r.out, r
    assert "\n1\n1\n0\n" in r.out, r
    # the first and the cache=false call reached the model, the hit did not
    assert fake.stats()["chat_calls"] == 2


def test_errors_print_a_traceback_and_the_repl_continues(env_srv, fake):
    r = console(env_srv, lines(
        'nosuch()',
        '=1 + 1',
        'messages(999999, "%s")' % TYPE,
        'analyze(999999, "%s")' % TYPE,
        'context(1, "no_such_type")',
        'error("boom")',
        '=40 + 2',
    ))
    assert "attempt to call a nil value (global 'nosuch')" in r.err, r
    assert r.err.count("stack traceback:") >= 4, r
    assert "contact 999999 not found" in r.err, r
    assert "404 contact_not_found" in r.err, r
    assert "unknown analysis type 'no_such_type'" in r.err, r
    assert "boom" in r.err, r
    assert "\n2\n" in "\n" + r.out and r.out.rstrip().endswith("42"), r
    assert r.rc == 1, "piped input with failed chunks exits 1: %r" % r
    assert fake.stats()["chat_calls"] == 0


def test_multiline_chunks_and_the_printer(env_srv):
    r = console(env_srv, lines(
        'function double(x)',
        '  return x * 2',
        'end',
        '=double(',
        '  21)',
        't = {b = 1, a = {1, 2, 3}, n = json.null, ["x y"] = "s", e = {}}',
        't.self = t',
        't',
        '=json.decode("[]"), json.decode("{\\"k\\": [true, null]}")',
        '="two\\nlines"',
    ))
    assert r.rc == 0, r
    assert "\n42\n" in "\n" + r.out, r
    assert ('{\n  a = { 1, 2, 3 },\n  b = 1,\n  e = {},\n  n = null,\n'
            '  self = <cycle>,\n  ["x y"] = "s",\n}') in r.out, r
    assert '{}\n{\n  k = { true, null },\n}' in r.out, r
    assert "[[\ntwo\nlines]]" in r.out, r


def test_e_flag_and_script_file(env_srv, tmp_path):
    r = console(env_srv, args=("-e", "=1 + 2", "-e", "print('hi')"))
    assert (r.rc, r.out) == (0, "3\nhi\n"), r
    r = console(env_srv, args=("-e", "error('nope')", "-e", "print('not reached')"))
    assert r.rc == 1 and "nope" in r.err and "stack traceback" in r.err, r
    assert "not reached" not in r.out, r
    f = tmp_path / "s.lua"
    f.write_text('local t = types()\nprint(#t >= 3)\nquit(3)\nprint("after")\n')
    r = console(env_srv, args=(str(f),))
    assert r.rc == 3 and r.out == "true\n", r
    r = console(env_srv, args=("-e", "x = ("))
    assert r.rc == 1 and "unfinished" in r.err, r


def test_no_key_and_no_file_access(env_srv, fake):
    """An operator tool, but the upstream key stays out of reach: no
    os.getenv, no io, no loadfile/dofile, no bytecode."""
    key = "sk-console-test-secret"
    r = console(env_srv, lines(
        '=os.getenv, io, loadfile, dofile, package, debug, require, string.dump',
        '=type(os.time()), type(os.clock())',
        '=load("return 5")()',
        '=pcall(load, "\\27Lua")',
        'help()',
    ), env={"OPENAI_API_KEY": key})
    assert r.rc == 0, r
    assert r.out.startswith("nil\n" * 8), r
    assert '"number"\n"number"\n5\n' in r.out, r
    assert key not in r.out and key not in r.err
    for fn in ("context(", "messages(", "chat(", "post(", "analyze(", "cache_list(", "time("):
        assert fn in r.out, "help() lists %s: %r" % (fn, r)


def test_script_load_errors_are_listed(make_server, scripts_copy, tmp_path):
    (scripts_copy.scripts / "broken.lua").write_text("return {\n  description = \n")
    srv = make_server(start=False, RAPPORT_LOG_LEVEL=None, HOME=str(tmp_path),
                      **scripts_copy.env)
    r = console(srv, lines(
        'e = errors()',
        '=#e, e[1].type',
        'for _, t in ipairs(types()) do if t.name == "broken" then print(t.loaded, t.error ~= json.null) end end',
        '=reload().failed',
    ))
    assert '1\n"broken"\nfalse\ttrue\n1\n' in r.out, r


NAP_QUERIES = r'''
return {
  nap = { sql = [[SELECT pg_sleep(5)::text AS slept, $1::bigint AS id]] },
}
'''
NAP_LUA = r'''
return {
  description = "a slow query, for interrupting",
  queries = { "nap" },
  prompt = function(ctx) return { { role = "user", content = "nap" } } end,
}
'''


class Piped:
    """The console on pipes, read as it writes (signal tests)."""

    def __init__(self, srv):
        self.proc = subprocess.Popen([str(srv.binary), "console"], env=srv.env,
                                     cwd=str(REPO), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = {1: b"", 2: b""}

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def expect(self, which, text, timeout=15):
        f = self.proc.stdout if which == 1 else self.proc.stderr
        deadline = time.monotonic() + timeout
        while text.encode() not in self.out[which]:
            assert time.monotonic() < deadline, "no %r in %r" % (text, self.out)
            r, _, _ = select.select([f], [], [], 0.1)
            if r:
                self.out[which] += os.read(f.fileno(), 65536)

    def finish(self, timeout=10):
        out, err = self.proc.communicate(timeout=timeout)
        self.out[1] += out
        self.out[2] += err
        return self.proc.returncode


@pytest.mark.timeout(120)
def test_signals_stop_a_wait_cleanly(make_server, fake, tmp_path):
    """Ctrl-C cancels the queries or the upstream call and the REPL goes on;
    SIGTERM in a wait ends the session; every path frees (ASan)."""
    root = tmp_path / "nap"
    (root / "scripts" / "lib").mkdir(parents=True)
    (root / "prompts").mkdir()
    (root / "scripts" / "lib" / "queries.lua").write_text(NAP_QUERIES)
    (root / "scripts" / "nap.lua").write_text(NAP_LUA)
    srv = make_server(start=False, RAPPORT_LOG_LEVEL=None,
                      RAPPORT_SCRIPTS=str(root / "scripts"),
                      RAPPORT_PROMPTS=str(root / "prompts"))
    c = Piped(srv)
    c.send('ctx = context(1, "nap")\n')
    time.sleep(0.7)
    t0 = time.monotonic()
    c.proc.send_signal(signal.SIGINT)
    c.expect(2, "interrupted: the queries were cancelled")
    assert time.monotonic() - t0 < 3
    c.send("=40 + 2\n")
    c.expect(1, "42\n")
    # the pool is still usable: the cancelled query's connection recovers
    fake.config(latency_ms=8000)
    c.send('reply = chat({ { role = "user", content = "hi" } })\n')
    time.sleep(0.7)
    t0 = time.monotonic()
    c.proc.send_signal(signal.SIGINT)
    c.expect(2, "interrupted: the upstream call was cancelled")
    c.send('analyze(1, "nap", {cache = false})\nprint("not reached")\n')
    time.sleep(0.7)
    c.proc.send_signal(signal.SIGTERM)
    rc = c.finish()
    assert time.monotonic() - t0 < 5
    err = c.out[2].decode("utf-8", "replace")
    assert rc == 1 and "interrupted: stopped waiting for the analysis" in err, (rc, c.out)
    assert b"not reached" not in c.out[1]
    assert not sanitizer_report(err), err
    assert fake.stats()["chat_calls"] == 1


# ---- standalone: the terminal ---------------------------------------------------

@pytest.mark.timeout(120)
def test_terminal_line_editing_history_and_ctrl_c(env_srv, fake, contact):
    """Each input waits for its prompt: what is typed before readline has
    the terminal is read by the tty driver in cooked mode (a Ctrl-D typed
    ahead is swallowed there), as in any readline program."""
    cid, _ = contact
    home = Path(env_srv.env["HOME"])
    P = "rapport> "
    t = pty_console(env_srv)
    t.expect("help() lists the functions")
    t.expect(P)
    t.send("=6*7\r")
    t.expect("42\r\n")
    # Ctrl-A goes to the start of the line: "1+1" becomes "=1+1"
    t.expect(P)
    t.send("1+1\x01=\r")
    t.expect("2\r\n")
    # Ctrl-P brings the previous line back
    t.expect(P)
    t.send("\x10\r")
    t.expect("=1+1")
    t.expect("2\r\n")
    # a chunk continues while unfinished; Ctrl-C drops it
    t.expect(P)
    t.send("for i = 1, 3 do\r")
    t.expect(">> ")
    t.send("\x03")
    t.expect(P)
    t.send("=7\r")
    t.expect("7\r\n")
    t.expect(P)
    t.send("for i = 1, 2 do\r")
    t.expect(">> ")
    t.send("print('n' .. i) end\r")
    t.expect("n1\r\nn2\r\n")
    # Ctrl-C stops running Lua code
    t.expect(P)
    t.send("print('spinning') while true do end\r")
    t.expect("spinning\r\n")
    time.sleep(0.2)
    t.send("\x03")
    t.expect("interrupted")
    # ... and a wait on the model, at once
    t.expect(P)
    fake.config(latency_ms=8000)
    t.send('reply = chat(messages(%d, "%s"))\r' % (cid, TYPE))
    t.expect("-- prompt(ctx)")
    time.sleep(0.5)
    t0 = time.monotonic()
    t.send("\x03")
    t.expect("interrupted: the upstream call was cancelled")
    t.expect(P)
    assert time.monotonic() - t0 < 3
    t.send("=reply\r")
    t.expect("nil\r\n")
    # Ctrl-D leaves and saves the history, multi-line chunks whole
    t.expect(P)
    t.send("\x04")
    assert t.wait() == 0, t.text()
    report = sanitizer_report(t.text())
    assert not report, report
    hist = home / ".rapport_history"
    assert stat.S_IMODE(hist.stat().st_mode) == 0o600
    text = hist.read_text()
    assert "=6*7" in text and "for i = 1, 2 do\nprint('n' .. i) end" in text, text
    # the next session has it
    t = pty_console(env_srv)
    t.expect(P)
    t.send("\x10")
    t.expect("=reply")
    t.send("\x15\x04")
    assert t.wait() == 0, t.text()


# ---- the admin socket and attached mode -------------------------------------------

def test_attached_cache_list_drop_reload(make_server, fake, contact, tmp_path):
    cid, _ = contact
    srv = make_server()
    path = admin_socket(srv)
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    url = "/v1/contacts/%d/analyses/%s" % (cid, TYPE)
    assert srv.get(url).headers["X-Cache"] == "MISS"
    assert srv.get(url).headers["X-Cache"] == "HIT"

    r = console(srv, lines(
        '=#types() >= 3',
        'l = cache_list()',
        '=l.total, l.entries[1].contact_id, l.entries[1].type, l.entries[1].bytes > 0',
        '=l.entries[1].ttl_left_ms > 0, l.entries[1].age_ms >= 0',
        '=cache_drop(%d).dropped' % cid,
        '=cache_list().total',
        '=reload().failed',
        '=metrics()["rapport_http_requests_total"] >= 2',
        '=status().database.state',
        ':cache list %d' % cid,
        '=analyze(%d, "smart_tips").cache.status' % cid,
        '=analyze(%d, "smart_tips").cache.status' % cid,
        '=analyze(%d, "smart_tips", {cache = false}).cache.status' % cid,
        'cache_drop("x")',
        '=errors()',
    ), args=("--attach",), env={"HOME": str(tmp_path)})
    assert r.rc == 1, r       # cache_drop("x") failed on purpose
    assert r.out.startswith(
        'true\n1\n%d\n"%s"\ntrue\ntrue\ntrue\n1\n0\n0\ntrue\n"up"\n' % (cid, TYPE)), r
    assert '"ok": true' in r.out and '"total": 0' in r.out, r
    assert '"miss"\n"hit"\n"miss"\n{}\n' in r.out, r
    assert "invalid_contact_id" in r.err, r
    # dropped on the server: the next GET generates again
    assert srv.get(url).headers["X-Cache"] == "MISS"
    srv.wait_for_log(lambda o: o.get("msg") == "scripts reloaded"
                     and o.get("by") == "admin socket")
    srv.stop()
    assert not path.exists(), "the socket file outlives the server"


def test_admin_protocol_raw(make_server, fake, contact):
    cid, _ = contact
    srv = make_server()
    path = admin_socket(srv)
    replies = admin_talk(path, "help\n\ntypes\ncache list\nnope\ncache\ncache drop\n"
                               "analyze %d smart_tips\n" % cid)
    assert [r["ok"] for r in replies] == [True, True, True, False, False, False, True]
    assert any(c["command"].startswith("analyze") for c in replies[0]["result"])
    assert {t["name"] for t in replies[1]["result"]} >= {"smart_tips", TYPE}
    assert replies[3]["error"]["code"] == "unknown_command"
    assert replies[5]["error"]["message"].startswith("usage: cache drop")
    assert replies[6]["result"]["contact_id"] == cid
    # a line longer than 4 KiB is refused, the connection closed
    replies = admin_talk(path, "x" * 5000)
    assert replies[0]["error"]["code"] == "line_too_long"
    # the last command needs no newline
    assert admin_talk(path, "errors") == [{"ok": True, "result": []}]
    # a client that pipelines without reading is held back, not dropped:
    # every reply arrives, in order
    replies = admin_talk(path, "help\nstatus\n" * 1500, timeout=60)
    assert len(replies) == 3000 and all(r["ok"] for r in replies)
    assert "database" in replies[-1]["result"]


def test_attached_help_lists_the_admin_sockets_commands(make_server, tmp_path):
    """One command table: help() attached names, in order, exactly the
    commands the socket's own `help` lists, each next to its function."""
    srv = make_server()
    listed = [c["command"] for c in admin_talk(admin_socket(srv), "help\n")[0]["result"]]
    assert "cache drop <contact> [type]" in listed and "metrics" in listed
    r = console(srv, args=("--attach", "-e", "help()"), env={"HOME": str(tmp_path)})
    assert r.rc == 0, r
    shown = re.findall(r"\(:([^)]*)\)$", r.out, re.M)
    assert shown == listed, r
    assert re.search(r"^  cache_drop\(id \[, type\]\) .*\(:cache drop <contact> \[type\]\)$",
                     r.out, re.M), r
    # the standalone console's functions come from the same rows
    r = console(srv, args=("-e", "help()"), env={"HOME": str(tmp_path)})
    assert r.rc == 0 and "(:" not in r.out, r
    for fn in ("types()", "cache_drop(id [, type])", "status()", "ctx = context(id, type)"):
        assert "\n  " + fn + " " in r.out, r
    assert "admin(line)" not in r.out, r


def test_standalone_commands_answer_as_the_socket_does(env_srv, fake):
    """types/cache/status run the same code on the console's own parts:
    the same result shapes and the same errors as over the socket."""
    r = console(env_srv, lines(
        'cache_drop("x")',
        'cache_list(1, 2)',
        '=type(status().database.connected), status().admin_uptime_s',
        '=cache_clear().dropped',
    ))
    assert "invalid_contact_id: the contact id must be a positive integer, got 'x'" in r.err, r
    assert "usage: cache_list([id])" in r.err, r
    assert '"number"\nnil\n0\n' in r.out, r


def prometheus_samples(text):
    """{"name{labels}": number} from the text (the test's own reading)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_admin_metrics_json_has_the_values_of_the_metrics_text(make_server, fake, contact):
    """The admin socket's `metrics` and GET /metrics print one gathered list:
    the same samples under the same names, the same values."""
    cid, _ = contact
    srv = make_server()
    before = admin_talk(admin_socket(srv), "metrics\n")[0]["result"]
    url = "/v1/contacts/%d/analyses/%s" % (cid, TYPE)
    assert srv.get(url).status == 200
    assert srv.get(url).headers["X-Cache"] == "HIT"
    assert srv.get("/v1/nope").status == 404
    text = srv.get("/metrics").text
    assert "# HELP rapport_http_requests_total " in text
    prom = prometheus_samples(text)
    result = admin_talk(admin_socket(srv), "metrics\n")[0]["result"]
    assert set(result) == set(prom)
    # /metrics counted its own 200 after printing; nothing else changed
    ok2xx = 'rapport_http_responses_total{class="2xx"}'
    assert result[ok2xx] == prom[ok2xx] + 1
    for name in ("rapport_http_requests_total", 'rapport_http_responses_total{class="4xx"}',
                 "rapport_cache_hits_total", "rapport_cache_misses_total",
                 "rapport_analysis_generated_total",
                 'rapport_llm_calls_total{type="%s",model="gpt-4o-mini"}' % TYPE):
        assert result[name] == prom[name], name
    for name, n in (("rapport_http_requests_total", 4), ("rapport_cache_hits_total", 1),
                    ('rapport_http_responses_total{class="4xx"}', 1)):
        assert prom[name] - before[name] == n, name
    # the standalone console gathers the same families from its own parts
    r = console(srv, lines('m = metrics()', '=m.rapport_cache_hits_total, m.rapport_http_requests_total',
                           '=m["rapport_db_connections{state=\\"configured\\"}"] > 0'))
    assert r.rc == 0 and r.out == "0\nnil\ntrue\n", r


def test_admin_client_leaving_mid_command(make_server, fake, contact):
    """The wait is cancelled; the server goes on serving (and ASan finds no
    leak or use-after-free at stop)."""
    cid, _ = contact
    srv = make_server()
    path = admin_socket(srv)
    fake.config(latency_ms=700)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.sendall(b"analyze %d smart_tips refresh\ntypes\n" % cid)
            time.sleep(0.1)
    # a client that half-closes gets its answer before the close
    replies = admin_talk(path, "analyze %d %s refresh\n" % (cid, TYPE))
    assert replies[0]["ok"] and replies[0]["result"]["cache"]["status"] == "miss"
    # one still waiting when the server stops
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.sendall(("analyze %d %s refresh\n" % (cid, TYPE)).encode())
    time.sleep(0.2)
    srv.stop()
    s.close()
    assert not path.exists()


def test_admin_socket_path_choices(make_server, tmp_path):
    # explicit path; a stale file from a crash is replaced
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    srv = make_server(RAPPORT_ADMIN_SOCKET=str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_talk(path, "errors\n")[0] == {"ok": True, "result": []}
    srv.wait_for_log(lambda o: o.get("msg") == "replacing a stale admin socket")
    # a second server on the same path refuses to steal it
    other = make_server(start=False, RAPPORT_ADMIN_SOCKET=str(path))
    with pytest.raises(ServerError, match="in use by a running server"):
        other.start(timeout=5)
    # a crash leaves the file; the next start replaces it
    srv.kill()
    assert path.exists()
    srv.start()
    assert admin_talk(path, "errors\n")[0]["ok"]
    srv.stop()
    assert not path.exists()
    # not a socket: never removed, the server does not start
    path.write_text("mine")
    srv3 = make_server(start=False, RAPPORT_ADMIN_SOCKET=str(path))
    with pytest.raises(ServerError, match="not a socket"):
        srv3.start(timeout=5)
    assert path.read_text() == "mine"
    # off
    srv4 = make_server(RAPPORT_ADMIN_SOCKET="off")
    assert not default_socket(srv4).exists()
    srv4.stop()


def test_attach_without_a_server(env_srv, tmp_path):
    r = console(env_srv, "types()\n", args=("--attach", str(tmp_path / "none.sock")))
    assert r.rc == 1 and "cannot connect" in r.err, r
    r = console(env_srv, args=("--attach", "-e", "x"))
    assert r.rc == 1 and "cannot connect" in r.err, r
    assert os.path.basename(str(admin_socket(env_srv))) in r.err, r


@pytest.mark.timeout(120)
def test_attached_terminal(make_server, contact, tmp_path):
    cid, _ = contact
    srv = make_server()
    srv.get("/v1/contacts/%d/analyses/%s" % (cid, TYPE))
    t = pty_console(srv, "--attach", env={"HOME": str(tmp_path)})
    t.expect("attached to")
    t.expect("rapport(attached)> ")
    t.send("=cache_list().total\r")
    t.expect("1\r\n")
    t.expect("rapport(attached)> ")
    t.send(":cache drop %d\r" % cid)
    t.expect('"dropped": 1')
    t.expect("rapport(attached)> ")
    t.send("\x04")
    assert t.wait() == 0, t.text()
    assert not sanitizer_report(t.text())


def test_admin_cache_drop_refuses_a_malformed_type(make_server, fake, contact):
    """The type also goes to other instances in a space-separated message,
    where '*' would mean every type: refused, like DELETE's."""
    cid, _ = contact
    srv = make_server()
    url = "/v1/contacts/%d/analyses/smart_tips" % cid
    srv.get(url)
    replies = admin_talk(admin_socket(srv), "cache drop %d *\ncache drop %d Smart\n"
                                            "cache drop %d smart_tips\n" % (cid, cid, cid))
    assert [r["ok"] for r in replies] == [False, False, True], replies
    assert replies[0]["error"]["code"] == "invalid_type"
    assert replies[2]["result"]["dropped"] == 1
