"""Warm jobs end to end (core/jobs.c, core/state.c, core/http_jobs.c,
core/warm_cli.c): POST /v1/warm, GET/DELETE /v1/jobs, the state schema on
RAPPORT_STATE_URL, several instances and restarts, `rapport warm`.

Each test gets a state database of its own (an empty database on the test
cluster, as its owner), so jobs of one test never reach another's servers.
The CRM data (DATABASE_URL) is the shared read-only demo database.
"""

import json
import os
import pty
import re
import select
import subprocess
import threading
import time
import uuid

import pytest

from helpers.pg import free_port
from helpers.server import REPO, rapport_binary
from helpers.state import state_sql, state_up
from helpers.upstream import metric, wait_until

TYPE = "smart_tips"
FINAL = {"done", "cancelled", "failed"}


def warm_server(make_server, state_url, **env):
    env.setdefault("RAPPORT_WARM_LEASE_S", 5)
    srv = make_server(RAPPORT_STATE_URL=state_url, **env)
    state_up(srv)
    return srv


def post_warm(srv, body, headers=None):
    return srv.post("/v1/warm", body=body, headers=headers)


def get_job(srv, job_id):
    r = srv.get("/v1/jobs/%d" % job_id)
    assert r.status == 200, r.body
    return r.json()["job"]


def wait_job(srv, job_id, timeout=60.0, seen=None):
    """Polls until the job's state is final; returns its document. `seen`
    (a list) collects every document on the way."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(srv, job_id)
        if seen is not None:
            seen.append(job)
        if job["state"] in FINAL:
            return job
        assert time.monotonic() < deadline, "job %d not finished: %r" % (job_id, job)
        time.sleep(0.05)


def items(pg, state_url, job_id):
    rows = state_sql(pg, state_url,
                     "select contact, type, state, attempts, coalesce(done_by, '') "
                     "from rapport.job_items where job = %d order by contact, type" % job_id)
    return [(int(c), t, s, int(a), d) for c, t, s, a, d in rows]


def calls(fake):
    return fake.stats()["chat_calls"]


# ---- one job, progress, cache ------------------------------------------------

def test_warm_job_over_50_contacts_reports_progress_and_leaves_them_cached(
        make_server, fake, pg, state):
    fake.config(latency_ms=150)
    # A cap of 8 at the default share 0.25: 2 items at once, so 50 items
    # take a while and the progress is seen moving.
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=8)
    contacts = list(range(1, 51))
    r = post_warm(srv, {"contacts": contacts, "types": [TYPE]})
    assert r.status == 202, r.body
    job = r.json()["job"]
    assert r.headers["Location"] == "/v1/jobs/%d" % job["id"]
    assert job["state"] in ("queued", "running")
    assert job["total"] == 50 and job["types"] == [TYPE]
    assert job["request"] == {"contacts": contacts}

    seen = []
    final = wait_job(srv, job["id"], seen=seen)
    assert final["state"] == "done", final
    assert (final["done"], final["failed"], final["completed"]) == (50, 0, 50)
    assert final["skipped"] == {"fresh": 0, "revalidated": 0}
    assert final["eta_s"] == 0 and final["pending"] == 0 and final["running"] == 0
    assert final["started_at"] and final["finished_at"]
    # Progress moved in between: a document with some but not all done,
    # with an estimate.
    middle = [j for j in seen if 0 < j["completed"] < 50]
    assert middle, "no intermediate progress seen: %r" % seen[:3]
    assert any(isinstance(j["eta_s"], int) and j["eta_s"] > 0 for j in middle)
    assert all(j["running"] <= 2 for j in seen), "more items at once than the share"
    assert calls(fake) == 50

    # Every one of them is cached: a hit, and no new upstream call.
    for c in contacts:
        a = srv.get("/v1/contacts/%d/analyses/%s" % (c, TYPE))
        assert a.status == 200 and a.headers["X-Cache"] == "HIT", (c, a.headers.items())
        assert a.json()["cache"]["status"] == "hit"
    assert calls(fake) == 50

    rows = items(pg, state, job["id"])
    assert len(rows) == 50 and {r[2] for r in rows} == {"done"}
    assert {r[3] for r in rows} == {1}

    # Warming them again: every item is skipped as fresh, no model call.
    again = post_warm(srv, {"contacts": contacts, "types": [TYPE]}).json()["job"]
    final2 = wait_job(srv, again["id"])
    assert final2["skipped"]["fresh"] == 50 and final2["done"] == 0, final2
    assert calls(fake) == 50

    m = srv.get("/metrics").text
    assert 'rapport_warm_items_total{outcome="done"} 50' in m
    assert 'rapport_warm_items_total{outcome="fresh"} 50' in m
    assert "rapport_state_up 1" in m
    assert "rapport_warm_slots 2" in m

    listing = srv.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listing[:2]] == [again["id"], job["id"]]
    assert srv.get("/v1/jobs?limit=1").json()["jobs"][0]["id"] == again["id"]


def test_warm_without_types_runs_every_loaded_type(make_server, fake, state):
    srv = warm_server(make_server, state)
    types = sorted(t["name"] for t in srv.get("/v1/analysis-types").json()["types"]
                   if not t.get("error"))
    r = post_warm(srv, {"contacts": [3, 3, 4]})   # duplicates count once
    assert r.status == 202, r.body
    job = r.json()["job"]
    assert sorted(job["types"]) == types and job["total"] == 2 * len(types)
    final = wait_job(srv, job["id"])
    assert final["state"] == "done" and final["done"] == 2 * len(types), final


# ---- top N -----------------------------------------------------------------------

def test_top_n_takes_its_contacts_from_the_warm_candidates_query(
        make_server, fake, pg, state, scripts_copy):
    # The default query: the contacts with the most recent activity.
    srv = warm_server(make_server, state)
    expected = [int(r[0]) for r in pg.sql(
        "select c.id from contacts c left join lateral (select max(occurred_at) m "
        "from activities a where a.contact_id = c.id) l on true "
        "order by l.m desc nulls last, c.id desc limit 7")]
    job = post_warm(srv, {"top": 7, "types": [TYPE]}).json()["job"]
    assert job["request"] == {"top": 7} and job["total"] == 7
    wait_job(srv, job["id"])
    got = sorted({r[0] for r in items(pg, state, job["id"])})
    assert got == sorted(expected)
    srv.stop()

    # Ops change what "top" means in scripts/lib/queries.lua.
    q = scripts_copy.scripts / "lib" / "queries.lua"
    text = q.read_text()
    start = text.index("warm_candidates = {")
    end = text.index("]] },", start) + len("]] },")
    q.write_text(text[:start] + "warm_candidates = { sql = [[ SELECT id FROM contacts "
                 "WHERE id IN (11, 13, 17) ORDER BY id LIMIT $1 ]] }," + text[end:])
    srv2 = warm_server(make_server, state, **scripts_copy.env)
    job = post_warm(srv2, {"top": 2, "types": [TYPE]}).json()["job"]
    wait_job(srv2, job["id"])
    assert [r[0] for r in items(pg, state, job["id"])] == [11, 13]


# ---- bad requests --------------------------------------------------------------------

BAD_BODIES = [
    ("", "invalid_body", "JSON object"),
    ("{not json", "invalid_body", "not valid JSON"),
    ("[1,2]", "invalid_body", "JSON object"),
    ({}, "invalid_body", '"contacts"'),
    ({"contacts": [1], "top": 3}, "invalid_body", "not both"),
    ({"top": 0}, "invalid_body", "from 1 to 10000"),
    ({"top": 10001}, "invalid_body", "from 1 to 10000"),
    ({"top": "5"}, "invalid_body", "integer"),
    ({"top": 2.5}, "invalid_body", "integer"),
    ({"contacts": []}, "invalid_body", "non-empty"),
    ({"contacts": 5}, "invalid_body", "list"),
    ({"contacts": [1, 0]}, "invalid_body", '"contacts"[1]'),
    ({"contacts": ["7"]}, "invalid_body", '"contacts"[0]'),
    ({"contacts": list(range(1, 1002))}, "invalid_body", "too many contacts: 1001"),
    ({"top": 3, "types": ["no_such_type"]}, "unknown_analysis_type", "no_such_type"),
    ({"top": 3, "types": []}, "invalid_body", '"types"'),
    ({"top": 3, "types": [1]}, "invalid_body", '"types"[0]'),
    ({"top": 3, "tpyes": [TYPE]}, "invalid_body", 'unknown field "tpyes"'),
    ('{"top": 3, "top": 4}', "invalid_body", "duplicate"),
]


def test_bad_warm_bodies_get_400_with_a_clear_error(make_server, fake, state):
    srv = warm_server(make_server, state)
    for body, code, words in BAD_BODIES:
        r = post_warm(srv, body, headers={"Content-Type": "application/json"})
        assert r.status == 400, (body, r.status, r.body)
        err = r.json()["error"]
        assert err["code"] == code, (body, err)
        assert words in err["message"], (body, err)
    # Nothing was created.
    assert srv.get("/v1/jobs").json()["jobs"] == []
    assert srv.get("/v1/jobs/abc").json()["error"]["code"] == "invalid_job_id"
    r = srv.get("/v1/jobs/987654")
    assert r.status == 404 and r.json()["error"]["code"] == "job_not_found"
    assert srv.get("/v1/jobs?limit=0").status == 400
    r = srv.request("PUT", "/v1/warm", body="{}")
    assert r.status == 405 and r.headers["Allow"] == "POST"
    r = srv.request("POST", "/v1/jobs/1", body="{}")
    assert r.status == 405 and r.headers["Allow"] == "GET, HEAD, DELETE"


def test_warm_routes_need_the_api_key_like_every_v1_route(make_server, fake, state):
    srv = warm_server(make_server, state, RAPPORT_API_KEYS="k1")
    assert post_warm(srv, {"top": 1}).status == 401
    assert srv.get("/v1/jobs").status == 401
    assert srv.delete("/v1/jobs/1").status == 401
    ok = post_warm(srv, {"contacts": [1], "types": [TYPE]},
                   headers={"Authorization": "Bearer k1"})
    assert ok.status == 202, ok.body


# ---- cancel ---------------------------------------------------------------------------------

def test_delete_cancels_a_job_and_its_unrun_items_are_never_run(make_server, fake, pg, state):
    fake.config(latency_ms=400)
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=4)   # 1 item at once
    job = post_warm(srv, {"contacts": list(range(20, 40)), "types": [TYPE]}).json()["job"]
    wait_until(lambda: get_job(srv, job["id"])["completed"] >= 1, "a first item", 20)
    r = srv.delete("/v1/jobs/%d" % job["id"])
    assert r.status == 200, r.body
    doc = r.json()["job"]
    assert doc["state"] == "cancelled" and doc["finished_at"]
    assert doc["cancelled"] >= 15 and doc["pending"] == 0 and doc["running"] == 0, doc
    after = calls(fake)
    time.sleep(1.5)            # several item latencies: nothing more runs
    assert calls(fake) <= after + 1      # at most the item that was out
    final = get_job(srv, job["id"])
    assert final["state"] == "cancelled"
    assert final["completed"] + final["cancelled"] == 20
    states = {r[2] for r in items(pg, state, job["id"])}
    assert states <= {"done", "cancelled"}
    # Cancelling again is harmless; a finished job cannot be cancelled.
    assert srv.delete("/v1/jobs/%d" % job["id"]).status == 200
    fake.config(latency_ms=0)
    done = post_warm(srv, {"contacts": [1], "types": [TYPE]}).json()["job"]
    wait_job(srv, done["id"])
    r = srv.delete("/v1/jobs/%d" % done["id"])
    assert r.status == 409 and r.json()["error"]["code"] == "job_finished"
    assert srv.delete("/v1/jobs/999999").status == 404


# ---- the background lane ---------------------------------------------------------------------

def test_interactive_requests_are_not_queued_behind_a_warm_job(make_server, fake, state):
    latency = 400
    fake.config(latency_ms=latency)
    # Cap 2, share 0.25: the job holds one upstream slot, so an interactive
    # request always finds the other. Had the job sent its 40 items at
    # once, a request would wait behind ~20 latencies (8 s) in the queue.
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=2)
    job = post_warm(srv, {"contacts": list(range(60, 100)), "types": [TYPE]}).json()["job"]
    wait_until(lambda: get_job(srv, job["id"])["running"] >= 1, "the job to run", 10)
    for contact in (101, 102, 103):
        t0 = time.monotonic()
        r = srv.get("/v1/contacts/%d/analyses/relationship_health" % contact)
        took = time.monotonic() - t0
        assert r.status == 200 and r.headers["X-Cache"] == "MISS", r.body
        assert took < 3 * latency / 1000, \
            "an interactive request took %.2f s during a warm job" % took
    j = get_job(srv, job["id"])
    assert j["state"] == "running" and j["completed"] < 40, j
    assert fake.stats()["max_in_flight"] <= 2
    srv.delete("/v1/jobs/%d" % job["id"])


# ---- restarts and several instances ------------------------------------------------------------

def test_a_job_interrupted_by_kill_9_is_resumed_by_the_next_server(make_server, fake, pg, state):
    fake.config(latency_ms=300)
    env = dict(RAPPORT_LLM_MAX_IN_FLIGHT=4, RAPPORT_WARM_LEASE_S=2)
    a = warm_server(make_server, state, **env)
    job = post_warm(a, {"contacts": list(range(120, 132)), "types": [TYPE]}).json()["job"]
    wait_until(lambda: get_job(a, job["id"])["completed"] >= 3, "3 items done", 20)
    a.kill()
    mid = items(pg, state, job["id"])
    assert any(r[2] == "pending" for r in mid)
    b = warm_server(make_server, state, **env)
    final = wait_job(b, job["id"], timeout=60)
    assert final["state"] == "done" and final["done"] == 12 and final["failed"] == 0, final
    rows = items(pg, state, job["id"])
    assert len(rows) == 12 and {r[2] for r in rows} == {"done"}
    # Only an item out at the kill was claimed twice; the rest once.
    assert sum(1 for r in rows if r[3] > 1) <= 1, rows
    assert len({r[4] for r in rows}) == 2, "both servers did some of it"
    assert 12 <= calls(fake) <= 13


def test_two_instances_share_one_job_and_do_each_item_exactly_once(make_server, fake, pg, state):
    fake.config(latency_ms=100)
    env = dict(RAPPORT_STATE_URL=state, RAPPORT_LLM_MAX_IN_FLIGHT=4, RAPPORT_WARM_LEASE_S=5)
    # Started together on an empty database: both migrate, under the lock.
    a = make_server(start=False, **env)
    b = make_server(start=False, **env)
    a.start()
    b.start()
    state_up(a)
    state_up(b)
    assert state_sql(pg, state, "select version, name from rapport.schema_migrations "
                                "order by version") == \
        [["1", "warm jobs and their items"],
         ["2", "feedback on insights and its counts per script version"]]
    job = post_warm(a, {"contacts": list(range(1, 51)), "types": [TYPE]}).json()["job"]
    final = wait_job(b, job["id"], timeout=60)
    assert final["state"] == "done" and final["done"] == 50, final
    rows = items(pg, state, job["id"])
    assert len(rows) == 50 and {r[2] for r in rows} == {"done"}
    assert {r[3] for r in rows} == {1}, "an item was claimed twice"
    owners = {r[4] for r in rows}
    assert len(owners) == 2, "one instance did all of it: %r" % owners
    assert calls(fake) == 50, "an item was generated twice"


# ---- the state database down ------------------------------------------------------------------

def test_without_its_state_database_the_server_serves_analyses_and_jobs_say_503(
        make_server, fake):
    nowhere = "host=127.0.0.1 port=%d dbname=rapport connect_timeout=1" % free_port()
    srv = make_server(RAPPORT_STATE_URL=nowhere)
    # Ready (the CRM's pool up, scripts loaded) although the state is not.
    wait_until(lambda: srv.get("/readyz").status == 200, "readiness", 10)
    assert srv.get("/readyz").json()["state"] in ("down", "connecting")
    r = post_warm(srv, {"top": 5})
    assert r.status == 503, r.body
    err = r.json()["error"]
    assert err["code"] == "state_unavailable" and "RAPPORT_STATE_URL" in err["message"]
    assert r.headers["Retry-After"]
    assert srv.get("/v1/jobs").status == 503
    assert srv.get("/v1/jobs/1").status == 503
    a = srv.get("/v1/contacts/5/analyses/%s" % TYPE)
    assert a.status == 200, a.body
    wait_until(lambda: srv.get("/readyz").json().get("state_error"), "a state error", 10)


def test_a_read_only_state_role_is_reported_not_fatal(server, fake):
    # The default RAPPORT_STATE_URL is DATABASE_URL: here the read-only role,
    # which cannot create the schema.
    wait_until(lambda: "permission denied" in (server.get("/readyz").json()
                                               .get("state_error") or ""),
               "the migration's error in /readyz", 10)
    r = server.get("/readyz")
    assert r.status == 200 and r.json()["state"] == "down"
    assert post_warm(server, {"top": 1}).status == 503


# ---- rapport warm ----------------------------------------------------------------------------------

def run_cli(srv, *args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAPPORT_", "OPENAI_"))}
    e.update({"RAPPORT_LISTEN": srv.address, "RAPPORT_ADMIN_SOCKET": "off"})
    e.update(env or {})
    return subprocess.run([str(rapport_binary()), "warm", *args], env=e, cwd=str(REPO),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def test_rapport_warm_follows_a_job_on_the_server_with_plain_lines_and_a_summary(
        make_server, fake, state):
    fake.config(latency_ms=200)
    srv = warm_server(make_server, state, RAPPORT_API_KEYS="k1,k2",
                      RAPPORT_LLM_MAX_IN_FLIGHT=4)
    p = run_cli(srv, "--contacts", "1,2,3,4,5,6", "--types", TYPE,
                env={"RAPPORT_API_KEYS": "k1,k2"})
    assert p.returncode == 0, (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    assert len(lines) >= 3, p.stdout
    assert re.match(r"job \d+ (queued|running): \d+/6 \(\d+%\)", lines[0]), lines
    assert "\r" not in p.stdout and "\033" not in p.stdout
    assert re.match(r"job \d+ done in [\d.]+ s: 6 items, 6 generated, 0 fresh, "
                    r"0 revalidated, 0 failed, 0 cancelled$", lines[-1]), lines
    # Again: everything fresh.
    p = run_cli(srv, "--contacts=1,2,3", "--types", TYPE, "--key", "k2")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "3 items, 0 generated, 3 fresh" in p.stdout.splitlines()[-1]


def test_rapport_warm_exits_non_zero_when_items_fail(make_server, fake, state):
    srv = warm_server(make_server, state)
    p = run_cli(srv, "--contacts", "1,999999", "--types", TYPE)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "1 failed" in p.stdout.splitlines()[-2] or "1 failed" in p.stdout
    assert re.search(r"failed: contact 999999 %s: 404 contact_not_found" % TYPE, p.stdout), \
        p.stdout


def test_rapport_warm_usage_and_server_errors(make_server, fake, state):
    srv = warm_server(make_server, state)
    p = run_cli(srv)
    assert p.returncode == 2 and "--top N" in p.stderr
    p = run_cli(srv, "--top", "0")
    assert p.returncode == 2 and "--top" in p.stderr
    p = run_cli(srv, "--contacts", "1,x")
    assert p.returncode == 2 and '"x"' in p.stderr
    p = run_cli(srv, "--top", "3", "--types", "nope")
    assert p.returncode == 1 and "unknown_analysis_type" in p.stderr
    p = run_cli(srv, "--top", "3", "--url", "http://127.0.0.1:%d" % free_port())
    assert p.returncode == 1 and "rapport serve" in p.stderr


def test_rapport_warm_draws_a_progress_bar_on_a_terminal(make_server, fake, state):
    fake.config(latency_ms=150)
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=4)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAPPORT_", "OPENAI_"))}
    e.update({"RAPPORT_LISTEN": srv.address, "RAPPORT_ADMIN_SOCKET": "off"})
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(rapport_binary()), "warm", "--contacts", "1,2,3,4,5,6,7,8",
                             "--types", TYPE], env=e, cwd=str(REPO), stdin=slave,
                            stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0, out
    text = out.decode("utf-8", "replace")
    assert "\r\033[K[" in text, text
    assert re.search(r"\[#{30}\] job \d+ done: 8/8 \(100%\)", text), text
    assert "8 items, 8 generated" in text


def test_rapport_warm_interrupted_without_a_terminal_cancels_the_job(make_server, fake, state):
    fake.config(latency_ms=400)
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=4)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAPPORT_", "OPENAI_"))}
    e.update({"RAPPORT_LISTEN": srv.address, "RAPPORT_ADMIN_SOCKET": "off"})
    proc = subprocess.Popen([str(rapport_binary()), "warm", "--contacts",
                             ",".join(str(i) for i in range(30, 50)), "--types", TYPE],
                            env=e, cwd=str(REPO), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any(j["state"] == "running" for j in srv.get("/v1/jobs").json()["jobs"]),
               "the job to run", 15)
    proc.send_signal(2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    job = srv.get("/v1/jobs").json()["jobs"][0]
    assert job["state"] == "cancelled", job
    assert "cancelled" in out.splitlines()[-1]


def test_rapport_warm_local_runs_a_job_in_process(pg, fake, state):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAPPORT_", "OPENAI_"))}
    e.update({"DATABASE_URL": pg.url, "RAPPORT_STATE_URL": state,
              "OPENAI_BASE_URL": fake.base_url, "RAPPORT_ADMIN_SOCKET": "off",
              "RAPPORT_SCRIPTS": str(REPO / "scripts"), "RAPPORT_PROMPTS": str(REPO / "prompts")})
    p = subprocess.run([str(rapport_binary()), "warm", "--local", "--contacts", "7,8",
                        "--types", TYPE], env=e, cwd=str(REPO), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "2 items, 2 generated" in p.stdout.splitlines()[-1], p.stdout
    assert calls(fake) == 2
    row = state_sql(pg, state, "select origin, state from rapport.jobs")
    assert row == [["cli", "done"]]


@pytest.mark.timeout(180)
def test_a_job_survives_its_state_database_going_down_and_finishes_when_it_is_back(
        make_server, fake):
    from helpers.pg import PgCluster
    own = PgCluster()
    try:
        own.start()
        url = own.dsn(dbname="postgres")
        fake.config(latency_ms=300)
        srv = warm_server(make_server, url, RAPPORT_LLM_MAX_IN_FLIGHT=4, RAPPORT_WARM_LEASE_S=2)
        job = post_warm(srv, {"contacts": list(range(140, 152)), "types": [TYPE]}).json()["job"]
        wait_until(lambda: get_job(srv, job["id"])["completed"] >= 2, "2 items done", 20)
        own.stop()
        wait_until(lambda: srv.get("/readyz").json()["state"] != "up", "the state to go down", 10)
        assert srv.get("/v1/jobs/%d" % job["id"]).status == 503
        assert srv.get("/v1/contacts/1/analyses/%s" % TYPE).status == 200
        time.sleep(1)
        own.start()
        state_up(srv, timeout=30)
        final = wait_job(srv, job["id"], timeout=90)
        assert final["state"] == "done" and final["failed"] == 0, final
        # An item whose outcome could not be recorded ran again: a hit then.
        assert final["done"] + final["skipped"]["fresh"] == 12, final
        assert 12 <= calls(fake) <= 13
        srv.stop()
    finally:
        own.destroy()


def test_a_periodic_job_warms_the_top_n_once_a_period_across_instances(
        make_server, fake, pg, state):
    env = dict(RAPPORT_WARM_EVERY=3, RAPPORT_WARM_TOP=4, RAPPORT_WARM_LEASE_S=5)
    a = warm_server(make_server, state, **env)
    b = warm_server(make_server, state, **env)

    def periodic():
        return state_sql(pg, state, "select id, period_slot, state, total from rapport.jobs "
                                    "where origin = 'periodic' order by id")
    wait_until(lambda: len(periodic()) >= 2, "two periodic jobs", 20)
    rows = periodic()
    slots = [r[1] for r in rows]
    assert len(slots) == len(set(slots)), "two jobs for one period: %r" % rows
    types = len([t for t in a.get("/v1/analysis-types").json()["types"] if not t.get("error")])
    assert all(int(r[3]) == 4 * types for r in rows), rows
    wait_until(lambda: periodic()[0][2] == "done", "the first periodic job to finish", 30)
    b.stop()


@pytest.mark.parametrize("value", ["0", "1.5", "abc", "-0.1"])
def test_a_bad_warm_share_is_a_start_up_error_naming_the_setting(make_server, value):
    srv = make_server(start=False, RAPPORT_WARM_SHARE=value)
    with pytest.raises(AssertionError):
        srv.start(timeout=5)
    assert srv.returncode == 2
    assert "RAPPORT_WARM_SHARE" in srv.stderr_text() and "at most 1" in srv.stderr_text()


def _pty_warm(srv, contacts, answer):
    """Runs `rapport warm` as the session leader of a new pty (so /dev/tty is
    that pty), presses Ctrl-C once the job runs, answers the prompt with
    `answer`; returns (exit status, everything it wrote)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RAPPORT_", "OPENAI_"))}
    e.update({"RAPPORT_LISTEN": srv.address, "RAPPORT_ADMIN_SOCKET": "off"})
    argv = [str(rapport_binary()), "warm", "--contacts", contacts, "--types", TYPE]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(str(REPO))
        os.execve(argv[0], argv, e)
    out = b""
    state = "wait_bar"
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            out += chunk
        if state == "wait_bar" and b"running" in out:
            os.write(fd, b"\x03")           # Ctrl-C: the terminal sends SIGINT
            state = "wait_prompt"
        elif state == "wait_prompt" and b"[y/N]" in out:
            os.write(fd, answer)
            state = "answered"
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            status = os.waitstatus_to_exitcode(st)
            break
    # What it wrote last (after the answer) may still be unread when its
    # exit is seen: read to the end either way (EIO once the pty is done).
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
    except OSError:
        pass
    if status is None:
        _, st = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(st)
    os.close(fd)
    return status, out.decode("utf-8", "replace")


def test_ctrl_c_on_a_terminal_asks_before_cancelling(make_server, fake, state):
    fake.config(latency_ms=400)
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=4)
    ids = ",".join(str(i) for i in range(60, 80))
    status, out = _pty_warm(srv, ids, b"y\n")
    assert status == 130, out
    m = re.search(r"cancel job (\d+)\? \[y/N\]", out)
    assert m, out
    assert get_job(srv, int(m.group(1)))["state"] == "cancelled"
    # "no" leaves the job running on the server.
    status, out = _pty_warm(srv, ",".join(str(i) for i in range(80, 100)), b"\n")
    assert status == 130, out
    m = re.search(r"cancel job (\d+)\? \[y/N\]", out)
    assert m and "keeps running on the server" in out, out
    assert get_job(srv, int(m.group(1)))["state"] == "running"
    srv.delete("/v1/jobs/%s" % m.group(1))


def test_a_state_role_that_owns_only_the_schema_is_enough(make_server, fake, pg, state):
    role = "state_" + uuid.uuid4().hex[:8]
    dbname = re.search(r"dbname=(\S+)", state).group(1)
    pg.sql('create role "%s" login; create schema rapport authorization "%s";'
           % (role, role), dbname=dbname)
    try:
        url = pg.dsn(dbname=dbname, user=role)
        srv = warm_server(make_server, url)
        job = post_warm(srv, {"contacts": [1], "types": [TYPE]}).json()["job"]
        assert wait_job(srv, job["id"])["state"] == "done"
        srv.stop()
    finally:
        pg.sql('drop schema rapport cascade; drop owned by "%s"; drop role "%s"'
               % (role, role), dbname=dbname)


def test_a_graceful_stop_hands_its_items_back_without_waiting_for_the_lease(
        make_server, fake, pg, state):
    fake.config(latency_ms=600)
    env = dict(RAPPORT_LLM_MAX_IN_FLIGHT=4, RAPPORT_WARM_LEASE_S=600)   # a lease never lapsing here
    a = warm_server(make_server, state, **env)
    job = post_warm(a, {"contacts": list(range(160, 166)), "types": [TYPE]}).json()["job"]
    wait_until(lambda: get_job(a, job["id"])["running"] == 1, "an item out", 20)
    a.stop()
    a.wait_for_log(lambda l: l.get("msg") == "warm items handed back", timeout=1)
    b = warm_server(make_server, state, **env)
    final = wait_job(b, job["id"], timeout=60)
    assert final["state"] == "done" and final["done"] == 6, final
    assert {r[3] for r in items(pg, state, job["id"])} == {1}, "a hand-back counted an attempt"


# ---- the upstream's background lane ------------------------------------------------------------

def test_warm_calls_take_the_background_lane_and_a_click_moves_its_item_to_the_front(
        make_server, fake, state):
    fake.config(latency_ms=3000)
    # Cap 2 pinned (no growth), half of it for the background lane: one warm
    # call out, the job's second item queued behind it in that lane.
    srv = warm_server(make_server, state, RAPPORT_LLM_MAX_IN_FLIGHT=2,
                      RAPPORT_LLM_MAX_IN_FLIGHT_CEILING=2, RAPPORT_LLM_BACKGROUND_PCT=50,
                      RAPPORT_WARM_SHARE=1)
    job = post_warm(srv, {"contacts": [60, 61], "types": [TYPE]}).json()["job"]
    wait_until(lambda: metric(srv, "rapport_upstream_background_queued") == 1,
               "a warm call queued in the background lane", 10)
    assert metric(srv, "rapport_upstream_background_in_flight") == 1
    assert fake.stats()["in_flight"] == 1, "the lane let a second warm call out"
    # Both contacts are clicked: each request joins its warm flight; the
    # queued one goes to the front lane, which has a free slot, at once.
    results = {}

    def click(contact):
        results[contact] = srv.get("/v1/contacts/%d/analyses/%s" % (contact, TYPE), timeout=30)

    threads = [threading.Thread(target=click, args=(c,)) for c in (60, 61)]
    for t in threads:
        t.start()
    wait_until(lambda: fake.stats()["in_flight"] == 2,
               "the clicked item to leave the background queue", 2.5)
    assert metric(srv, "rapport_upstream_background_queued") == 0
    for t in threads:
        t.join()
    assert all(r.status == 200 for r in results.values()), results
    assert {r.headers["X-Cache"] for r in results.values()} == {"COALESCED"}, \
        [dict(r.headers) for r in results.values()]
    assert fake.stats()["chat_calls"] == 2
    wait_job(srv, job["id"])
