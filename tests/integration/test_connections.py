"""Client connections: running out of descriptors, the connection cap, the
idle keep-alive and header timeouts — raw sockets against the real binary.

Every timing here is a wide-margin behaviour bound (a connection is closed
within seconds of a 1-2 s timeout, or is still served long after it), never
a speed assertion.
"""

import http.client
import json
import os
import socket
import time

import pytest

from helpers.server import rapport_binary

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: rapport\r\n\r\n"


def connect(srv, timeout=5.0):
    return socket.create_connection((srv.host, srv.port), timeout=timeout)


def read_response(sock):
    """One HTTP response from a raw socket (http.client does the parsing)."""
    r = http.client.HTTPResponse(sock)
    r.begin()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def closed_within(sock, seconds):
    """True once the peer has closed (EOF or reset) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accept_lines(srv):
    return [o for o in srv.log_lines() if "accept" in str(o.get("msg", ""))]


def healthz_until_ok(srv, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            r = srv.get("/healthz", timeout=2)
            if r.status == 200:
                return r
            last = r
        except (OSError, http.client.HTTPException) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError("/healthz not served again within %s s (last: %r)"
                         % (seconds, last))


@pytest.mark.timeout(120)
def test_out_of_descriptors_accept_pauses_with_a_quiet_loop_and_log_then_serves_again(
        make_server):
    # Under `ulimit -n 64` a flood of idle connections exhausts the
    # descriptor table. The cap and timeouts are set out of the way so
    # that EMFILE itself is what the server meets.
    srv = make_server(start=False, RAPPORT_MAX_CONNECTIONS=5000,
                      RAPPORT_HEADER_TIMEOUT=300, RAPPORT_KEEPALIVE_TIMEOUT=300,
                      RAPPORT_HTTP_TIMEOUT=300, RAPPORT_LOG_LEVEL="info")
    srv.nofile = 64
    srv.start()
    flood = []
    try:
        for _ in range(150):
            flood.append(connect(srv))
        srv.wait_for_log(lambda o: "accept" in str(o.get("msg", "")), timeout=10)
        before_cpu, before_lines = cpu_seconds(srv.pid), len(accept_lines(srv))
        t0 = time.monotonic()
        time.sleep(3)
        cpu = (cpu_seconds(srv.pid) - before_cpu) / (time.monotonic() - t0)
        lines = accept_lines(srv)
        # A spinning loop is ~100% of a core and logs thousands of lines.
        assert cpu < 0.2, "server used %.0f%% of a core while out of descriptors" % (cpu * 100)
        assert len(lines) - before_lines <= 8, lines[-5:]
        assert len(lines) <= 12, lines[-5:]
        assert srv.is_running()
        # The admin socket's listener meets the same full table when an
        # operator attaches: it must pause too, not spin.
        for _ in range(3):
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect(srv.env["RAPPORT_ADMIN_SOCKET"])
            flood.append(u)
        srv.wait_for_log(lambda o: o.get("msg") == "admin accept failed", timeout=10)
        before_cpu = cpu_seconds(srv.pid)
        t0 = time.monotonic()
        time.sleep(2)
        cpu = (cpu_seconds(srv.pid) - before_cpu) / (time.monotonic() - t0)
        assert cpu < 0.2, "admin listener used %.0f%% of a core" % (cpu * 100)
        admin_lines = [o for o in srv.log_lines() if o.get("msg") == "admin accept failed"]
        assert len(admin_lines) <= 3, admin_lines[-3:]
    finally:
        for s in flood:
            s.close()
    r = healthz_until_ok(srv, 20)
    assert r.json()["status"] == "ok"
    # And a log line says accepting resumed.
    srv.wait_for_log(lambda o: o.get("msg") == "accept resumed", timeout=10)


def test_the_connection_beyond_the_cap_gets_a_503_json_and_is_closed_then_serving_resumes(
        make_server):
    srv = make_server(RAPPORT_MAX_CONNECTIONS=2, RAPPORT_KEEPALIVE_TIMEOUT=60)
    # Two keep-alive clients hold the two slots (retrying while the
    # start-up health check's connection is still being closed).
    held = []
    deadline = time.monotonic() + 10
    while len(held) < 2:
        assert time.monotonic() < deadline, "could not open two connections"
        s = connect(srv)
        s.sendall(HEALTH)
        status, headers, _ = read_response(s)
        if status == 200:
            held.append(s)
        else:
            s.close()
            time.sleep(0.1)
    try:
        third = connect(srv)
        third.sendall(HEALTH)
        status, headers, body = read_response(third)
        assert status == 503
        assert headers["content-type"].startswith("application/json")
        assert headers["connection"].lower() == "close"
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        assert closed_within(third, 5), "the refused connection was left open"
        third.close()
        # The held connections still work.
        held[0].sendall(HEALTH)
        assert read_response(held[0])[0] == 200
        # One leaves; a new client is served again.
        held.pop(1).close()
        deadline = time.monotonic() + 5
        while True:
            s = connect(srv)
            s.sendall(HEALTH)
            status = read_response(s)[0]
            s.close()
            if status == 200:
                break
            assert time.monotonic() < deadline, "not served after a slot was freed"
            time.sleep(0.1)
    finally:
        for s in held:
            s.close()
    srv.wait_for_log(lambda o: o.get("msg") == "connections closed"
                     and o.get("refused_over_cap", 0) >= 1, timeout=5)
    metrics = srv.get("/metrics").text
    assert "rapport_http_connections_max 2\n" in metrics
    refused = [l for l in metrics.splitlines()
               if l.startswith("rapport_http_connections_refused_total ")]
    assert refused and int(refused[0].split()[1]) >= 1, refused


def test_over_the_cap_silent_connections_are_answered_without_a_request_and_closed(
        make_server):
    # The 503 goes out before any request is read, so an idle flood beyond
    # the cap holds no descriptor for long.
    srv = make_server(RAPPORT_MAX_CONNECTIONS=1, RAPPORT_KEEPALIVE_TIMEOUT=60,
                      RAPPORT_HEADER_TIMEOUT=60)
    deadline = time.monotonic() + 10
    while True:
        held = connect(srv)
        held.sendall(HEALTH)
        if read_response(held)[0] == 200:
            break
        held.close()
        assert time.monotonic() < deadline, "could not take the one slot"
        time.sleep(0.1)
    extra = [connect(srv) for _ in range(20)]
    try:
        for s in extra:
            status, headers, body = read_response(s)
            assert status == 503
            assert json.loads(body)["error"]["code"] == "too_many_connections"
        for s in extra:
            assert closed_within(s, 5), "a refused connection stayed open"
        held.sendall(HEALTH)
        assert read_response(held)[0] == 200
    finally:
        held.close()
        for s in extra:
            s.close()


def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(make_server):
    # evhttp's own timeout (RAPPORT_HTTP_TIMEOUT) would wait 60 s.
    srv = make_server(RAPPORT_KEEPALIVE_TIMEOUT=1, RAPPORT_HEADER_TIMEOUT=60,
                      RAPPORT_HTTP_TIMEOUT=60)
    s = connect(srv)
    try:
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        assert closed_within(s, 10), "idle keep-alive connection still open after 10 s"
    finally:
        s.close()
    srv.wait_for_log(lambda o: o.get("msg") == "connections closed"
                     and o.get("idle_keepalive", 0) >= 1, timeout=5)


def test_a_client_dripping_header_bytes_is_cut_at_the_header_deadline(make_server):
    # One byte every 0.3 s resets evhttp's read timeout each time; only a
    # deadline on the whole request stops it.
    srv = make_server(RAPPORT_HEADER_TIMEOUT=2, RAPPORT_KEEPALIVE_TIMEOUT=60,
                      RAPPORT_HTTP_TIMEOUT=60)
    s = connect(srv)
    cut = False
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: rapport\r\nX-Slow: ")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                s.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if closed_within(s, 0.3):
                cut = True
                break
        assert cut, "a slow header sender was still connected after 15 s"
    finally:
        s.close()
    srv.wait_for_log(lambda o: o.get("msg") == "connections closed"
                     and o.get("slow_request", 0) >= 1, timeout=5)
    assert srv.get("/healthz").status == 200


def test_a_new_connection_that_sends_nothing_is_cut_at_the_header_deadline(make_server):
    srv = make_server(RAPPORT_HEADER_TIMEOUT=1, RAPPORT_KEEPALIVE_TIMEOUT=60,
                      RAPPORT_HTTP_TIMEOUT=60)
    s = connect(srv)
    try:
        assert closed_within(s, 10), "a silent connection was still open after 10 s"
    finally:
        s.close()


def test_an_active_stream_and_a_waiting_request_are_not_cut_by_the_timers(make_server, fake):
    srv = make_server(RAPPORT_KEEPALIVE_TIMEOUT=1, RAPPORT_HEADER_TIMEOUT=1,
                      RAPPORT_SSE_HEARTBEAT_MS=300)
    # A stream that lasts ~4 s: far past both 1 s timeouts.
    fake.config(latency_ms=100, chunk_delay_ms=400, chunks=10)
    t0 = time.monotonic()
    resp, events = srv.sse("/v1/contacts/41/analyses/relationship_health", timeout=30)
    took = time.monotonic() - t0
    assert resp.status == 200
    assert events and events[-1]["event"] == "result", events[-3:]
    assert took > 2.5, took
    # A plain request that waits ~3 s for the upstream, on a keep-alive
    # connection, then the same connection is reused.
    fake.config(latency_ms=3000, chunk_delay_ms=0, chunks=2)
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        conn.request("GET", "/v1/contacts/42/analyses/relationship_health")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    finally:
        conn.close()


@pytest.mark.parametrize("name", ["RAPPORT_MAX_CONNECTIONS", "RAPPORT_KEEPALIVE_TIMEOUT",
                                  "RAPPORT_HEADER_TIMEOUT"])
def test_a_malformed_connection_setting_is_a_start_up_error_naming_it(name):
    import subprocess
    r = subprocess.run([str(rapport_binary()), "serve"], env={"PATH": "/usr/bin:/bin", name: "lots"},
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and name in r.stderr, (r.returncode, r.stderr[-500:])


@pytest.mark.parametrize("name", ["RAPPORT_KEEPALIVE_TIMEOUT", "RAPPORT_HEADER_TIMEOUT"])
def test_a_connection_timeout_beyond_a_day_is_a_start_up_error_naming_it(name):
    # 3000000 s × 1000 would overflow the int of milliseconds the sweep compares.
    import subprocess
    r = subprocess.run([str(rapport_binary()), "serve"],
                       env={"PATH": "/usr/bin:/bin", name: "3000000"},
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and name in r.stderr and "at most 86400" in r.stderr, \
        (r.returncode, r.stderr[-500:])
