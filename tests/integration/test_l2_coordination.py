"""Several instances, one model call (issue 9, items 2 and 3): two real
rapport processes sharing one real PostgreSQL, one fake upstream and a
private redis-server. A key's generation takes a lock in Redis; the other
instance waits for its result (woken by pub/sub), relays its text to its own
streaming clients, takes over when the owner dies; a DELETE on one instance
empties every instance's L1.

Contacts 730001.. are made here, so no other test's rows interfere.
"""

import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.server import parse_sse
from helpers.upstream import metric, wait_until

TYPE = "relationship_health"
PATH = "/v1/contacts/%d/analyses/" + TYPE

_next = [730000]


def new_contact(pg):
    """Before the servers start: an insert's NOTIFY during a generation
    would (rightly) keep its result out of the cache."""
    _next[0] += 1
    cid = _next[0]
    pg.sql("INSERT INTO contacts (id, first_name, last_name, title) "
           "VALUES (%d, 'Ann', 'Both', 'VP') ON CONFLICT (id) DO NOTHING" % cid)
    return cid


@pytest.fixture
def pair(make_server, redis):
    """Two instances on one Redis, both with their L2 and subscriber up."""
    def start(**env):
        env.setdefault("REDIS_URL", redis.url)
        env.setdefault("RAPPORT_REDIS_PREFIX", "c")
        servers = [make_server(**env), make_server(**env)]
        for srv in servers:
            wait_until(lambda: srv.get("/readyz").json().get("l2") == "up", "the L2")
            wait_until(lambda: metric(srv, "rapport_l2_pubsub_up") == 1, "the subscriber")
        return servers
    return start


def calls(fake):
    return fake.stats()["chat_calls"]


def strip(doc):
    return {k: v for k, v in doc.items() if k not in ("cache", "timings_ms")}


def in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except Exception as e:     # noqa: BLE001 - reported by the caller
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def stream_events(srv, path):
    """Every SSE event of one streamed request, in order."""
    return srv.sse(path, timeout=60)[1]


def deltas(events):
    return "".join(json.loads(e["data"])["text"] for e in events if e["event"] == "delta")


def test_100_concurrent_cold_requests_over_two_instances_make_one_model_call(pair, fake, pg):
    cid = new_contact(pg)
    a, b = pair()
    fake.config(latency_ms=400)
    with ThreadPoolExecutor(max_workers=100) as ex:
        rs = list(ex.map(lambda i: (a if i % 2 else b).get(PATH % cid, timeout=60), range(100)))
    assert [r.status for r in rs] == [200] * 100, [(r.status, r.body[:200]) for r in rs
                                                  if r.status != 200]
    assert calls(fake) == 1, "one generation across both instances"
    assert len({r.headers["ETag"] for r in rs}) == 1
    assert len({json.dumps(strip(r.json()), sort_keys=True) for r in rs}) == 1
    xc = [r.headers["X-Cache"] for r in rs]
    assert xc.count("MISS") == 1, xc
    assert set(xc) <= {"MISS", "COALESCED", "HIT"}, xc
    owner, other = (a, b) if metric(a, "rapport_l2_lock_acquired_total") == 1 else (b, a)
    assert metric(owner, "rapport_l2_lock_acquired_total") == 1
    assert metric(other, "rapport_l2_lock_acquired_total") == 0
    assert metric(other, "rapport_l2_lock_waits_total") == 1
    assert metric(other, "rapport_l2_lock_results_total") == 1
    assert metric(other, "rapport_l2_lock_takeovers_total") == 0


def test_a_streaming_client_on_b_gets_the_deltas_of_as_generation_then_the_result(pair, fake,
                                                                                  pg):
    cid = new_contact(pg)
    a, b = pair()
    fake.config(chunk_delay_ms=80, chunks=10)
    ta, on_a = in_thread(stream_events, a, PATH % cid)
    wait_until(lambda: metric(a, "rapport_l2_relay_published_total") >= 1,
               "A's first delta in Redis")
    on_b = stream_events(b, PATH % cid)
    ta.join(60)
    assert "error" not in on_a, on_a.get("error")
    events_a = on_a["value"]
    names_b = [e["event"] for e in on_b]
    assert names_b[0] == "meta" and names_b[-1] == "result", names_b
    assert json.loads(on_b[0]["data"])["cache"] == "coalesced"
    assert names_b.count("delta") > 1, names_b
    assert "reset" not in names_b
    assert deltas(on_b) == deltas(events_a), "B relays A's text, nothing lost or doubled"
    json.loads(deltas(on_b))           # the model's whole reply
    ra, rb = json.loads(events_a[-1]["data"]), json.loads(on_b[-1]["data"])
    assert strip(rb) == strip(ra)
    assert rb["cache"]["status"] == "coalesced" and rb["cache"]["tier"] == "l2"
    assert calls(fake) == 1
    assert metric(b, "rapport_l2_relay_deltas_total") >= 2
    assert metric(b, "rapport_l2_lock_waits_total") == 1


def test_killing_the_owner_mid_generation_lets_the_other_take_over_within_the_lease(pair, fake,
                                                                                   pg):
    cid = new_contact(pg)
    a, b = pair(RAPPORT_L2_LOCK_LEASE_MS="1500")
    fake.config(latency_ms=1500)
    ta, _ = in_thread(a.get, PATH % cid)
    wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
    tb, on_b = in_thread(b.get, PATH % cid, None, 60)
    wait_until(lambda: metric(b, "rapport_l2_lock_waits_total") == 1, "B waiting on A")
    a.kill()
    tb.join(60)
    assert "error" not in on_b, on_b.get("error")
    r = on_b["value"]
    assert r.status == 200 and r.headers["X-Cache"] == "MISS", (r.status, r.body[:300])
    assert calls(fake) == 2, "the dead owner's call and the takeover's"
    assert metric(b, "rapport_l2_lock_takeovers_total") == 1
    assert metric(b, "rapport_l2_lock_acquired_total") == 1
    ta.join(10)


def test_an_owner_that_fails_hands_the_key_to_a_waiter(pair, fake, pg):
    cid = new_contact(pg)
    a, b = pair()
    # The first call is refused (400: not retried); the next one works.
    fake.config(latency_ms=300)
    fake.fail({"status": 400, "message": "bad request, once"})
    ta, on_a = in_thread(a.get, PATH % cid)
    wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
    rb = b.get(PATH % cid, timeout=60)
    ta.join(30)
    assert on_a["value"].status == 502
    assert rb.status == 200, rb.body[:300]
    assert calls(fake) == 2
    assert metric(b, "rapport_l2_lock_takeovers_total") == 1


def test_with_redis_down_the_lock_is_skipped_and_every_request_succeeds(pair, fake, pg, redis):
    cid = new_contact(pg)
    a, b = pair()
    redis.stop()
    for srv in (a, b):
        wait_until(lambda: srv.get("/readyz").json().get("l2") != "up", "the loss")
    fake.config(latency_ms=300)
    with ThreadPoolExecutor(max_workers=10) as ex:
        rs = list(ex.map(lambda i: (a if i % 2 else b).get(PATH % cid, timeout=60), range(10)))
    assert [r.status for r in rs] == [200] * 10
    assert calls(fake) == 2, "one per instance: a duplicate, never a failure"
    for srv in (a, b):
        assert metric(srv, "rapport_l2_lock_skipped_total") >= 1
        assert metric(srv, "rapport_l2_lock_acquired_total") == 0


@pytest.mark.parametrize("how", ["stalled", "stopped"])
def test_a_redis_lost_while_waiting_lets_the_waiter_go_on_without_the_lock(how, pair, fake, pg,
                                                                         redis):
    cid = new_contact(pg)
    a, b = pair(RAPPORT_L2_TIMEOUT_MS="100")
    fake.config(latency_ms=2000)
    ta, _ = in_thread(a.get, PATH % cid)
    wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
    tb, on_b = in_thread(b.get, PATH % cid, None, 60)
    wait_until(lambda: metric(b, "rapport_l2_lock_waits_total") == 1, "B waiting on A")
    if how == "stalled":
        redis.pause()
    else:
        redis.stop()
    try:
        tb.join(30)
        assert on_b["value"].status == 200 and on_b["value"].headers["X-Cache"] == "MISS"
    finally:
        if how == "stalled":
            redis.resume()
    ta.join(30)
    assert calls(fake) == 2
    assert metric(b, "rapport_l2_lock_skipped_total") >= 1


def test_a_delete_on_one_instance_empties_the_other_instances_l1(pair, fake, pg):
    cid = new_contact(pg)
    a, b = pair()
    assert a.get(PATH % cid).headers["X-Cache"] == "MISS"
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    assert b.get(PATH % cid).json()["cache"]["tier"] == "l2"
    assert b.get(PATH % cid).json()["cache"]["tier"] == "l1", "now in B's L1"
    assert a.delete("/v1/contacts/%d/analyses" % cid).status == 200
    wait_until(lambda: metric(b, "rapport_l2_remote_drops_total") == 1, "B hears the DELETE",
               timeout=1.0)
    assert metric(a, "rapport_l2_remote_drops_total") == 0, "its own message is ignored"
    r = b.get(PATH % cid)
    assert r.headers["X-Cache"] == "MISS", "B's L1 still had the dropped entry"
    assert calls(fake) == 2


def test_a_delete_of_one_type_on_one_instance_leaves_the_other_types_in_every_l1(pair, fake,
                                                                                pg):
    cid = new_contact(pg)
    a, b = pair()
    other = "/v1/contacts/%d/analyses/smart_tips" % cid
    for path in (PATH % cid, other):
        a.get(path)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 2, "the writes to Redis")
    for path in (PATH % cid, other):
        b.get(path)
        assert b.get(path).json()["cache"]["tier"] == "l1"
    assert a.delete("/v1/contacts/%d/analyses/%s" % (cid, TYPE)).status == 200
    wait_until(lambda: metric(b, "rapport_l2_remote_drops_total") == 1, "B hears the DELETE",
               timeout=1.0)
    assert b.get(other).headers["X-Cache"] == "HIT"
    assert b.get(PATH % cid).headers["X-Cache"] == "MISS"


def test_with_the_lock_off_both_instances_call_the_model(pair, fake, pg):
    cid = new_contact(pg)
    a, b = pair(RAPPORT_L2_LOCK_LEASE_MS="0")
    fake.config(latency_ms=400)
    with ThreadPoolExecutor(max_workers=2) as ex:
        rs = list(ex.map(lambda srv: srv.get(PATH % cid, timeout=60), (a, b)))
    assert [r.status for r in rs] == [200, 200]
    assert [r.headers["X-Cache"] for r in rs] == ["MISS", "MISS"]
    assert calls(fake) == 2
    for srv in (a, b):
        assert metric(srv, "rapport_l2_lock_acquired_total") == 0
        assert metric(srv, "rapport_l2_lock_waits_total") == 0


def test_a_forced_refresh_on_both_instances_is_one_model_call(pair, fake, pg):
    cid = new_contact(pg)
    a, b = pair()
    first = a.get(PATH % cid)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    fake.config(latency_ms=400)
    with ThreadPoolExecutor(max_workers=2) as ex:
        rs = list(ex.map(lambda srv: srv.get(PATH % cid, headers={"Cache-Control": "no-cache"},
                                             timeout=60), (a, b)))
    assert [r.status for r in rs] == [200, 200]
    assert calls(fake) == 2, "the first generation and one refresh"
    assert rs[0].headers["ETag"] == rs[1].headers["ETag"] != first.headers["ETag"]


def test_a_forced_refresh_whose_owner_fails_gets_a_new_result_not_the_old_one(pair, fake, pg):
    cid = new_contact(pg)
    a, b = pair()
    first = a.get(PATH % cid)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    fake.config(latency_ms=300)
    fake.fail({"status": 400, "message": "bad request, once"})
    refresh = {"Cache-Control": "no-cache"}
    ta, on_a = in_thread(a.get, PATH % cid, refresh)
    wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
    rb = b.get(PATH % cid, headers=refresh, timeout=60)
    ta.join(30)
    assert on_a["value"].status == 502
    assert rb.status == 200 and rb.headers["X-Cache"] == "MISS", (rb.status, rb.body[:300])
    assert rb.headers["ETag"] != first.headers["ETag"], "the old entry is no refresh"
    assert calls(fake) == 3
    assert metric(b, "rapport_l2_lock_takeovers_total") == 1


def test_a_client_that_leaves_while_its_instance_waits_on_another_ends_the_wait(pair, fake, pg):
    """Under the cancel policy the waiting flight ends with its last client
    (its claim freed, nothing left behind), and the owner's result still
    reaches the instance through the L2."""
    cid = new_contact(pg)
    a, b = pair(RAPPORT_ORPHAN_POLICY="cancel")
    fake.config(chunk_delay_ms=100, chunks=10)
    ta, _ = in_thread(stream_events, a, PATH % cid)
    wait_until(lambda: metric(a, "rapport_l2_relay_published_total") >= 1, "A's first delta")
    conn, resp = b.open_stream(PATH % cid)
    assert resp.status == 200
    first = b""
    while b"event: delta" not in first:
        first += resp.readline()
    conn.close()
    wait_until(lambda: metric(b, "rapport_analysis_flights") == 0, "B's flight to end")
    ta.join(30)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    r = b.get(PATH % cid)
    assert r.headers["X-Cache"] == "HIT" and r.json()["cache"]["tier"] == "l2"
    assert calls(fake) == 1


def test_an_instance_waiting_on_another_shuts_down_cleanly(pair, fake, pg):
    """SIGTERM while a flight waits on the other instance's lock: a clean
    exit (the harness checks the status, and sanitizer reports under make
    asan), the waiting client gets its answer or the connection ends."""
    cid = new_contact(pg)
    a, b = pair()
    fake.config(latency_ms=1500)
    ta, _ = in_thread(a.get, PATH % cid)
    wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
    tb, _ = in_thread(b.get, PATH % cid)
    wait_until(lambda: metric(b, "rapport_l2_lock_waits_total") == 1, "B waiting on A")
    assert b.stop() == 0
    tb.join(10)
    ta.join(30)


def after_last_reset(events):
    n = [e["event"] for e in events]
    return events[len(n) - n[::-1].index("reset"):] if "reset" in n else events


class Channel:
    """What is published on <prefix>:events, heard by a redis-cli SUBSCRIBE."""

    def __init__(self, redis, channel="c:events"):
        self.proc = subprocess.Popen(["redis-cli", "-p", str(redis.port), "--raw", "SUBSCRIBE",
                                      channel], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        wait_until(lambda: "subscribe" in self.lines, "the SUBSCRIBE")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_a_waiter_that_goes_on_without_the_lock_discards_the_relayed_text_first(pair, fake, pg,
                                                                               redis):
    cid = new_contact(pg)
    a, b = pair(RAPPORT_L2_TIMEOUT_MS="100")
    fake.config(chunk_delay_ms=300, chunks=10)
    ta, on_a = in_thread(stream_events, a, PATH % cid)
    wait_until(lambda: metric(a, "rapport_l2_relay_published_total") >= 1, "A's first delta")
    tb, on_b = in_thread(stream_events, b, PATH % cid)
    wait_until(lambda: metric(b, "rapport_l2_relay_deltas_total") >= 2, "B relaying A's text")
    redis.stop()          # B's wait ends without a lock: it generates on its own
    tb.join(60)
    ta.join(60)
    assert "error" not in on_b, on_b.get("error")
    events = on_b["value"]
    n = [e["event"] for e in events]
    assert n[-1] == "result", n
    assert "reset" in n, "A's partial text was not discarded before B's own"
    assert n.index("reset") < len(n) - 1 - n[::-1].index("delta"), "B's own text follows"
    result = json.loads(events[-1]["data"])
    assert result["cache"]["status"] == "miss"
    text = json.loads(deltas(after_last_reset(events)))     # B's own reply, whole
    assert all(result["result"][k] == v for k, v in text.items()), (text, result["result"])
    assert calls(fake) == 2


def test_an_owner_shut_down_gracefully_releases_its_lock_so_a_waiter_takes_over_at_once(
        pair, fake, pg):
    cid = new_contact(pg)
    lease_s = 10
    a, b = pair(RAPPORT_L2_LOCK_LEASE_MS=str(lease_s * 1000))
    fake.config(latency_ms=30000)
    in_thread(a.get, PATH % cid, None, 60)
    wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
    tb, on_b = in_thread(b.get, PATH % cid, None, 60)
    wait_until(lambda: metric(b, "rapport_l2_lock_waits_total") == 1, "B waiting on A")
    fake.config(latency_ms=10)
    t0 = time.monotonic()
    a.stop()
    tb.join(60)
    waited = time.monotonic() - t0
    assert "error" not in on_b, on_b.get("error")
    assert on_b["value"].status == 200 and on_b["value"].headers["X-Cache"] == "MISS"
    assert waited < lease_s / 2, "B waited out A's lease (%.1f s): the lock was not released" \
        % waited
    assert metric(b, "rapport_l2_lock_takeovers_total") == 1


def test_an_owner_whose_result_is_too_large_for_the_l2_says_over_not_done(pair, fake, pg,
                                                                          redis):
    """Nothing was stored, so "done" would send its waiters to read a value
    that is not there; "over" lets one take the key over at once (such a
    result costs one model call per instance)."""
    cid = new_contact(pg)
    a, b = pair(RAPPORT_L2_MAX_BYTES="100")
    ch = Channel(redis)
    try:
        fake.config(latency_ms=1000)
        ta, on_a = in_thread(a.get, PATH % cid, None, 60)
        wait_until(lambda: fake.stats()["in_flight"] == 1, "A's model call")
        tb, on_b = in_thread(b.get, PATH % cid, None, 60)
        wait_until(lambda: metric(b, "rapport_l2_lock_waits_total") == 1, "B waiting on A")
        ta.join(30)
        tb.join(30)
        assert on_a["value"].status == 200 and on_b["value"].status == 200
        assert on_b["value"].headers["X-Cache"] == "MISS"
        assert metric(a, "rapport_l2_too_large_total") == 1
        assert metric(a, "rapport_l2_stores_total") == 0
        wait_until(lambda: any(x.startswith("over ") for x in ch.lines), "A's over")
        time.sleep(0.2)
        assert not [x for x in ch.lines if x.startswith("done ")], ch.lines
    finally:
        ch.stop()
    assert calls(fake) == 2
    assert metric(b, "rapport_l2_lock_takeovers_total") == 1
    assert metric(b, "rapport_l2_lock_results_total") == 0


def test_an_owner_whose_lease_lapsed_stops_relaying_so_waiters_follow_one_owner(make_server,
                                                                                redis, fake, pg):
    cid = new_contact(pg)
    env = dict(REDIS_URL=redis.url, RAPPORT_REDIS_PREFIX="c", RAPPORT_L2_LOCK_LEASE_MS="600")
    a, b, c = make_server(**env), make_server(**env), make_server(**env)
    for srv in (a, b, c):
        wait_until(lambda: metric(srv, "rapport_l2_pubsub_up") == 1, "the subscriber")
    fake.config(chunk_delay_ms=150, chunks=20)
    ta, on_a = in_thread(stream_events, a, PATH % cid)
    wait_until(lambda: metric(a, "rapport_l2_relay_published_total") >= 2, "A's deltas")
    a.signal(signal.SIGSTOP)     # a stall longer than the lease: A's lock lapses
    try:
        tb, _ = in_thread(stream_events, b, PATH % cid)
        wait_until(lambda: metric(b, "rapport_l2_lock_acquired_total") == 1, "B takes over",
                   timeout=10)
        tc, on_c = in_thread(stream_events, c, PATH % cid)
        wait_until(lambda: metric(c, "rapport_l2_lock_waits_total") == 1, "C waits on B")
        time.sleep(0.5)
    finally:
        a.signal(signal.SIGCONT)
    tc.join(60)
    tb.join(60)
    ta.join(60)
    assert "error" not in on_c, on_c.get("error")
    events = on_c["value"]
    n = [e["event"] for e in events]
    assert n[-1] == "result", n
    assert n.count("reset") <= 1, "C flapped between A's and B's text: %d resets" % n.count(
        "reset")
    # One owner's text from its start, never two run together. (It may be
    # cut short: A, resumed, can still store its result first, and that
    # answers C.)
    whole = deltas(on_a["value"])
    assert whole.startswith(deltas(after_last_reset(events))), deltas(after_last_reset(events))
    assert metric(a, "rapport_l2_lock_lost_total") == 1, "counted once for the claim"


@pytest.mark.parametrize("bad", ["smart_tips%20x", "*"])
def test_a_delete_with_a_malformed_type_is_refused_and_drops_nothing_anywhere(bad, pair, fake,
                                                                             pg):
    cid = new_contact(pg)
    a, b = pair()
    other = "/v1/contacts/%d/analyses/smart_tips" % cid
    a.get(other)
    wait_until(lambda: metric(a, "rapport_l2_stores_total") >= 1, "the write to Redis")
    b.get(other)
    assert b.get(other).json()["cache"]["tier"] == "l1"
    r = a.delete("/v1/contacts/%d/analyses/%s" % (cid, bad))
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_type", (r.status, r.body)
    # A valid DELETE after it, of another type: once B has heard that one,
    # it would have heard the bad one before it (one channel, in order).
    assert a.delete(PATH % cid).status == 200
    wait_until(lambda: metric(b, "rapport_l2_remote_drops_total") >= 1, "B hears the DELETE")
    assert metric(b, "rapport_l2_remote_drops_total") == 1, "only the valid one was published"
    assert b.get(other).headers["X-Cache"] == "HIT", "B dropped smart_tips"
    assert a.get(other).headers["X-Cache"] == "HIT"
