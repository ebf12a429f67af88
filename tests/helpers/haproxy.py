"""A private HAProxy for tests, configured from etc/haproxy.cfg.example (its
@LISTEN@ bind and @SERVERS@ lines replaced by private ports), run in the
foreground and stopped by pid. Talked to like a Rapport (HttpClient)."""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from helpers.pg import free_port
from helpers.server import REPO, HttpClient

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


class HAProxy(HttpClient):
    def __init__(self, workdir, backends, port=None):
        super().__init__("127.0.0.1", port or free_port())
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
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
