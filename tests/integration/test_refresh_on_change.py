"""Refresh on change (core/change_refresh.c, DESIGN.md "Cache and freshness"):
a NOTIFY for a contact whose entries a person viewed refreshes them in the
background, after a short quiet period, so the next click is a hit instead
of a wait; entries nobody viewed (a warm job's) wait for a view as before.

Uses test_freshness's two small types (acts reads activities only, deals
reads deals only) and its contacts, with the real server, PostgreSQL's
NOTIFY triggers and the fake's call counter.
"""

import time

from helpers.state import state_up
from helpers.upstream import metric, wait_until
from test_freshness import (add_activity, cached, calls, get, move_deal, new_contact,
                            notified, start)  # noqa: F401 (start is a fixture)
from test_warm_jobs import post_warm, wait_job

QUIET_S = 0.2          # CHANGE_REFRESH_QUIET_MS


def settle(srv):
    """No generation in progress (the metric counts flights)."""
    wait_until(lambda: metric(srv, "rapport_analysis_flights") == 0, "the flights to end")


def test_a_change_refreshes_a_viewed_entry_so_the_next_view_is_a_hit_with_the_new_data(
        start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    first = get(srv, cid, "acts")
    assert first.headers["X-Cache"] == "MISS" and calls(fake) == 1
    add_activity(pg, cid, "the subject after the view")
    # Nobody asks again: the change alone brings the model call.
    wait_until(lambda: calls(fake) == 2, "the refresh on change")
    assert "the subject after the view" in fake.stats()["last_request"]["messages"][-1]["content"]
    settle(srv)
    nxt = get(srv, cid, "acts")
    assert nxt.headers["X-Cache"] == "HIT", nxt.headers.items()
    assert nxt.headers["ETag"] != first.headers["ETag"]
    assert calls(fake) == 2
    assert metric(srv, "rapport_analysis_change_refreshes_total") == 1


def test_a_change_a_viewed_type_does_not_read_re_arms_it_without_a_model_call(start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    acts, deals = get(srv, cid, "acts"), get(srv, cid, "deals")
    assert calls(fake) == 2
    move_deal(pg, cid, "closed_won")
    wait_until(lambda: metric(srv, "rapport_analysis_change_refreshes_total") == 2,
               "both viewed types refreshed")
    settle(srv)
    assert calls(fake) == 3, "only deals reads deals"
    assert metric(srv, "rapport_analysis_revalidated_total") == 1
    a, d = get(srv, cid, "acts"), get(srv, cid, "deals")
    assert a.headers["X-Cache"] == "HIT" and a.headers["ETag"] == acts.headers["ETag"]
    assert d.headers["X-Cache"] == "HIT" and d.headers["ETag"] != deals.headers["ETag"]
    assert calls(fake) == 3


def test_the_notifies_of_quick_commits_are_one_refresh_that_reads_them_all(start, fake, pg):
    cid = new_contact(pg)
    srv = start()
    get(srv, cid, "acts")
    # Two commits from one session, milliseconds apart: two NOTIFYs inside
    # the quiet period. Refreshing at the first would read half of it and
    # be thrown away at the second.
    pg.sql("BEGIN; INSERT INTO activities (contact_id, kind, direction, subject, body, outcome) "
           "VALUES (%d, 'email', 'inbound', 'first of two', 'b', 'replied'); COMMIT; "
           "BEGIN; INSERT INTO activities (contact_id, kind, direction, subject, body, outcome) "
           "VALUES (%d, 'email', 'inbound', 'second of two', 'b', 'replied'); COMMIT;"
           % (cid, cid))
    wait_until(lambda: calls(fake) == 2, "the refresh on change")
    settle(srv)
    text = fake.stats()["last_request"]["messages"][-1]["content"]
    assert "first of two" in text and "second of two" in text, text
    assert get(srv, cid, "acts").headers["X-Cache"] == "HIT"
    assert calls(fake) == 2
    assert metric(srv, "rapport_analysis_change_refreshes_total") == 1


def test_an_entry_only_a_warm_job_made_waits_for_a_view_to_be_refreshed(
        start, fake, pg, state):
    cid = new_contact(pg)
    srv = start(RAPPORT_STATE_URL=state)
    state_up(srv)
    job = post_warm(srv, {"contacts": [cid], "types": ["acts"]})
    assert job.status == 202, job.body
    assert wait_job(srv, job.json()["job"]["id"])["state"] == "done"
    assert calls(fake) == 1
    add_activity(pg, cid, "a change nobody has looked at")
    notified(srv, cid)
    time.sleep(QUIET_S * 3)     # past the quiet period, wide margin
    assert calls(fake) == 1, "no one viewed it: no model call on the change"
    assert metric(srv, "rapport_analysis_change_refreshes_total") == 0
    # The first view finds it stale (within its grace) and refreshes it.
    assert get(srv, cid, "acts").headers["X-Cache"] == "STALE"
    fresh = cached(srv, cid, "acts")
    assert calls(fake) == 2 and fresh.status == 200


def test_with_refresh_on_change_off_a_change_waits_for_the_next_view(start, fake, pg):
    cid = new_contact(pg)
    srv = start(RAPPORT_REFRESH_ON_CHANGE_S=0)
    get(srv, cid, "acts")
    add_activity(pg, cid, "unseen")
    notified(srv, cid)
    time.sleep(QUIET_S * 3)
    assert calls(fake) == 1
    assert get(srv, cid, "acts").headers["X-Cache"] == "STALE"


def test_an_entry_viewed_longer_ago_than_the_window_is_not_refreshed(start, fake, pg):
    cid = new_contact(pg)
    # A window of 100 s, scaled by RAPPORT_TTL_SCALE to 1 s (ttl 300 s -> 3 s).
    srv = start(RAPPORT_REFRESH_ON_CHANGE_S=100, RAPPORT_TTL_SCALE="0.01")
    get(srv, cid, "acts")
    time.sleep(1.5)
    add_activity(pg, cid, "after the window")
    notified(srv, cid)
    time.sleep(QUIET_S * 3)
    assert calls(fake) == 1
    assert metric(srv, "rapport_analysis_change_refreshes_total") == 0


def test_with_refresh_warmed_a_warm_jobs_entry_is_refreshed_on_a_change_like_a_viewed_one(
        start, fake, pg, state):
    cid = new_contact(pg)
    srv = start(RAPPORT_STATE_URL=state, RAPPORT_REFRESH_WARMED="1")
    state_up(srv)
    job = post_warm(srv, {"contacts": [cid], "types": ["acts"]})
    assert wait_job(srv, job.json()["job"]["id"])["state"] == "done"
    assert calls(fake) == 1
    add_activity(pg, cid, "a change to a warmed contact")
    wait_until(lambda: calls(fake) == 2, "the refresh on change")
    settle(srv)
    r = get(srv, cid, "acts")
    assert r.headers["X-Cache"] == "HIT", r.headers.items()
    assert calls(fake) == 2
