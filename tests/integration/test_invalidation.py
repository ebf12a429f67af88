"""Cache invalidation end to end: the schema's triggers NOTIFY
rapport_contact_changed with the contact id, rapport LISTENs on a dedicated
connection (core/db_listen.c) and makes that contact's cached analyses stale:
never a hit again; served at once as stale while one refresh runs, which
calls the model only when the change reached the type's model request.

Contacts 150..199 belong to this file, so other tests' cache entries and rows
never interfere.
"""

import time

import pytest

TYPE = "relationship_health"
CHANNEL = "rapport_contact_changed"


def analysis(srv, contact):
    return srv.get("/v1/contacts/%s/analyses/%s" % (contact, TYPE))


def calls(fake):
    return fake.stats()["chat_calls"]


def listening(srv, timeout=5.0):
    """Waits until the listener has confirmed its first LISTEN: before that a
    change is not heard (and nothing tells the test)."""
    srv.wait_for_log(lambda l: l.get("msg") == "db listen up", timeout=timeout)


def cache(srv, contact, timeout=10.0):
    """Makes sure the contact's analysis is cached and fresh: polls until a
    GET is a HIT. Retries 503s (the pool may still be reconnecting after a
    restart) and waits out a refresh in progress."""
    deadline = time.monotonic() + timeout
    while True:
        r = analysis(srv, contact)
        if r.status == 200 and r.headers["X-Cache"] == "HIT":
            return r
        assert r.status in (200, 503) and time.monotonic() < deadline, \
            "contact %s was not cached: %s %s" % (contact, r.status, r.body)
        time.sleep(0.05)


def wait_refreshed(srv, fake, contact, timeout=5.0):
    """After a change: polls until a GET is no longer a HIT, which must be
    STALE with the old result; then until the refresh has made it fresh
    again. Returns (the stale reply, the fresh one, model calls made)."""
    t0 = time.monotonic()
    before = calls(fake)
    while True:
        r = analysis(srv, contact)
        assert r.status == 200, r.body
        if r.headers["X-Cache"] != "HIT":
            break
        assert time.monotonic() - t0 < timeout, \
            "contact %s still served as fresh %.1f s after the change" % (contact, timeout)
        time.sleep(0.05)
    assert r.headers["X-Cache"] == "STALE", r.headers.items()
    assert r.json()["cache"]["status"] == "stale"
    assert r.headers["Cache-Control"].startswith("private, max-age=0, stale-while-revalidate=")
    fresh = cache(srv, contact)
    return r, fresh, calls(fake) - before


def wait_miss(srv, fake, contact, timeout=2.0):
    """A change reached the model request: the refresh called the model once
    and the fresh result is a new one."""
    stale, fresh, n = wait_refreshed(srv, fake, contact, timeout)
    assert n == 1, "the refresh must call the model once (%d calls)" % n
    assert fresh.json()["generated_at"] >= stale.json()["generated_at"]
    assert fresh.headers["ETag"] != stale.headers["ETag"] or \
        fresh.json()["generated_at"] != stale.json()["generated_at"]


def wait_revalidated(srv, fake, contact, timeout=2.0):
    """A change that did not reach the model request: stale at once, then
    re-armed without a model call, the same result and ETag."""
    stale, fresh, n = wait_refreshed(srv, fake, contact, timeout)
    assert n == 0, "an unchanged model request must not call the model (%d calls)" % n
    assert fresh.headers["ETag"] == stale.headers["ETag"]
    assert fresh.json()["generated_at"] == stale.json()["generated_at"]


def assert_hit(srv, contact):
    r = analysis(srv, contact)
    assert r.status == 200, r.body
    assert r.headers["X-Cache"] == "HIT", "contact %s lost its entry" % contact


def invalidated(srv, contact, timeout=2.0):
    return srv.wait_for_log(lambda l: l.get("msg") == "invalidated"
                            and l.get("contact") == contact, timeout=timeout)


# ---- one change, one contact ----------------------------------------------

def test_updating_a_contact_makes_its_analysis_stale_and_no_other(server, fake, pg):
    listening(server)
    cache(server, 150)
    cache(server, 151)
    pg.sql("UPDATE contacts SET title = coalesce(title, '') || '.' WHERE id = 150")
    wait_miss(server, fake, 150)
    assert_hit(server, 151)
    line = invalidated(server, 150)
    assert line["level"] == "debug" and line["entries"] >= 1
    assert not [l for l in server.log_lines()
                if l.get("msg") == "invalidated" and l.get("contact") == 151]


def test_a_new_activity_makes_the_contacts_analysis_stale_and_regenerates_it(server, fake, pg):
    listening(server)
    cache(server, 152)
    cache(server, 153)
    pg.sql("INSERT INTO activities (contact_id, kind, direction, subject, body, outcome)"
           " VALUES (152, 'call', 'outbound', 'invalidation test', 'left a message',"
           " 'voicemail')")
    wait_miss(server, fake, 152)
    assert_hit(server, 153)


def test_deleting_a_deal_makes_the_contacts_analysis_stale_and_regenerates_it(server, fake, pg):
    listening(server)
    deal = pg.scalar("INSERT INTO deals (contact_id, name, stage, amount, probability)"
                     " VALUES (154, 'invalidation test', 'proposal', 1000, 40)"
                     " RETURNING id")
    # The INSERT notifies too: let that pass before caching.
    invalidated(server, 154)
    cache(server, 154)
    cache(server, 155)
    pg.sql("DELETE FROM deals WHERE id = %d" % int(deal))
    wait_miss(server, fake, 154)
    assert_hit(server, 155)


def test_a_payload_that_is_not_a_contact_id_is_logged_and_ignored(server, fake, pg):
    """Any role may NOTIFY on the channel: garbage must not empty the cache
    (and a forced regeneration of everything costs money)."""
    listening(server)
    cache(server, 156)
    cache(server, 160)
    garbage = ["not-an-id", "", "0", "-7", "42abc", " 42", "4.2", "99999999999999999999999",
               "x" * 7000, "1; DROP TABLE contacts"]
    for g in garbage:
        pg.sql("SELECT pg_notify('%s', '%s')" % (CHANNEL, g.replace("'", "''")))
    for g in garbage:
        line = server.wait_for_log(lambda l, g=g: l.get("msg") == "bad invalidation payload ignored"
                                   and l.get("payload") == g[:127], timeout=5.0)
        assert line["level"] == "warn" and line["bytes"] == len(g)
    # A flood is logged at most 20 lines per 10 s.
    def bad_lines():
        return len([l for l in server.log_lines()
                    if l.get("msg") == "bad invalidation payload ignored"])
    before = bad_lines()
    pg.sql("SELECT pg_notify('%s', 'flood ' || g) FROM generate_series(1, 200) g" % CHANNEL)
    time.sleep(1.0)
    assert 0 < bad_lines() - before <= 20, bad_lines() - before
    # Every payload was handled (the log lines above); nothing was dropped.
    assert_hit(server, 156)
    assert_hit(server, 160)
    assert not [l for l in server.log_lines() if l.get("msg") in ("invalidated", "cache reset")]
    # A real id right after still works (nothing changed: revalidated).
    pg.sql("NOTIFY %s, '156'" % CHANNEL)
    wait_revalidated(server, fake, 156)
    assert_hit(server, 160)


# ---- the listener survives a database restart -------------------------------

@pytest.mark.timeout(120)
def test_the_listener_reconnects_after_a_restart_and_resets_the_cache(server, fake, pg):
    listening(server)
    cache(server, 157)
    cache(server, 158)
    pg.restart()
    # Whatever changed while it was away is unknown: everything goes.
    reset = server.wait_for_log(lambda l: l.get("msg") == "cache reset", timeout=15.0)
    assert reset["level"] == "info" and reset["entries"] >= 2
    assert server.wait_for_log(lambda l: l.get("msg") == "db listen lost")["level"] == "warn"
    ups = [l for l in server.log_lines() if l.get("msg") == "db listen up"]
    assert len(ups) == 2 and ups[0]["reset"] == "no" and ups[1]["reset"] == "yes"
    cache(server, 157)       # stale after the reset, refreshed, then fresh
    cache(server, 158)
    pg.sql("UPDATE contacts SET title = coalesce(title, '') || '.' WHERE id = 157")
    wait_miss(server, fake, 157)
    assert_hit(server, 158)


def test_a_change_during_generation_is_not_cached_as_fresh(server, fake, pg):
    """The rows were read before the change: the answer goes to its caller
    but must not be cached, or the stale result would outlive the change."""
    listening(server)
    fake.config(latency_ms=800)
    import threading
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", analysis(server, 159)))
    t.start()
    time.sleep(0.3)
    pg.sql("UPDATE contacts SET notes = coalesce(notes, '') || '!' WHERE id = 159")
    t.join()
    assert out["r"].status == 200
    fake.config(latency_ms=20)
    time.sleep(0.3)
    r = analysis(server, 159)
    assert r.headers["X-Cache"] == "MISS", "a result built from old rows was cached"
