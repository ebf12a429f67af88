"""Several instances for real (issue 9 item 5): two rapport processes sharing
one private redis-server and one PostgreSQL, behind a private HAProxy whose
configuration is etc/haproxy.cfg.example with private ports.

Contacts 742001.. are made here, so no other test's rows interfere.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.haproxy import EXAMPLE, HAProxy
from helpers.pg import free_port
from helpers.server import HttpClient
from helpers.upstream import metric, wait_until
from test_newcomer import clean_env, copy_repo

TYPE = "relationship_health"
PATH = "/v1/contacts/%d/analyses/" + TYPE

REPO_ETC = EXAMPLE.parent

_next = [742000]


def new_contact(pg):
    _next[0] += 1
    cid = _next[0]
    pg.sql("INSERT INTO contacts (id, first_name, last_name, title) "
           "VALUES (%d, 'Hap', 'Roxy', 'VP') ON CONFLICT (id) DO NOTHING" % cid)
    return cid


def calls(fake):
    return fake.stats()["chat_calls"]


@pytest.fixture
def cluster(make_server, redis, tmp_path):
    """(haproxy, [a, b]) — both instances up on the L2, both seen healthy."""
    insts = []
    for _ in range(2):
        srv = make_server(REDIS_URL=redis.url, RAPPORT_REDIS_PREFIX="hx")
        wait_until(lambda: srv.get("/readyz").json().get("l2") == "up", "the L2 connection")
        insts.append(srv)
    hx = HAProxy(tmp_path / "haproxy", ["%s:%d" % (s.host, s.port) for s in insts]).start()
    # both servers pass their first checks (rise 2 at 200 ms)
    wait_until(lambda: all(hx.get("/readyz").status == 200 for _ in range(4)),
               "HAProxy to see the instances")
    yield hx, insts
    hx.stop()


def test_a_result_made_through_haproxy_on_one_instance_is_an_l2_hit_on_the_other(
        cluster, fake, pg):
    hx, (a, b) = cluster
    cid = new_contact(pg)
    first = hx.get(PATH % cid)
    assert first.status == 200 and first.headers["X-Cache"] == "MISS", first.body
    wait_until(lambda: metric(a, "rapport_l2_stores_total") + metric(b, "rapport_l2_stores_total")
               >= 1, "the write to Redis")
    tiers = []
    for _ in range(8):
        r = hx.get(PATH % cid)
        assert r.status == 200 and r.headers["X-Cache"] == "HIT"
        assert r.headers["ETag"] == first.headers["ETag"]
        tiers.append(r.json()["cache"]["tier"])
        if "l2" in tiers and tiers.count("l1") >= 1:
            break
    assert "l2" in tiers, "the other instance never answered: %s" % tiers
    assert metric(a, "rapport_l2_hits_total") + metric(b, "rapport_l2_hits_total") == 1
    assert calls(fake) == 1, "one model call for both instances"


def test_the_request_id_passes_through_haproxy_and_one_is_made_when_missing(cluster):
    hx, _ = cluster
    r = hx.get("/readyz", headers={"X-Request-Id": "req-hx-1"})
    assert r.headers["X-Request-Id"] == "req-hx-1"
    r = hx.get("/readyz")
    assert r.headers.get("X-Request-Id"), r.headers.items()


def test_an_sse_stream_through_haproxy_brings_meta_deltas_and_the_result(cluster, fake, pg):
    hx, _ = cluster
    fake.config(chunk_delay_ms=20, chunks=6)
    cid = new_contact(pg)
    resp, events = hx.sse(PATH % cid)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    n = [e["event"] for e in events]
    assert n[0] == "meta" and n[-1] == "result", n
    assert n.count("delta") >= 2
    result = json.loads(events[-1]["data"])
    assert result["contact_id"] == cid


def test_redis_stopped_under_load_fails_no_request_and_the_l2_comes_back(
        cluster, fake, pg, redis):
    hx, (a, b) = cluster
    cids = [new_contact(pg) for _ in range(6)]
    for cid in cids[:3]:              # some warm, some cold
        assert hx.get(PATH % cid).status == 200

    def one(i):
        r = hx.get(PATH % cids[i % len(cids)], timeout=60)
        return r.status

    with ThreadPoolExecutor(8) as pool:
        before = [pool.submit(one, i) for i in range(150)]
        redis.stop()                  # mid-load
        after = [pool.submit(one, i) for i in range(150)]
        statuses = [f.result() for f in before + after]
    assert statuses.count(200) == len(statuses), sorted(set(statuses))
    for s in (a, b):
        wait_until(lambda: s.get("/readyz").json().get("l2") != "up", "the loss to be noticed")
        d = s.get("/readyz")
        assert d.status == 200 and d.json()["status"] == "degraded"

    redis.start()                     # same port, empty
    for s in (a, b):
        wait_until(lambda: s.get("/readyz").json().get("l2") == "up", "the reconnect",
                   timeout=20)
        assert s.get("/readyz").json()["status"] == "ready"
    # L2 hits again: a fresh result made on one instance is an L2 hit on the other
    cid = new_contact(pg)
    n = calls(fake)
    first = a.get(PATH % cid)
    assert first.status == 200
    wait_until(lambda: redis.cli("KEYS", "hx:a:%d:*" % cid) != "", "the write to Redis")
    hits = metric(b, "rapport_l2_hits_total")
    r = b.get(PATH % cid)
    assert r.json()["cache"]["tier"] == "l2" and r.headers["ETag"] == first.headers["ETag"]
    assert metric(b, "rapport_l2_hits_total") == hits + 1
    assert calls(fake) == n + 1


def test_make_run_redis_1_brings_two_instances_behind_haproxy_sharing_the_l2(tmp_path):
    """tools/run.sh with REDIS=1 (what `make run REDIS=1` runs), in a copy of
    the repository so its var/ is private; driven like test_newcomer's demo."""
    root = copy_repo(tmp_path / "rapport")
    shutil.copytree(REPO_ETC, root / "etc")
    port, fake_port, pg_port = free_port(), free_port(), free_port()
    out = root / "run.out"
    with open(out, "w+b") as log:
        proc = subprocess.Popen(
            ["tools/run.sh"], cwd=str(root), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=clean_env(REDIS="1", RAPPORT_LISTEN="127.0.0.1:%d" % port,
                          RAPPORT_FAKE_PORT=str(fake_port), RAPPORT_PG_PORT=str(pg_port),
                          RAPPORT_DEMO_CONTACTS="20", RAPPORT_BIN=str(root / "rapport"),
                          FAKE_BIN=str(root / "build" / "fake_openai")))
        try:
            end = time.monotonic() + 120
            while "behind HAProxy on" not in out.read_text(errors="replace"):
                assert proc.poll() is None, "run.sh ended:\n" + out.read_text()
                assert time.monotonic() < end, out.read_text()
                time.sleep(0.2)
            text = out.read_text()
            assert "unix://" in text and "rapport_l2_hits_total" in text, text
            hx = HttpClient("127.0.0.1", port)     # the HAProxy run.sh started
            first = hx.get(PATH % 7)
            assert first.status == 200, first.body
            def stores():
                return sum(metric(a, "rapport_l2_stores_total") for a in
                           (HttpClient("127.0.0.1", port + 1),
                            HttpClient("127.0.0.1", port + 2)))
            wait_until(lambda: stores() >= 1, "the write to Redis")
            tiers = []
            for _ in range(8):
                r = hx.get(PATH % 7)
                assert r.status == 200 and r.headers["ETag"] == first.headers["ETag"], (
                    first.json()["cache"], r.json()["cache"], tiers)
                tiers.append(r.json()["cache"]["tier"])
                if "l2" in tiers:
                    break
            assert "l2" in tiers, tiers
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(60)
            subprocess.run(["tools/pg.sh", "destroy", str(root / "var" / "pg")], cwd=str(root),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert rc == 0, out.read_text()
    # everything it started is gone: nothing answers on the three ports
    for p in (port, port + 1, port + 2):
        try:
            socket.create_connection(("127.0.0.1", p), 0.5).close()
            raise AssertionError("port %d still answers after Ctrl-C" % p)
        except OSError:
            pass
