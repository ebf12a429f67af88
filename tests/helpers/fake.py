"""The fake OpenAI upstream (build/fake_openai), started as a child process.

    fake = FakeOpenAI(latency_ms=0).start()      # or: with FakeOpenAI() as fake:
    fake.base_url                                 # http://127.0.0.1:PORT/v1
    fake.fail({"status": 429, "retry_after": "1"}, {"mode": "cut"})
    fake.config(latency_ms=300, content="fixed text")  # -> resulting settings
    fake.stats()["chat_calls"]
    fake.reset()                                  # counters, settings, queue
    fake.stop()                                   # SIGTERM, then SIGKILL

The child writes its port to a file in a private temp dir (--port-file) and
its stdout/stderr to a log file there (read it with .log() before stop());
nothing is piped, so a chatty child can never block on a full pipe.
Stdlib only.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time


class FakeError(AssertionError):
    """The fake failed to start or a control call failed."""


class FakeOpenAI:
    def __init__(self, binary=None, latency_ms=None, chunk_delay_ms=None,
                 extra_args=(), start_timeout=10.0):
        self.binary = binary or os.environ.get("FAKE_BIN",
                                               "build/fake_openai")
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self.returncode = None
        self._dir = None
        self._log_path = None

    # ---- lifecycle -------------------------------------------------------

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def args(self, port_file):
        a = [self.binary, "--listen", "127.0.0.1:0", "--port-file", port_file]
        if self.latency_ms is not None:
            a += ["--latency-ms", str(self.latency_ms)]
        if self.chunk_delay_ms is not None:
            a += ["--chunk-delay-ms", str(self.chunk_delay_ms)]
        return a + self.extra_args

    def start(self):
        if self.proc is not None:
            raise FakeError("already started")
        self._dir = tempfile.mkdtemp(prefix="fake_openai.")
        port_file = os.path.join(self._dir, "port")
        self._log_path = os.path.join(self._dir, "fake.log")
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args(port_file), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise FakeError("fake_openai exited with %s:\n%s"
                                    % (self.proc.returncode, self.log()))
                if self.port is None and os.path.exists(port_file):
                    # Written to a temp name and renamed: never partial.
                    with open(port_file) as f:
                        self.port = int(f.read().strip())
                if self.port is not None:
                    try:
                        self.stats()
                        return self
                    except OSError:
                        pass
                time.sleep(0.02)
            raise FakeError("fake_openai not ready after %.0f s:\n%s"
                            % (self.start_timeout, self.log()))
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.returncode = self.proc.returncode
            self.proc = None
        if self._dir is not None:
            self._final_log = self.log()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        return self.returncode

    def log(self):
        """Everything the child printed so far (also after stop())."""
        if self._dir is None:
            return getattr(self, "_final_log", "")
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ---- control endpoints -----------------------------------------------

    def _call(self, method, path, body=None, timeout=10.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise FakeError("%s %s -> %d %s" % (method, path, resp.status,
                                                raw.decode("utf-8",
                                                           "replace")))
        return json.loads(raw)

    def stats(self):
        """chat_calls, stream_calls, rate_limited (429s of the rate-limit
        mode), in_flight, max_in_flight, connections, last_request,
        last_authorization_present."""
        return self._call("GET", "/_fake/stats")

    def reset(self):
        """Zero the counters, forget last_request, restore the command line
        settings and empty the failure queue."""
        return self._call("POST", "/_fake/reset", {})

    def config(self, **kw):
        """Merge latency_ms, chunk_delay_ms, chunks, content (str or None),
        rate_limit ({"requests", "tokens", "window_ms"} or None) and fail
        (list, appended) into the live settings; returns them."""
        return self._call("POST", "/_fake/config", kw)

    def fail(self, *entries):
        """Append failure entries, each used by the next chat call(s):
        {"status": 500|429|…, "message", "type", "code", "param",
        "retry_after", "retry_after_ms", "count"} or {"mode": "slow",
        "latency_ms"}, {"mode": "stall"}, {"mode": "cut", "after_chunks"},
        {"mode": "stream_error", "after_chunks"}, {"mode": "invalid_json"},
        {"mode": "garbage"}, {"mode": "content", "content"}."""
        return self.config(fail=list(entries))
