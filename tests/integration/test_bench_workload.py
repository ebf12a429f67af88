"""bench/workload.py, the CRM-day benchmark (`make bench-workload`): a tiny day
(200 contacts, 10 s) run as `make bench-workload` runs it, checked for a
report whose numbers agree with each other; and its freshness arithmetic on
records whose answer is known."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]


def workload_module():
    spec = importlib.util.spec_from_file_location("rapport_workload", REPO / "bench" / "workload.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(120)
def test_tiny_day_reports_every_view_sent_with_shares_in_range(pg, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "bench" / "workload.py"),
           "--contacts", "200", "--day-seconds", "10", "--users", "3", "--views-per-user", "20",
           "--activities-per-user", "10", "--deal-changes-per-user", "3",
           "--latency-ms", "800", "--warm-top", "20", "--warm-day-top", "10",
           "--warm-every-hours", "4", "--threads", "32",
           "--pg-dir", str(pg.dir), "--pg-port", str(pg.port), "--database", "workload_smoke",
           "--results-dir", str(results)]
    proc = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=110, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert pg.is_running(), "the bench stopped a cluster it did not start"

    docs = sorted(results.glob("workload-*.json"))
    mds = sorted(results.glob("workload-*.md"))
    assert len(docs) == 1 and len(mds) == 1, list(results.iterdir())
    out = json.loads(docs[0].read_text())
    md = mds[0].read_text()
    assert md.strip() in proc.stdout            # the table is printed too
    assert "| measure | target | seed-like (ttl only) | rapport full policy |" in md

    assert out["contacts"] == 200
    assert out["writes_committed"] > 0 and 0 < out["contacts_written"] <= 200
    assert 0 <= out["views_on_warm_top"] <= 1
    labels = [p["label"] for p in out["policies"]]
    assert labels == ["seed-like (ttl only)", "rapport full policy"]
    sent = {p["views_sent"] for p in out["policies"]}
    assert len(sent) == 1 and sent.pop() > 20    # both saw the same day
    for p in out["policies"]:
        assert p["views_counted"] == p["views_sent"] == p["views_answered"], p
        assert p["views_failed"] == 0, p["statuses"]
        assert sum(p["statuses"].values()) == p["insights"] >= p["views_counted"]
        for k in ("waited_share", "slow_share", "outdated_share"):
            assert 0.0 <= p[k] <= 1.0, (k, p[k])
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
        # A cold start at 800 ms: some views waited, and each miss was a call.
        assert p["waited_share"] > 0
        misses = p["statuses"].get("miss", 0)
        assert p["model_calls"] >= misses > 0
        assert p["model_calls_per_1k_views"] == pytest.approx(
            p["model_calls"] * 1000.0 / p["views_counted"])
        assert p["cost_usd"] > 0
        assert p["max_lag_s"] >= 0 and (p["outdated_views"] == 0) == (p["max_lag_s"] == 0)
    answers = sorted(results.glob("workload-*-answers.jsonl"))
    assert len(answers) == 1
    lines = [json.loads(x) for x in answers[0].read_text().splitlines()]
    assert len(lines) == sum(p["insights"] for p in out["policies"])
    assert {x["policy"] for x in lines} == {"ttl", "full"}
    assert len(out["verdicts"]) == 5 and all(isinstance(v["met"], bool) for v in out["verdicts"])


def test_freshness_counts_a_view_older_than_a_change_committed_before_it():
    wl = workload_module()
    # Single-insight views at t=100: contact 1 shows a result made at
    # 90 after a change at 95 (outdated by 5 s); contact 2's change at 101
    # came after the view was sent (fresh); contact 3's result (96) is newer
    # than its change (95).
    views = [(0.0, c, ["smart_tips"]) for c in (1, 2, 3, 4, 4, 5, 5)]
    recs = {0: [{"type": "smart_tips", "contact": 1, "sent": 100.0, "ms": 2.0, "status": 200,
                 "cache": "stale", "generated_at": 90.0}],
            1: [{"type": "smart_tips", "contact": 2, "sent": 100.0, "ms": 900.0, "status": 200,
                 "cache": "miss", "generated_at": 90.0}],
            2: [{"type": "smart_tips", "contact": 3, "sent": 100.0, "ms": 3.0, "status": 200,
                 "cache": "hit", "generated_at": 96.0}],
            # Contacts 4 and 5, seen at 60 (results of 50), wait again at
            # 100: 4 changed at 70 in between, 5 did not (its ttl ran out).
            3: [{"type": "smart_tips", "contact": 4, "sent": 60.0, "ms": 2.0, "status": 200,
                 "cache": "hit", "generated_at": 50.0}],
            4: [{"type": "smart_tips", "contact": 4, "sent": 100.0, "ms": 850.0, "status": 200,
                 "cache": "miss", "generated_at": 100.9}],
            5: [{"type": "smart_tips", "contact": 5, "sent": 60.0, "ms": 2.0, "status": 200,
                 "cache": "hit", "generated_at": 50.0}],
            6: [{"type": "smart_tips", "contact": 5, "sent": 100.0, "ms": 20.0, "status": 200,
                 "cache": "coalesced", "generated_at": 100.5}]}
    side = SimpleNamespace(results=recs, label="x", policy="full", env_shown={},
                           args=SimpleNamespace(latency_ms=800), warm={})
    changes = {1: [80.0, 95.0, 99.0], 2: [101.0], 3: [95.0], 4: [70.0]}
    zero = {"chat_calls": 0, "cost_usd": 0.0, "llm_calls": 0, "metrics": {}}
    after = {"chat_calls": 3, "cost_usd": 0.003, "llm_calls": 3, "metrics": {}}
    pre = {"ran": False, "model_calls": 0}
    s = wl.summarise(side, views, changes, zero, after, pre, {"smart_tips": 3.0}, 1.0 / 240,
                     warmed={2, 4})
    assert s["outdated_views"] == 1
    assert s["outdated_share"] == pytest.approx(1 / 7)
    assert s["max_lag_s"] == pytest.approx(5.0)          # from the first unreflected change
    assert s["max_lag_workday_min"] == pytest.approx(5.0 * 240 / 60)
    # Grace 3 s + one refresh (the 900 ms miss, at least the fake's 800 ms) < 5 s.
    assert s["one_refresh_s"] == pytest.approx(0.9)
    assert s["lag_over_bound_insights"] == 1
    assert s["waited_share"] == pytest.approx(3 / 7)     # the misses and the join
    # Contact 2's first view waited although warmed; its change came later.
    assert s["wait_causes"] == {"first view": 1, "first view, warmed": 1, "changed": 1, "expired": 1}
    assert s["model_calls_per_1k_views"] == pytest.approx(3000.0 / 7)
    assert (s["p50_ms"], s["p99_ms"]) == (3.0, 900.0)
