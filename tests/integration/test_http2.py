"""HTTP/2 to the upstream: when it offers h2 over TLS (as api.openai.com
does), curl negotiates it by ALPN and concurrent calls share one connection.
The fake upstream speaks plain HTTP/1.1, so nghttpx terminates TLS and h2 in
front of it, with a throwaway self-signed certificate."""

import shutil
import socket
import subprocess
import threading
import time

import pytest

from helpers.pg import free_port
from helpers.upstream import metric


@pytest.fixture
def h2_front(fake, tmp_path):
    nghttpx = shutil.which("nghttpx")
    assert nghttpx, "nghttpx is missing: tools/deps.sh installs nghttp2-proxy"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([nghttpx, "--frontend=127.0.0.1,%d" % port,
                             "--backend=127.0.0.1,%d" % fake.port, "--workers=1",
                             "--log-level=WARN", "--errorlog-file=%s" % (tmp_path / "nghttpx.log"),
                             "--accesslog-file=/dev/null", str(key), str(cert)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "nghttpx did not start"
            time.sleep(0.05)
    yield "https://127.0.0.1:%d/v1" % port, cert
    proc.terminate()
    proc.wait(10)


def test_concurrent_upstream_calls_multiplex_on_one_http2_connection(make_server, fake, h2_front):
    url, cert = h2_front
    srv = make_server(OPENAI_BASE_URL=url, RAPPORT_UPSTREAM_CA_FILE=str(cert))
    fake.config(latency_ms=400)
    out = []
    ts = [threading.Thread(target=lambda c=c: out.append(
        srv.get("/v1/contacts/%d/analyses/relationship_health" % c, timeout=60))) for c in range(60, 68)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [r.status for r in out] == [200] * 8, [r.body[:200] for r in out if r.status != 200]
    assert fake.stats()["max_in_flight"] >= 2, "the calls overlapped upstream"
    assert metric(srv, "rapport_upstream_http2_total") == 8
    assert metric(srv, "rapport_upstream_connections_total") == 1, "one connection, multiplexed"


def test_a_wrong_certificate_is_a_502_not_a_crash(make_server, fake, h2_front):
    url, _ = h2_front
    srv = make_server(OPENAI_BASE_URL=url)           # the system CAs do not know our cert
    r = srv.get("/v1/contacts/69/analyses/relationship_health")
    assert r.status == 502
    assert r.json()["error"]["code"] == "upstream_unreachable"
