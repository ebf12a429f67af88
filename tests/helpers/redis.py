"""A private redis-server for tests: its own port and folder, nothing saved
to disk, stopped (by pid) when the test ends. Inspected with redis-cli, so
the tests read what rapport really wrote."""

import os
import signal
import subprocess
import time

from helpers.pg import free_port


class Redis:
    def __init__(self, workdir, port=None, unix=False):
        """unix=True: listens on a socket in workdir only (port 0)."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(workdir / "redis.sock") if unix else None
        self.port = 0 if unix else (port or free_port())
        self.proc = None

    @property
    def url(self):
        if self.socket:
            return "unix://" + self.socket
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             *(["--unixsocket", self.socket, "--unixsocketperm", "700"] if self.socket else []),
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited: %s" %
                                     (self.workdir / "redis.log").read_text())
            try:
                if self.cli("PING") == "PONG":
                    return self
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer on %s" % self.url)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self):
        """SIGSTOP: connections stay open, nothing is answered."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def cli(self, *args):
        where = ["-s", self.socket] if self.socket else ["-p", str(self.port)]
        out = subprocess.run(["redis-cli", *where, "--raw", *args],
                             capture_output=True, check=True, timeout=10)
        return out.stdout.decode("utf-8", "replace").rstrip("\n")
