"""SIGHUP means "reload the scripts" (systemd's ExecReload). Until `serve`
has installed that handler the signal is ignored (core/main.c), so a reload
sent right after start never kills the process."""

import os
import signal
import time

import pytest


def ignored_signals(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    return 0


def bit(sig):
    return 1 << (sig - 1)


@pytest.mark.timeout(60)
def test_sighup_right_after_start_does_not_kill_and_still_reloads_later(make_server):
    srv = make_server(start=False)
    srv.start(wait_healthy=False)
    pid = srv.pid
    # main() has started once it ignores SIGPIPE (both signals are set at
    # its very top; before main, the dynamic loader runs with the defaults,
    # which no program can change).
    deadline = time.monotonic() + 10
    while not ignored_signals(pid) & bit(signal.SIGPIPE):
        assert srv.proc.poll() is None, srv.stderr_tail()
        assert time.monotonic() < deadline, "rapport never reached main()"
        time.sleep(0.0005)
    sent = 0
    healthy_at = None
    while healthy_at is None or time.monotonic() < healthy_at + 0.5:
        if srv.proc.poll() is not None:
            pytest.fail("rapport died after %d SIGHUPs during start-up (status %s):\n%s"
                        % (sent, srv.proc.returncode, srv.stderr_tail()))
        os.kill(pid, signal.SIGHUP)
        sent += 1
        if healthy_at is None and sent % 20 == 0:
            try:
                if srv.get("/healthz", timeout=1.0).status == 200:
                    healthy_at = time.monotonic()
            except OSError:
                pass
        assert time.monotonic() < deadline + 20, "rapport did not become healthy"
        time.sleep(0.001)
    assert srv.proc.poll() is None
    assert srv.get("/healthz").status == 200
    r = srv.get("/v1/analysis-types")
    assert r.status == 200, r.body
    # Once installed, SIGHUP reloads.
    def reloads():
        return len([l for l in srv.log_lines() if l.get("msg") == "scripts reloaded"])
    n = reloads()
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while reloads() <= n:
        assert time.monotonic() < deadline, "SIGHUP no longer reloads"
        time.sleep(0.05)
