"""The real rapport binary, started for one test and talked to over HTTP.

    srv = Rapport(pg=pg, fake=fake, env={"RAPPORT_API_KEYS": "k1"}).start()
    r = srv.get("/v1/contacts/1/analyses/relationship_health",
                headers={"Authorization": "Bearer k1"})
    r.status, r.headers["content-type"], r.body, r.json()
    resp, events = srv.sse("/v1/contacts/1/analyses/smart_tips")
    srv.log_lines()          # stderr, one parsed JSON object per line
    srv.stop()               # SIGTERM; raises ServerError on a non-zero exit
                             # or a sanitizer report in stderr
    srv.nofile = 64          # before start(): the child's RLIMIT_NOFILE
                             # (soft and hard), as `ulimit -n 64` would

RAPPORT_TEST_WRAPPER (opt-in) prefixes the server command, e.g.
    RAPPORT_TEST_WRAPPER="valgrind --error-exitcode=99 --leak-check=full \
        --errors-for-leak-kinds=definite -q" tools/test.sh tests/integration/...
valgrind's own output goes to <workdir>/valgrind.<pid>.log (not stderr, which
tests read as JSON log lines) unless the wrapper names a --log-file; an exit
status of 99 or a non-empty valgrind log fails stop() like a sanitizer report.
Start and stop timeouts are multiplied by RAPPORT_TEST_WRAPPER_SLOWDOWN
(default 10 with a wrapper): valgrind runs the binary many times slower.

Environment of the child: the caller's environment without any RAPPORT_*,
OPENAI_*, DATABASE_URL or REDIS_URL variable, then the defaults (listen on a
free 127.0.0.1 port, the pg cluster's DATABASE_URL, the fake's base URL, the
repo's scripts/ and prompts/, debug logs), then `env` (a None value removes a
variable). Stdlib only.
"""

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

try:
    from .pg import free_port
except ImportError:  # imported as a top-level module
    from pg import free_port

REPO = Path(__file__).resolve().parents[2]

SANITIZER_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"ERROR: LeakSanitizer"),
    re.compile(r"AddressSanitizer:DEADLYSIGNAL"),
    re.compile(r"WARNING: ThreadSanitizer"),
    re.compile(r"^\S+:\d+:\d+: runtime error: ", re.M),   # UBSan
]

_STRIP_PREFIXES = ("RAPPORT_", "OPENAI_")
_STRIP_NAMES = {"DATABASE_URL", "REDIS_URL"}


WRAPPER_ERROR_EXIT = 99     # the --error-exitcode the wrapper is given


def test_wrapper():
    """RAPPORT_TEST_WRAPPER split into words ([] when unset)."""
    return shlex.split(os.environ.get("RAPPORT_TEST_WRAPPER", ""))


def wrapper_slowdown():
    """How much longer start/stop may take under the wrapper."""
    if not test_wrapper():
        return 1.0
    return float(os.environ.get("RAPPORT_TEST_WRAPPER_SLOWDOWN", "10"))


class ServerError(AssertionError):
    """rapport failed to start, exited badly, or a sanitizer complained."""


def rapport_binary():
    """RAPPORT_BIN (relative to the repo if not absolute) or ./rapport."""
    b = os.environ.get("RAPPORT_BIN") or "rapport"
    p = Path(b)
    return p if p.is_absolute() else REPO / p


class Headers:
    """Response headers, case-insensitive; repeated headers kept in order."""

    def __init__(self, pairs):
        self._pairs = [(k, v) for k, v in pairs]

    def get(self, name, default=None):
        n = name.lower()
        for k, v in self._pairs:
            if k.lower() == n:
                return v
        return default

    def get_all(self, name):
        n = name.lower()
        return [v for k, v in self._pairs if k.lower() == n]

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        return self.get(name) is not None

    def items(self):
        return list(self._pairs)

    def keys(self):
        return [k for k, _ in self._pairs]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self._pairs)

    def __repr__(self):
        return "Headers(%r)" % (self._pairs,)


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError("response %d is not JSON (%s): %r"
                                 % (self.status, e, self.body[:500])) from None

    def __repr__(self):
        return "<Response %d %s %r>" % (self.status, self.headers.get(
            "content-type", ""), self.body[:200])


def parse_sse(data):
    """Server-Sent Events from a body (bytes or str): a list of dicts
    {"event": name ("message" if none), "data": str, "id": str or None}."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    events, ev = [], {"event": None, "data": [], "id": None}
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if ev["data"] or ev["event"] is not None:
                events.append({"event": ev["event"] or "message",
                               "data": "\n".join(ev["data"]), "id": ev["id"]})
            ev = {"event": None, "data": [], "id": None}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            ev["event"] = value
        elif field == "data":
            ev["data"].append(value)
        elif field == "id":
            ev["id"] = value
    return events



class HttpClient:
    """Requests to host:port, each on a new connection: what a test does to
    rapport, and to anything in front of it (tests/helpers/haproxy.py)."""

    def __init__(self, host, port):
        self.host, self.port = host, port

    def _conn(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=30.0):
        """One request on a new connection; returns a Response."""
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        conn = self._conn(timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.reason, Headers(r.getheaders()), data)
        finally:
            conn.close()

    def get(self, path, headers=None, timeout=30.0):
        return self.request("GET", path, headers=headers, timeout=timeout)

    def delete(self, path, headers=None, timeout=30.0):
        return self.request("DELETE", path, headers=headers, timeout=timeout)

    def post(self, path, body=None, headers=None, timeout=30.0):
        return self.request("POST", path, body=body, headers=headers,
                            timeout=timeout)

    def open_stream(self, path, headers=None, method="GET", timeout=30.0):
        """Starts a request and returns (connection, http.client response)
        without reading the body: for SSE tests that read incrementally or
        disconnect early. Close the connection when done."""
        headers = dict(headers or {})
        headers.setdefault("Accept", "text/event-stream")
        conn = self._conn(timeout)
        conn.request(method, path, headers=headers)
        return conn, conn.getresponse()

    def sse(self, path, headers=None, timeout=30.0):
        """GET with Accept: text/event-stream, read to the end; returns
        (Response with the raw body, list of events as parse_sse gives)."""
        conn, r = self.open_stream(path, headers=headers, timeout=timeout)
        try:
            data = r.read()
            resp = Response(r.status, r.reason, Headers(r.getheaders()), data)
        finally:
            conn.close()
        return resp, parse_sse(data)

    def raw(self, data, timeout=10.0):
        """Sends raw bytes on a new connection; returns every byte the server
        sends back until it closes (or the timeout)."""
        if isinstance(data, str):
            data = data.encode()
        chunks = []
        with socket.create_connection((self.host, self.port), timeout) as s:
            s.sendall(data)
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    chunks.append(b)
            except socket.timeout:
                pass
        return b"".join(chunks)


class Rapport(HttpClient):
    def __init__(self, pg=None, fake=None, env=None, binary=None, workdir=None,
                 args=("serve",), port=None):
        self.binary = Path(binary) if binary else rapport_binary()
        self.pg = pg
        self.fake = fake
        self.args = list(args)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        if workdir is None:
            import tempfile
            workdir = tempfile.mkdtemp(prefix="rapport-srv-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.workdir / "rapport.stderr"
        self.stdout_path = self.workdir / "rapport.stdout"
        self.env = self._build_env(env or {})
        self.proc = None
        self.returncode = None
        self._stopped = False
        self._start_failed = False   # already reported by start()
        self.nofile = None           # RLIMIT_NOFILE for the child, if set
        self.wrapper = test_wrapper()
        if self.wrapper and os.path.basename(self.wrapper[0]) == "valgrind" \
                and not any(w.startswith("--log-file") for w in self.wrapper):
            self.wrapper.insert(1, "--log-file=%s"
                                % (self.workdir / "valgrind.%p.log"))

    # -- environment -------------------------------------------------------
    def _build_env(self, overrides):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP_NAMES}
        env["RAPPORT_LISTEN"] = "%s:%d" % (self.host, self.port)
        env["RAPPORT_SCRIPTS"] = str(REPO / "scripts")
        env["RAPPORT_PROMPTS"] = str(REPO / "prompts")
        env["RAPPORT_LOG_LEVEL"] = "debug"
        # Each server's admin socket in its own workdir: no stale files in
        # the repository's var/run when a test kills a server.
        env["RAPPORT_ADMIN_SOCKET"] = str(self.workdir / "admin.sock")
        if self.pg is not None:
            env["DATABASE_URL"] = self.pg.url
        if self.fake is not None:
            env["OPENAI_BASE_URL"] = self.fake.base_url
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        if "RAPPORT_LISTEN" in overrides and overrides["RAPPORT_LISTEN"]:
            host, _, port = str(overrides["RAPPORT_LISTEN"]).rpartition(":")
            if port.isdigit():
                self.port = int(port)
                if host and host not in ("0.0.0.0", "*"):
                    self.host = host.strip("[]")
        return env

    # -- lifecycle -----------------------------------------------------------
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def base_url(self):
        return "http://%s" % self.address

    def start(self, timeout=10.0, wait_healthy=True):
        """Starts the binary; waits until GET /healthz answers 200."""
        if not self.binary.exists():
            raise ServerError("%s does not exist — build it with `make`"
                              % self.binary)
        self._stopped = False
        self._start_failed = False
        self.returncode = None
        preexec = None
        if self.nofile is not None:
            import resource
            n = int(self.nofile)

            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        timeout *= wrapper_slowdown()
        with open(self.stderr_path, "ab") as err, \
                open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.wrapper, str(self.binary), *self.args], env=self.env,
                cwd=str(REPO),
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=preexec)
        if wait_healthy:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                self._stopped = True
                self._start_failed = True
                raise ServerError(
                    "rapport exited with status %s before /healthz answered;"
                    " stderr tail:\n%s" % (rc, self.stderr_tail()))
            try:
                r = self.get("/healthz", timeout=1.0)
                if r.status == 200:
                    return self
                last = "status %d: %r" % (r.status, r.body[:200])
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        self.kill()
        self._start_failed = True
        raise ServerError("rapport did not answer GET /healthz with 200 within"
                          " %.0f s (last: %s); stderr tail:\n%s"
                          % (timeout, last, self.stderr_tail()))

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL without checks (for crash tests); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        self.returncode = self.proc.wait()
        self._stopped = True
        return self.returncode

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout=10.0, check=True):
        """SIGTERM, wait up to `timeout` s, then SIGKILL. With check, raises
        ServerError on a non-zero exit, a kill, or a sanitizer report."""
        if self.proc is None or self._start_failed:
            return self.returncode
        timeout *= wrapper_slowdown()
        problems = []
        if not self._stopped:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    problems.append("did not exit within %.0f s of SIGTERM;"
                                    " killed" % timeout)
                    self.proc.kill()
                    self.proc.wait()
            self.returncode = self.proc.returncode
            self._stopped = True
            if self.wrapper and self.returncode == WRAPPER_ERROR_EXIT:
                problems.append("the wrapper (%s) reported errors (exit %d)"
                                % (self.wrapper[0], WRAPPER_ERROR_EXIT))
            elif self.returncode != 0 and not problems:
                problems.append("exited with status %s" % self.returncode)
        report = self.wrapper_report()
        if report:
            problems.append("%s report:\n%s" % (self.wrapper[0], report))
        report = self.sanitizer_report()
        if report:
            problems.append("sanitizer report in stderr:\n" + report)
        if check and problems:
            raise ServerError("rapport (pid %s): %s\nstderr tail:\n%s"
                              % (self.proc.pid, "; ".join(problems),
                                 self.stderr_tail()))
        return self.returncode

    def restart(self, timeout=10.0):
        self.stop()
        return self.start(timeout)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    # -- logs ------------------------------------------------------------------
    def stderr_text(self):
        try:
            return self.stderr_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines=40):
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def sanitizer_report(self):
        text = self.stderr_text()
        for pat in SANITIZER_PATTERNS:
            m = pat.search(text)
            if m:
                start = text.rfind("\n", 0, m.start()) + 1
                return text[start:start + 6000]
        return ""

    def wrapper_report(self):
        """What valgrind wrote to its log files in the workdir (with -q,
        only errors and leaks), or ""."""
        out = []
        for p in sorted(self.workdir.glob("valgrind.*.log")):
            text = p.read_text("utf-8", "replace").strip()
            if text:
                out.append("%s:\n%s" % (p.name, text[:6000]))
        return "\n".join(out)

    def log_lines(self):
        """Every stderr line that is a JSON object, parsed, in order."""
        out = []
        for line in self.stderr_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def non_json_lines(self):
        """stderr lines that are not a JSON object (should be none)."""
        bad = []
        for line in self.stderr_text().splitlines():
            try:
                if isinstance(json.loads(line), dict):
                    continue
            except ValueError:
                pass
            bad.append(line)
        return bad

    def wait_for_log(self, predicate, timeout=5.0):
        """The first parsed log line for which predicate(obj) is true,
        waiting up to `timeout` s; raises AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            for obj in self.log_lines():
                if predicate(obj):
                    return obj
            if time.monotonic() >= deadline:
                raise AssertionError("no matching log line within %.1f s;"
                                     " stderr tail:\n%s"
                                     % (timeout, self.stderr_tail()))
            time.sleep(0.05)
