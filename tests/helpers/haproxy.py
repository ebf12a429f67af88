"""A private HAProxy for tests, configured from etc/haproxy.cfg.example (its
@LISTEN@ bind and @SERVERS@ lines replaced by private ports), run in the
foreground and stopped by pid. Talked to like a Rapport (get, sse)."""

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from helpers.pg import free_port
from helpers.server import REPO, Headers, Response, parse_sse

EXAMPLE = REPO / "etc" / "haproxy.cfg.example"


def render(listen, backends, inter_ms=None):
    """The example with our bind address and one `server` line per backend
    ("host:port"); inter_ms shortens the health-check interval."""
    text = EXAMPLE.read_text().replace("@LISTEN@", listen)
    lines = [l for l in text.split("\n") if "# @SERVERS@" not in l]
    servers = ["    server r%d %s check" % (i, b) for i, b in enumerate(backends)]
    text = "\n".join(lines).rstrip("\n") + "\n" + "\n".join(servers) + "\n"
    # the example's global maxconn needs a raised fd limit (systemd's LimitNOFILE)
    text = re.sub(r"^(\s+)maxconn \d+$", r"\1maxconn 1000", text, flags=re.M)
    if inter_ms:
        text = re.sub(r"default-server inter \S+", "default-server inter %dms" % inter_ms, text)
    return text


class HAProxy:
    def __init__(self, workdir, backends, port=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.cfg = self.workdir / "haproxy.cfg"
        self.cfg.write_text(render("%s:%d" % (self.host, self.port), backends, inter_ms=200))
        self.proc = None

    def start(self, timeout=10.0):
        self.log = open(self.workdir / "haproxy.log", "wb")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("haproxy exited: %s" %
                                     (self.workdir / "haproxy.log").read_text())
            try:
                socket.create_connection((self.host, self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("haproxy did not listen on %d" % self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def log_text(self):
        return (self.workdir / "haproxy.log").read_text(errors="replace")

    def request(self, method, path, headers=None, timeout=30.0):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=dict(headers or {}))
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.reason, Headers(r.getheaders()), data)
        finally:
            conn.close()

    def get(self, path, headers=None, timeout=30.0):
        return self.request("GET", path, headers=headers, timeout=timeout)

    def sse(self, path, headers=None, timeout=30.0):
        h = dict(headers or {})
        h.setdefault("Accept", "text/event-stream")
        r = self.request("GET", path, headers=h, timeout=timeout)
        return r, parse_sse(r.body)
