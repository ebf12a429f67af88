"""The shared L2 cache in Redis (issue 9, items 1 and 4, and the L2 side of
item 3): several real rapport processes on one real PostgreSQL, one fake
upstream and a private redis-server, inspected with redis-cli.

Contacts 720001.. are made here, so no other test's rows interfere.
"""

import json
import re
import subprocess
import time

import pytest

from helpers.redis import Redis
from helpers.server import rapport_binary
from helpers.upstream import metric, wait_until

TYPE = "relationship_health"

_next = [720000]


def new_contact(pg):
    """Call it before starting the servers that use the contact (see
    test_redis_down_…)."""
    _next[0] += 1
    cid = _next[0]
    pg.sql("INSERT INTO contacts (id, first_name, last_name, title) "
           "VALUES (%d, 'Elle', 'Two', 'CTO') ON CONFLICT (id) DO NOTHING" % cid)
    return cid


@pytest.fixture
def l2_server(make_server, redis):
    def start(**env):
        env.setdefault("REDIS_URL", redis.url)
        env.setdefault("RAPPORT_REDIS_PREFIX", "t")
        srv = make_server(**env)
        wait_until(lambda: srv.get("/readyz").json().get("l2") == "up", "the L2 connection")
        return srv
    return start


def get(srv, cid, headers=None):
    return srv.get("/v1/contacts/%d/analyses/%s" % (cid, TYPE), headers=headers)


def calls(fake):
    return fake.stats()["chat_calls"]


def test_a_second_instance_answers_from_the_l2_with_the_same_bytes_and_no_model_call(
        l2_server, fake, pg):
    cid = new_contact(pg)
    a, b = l2_server(), l2_server()
    first = get(a, cid)
    assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    r = get(b, cid)
    assert r.status == 200 and r.headers["X-Cache"] == "HIT", r.headers.items()
    d = r.json()
    assert d["cache"]["status"] == "hit" and d["cache"]["tier"] == "l2"
    assert r.headers["ETag"] == first.headers["ETag"]
    strip = lambda doc: {k: v for k, v in doc.items() if k not in ("cache", "timings_ms")}
    assert strip(d) == strip(first.json())
    assert calls(fake) == 1, "the second instance must not call the model"
    # Now in B's L1 as well.
    again = get(b, cid).json()
    assert again["cache"]["tier"] == "l1"
    assert metric(b, "rapport_l2_hits_total") == 1


def test_a_restart_keeps_the_results_in_the_l2(l2_server, fake, pg):
    cid = new_contact(pg)
    srv = l2_server()
    first = get(srv, cid)
    wait_until(lambda: metric(srv, "rapport_l2_stores_total") >= 1, "the write to Redis")
    srv.restart()
    wait_until(lambda: srv.get("/readyz").json().get("l2") == "up", "the L2 after restart")
    r = get(srv, cid)
    assert r.headers["X-Cache"] == "HIT" and r.json()["cache"]["tier"] == "l2"
    assert r.headers["ETag"] == first.headers["ETag"] and calls(fake) == 1


def test_values_are_namespaced_versioned_and_expire_with_ttl_plus_grace(l2_server, fake, pg,
                                                                      redis):
    cid = new_contact(pg)
    srv = l2_server(RAPPORT_REDIS_PREFIX="crm7")
    get(srv, cid)
    wait_until(lambda: metric(srv, "rapport_l2_stores_total") >= 1, "the write to Redis")
    keys = redis.cli("KEYS", "crm7:a:*").split("\n")
    version = srv.get("/v1/analysis-types").json()["types"]
    full = [k for k in keys if k.startswith("crm7:a:%d:%s:" % (cid, TYPE))]
    assert len(full) == 1, keys
    assert re.fullmatch(r"crm7:a:%d:%s:[0-9a-f]{16}" % (cid, TYPE), full[0])
    value = redis.cli("GET", full[0])
    assert value.startswith("RL2 1\n"), value[:40]
    meta = json.loads(value.split("\n")[1])
    t = [x for x in version if x["name"] == TYPE][0]
    assert meta["ttl_ms"] == t["ttl"] * 1000 and meta["grace_ms"] == t["stale_ttl"] * 1000
    pttl = int(redis.cli("PTTL", full[0]))
    assert 0 < pttl <= (t["ttl"] + t["stale_ttl"]) * 1000
    assert pttl > (t["ttl"] + t["stale_ttl"]) * 1000 - 60000


def test_a_prompt_edit_retires_the_old_entries_on_every_instance(make_server, redis, fake, pg,
                                                                 scripts_copy):
    cid = new_contact(pg)
    env = dict(scripts_copy.env, REDIS_URL=redis.url)
    a = make_server(**env)
    wait_until(lambda: a.get("/readyz").json().get("l2") == "up", "L2")
    get(a, cid)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    p = scripts_copy.prompts / ("%s.system.md" % TYPE)
    p.write_text(p.read_text() + "\nBe brief.\n")
    b = make_server(**env)
    wait_until(lambda: b.get("/readyz").json().get("l2") == "up", "L2")
    r = get(b, cid)
    assert r.headers["X-Cache"] == "MISS", "an entry of the old prompt was served"
    assert calls(fake) == 2


def test_a_change_is_seen_by_an_instance_that_only_reads_the_l2(l2_server, fake, pg):
    cid = new_contact(pg)
    # A does not refresh on the change itself: B alone sees to it.
    a = l2_server(RAPPORT_REFRESH_ON_CHANGE_S="0")
    a.wait_for_log(lambda l: l.get("msg") == "db listen up", timeout=5.0)
    first = get(a, cid)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    pg.sql("UPDATE contacts SET title = 'CEO' WHERE id = %d" % cid)
    a.wait_for_log(lambda l: l.get("msg") == "invalidated" and l.get("contact") == cid,
                   timeout=5.0)
    time.sleep(0.2)           # the change mark's SET is on its way
    # B never saw the entry in its L1: the L2 says it is stale.
    b = l2_server()
    r = get(b, cid)
    assert r.status == 200 and r.headers["X-Cache"] == "STALE", r.headers.items()
    assert r.json()["cache"]["tier"] == "l2"
    assert r.headers["ETag"] == first.headers["ETag"]
    # B's refresh sees the new title and stores the new result for all.
    wait_until(lambda: get(b, cid).headers["X-Cache"] == "HIT", "B's refresh")
    assert calls(fake) == 2
    c = l2_server()
    fresh = get(c, cid)
    assert fresh.headers["X-Cache"] == "HIT" and fresh.headers["ETag"] != first.headers["ETag"]


def test_a_delete_on_one_instance_empties_the_l2_for_every_instance(l2_server, fake, pg):
    cid = new_contact(pg)
    a, b = l2_server(), l2_server()
    get(a, cid)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    assert a.delete("/v1/contacts/%d/analyses" % cid).status == 200
    time.sleep(0.2)
    r = get(b, cid)
    assert r.headers["X-Cache"] == "MISS" and calls(fake) == 2


def test_redis_down_costs_only_the_l2_and_shows_in_readyz_and_one_log_line(l2_server, fake, pg,
                                                                           redis):
    # Made before the server listens: an insert's NOTIFY arriving during a
    # generation would (rightly) keep that result out of the cache.
    contacts = [new_contact(pg) for _ in range(3)]
    srv = l2_server()
    redis.stop()
    wait_until(lambda: srv.get("/readyz").json().get("l2") != "up", "the loss to be noticed")
    ready = srv.get("/readyz")
    assert ready.status == 200, "Redis down is degraded, not unready"
    assert ready.json()["status"] == "degraded"
    for cid in contacts:
        r = get(srv, cid)
        assert r.status == 200 and r.headers["X-Cache"] == "MISS"
        again = get(srv, cid)
        assert again.headers["X-Cache"] == "HIT", (again.headers.items(), again.body)
    downs = [l for l in srv.log_lines() if l.get("msg") == "l2 down"]
    assert len(downs) == 1 and downs[0]["level"] == "warn"
    assert metric(srv, "rapport_l2_skipped_total") >= 3
    assert metric(srv, "rapport_l2_up") == 0
    # Back on the same port: reconnected (with backoff), one line.
    redis.start()
    wait_until(lambda: srv.get("/readyz").json().get("l2") == "up", "the reconnect", timeout=15)
    assert srv.get("/readyz").json()["status"] == "ready"
    ups = [l for l in srv.log_lines() if l.get("msg") == "l2 up"]
    assert len(ups) == 2
    unreachable = [l for l in srv.log_lines() if l.get("msg") == "l2 unreachable"]
    assert len(unreachable) <= 2, "one line per change of reason, not per attempt"


def test_a_stalled_redis_costs_a_request_at_most_the_l2_deadline(l2_server, fake, pg, redis):
    srv = l2_server(RAPPORT_L2_TIMEOUT_MS="100")
    fake.config(latency_ms=50)
    cid = new_contact(pg)
    redis.pause()
    try:
        t0 = time.monotonic()
        r = get(srv, cid)
        took = time.monotonic() - t0
        assert r.status == 200 and r.headers["X-Cache"] == "MISS"
        assert metric(srv, "rapport_l2_timeouts_total") == 1
        # The deadline, not Redis, set the pace: far below the 2 s a
        # connect attempt would be given, let alone forever.
        assert took < 1.5, took
    finally:
        redis.resume()
    assert "rapport_l2_lookup_ms_bucket{le=\"100\"}" in srv.get("/metrics").text


def test_an_unreadable_value_is_a_miss_not_an_error(l2_server, fake, pg, redis):
    cid = new_contact(pg)
    srv = l2_server()
    get(srv, cid)
    wait_until(lambda: metric(srv, "rapport_l2_stores_total") >= 1, "the write to Redis")
    key = [k for k in redis.cli("KEYS", "t:a:%d:*" % cid).split("\n") if k][0]
    redis.cli("SET", key, "RL2 9\n{}\nsomething else")
    b = l2_server()
    r = get(b, cid)
    assert r.status == 200 and r.headers["X-Cache"] == "MISS"
    # Read twice: the lookup, and once more when the key's lock was taken
    # with a value present (the last holder might have just stored it).
    assert metric(b, "rapport_l2_errors_total") == 2


def test_a_value_over_the_cap_is_not_stored(l2_server, fake, pg):
    cid = new_contact(pg)
    srv = l2_server(RAPPORT_L2_MAX_BYTES="200")
    get(srv, cid)
    assert metric(srv, "rapport_l2_too_large_total") == 1
    assert metric(srv, "rapport_l2_stores_total") == 0


def test_a_refresh_skips_the_l2(l2_server, fake, pg):
    cid = new_contact(pg)
    a, b = l2_server(), l2_server()
    get(a, cid)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    r = get(b, cid, headers={"Cache-Control": "no-cache"})
    assert r.headers["X-Cache"] == "MISS" and calls(fake) == 2


def test_redis_not_running_at_start_is_degraded_not_fatal(make_server, fake, pg):
    from helpers.pg import free_port
    srv = make_server(REDIS_URL="redis://127.0.0.1:%d" % free_port())
    wait_until(lambda: srv.get("/readyz").json()["database"] == "up", "the database")
    ready = srv.get("/readyz")
    assert ready.status == 200 and ready.json()["l2"] in ("down", "connecting")
    assert ready.json()["status"] == "degraded"
    cid = new_contact(pg)
    assert get(srv, cid).status == 200
    wait_until(lambda: any(l.get("msg") == "l2 unreachable" for l in srv.log_lines()),
               "the line saying why")
    unreachable = [l for l in srv.log_lines() if l.get("msg") == "l2 unreachable"]
    assert len(unreachable) == 1 and "refused" in unreachable[0]["error"].lower(), unreachable


def test_a_unix_socket_redis_url_reaches_the_socket_by_its_full_path(make_server, fake, pg,
                                                                     tmp_path):
    sock = Redis(tmp_path / "a-dir" / "redis-unix", unix=True).start()
    try:
        cid = new_contact(pg)
        srv = make_server(REDIS_URL=sock.url, RAPPORT_REDIS_PREFIX="u")
        wait_until(lambda: srv.get("/readyz").json().get("l2") == "up", "the L2 over the socket")
        assert get(srv, cid).status == 200
        wait_until(lambda: metric(srv, "rapport_l2_stores_total") >= 1, "the write to Redis")
        assert any(k.startswith("u") for k in sock.cli("KEYS", "*").split("\n")), sock.cli("KEYS", "*")
    finally:
        sock.stop()


@pytest.mark.parametrize("url, text", [
    ("rediss://127.0.0.1:6380", "needs hiredis 1.x with hiredis_ssl"),
    ("http://127.0.0.1:6379", "REDIS_URL must be redis://"),
    ("redis://127.0.0.1:6379/notadb", "must be a database number"),
    ("unix://relative", "absolute socket path"),
])
def test_a_redis_url_it_cannot_use_is_a_start_up_error(url, text):
    r = subprocess.run([str(rapport_binary()), "serve"],
                       env={"PATH": "/usr/bin:/bin", "REDIS_URL": url},
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and text in r.stderr, (r.returncode, r.stderr)
