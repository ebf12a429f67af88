"""Access and cost limits around the API: a set but blank RAPPORT_API_KEYS
refuses to start instead of running open; /metrics sits behind the API keys
unless RAPPORT_METRICS_PUBLIC=1 (the probes stay open); forced regenerations
(?refresh=1, Cache-Control: no-cache) are limited per client key with a JSON
429 refresh_rate_limited and Retry-After. The real binary, real PostgreSQL,
the fake upstream."""

import time
import json

from test_config import run

TYPE = "relationship_health"
PATH = "/v1/contacts/%d/analyses/" + TYPE


def env(**kw):
    e = {"PATH": "/usr/bin:/bin"}
    e.update(kw)
    return e


def test_blank_api_keys_are_a_startup_error_naming_the_variable(tmp_path):
    for blank in (",", " ", " , ,", ""):
        r = run(["serve"], env=env(RAPPORT_API_KEYS=blank))
        assert r.returncode == 2, (blank, r.stderr)
        assert "RAPPORT_API_KEYS" in r.stderr and "no key" in r.stderr, r.stderr
    conf = tmp_path / "k.conf"
    conf.write_text("RAPPORT_API_KEYS = ,\n")
    r = run(["serve", "--config", str(conf)])
    assert r.returncode == 2 and "RAPPORT_API_KEYS" in r.stderr, r.stderr


def test_metrics_need_a_key_when_keys_are_set_but_probes_do_not(make_server):
    srv = make_server(RAPPORT_API_KEYS="k-one")
    r = srv.get("/metrics")
    assert r.status == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "rapport_" not in r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    ok = srv.get("/metrics", headers={"Authorization": "Bearer k-one"})
    assert ok.status == 200 and "rapport_http_requests_total" in ok.text
    assert srv.get("/healthz").status == 200
    # Readiness waits for the pool's first session (a busy machine may
    # take a moment); what matters is that no key is asked for.
    deadline = time.monotonic() + 10
    while (r := srv.get("/readyz")).status != 200 and time.monotonic() < deadline:
        assert r.status == 503 and "unauthorized" not in r.text
        time.sleep(0.1)
    assert r.status == 200


def test_metrics_public_opens_them_without_a_key(make_server):
    srv = make_server(RAPPORT_API_KEYS="k-one", RAPPORT_METRICS_PUBLIC="1")
    r = srv.get("/metrics")
    assert r.status == 200 and "rapport_http_requests_total" in r.text
    assert srv.get("/v1/analysis-types").status == 401, "only /metrics is opened"


def test_a_bad_metrics_public_value_is_refused():
    r = run(["serve"], env=env(RAPPORT_METRICS_PUBLIC="maybe"))
    assert r.returncode == 2 and "RAPPORT_METRICS_PUBLIC" in r.stderr


def calls(fake):
    return fake.stats()["chat_calls"]


def test_forced_regenerations_are_limited_per_client_key(make_server, fake):
    srv = make_server(RAPPORT_API_KEYS="k-one, k-two", RAPPORT_REFRESH_PER_MIN="2",
                      RAPPORT_REFRESH_BURST="2")
    one = {"Authorization": "Bearer k-one"}
    two = {"Authorization": "Bearer k-two"}
    assert srv.get(PATH % 90, headers=one).status == 200          # fills the cache
    base = calls(fake)
    assert srv.get(PATH % 90 + "?refresh=1", headers=one).status == 200
    nc = dict(one, **{"Cache-Control": "no-cache"})
    assert srv.get(PATH % 90, headers=nc).status == 200
    assert calls(fake) == base + 2
    r = srv.get(PATH % 90 + "?refresh=1", headers=one)
    assert r.status == 429, r.body
    assert r.json()["error"]["code"] == "refresh_rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    r = srv.get(PATH % 90, headers=nc)
    assert r.status == 429, "no-cache counts the same"
    st = dict(one, Accept="text/event-stream")
    resp, events = srv.sse(PATH % 90 + "?refresh=1", headers=st)
    assert resp.status == 429 and json.loads(resp.body)["error"]["code"] == "refresh_rate_limited"
    assert calls(fake) == base + 2, "nothing was regenerated past the limit"
    # The plain, cached answer is still served, and another key has its own budget.
    assert srv.get(PATH % 90, headers=one).headers["X-Cache"] == "HIT"
    assert srv.get(PATH % 90 + "?refresh=1", headers=two).status == 200
    assert calls(fake) == base + 3


def test_without_keys_the_limit_is_per_client_address(make_server, fake):
    srv = make_server(RAPPORT_REFRESH_PER_MIN="1", RAPPORT_REFRESH_BURST="1")
    assert srv.get(PATH % 91 + "?refresh=1").status == 200
    r = srv.get(PATH % 91 + "?refresh=1")
    assert r.status == 429 and r.json()["error"]["code"] == "refresh_rate_limited"


def test_a_refresh_limit_of_zero_turns_it_off(make_server, fake):
    srv = make_server(RAPPORT_REFRESH_PER_MIN="0")
    for _ in range(4):
        assert srv.get(PATH % 92 + "?refresh=1").status == 200
