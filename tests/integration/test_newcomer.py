"""The first hour of a new user: `make run`, then the commands the README and
docs/scripts.md print, exactly as written, from the repository folder.

A copy of the repository's runnable parts (Makefile, tools/, sql/, scripts/,
prompts/, the built binaries) goes to a temporary folder, so `make run`
there has its own var/ (cluster, run files) and cannot touch a developer's
demo. The commands then run in that folder with no DATABASE_URL: they must
reach the same demo (var/run/env). Terminal behaviour (Ctrl-C, the text log)
goes through a pseudo-terminal (python's pty).
"""

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import termios
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.pg import free_port
from helpers.server import rapport_binary

REPO = Path(__file__).resolve().parents[2]


def fake_bin():
    p = Path(os.environ.get("FAKE_BIN") or "build/fake_openai")
    return p if p.is_absolute() else REPO / p


def copy_repo(dest):
    """The parts of the repository `make run` and the documented commands
    use; binaries keep their names (run.sh checks processes by name)."""
    dest.mkdir(parents=True)
    for d in ("tools", "sql", "scripts", "prompts"):
        shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("fake_openai"))
    (dest / "tools" / "fake_openai").mkdir(exist_ok=True)
    shutil.copy2(REPO / "Makefile", dest / "Makefile")
    (dest / "build").mkdir()
    shutil.copy2(rapport_binary(), dest / "rapport")
    shutil.copy2(fake_bin(), dest / "build" / "fake_openai")
    return dest


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAPPORT_", "PG")) and k not in (
               "DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "MAKEFLAGS", "MAKELEVEL")}
    env.update(extra)
    return env


def get(port, path, timeout=30, headers=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class PtyProc:
    """A command on a pseudo-terminal, in its own session (so Ctrl-C reaches
    it and its children as from a real terminal)."""

    def __init__(self, argv, cwd, env):
        self.master, slave = pty.openpty()
        def controlling_tty():
            # A session of its own with the pty as its terminal: Ctrl-C
            # then reaches the foreground group (make and everything under it).
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=slave, stdout=slave,
                                     stderr=slave, preexec_fn=controlling_tty)
        os.close(slave)
        self.out = b""

    def read_for(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.out += data

    def wait_for(self, pattern, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if re.search(pattern, self.out):
                return True
            if self.proc.poll() is not None:
                self.read_for(0.2)
                return bool(re.search(pattern, self.out))
            self.read_for(0.2)
        return bool(re.search(pattern, self.out))

    def ctrl_c(self):
        os.write(self.master, b"\x03")

    def send(self, text):
        os.write(self.master, text.encode())

    def finish(self, timeout=30):
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read_for(0.2)
        self.read_for(0.3)
        rc = self.proc.poll()
        if rc is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
        return rc

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")


class Demo:
    """One `tools/run.sh` (what `make run` runs) in the copy, its output kept."""

    def __init__(self, root, listen_port, fake_port, pg_port):
        self.root, self.port = root, listen_port
        self.fake_port, self.pg_port = fake_port, pg_port
        self.log = open(root / ("run-%d.out" % listen_port), "w+b")
        self.proc = subprocess.Popen(
            ["tools/run.sh"], cwd=str(root), stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=clean_env(RAPPORT_LISTEN="127.0.0.1:%d" % listen_port,
                          RAPPORT_FAKE_PORT=str(fake_port), RAPPORT_PG_PORT=str(pg_port),
                          RAPPORT_DEMO_CONTACTS="100", RAPPORT_BIN=str(root / "rapport"),
                          FAKE_BIN=str(root / "build" / "fake_openai"),
                          RAPPORT_LOG_FORMAT="json"))

    def output(self):
        self.log.flush()
        return (self.root / ("run-%d.out" % self.port)).read_text("utf-8", "replace")

    def wait_up(self, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "rapport is up on" in self.output():
                return
            assert self.proc.poll() is None, "run.sh ended:\n" + self.output()
            time.sleep(0.2)
        raise AssertionError("run.sh not up after %d s:\n%s" % (timeout, self.output()))

    def interrupt(self, timeout=30):
        """Ctrl-C as a terminal sends it: SIGINT to the whole group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("newcomer") / "rapport")
    yield root
    subprocess.run(["tools/pg.sh", "destroy", str(root / "var" / "pg")], cwd=str(root),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def demo(repo):
    d = Demo(repo, free_port(), free_port(), free_port())
    d.wait_up()
    yield d
    d.interrupt()


def run_cmd(repo, *args, timeout=120, **env):
    return subprocess.run([str(repo / "rapport"), *args], cwd=str(repo), env=clean_env(**env),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


# ---- item 1: everything documented reaches the demo ------------------------

def test_make_run_writes_var_run_env_with_the_demo_database_and_upstream(demo, repo):
    env = (repo / "var" / "run" / "env").read_text()
    assert "DATABASE_URL='host=" in env and "user=rapport_reader" in env, env
    assert "OPENAI_BASE_URL='http://127.0.0.1:%d/v1'" % demo.fake_port in env, env
    assert "RAPPORT_LISTEN='127.0.0.1:%d'" % demo.port in env, env
    assert "OPENAI_API_KEY" not in env


def test_documented_analyze_gets_a_result_from_the_demo_without_database_url(demo, repo):
    r = run_cmd(repo, "analyze", "42", "smart_tips")
    assert r.returncode == 0, (r.stdout, r.stderr)
    d = json.loads(r.stdout)
    assert d["contact_id"] == 42 and d["result"]["tips"], d
    err = r.stderr.decode()
    assert "var/run/env" in err, "it says where its settings came from: %r" % err
    assert '{"ts"' not in err, "no JSON log lines around the answer: %r" % err


def test_every_printed_curl_command_works_and_the_stream_shows_text_arriving(demo, repo):
    out = demo.output()
    banner = out[out.index("rapport is up on"):]
    assert re.search(r"^Panel: http://(127\.0\.0\.1|localhost):%d/#contact=\d+" % demo.port,
                     out[:out.index("rapport is up on")], re.M), "the panel's URL comes first"
    cmds = [l.strip() for l in banner.splitlines() if l.strip().startswith("curl ")]
    assert len(cmds) >= 4, banner
    streamed = False
    for cmd in cmds:
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=str(repo),
                           capture_output=True, timeout=60)
        assert r.returncode == 0 and r.stdout, (cmd, r.stdout, r.stderr)
        if "text/event-stream" in cmd:
            text = r.stdout.decode()
            # Streamed for real: the model's text as deltas, then the result.
            assert "event: delta" in text and "event: result" in text, (cmd, text)
            streamed = True
    assert streamed, "no streaming command printed: %s" % cmds


def test_documented_console_analyze_works_on_a_terminal(demo, repo):
    p = PtyProc([str(repo / "rapport"), "console"], repo, clean_env(TERM="dumb", HOME=str(repo)))
    assert p.wait_for(rb"help\(\) lists", 60), p.text
    # docs/scripts.md and the README write it this way: a type name string.
    p.send('r = analyze(42, "smart_tips", {cache = false}); print(#r.result.tips > 0)\n')
    assert p.wait_for(rb"\btrue\b", 60), p.text
    p.send("\x04")
    p.finish()
    assert "database unreachable" not in p.text, p.text


def test_documented_check_passes_quietly_on_the_demo(demo, repo):
    r = run_cmd(repo, "check", "--no-lint")
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    assert "prompt renders on a sample context" in out, "the demo's database described the queries:\n" + out
    for line in (out + r.stderr.decode()).splitlines():
        assert not line.startswith("{"), "a JSON log line in rapport check's report: %s" % line
    assert "stack traceback" not in out + r.stderr.decode()


def test_console_without_any_database_says_how_to_reach_the_demo(tmp_path):
    r = subprocess.run([str(rapport_binary()), "console", "-e", 'context(1, "smart_tips")'],
                       cwd=str(tmp_path), capture_output=True, timeout=60,
                       env=clean_env(DATABASE_URL="postgresql://127.0.0.1:%d/rapport" % free_port(),
                                     RAPPORT_SCRIPTS=str(REPO / "scripts"),
                                     RAPPORT_PROMPTS=str(REPO / "prompts"), HOME=str(tmp_path)))
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "database unreachable (refused)" in err, err
    assert "make run" in err and "DATABASE_URL" in err, err
    assert err.count("Connection refused") == 1, "the cause is said once: %s" % err


# ---- item 2: two runs side by side; Ctrl-C ----------------------------------

def test_a_second_make_run_on_other_ports_runs_next_to_the_first(demo, repo):
    assert get(demo.port, "/healthz")[0] == 200
    second = Demo(repo, free_port(), free_port(), demo.pg_port)
    try:
        second.wait_up()
        for port in (demo.port, second.port):
            status, body = get(port, "/v1/contacts/7/analyses/relationship_health")
            assert status == 200, (port, body)
        assert "stopping" not in second.output(), "the live first run was not touched:\n" + second.output()
    finally:
        rc = second.interrupt()
    assert rc == 0, second.output()
    assert get(demo.port, "/healthz")[0] == 200, "the first run still serves after the second ended"
    assert (repo / "var" / "run" / "env").exists(), "var/run/env points at the run still alive"
    assert ("127.0.0.1:%d" % demo.port) in (repo / "var" / "run" / "env").read_text()


def test_a_second_run_on_the_same_port_is_refused_with_the_command_for_other_ports(demo, repo):
    second = Demo(repo, demo.port, free_port(), demo.pg_port)
    rc = second.proc.wait(60)
    out = second.output()
    second.log.close()
    assert rc != 0 and "RAPPORT_LISTEN=127.0.0.1:" in out and "RAPPORT_FAKE_PORT=" in out, out
    assert get(demo.port, "/healthz")[0] == 200


def test_leftovers_of_a_dead_run_are_cleaned_and_a_live_runs_are_not(demo, repo):
    run_dir = repo / "var" / "run"
    # A run whose owner died (kill -9 of run.sh) left its fake running.
    orphan = subprocess.Popen([str(repo / "build" / "fake_openai"), "--listen",
                               "127.0.0.1:%d" % free_port()], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    (run_dir / "run-1.state").write_text("OWNER=%d\nLISTEN=127.0.0.1:1\nFAKE_PORT=1\nRAPPORT=\nFAKE=%d\n"
                                         % (dead_owner.pid, orphan.pid))
    third = Demo(repo, free_port(), free_port(), demo.pg_port)
    try:
        third.wait_up()
        assert orphan.wait(15) is not None, "the dead run's fake was stopped"
        assert not (run_dir / "run-1.state").exists()
        assert get(demo.port, "/healthz")[0] == 200, "the live run was left alone"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        third.interrupt()


@pytest.mark.timeout(240)
def test_ctrl_c_ends_make_run_with_status_0_and_no_make_error(demo, repo):
    port = free_port()
    env = clean_env(RAPPORT_LISTEN="127.0.0.1:%d" % port, RAPPORT_FAKE_PORT=str(free_port()),
                    RAPPORT_PG_PORT=str(demo.pg_port), RAPPORT_BIN=str(repo / "rapport"),
                    FAKE_BIN=str(repo / "build" / "fake_openai"), TERM="dumb")
    # -o: the copied binaries count as built (the copy has no sources).
    p = PtyProc(["make", "-o", "rapport", "-o", "build/fake_openai", "run"], repo, env)
    assert p.wait_for(rb"rapport is up on", 180), p.text
    # On a terminal, rapport logs text lines, not JSON.
    assert p.wait_for(rb"INFO  rapport serving", 10), p.text
    p.ctrl_c()
    rc = p.finish(60)
    assert rc == 0, p.text
    assert "Error 130" not in p.text and "***" not in p.text, p.text
    assert "rapport stopped." in p.text
