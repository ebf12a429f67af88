"""Feedback on insights end to end (core/feedback.c, core/http_feedback.c,
migration 2 of core/state.c): POST /v1/contacts/{id}/analyses/{type}/feedback
stores a vote in rapport.feedback on RAPPORT_STATE_URL, /v1/analysis-types
counts the votes per script version, /metrics counts them, and the console
(standalone and attached) lists the latest reasons.

Each test gets a state database of its own (an empty database on the test
cluster, as its owner), so the votes of one test never reach another's
counts. The CRM data (DATABASE_URL) is the shared read-only demo database.
"""

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers.pg import free_port
from helpers.server import SANITIZER_PATTERNS
from helpers.state import state_sql, state_up
from helpers.upstream import wait_until

REPO = Path(__file__).resolve().parents[2]
TYPE = "smart_tips"
CID = 7


def fb_server(make_server, state_url, **env):
    srv = make_server(RAPPORT_STATE_URL=state_url, **env)
    state_up(srv)
    return srv


def url(cid=CID, t=TYPE):
    return "/v1/contacts/%s/analyses/%s/feedback" % (cid, t)


def shown(srv, cid=CID, t=TYPE, headers=None):
    """The insight as the panel shows it: its script_version and generated_at."""
    r = srv.get("/v1/contacts/%s/analyses/%s" % (cid, t), headers=headers)
    assert r.status == 200, r.body
    doc = r.json()
    return doc["script_version"], doc["generated_at"]


def vote(srv, verdict, version, reason=None, generated_at=None, cid=CID, t=TYPE, headers=None):
    body = {"verdict": verdict, "script_version": version}
    if reason is not None:
        body["reason"] = reason
    if generated_at is not None:
        body["generated_at"] = generated_at
    return srv.post(url(cid, t), body=body, headers=headers)


def type_doc(srv, t=TYPE):
    r = srv.get("/v1/analysis-types")
    assert r.status == 200, r.body
    return next(x for x in r.json()["types"] if x["name"] == t)


def metric(text, sample):
    """The value of one sample (name and labels as printed) in /metrics text."""
    m = re.search(r"^%s (\S+)$" % re.escape(sample), text, re.M)
    assert m, "no sample %s in /metrics" % sample
    return float(m.group(1))


def stored(pg, state_url):
    return state_sql(pg, state_url,
                     "select contact_id, type, script_version, verdict, coalesce(reason, '<null>'),"
                     " coalesce(to_char(generated_at at time zone 'UTC',"
                     " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), '<null>')"
                     " from rapport.feedback order by id")


# ---- a vote is stored --------------------------------------------------------

def test_a_vote_is_stored_in_postgres_and_answered_201_with_the_row(make_server, fake, pg, state):
    srv = fb_server(make_server, state)
    version, generated_at = shown(srv)
    r = vote(srv, "up", version, "Spot on: the call idea is what we did.", generated_at)
    assert r.status == 201, r.body
    row = r.json()
    assert row["id"] >= 1 and row["contact_id"] == CID and row["type"] == TYPE
    assert row["verdict"] == "up" and row["script_version"] == version
    assert row["reason"] == "Spot on: the call idea is what we did."
    assert row["generated_at"] == generated_at
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", row["created_at"]), row
    assert row["request_id"] == r.headers["X-Request-Id"]
    assert stored(pg, state) == [[str(CID), TYPE, version, "up",
                                  "Spot on: the call idea is what we did.", generated_at]]
    # the counts table, kept by the trigger in the same transaction
    assert state_sql(pg, state, "select type, script_version, up, down from "
                                "rapport.feedback_counts") == [[TYPE, version, "1", "0"]]
    # a down vote without a reason: stored with NULL (blank reasons too)
    r = vote(srv, "down", version, "   ")
    assert r.status == 201 and r.json()["reason"] is None and r.json()["generated_at"] is None
    assert stored(pg, state)[1] == [str(CID), TYPE, version, "down", "<null>", "<null>"]
    assert state_sql(pg, state, "select up, down from rapport.feedback_counts") == [["1", "1"]]
    # the migration is recorded after the jobs'
    assert state_sql(pg, state, "select version, name from rapport.schema_migrations "
                                "order by version") == [
        ["1", "warm jobs and their items"],
        ["2", "feedback on insights and its counts per script version"]]
    line = srv.wait_for_log(lambda e: e.get("msg") == "feedback")
    assert line["verdict"] == "up" and line["type"] == TYPE and "reason" not in line


def test_bad_votes_get_400_with_the_reason_and_nothing_is_stored(make_server, fake, pg, state):
    srv = fb_server(make_server, state)
    v = "0123abcd"
    cases = [
        ("not json", "invalid_json", "not JSON"),
        ("", "invalid_json", "empty"),
        ("[1, 2]", "invalid_feedback", "object"),
        (json.dumps({"verdict": "sideways", "script_version": v}), "invalid_verdict", "up"),
        (json.dumps({"script_version": v}), "invalid_verdict", "up"),
        (json.dumps({"verdict": "up"}), "invalid_script_version", "script_version"),
        (json.dumps({"verdict": "up", "script_version": "XYZ"}), "invalid_script_version", "hex"),
        (json.dumps({"verdict": "up", "script_version": v, "reason": 5}), "invalid_feedback",
         "reason"),
        (json.dumps({"verdict": "up", "script_version": v, "generated_at": "yesterday"}),
         "invalid_feedback", "generated_at"),
        (json.dumps({"verdict": "up", "script_version": v,
                     "generated_at": "2026-02-30T10:00:00Z"}), "invalid_feedback", "generated_at"),
        (json.dumps({"verdict": "up", "script_version": v, "verdct": "up"}), "invalid_feedback",
         "unknown field 'verdct'"),
        ('{"verdict": "up", "verdict": "down", "script_version": "%s"}' % v, "invalid_json",
         "duplicate"),
    ]
    for body, code, words in cases:
        r = srv.post(url(), body=body, headers={"Content-Type": "application/json"})
        assert r.status == 400, (body, r.body)
        err = r.json()["error"]
        assert err["code"] == code and words in err["message"], (body, err)
    r = srv.post(url(cid="abc"), body={"verdict": "up", "script_version": v})
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_contact_id"
    # other methods: 405 with Allow
    r = srv.get(url())
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert stored(pg, state) == []


def test_an_unknown_contact_or_type_is_404_and_nothing_is_stored(make_server, fake, pg, state):
    srv = fb_server(make_server, state)
    version, _ = shown(srv)
    r = vote(srv, "up", version, cid=999999)
    assert r.status == 404, r.body
    assert r.json()["error"]["code"] == "contact_not_found"
    r = vote(srv, "up", "0123abcd", t="no_such_type")
    assert r.status == 404 and r.json()["error"]["code"] == "unknown_analysis_type", r.body
    r = vote(srv, "up", "0123abcd", t="Smart_Tips")
    assert r.status == 404, r.body
    assert stored(pg, state) == []


def test_a_reason_over_2000_bytes_is_413_and_so_is_a_body_over_the_limit(make_server, fake, pg,
                                                                         state):
    srv = fb_server(make_server, state, RAPPORT_MAX_BODY="8192")
    version, _ = shown(srv)
    r = vote(srv, "down", version, "x" * 2001)
    assert r.status == 413, r.body
    err = r.json()["error"]
    assert err["code"] == "reason_too_long" and "2000" in err["message"], err
    # the cap is in bytes: 1000 two-byte characters are exactly 2000
    r = vote(srv, "down", version, "é" * 1000)
    assert r.status == 201, r.body
    r = vote(srv, "down", version, "é" * 1000 + "x")
    assert r.status == 413, r.body
    # a body over RAPPORT_MAX_BODY is refused before it is parsed
    r = srv.post(url(), body={"verdict": "up", "script_version": version, "reason": "y" * 9000})
    assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large", r.body
    assert [row[4] for row in stored(pg, state)] == ["é" * 1000]


def test_with_api_keys_a_vote_needs_one(make_server, fake, pg, state):
    srv = fb_server(make_server, state, RAPPORT_API_KEYS="fb-key-1,fb-key-2")
    auth = {"Authorization": "Bearer fb-key-2"}
    version, _ = shown(srv, headers=auth)
    r = vote(srv, "up", version)
    assert r.status == 401 and r.headers["WWW-Authenticate"], r.body
    r = vote(srv, "up", version, headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    assert stored(pg, state) == []
    r = vote(srv, "up", version, headers=auth)
    assert r.status == 201, r.body
    assert len(stored(pg, state)) == 1


# ---- only versions this server has loaded --------------------------------------------

def test_a_vote_on_a_script_version_this_server_has_not_loaded_is_400_and_not_stored(
        make_server, scripts_copy, fake, pg, state):
    srv = fb_server(make_server, state, **scripts_copy.env)
    v1, _ = shown(srv)
    # well formed, but no script of the type ever had it: refused, so a caller
    # cannot add a row to the counts (and to /v1/analysis-types) per vote
    made_up = "deadbeef" if v1 != "deadbeef" else "beefdead"
    r = vote(srv, "up", made_up)
    assert r.status == 400, r.body
    err = r.json()["error"]
    assert err["code"] == "invalid_script_version", err
    assert ("script_version %s is not a version of %s this server has loaded" % (made_up, TYPE)
            in err["message"]), err
    # another type's version is not this type's
    other = type_doc(srv, "relationship_health")["version"]
    if other != v1:
        r = vote(srv, "up", other)
        assert r.status == 400 and "not a version of %s" % TYPE in r.json()["error"]["message"]
    # a result carries 8 digits: the full 16 are not a result's version
    r = vote(srv, "up", v1 + "00000000")
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_script_version", r.body
    assert stored(pg, state) == []
    assert state_sql(pg, state, "select count(*) from rapport.feedback_counts") == [["0"]]
    # the version that served before an edit is still known (results of it
    # are on pages and in caches), and so is the new one
    path = scripts_copy.scripts / "smart_tips.lua"
    path.write_text(path.read_text() + "\n-- version B\n")
    wait_until(lambda: type_doc(srv)["version"] != v1, "the edited script to serve", 15)
    v2 = type_doc(srv)["version"]
    assert vote(srv, "up", v1).status == 201
    assert vote(srv, "down", v2).status == 201
    assert [r[2:4] for r in stored(pg, state)] == [[v1, "up"], [v2, "down"]]
    text = srv.get("/metrics").text
    assert metric(text, 'rapport_feedback_rejected_total{reason="bad_request"}') >= 2


def test_many_versions_of_one_type_never_push_another_types_counts_out(make_server, fake, pg,
                                                                      state):
    srv = fb_server(make_server, state)
    version, _ = shown(srv)
    # counts written by hand (older rapports, or SQL): 6000 versions of a
    # type that sorts first, and 60 old versions of smart_tips, one up each
    state_sql(pg, state, "insert into rapport.feedback_counts (type, script_version, up, down,"
                         " last_at) select 'a_type', lpad(to_hex(g), 8, '0'), 1, 0,"
                         " now() - interval '1 day' from generate_series(1, 6000) g")
    state_sql(pg, state, "insert into rapport.feedback_counts (type, script_version, up, down,"
                         " last_at) select '%s', lpad(to_hex(g), 8, '0'), 1, 0,"
                         " now() - g * interval '1 minute' from generate_series(1, 60) g"
                         % TYPE)
    assert vote(srv, "down", version).status == 201
    # after the read that follows the vote: smart_tips's totals over all its
    # 61 versions, the 50 with the latest votes listed, the serving one first
    wait_until(lambda: type_doc(srv)["feedback"]["up"] == 60, "smart_tips's totals read", 25)
    fb = type_doc(srv)["feedback"]
    assert (fb["up"], fb["down"]) == (60, 1), {k: fb[k] for k in ("up", "down")}
    assert len(fb["versions"]) == 50, len(fb["versions"])
    assert fb["versions"][0]["script_version"] == version and fb["versions"][0]["current"]
    assert (fb["versions"][0]["up"], fb["versions"][0]["down"]) == (0, 1)
    assert fb["versions"][1]["script_version"] == "00000001"
    assert len(srv.get("/v1/analysis-types").body) < 100000


# ---- counts per script version --------------------------------------------------

def test_analysis_types_show_up_down_and_the_rate_per_script_version(make_server, scripts_copy,
                                                                     fake, pg, state):
    srv = fb_server(make_server, state, **scripts_copy.env)
    before = type_doc(srv)
    v1 = before["version"]
    # no votes yet: the serving version with a null rate
    assert before["feedback"] == {"up": 0, "down": 0, "acceptance_rate": None, "versions": [
        {"script_version": v1, "current": True, "up": 0, "down": 0, "acceptance_rate": None,
         "last_at": None}]}
    top = srv.get("/v1/analysis-types").json()["feedback"]
    assert top["state"] == "up"
    version, generated_at = shown(srv)
    assert version == v1
    for verdict in ("up", "up", "up", "down"):
        assert vote(srv, verdict, v1, generated_at=generated_at).status == 201
    # at once, from memory: this instance's votes are counted when answered
    fb = type_doc(srv)["feedback"]
    assert (fb["up"], fb["down"], fb["acceptance_rate"]) == (3, 1, 0.75), fb
    assert fb["versions"][0]["script_version"] == v1 and fb["versions"][0]["current"]

    # the prompt author edits the script: a new version serves
    path = scripts_copy.scripts / "smart_tips.lua"
    path.write_text(path.read_text() + "\n-- version B: same prompt, new hash\n")
    wait_until(lambda: type_doc(srv)["version"] != v1, "the edited script to serve", 15)
    v2 = type_doc(srv)["version"]
    fb = type_doc(srv)["feedback"]
    assert [(x["script_version"], x["current"], x["up"], x["down"]) for x in fb["versions"]] == \
        [(v2, True, 0, 0), (v1, False, 3, 1)], fb
    version, _ = shown(srv)
    assert version == v2
    assert vote(srv, "down", v2).status == 201
    assert vote(srv, "down", v2).status == 201
    fb = type_doc(srv)["feedback"]
    assert [(x["script_version"], x["up"], x["down"], x["acceptance_rate"])
            for x in fb["versions"]] == [(v2, 0, 2, 0.0), (v1, 3, 1, 0.75)], fb
    assert (fb["up"], fb["down"]) == (3, 3) and fb["acceptance_rate"] == 0.5
    # another type's counts are its own
    assert type_doc(srv, "relationship_health")["feedback"]["up"] == 0
    # votes another instance stored (here: a row written straight into the
    # table) are counted on the next read of the counts (every 10 s)
    state_sql(pg, state, "insert into rapport.feedback (contact_id, type, script_version, "
                         "verdict) values (8, '%s', '%s', 'up')" % (TYPE, v1))
    wait_until(lambda: type_doc(srv)["feedback"]["versions"][1]["up"] == 4,
               "the other instance's vote in the counts", 25)
    assert state_sql(pg, state, "select script_version, up, down from rapport.feedback_counts "
                                "order by script_version = '%s'" % v2) == \
        [[v1, "4", "1"], [v2, "0", "2"]]


COUNTS = "select type, script_version, up, down from rapport.feedback_counts " \
         "where up > 0 or down > 0 order by 1, 2"
RECOUNT = ("select type, script_version, count(*) filter (where verdict = 'up'), "
           "count(*) filter (where verdict = 'down') from rapport.feedback "
           "group by 1, 2 order by 1, 2")


def test_votes_changed_or_removed_by_hand_keep_the_counts_equal_to_a_recount(make_server,
                                                                             fake, pg, state):
    srv = fb_server(make_server, state)
    version, _ = shown(srv)
    for verdict in ("up", "up", "down"):
        assert vote(srv, verdict, version).status == 201
    assert state_sql(pg, state, COUNTS) == [[TYPE, version, "2", "1"]]
    # an operator flips a verdict, moves a vote to another version and type,
    # and deletes one: the trigger follows every change
    ids = [r[0] for r in state_sql(pg, state, "select id from rapport.feedback order by id")]
    state_sql(pg, state, "update rapport.feedback set verdict = 'down' where id = %s" % ids[0])
    assert state_sql(pg, state, COUNTS) == [[TYPE, version, "1", "2"]]
    state_sql(pg, state, "update rapport.feedback set script_version = 'aaaaaaaa', "
                         "type = 'relationship_health' where id = %s" % ids[1])
    assert state_sql(pg, state, COUNTS) == state_sql(pg, state, RECOUNT) == [
        ["relationship_health", "aaaaaaaa", "1", "0"], [TYPE, version, "0", "2"]]
    state_sql(pg, state, "update rapport.feedback set reason = 'edited' where id = %s" % ids[2])
    state_sql(pg, state, "delete from rapport.feedback where id = %s" % ids[2])
    assert state_sql(pg, state, COUNTS) == state_sql(pg, state, RECOUNT)
    # TRUNCATE fires no row trigger: docs/operations.md's recount puts it right
    state_sql(pg, state, "truncate rapport.feedback")
    assert state_sql(pg, state, COUNTS) != []
    doc = (REPO / "docs" / "operations.md").read_text()
    recount = re.search(r"<!-- feedback-recount -->\s*```sql\n(.*?)```", doc, re.S).group(1)
    state_sql(pg, state, recount)
    assert state_sql(pg, state, COUNTS) == []
    assert vote(srv, "up", version).status == 201
    assert state_sql(pg, state, COUNTS) == state_sql(pg, state, RECOUNT) == [
        [TYPE, version, "1", "0"]]


def test_metrics_count_votes_by_type_and_verdict_and_refusals_by_reason(make_server, fake, pg,
                                                                         state):
    srv = fb_server(make_server, state)
    version, _ = shown(srv)
    assert vote(srv, "up", version).status == 201
    assert vote(srv, "up", version).status == 201
    assert vote(srv, "down", version).status == 201
    assert vote(srv, "sideways", version).status == 400
    assert vote(srv, "up", version, cid=999999).status == 404
    assert vote(srv, "up", version, "z" * 2001).status == 413
    text = srv.get("/metrics").text
    assert metric(text, 'rapport_feedback_total{type="%s",verdict="up"}' % TYPE) == 2
    assert metric(text, 'rapport_feedback_total{type="%s",verdict="down"}' % TYPE) == 1
    assert metric(text, 'rapport_feedback_rejected_total{reason="bad_request"}') == 1
    assert metric(text, 'rapport_feedback_rejected_total{reason="unknown_contact"}') == 1
    assert metric(text, 'rapport_feedback_rejected_total{reason="too_large"}') == 1
    assert metric(text, 'rapport_feedback_rejected_total{reason="unavailable"}') == 0
    assert "# TYPE rapport_feedback_total counter" in text


# ---- the state database down -------------------------------------------------------

def test_without_its_state_database_a_vote_is_503_at_once_and_analyses_still_serve(
        make_server, fake):
    nowhere = "host=127.0.0.1 port=%d dbname=rapport connect_timeout=1" % free_port()
    srv = make_server(RAPPORT_STATE_URL=nowhere)
    wait_until(lambda: srv.get("/readyz").status == 200, "readiness", 10)
    version, generated_at = shown(srv)
    r = vote(srv, "up", version, "good", generated_at)
    assert r.status == 503, r.body
    err = r.json()["error"]
    assert err["code"] == "state_unavailable" and "RAPPORT_STATE_URL" in err["message"], err
    assert r.headers["Retry-After"]
    # the page still lists the types; their counts are simply not known yet
    doc = srv.get("/v1/analysis-types").json()
    assert doc["feedback"]["state"] in ("down", "connecting") and doc["feedback"]["as_of"] is None
    assert srv.get("/readyz").status == 200
    text = srv.get("/metrics").text
    assert metric(text, 'rapport_feedback_rejected_total{reason="unavailable"}') == 1


def test_the_state_database_stopping_gives_503_not_a_hang_then_votes_work_again(
        make_server, fake, pg, state):
    srv = fb_server(make_server, state)
    version, _ = shown(srv)
    assert vote(srv, "up", version).status == 201
    pg.stop()
    try:
        t0 = time.monotonic()
        r = vote(srv, "down", version, "while the database is down")
        assert r.status == 503, r.body
        assert r.json()["error"]["code"] in ("state_unavailable", "database_unavailable"), r.body
        assert time.monotonic() - t0 < 15, "a vote waited on a stopped database"
        # the counts still answer, from memory
        assert type_doc(srv)["feedback"]["up"] == 1
    finally:
        pg.start()
    state_up(srv, timeout=30)
    wait_until(lambda: vote(srv, "down", version, "back").status == 201, "a vote stored again", 30)
    assert [row[3:5] for row in stored(pg, state)] == [["up", "<null>"], ["down", "back"]]
    assert srv.is_running()


def test_a_database_error_reaches_the_log_and_the_client_gets_a_fixed_message(make_server,
                                                                               fake, pg, state):
    srv = fb_server(make_server, state)
    version, _ = shown(srv)
    # an operator renamed the table: every statement on it fails in PostgreSQL
    state_sql(pg, state, "alter table rapport.feedback rename to feedback_moved")
    r = vote(srv, "up", version)
    assert r.status == 500, r.body
    err = r.json()["error"]
    assert err["code"] == "feedback_store_failed", err
    assert err["message"] == "the feedback could not be stored (the server's log has the cause)"
    assert "relation" not in r.text and "INSERT" not in r.text, r.text
    line = srv.wait_for_log(lambda e: e.get("msg") == "feedback not stored")
    assert "rapport.feedback" in line["error"] and "does not exist" in line["error"], line
    # the same for a read (the console, attached: the server's answer)
    rc, out, errt = console(srv, 'feedback("%s")' % TYPE, args=("--attach",))
    assert rc == 1 and "query_failed" in errt, (out, errt)
    assert "relation" not in errt and "does not exist" not in errt, errt
    line = srv.wait_for_log(lambda e: e.get("msg") == "feedback not read")
    assert "does not exist" in line["error"], line


# ---- the console ----------------------------------------------------------------------

def console(srv, code, args=(), timeout=60):
    e = dict(srv.env)
    proc = subprocess.run([str(srv.binary), "console", *args, "-e", code], env=e, cwd=str(REPO),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)
    err = proc.stderr.decode()
    for pat in SANITIZER_PATTERNS:
        assert not pat.search(err), "sanitizer report from the console:\n%s" % err
    return proc.returncode, proc.stdout.decode(), err


def seed_votes(srv):
    version, _ = shown(srv)
    for verdict, reason in (("up", "first: useful"), ("down", None), ("down", "second: wrong"),
                            ("up", "third: spot on")):
        assert vote(srv, verdict, version, reason).status == 201
    return version


def test_console_feedback_lists_the_latest_reasons_standalone_and_attached(make_server, fake,
                                                                           state, tmp_path):
    srv = fb_server(make_server, state)
    version = seed_votes(srv)
    code = ('local f = feedback("%s", 2); print(#f.latest, f.up, f.down); '
            'for _, x in ipairs(f.latest) do print(x.verdict, x.script_version, x.reason, '
            'x.contact_id, x.created_at ~= nil) end; '
            'print(f.versions[1].script_version, f.versions[1].current)' % TYPE)
    want = ("2\t2\t2\n"
            "up\t%s\tthird: spot on\t%d\ttrue\n"
            "down\t%s\tsecond: wrong\t%d\ttrue\n"
            "%s\ttrue\n") % (version, CID, version, CID, version)
    # standalone: the console's own state connection
    rc, out, err = console(srv, code)
    assert rc == 0 and out == want, (out, err)
    # attached: the running server's, through the admin socket
    rc, out, err = console(srv, code, args=("--attach",))
    assert rc == 0 and out == want, (out, err)
    # the default is 10; the newest first; only votes with a reason
    rc, out, err = console(srv, 'print(#feedback("%s").latest)' % TYPE)
    assert rc == 0 and out == "3\n", (out, err)
    rc, out, err = console(srv, 'feedback("%s", 0)' % TYPE)
    assert rc == 1 and "invalid_count" in err, (out, err)
    rc, out, err = console(srv, 'feedback("Smart_Tips")', args=("--attach",))
    assert rc == 1 and "invalid_type" in err, (out, err)
    rc, out, err = console(srv, 'print(#feedback("relationship_health").latest)')
    assert rc == 0 and out == "0\n", (out, err)


def test_console_feedback_without_the_state_database_says_why(make_server, fake):
    nowhere = "host=127.0.0.1 port=%d dbname=rapport connect_timeout=1" % free_port()
    srv = make_server(start=False, RAPPORT_STATE_URL=nowhere)
    rc, out, err = console(srv, 'feedback("%s")' % TYPE)
    assert rc == 1 and "state_unavailable" in err and "RAPPORT_STATE_URL" in err, (out, err)


def test_a_standalone_console_opens_its_state_connection_only_when_feedback_is_called(
        make_server, fake):
    # a listener standing in for the state database: it sees every connect
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.setblocking(False)
    try:
        port = lsock.getsockname()[1]
        srv = make_server(start=False, RAPPORT_STATE_URL="host=127.0.0.1 port=%d dbname=rapport"
                                                         % port)
        rc, out, err = console(srv, "print(1)")
        assert rc == 0 and out == "1\n", (out, err)
        with pytest.raises(BlockingIOError):
            lsock.accept()
        # feedback() opens it (here it never answers: the console says so)
        rc, out, err = console(srv, 'feedback("%s")' % TYPE)
        assert rc == 1 and "state_unavailable" in err, (out, err)
        conn, _ = lsock.accept()
        conn.close()
    finally:
        lsock.close()
