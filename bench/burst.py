"""Burst benchmark (issue 11, item 3): N distinct cold requests, C at a time,
against an upstream of fixed latency, with the adaptive in-flight cap and
with the cap held fixed at its start; then against a provider rate limit
that the burst exceeds.

    bench/burst.py [--requests 1000] [--at-once 100] [--latency-ms 800]
                   [--limit-requests 60] [--limit-window-ms 1000]
                   [--node] [--baseline-bin PATH] [--only NAME,...]
                   [--fake-log PATH]

Scenarios (each on a fresh rapport, so every request is a cold miss):
  room/adaptive  the project's fake, no limit, RAPPORT_LLM_MAX_IN_FLIGHT
                 at its default (64), the ceiling at its default (4x);
  room/fixed     the same with the ceiling at the start (the cap cannot grow);
  node/...       the same two against ../shared/fake-openai-node (--node);
  limit/adaptive the project's fake allowing --limit-requests per
                 --limit-window-ms, less than the burst asks for;
  limit/baseline the same against another build (--baseline-bin, e.g. the
                 tree before the adaptive cap), for comparison.
Ideal time: rounds × latency, rounds = requests / at-once (10 × 800 ms);
under a limit, requests / (limit per second) if that is longer.
A benchmark, not a test: it measures and prints, it asserts nothing.
"""

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.fake import FakeOpenAI          # noqa: E402
from helpers.pg import PgCluster             # noqa: E402
from helpers.server import Rapport           # noqa: E402

TYPE = "relationship_health"
NODE_FAKE = REPO.parent.parent / "shared" / "fake-openai-node" / "server.js"
if not NODE_FAKE.exists():
    NODE_FAKE = Path("/work/shared/fake-openai-node/server.js")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def metrics(srv):
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line and not line.startswith("#") and " " in line and "{" not in line:
            k, v = line.split(" ", 1)
            out[k] = float(v)
    c.close()
    return out


def burst(srv, n, at_once):
    """n distinct contacts, at_once client threads on keep-alive
    connections, each taking the next contact when its last one is answered.
    Returns wall seconds and the outcomes."""
    ids = iter(range(1, n + 1))
    lock = threading.Lock()
    outcomes = Counter()
    start = threading.Barrier(at_once + 1)

    def client():
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=300)
        start.wait()
        while True:
            with lock:
                cid = next(ids, None)
            if cid is None:
                break
            try:
                conn.request("GET", "/v1/contacts/%d/analyses/%s" % (cid, TYPE))
                r = conn.getresponse()
                r.read()
                if r.status == 429:
                    key = "429 with Retry-After" if r.getheader("Retry-After") else "429 without"
                else:
                    key = str(r.status)
            except (OSError, http.client.HTTPException) as e:
                key = "error %s" % type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=300)
            with lock:
                outcomes[key] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(at_once)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    return time.monotonic() - t0, outcomes


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class NodeFake:
    """../shared/fake-openai-node as a child process (our own pid)."""

    def __init__(self, latency_ms):
        self.port = free_port()
        env = dict(os.environ, LATENCY_MS=str(latency_ms), TTFT_MS=str(latency_ms),
                   CHUNK_DELAY_MS="0", PORT=str(self.port))
        self.proc = subprocess.Popen(["node", str(NODE_FAKE)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the Node fake did not start")

    @property
    def base_url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def scenario(name, pg, upstream, env, args, binary=None, fake=None):
    env = dict({"RAPPORT_LOG_LEVEL": "warn", "OPENAI_BASE_URL": upstream.base_url}, **env)
    srv = Rapport(pg=pg, fake=None, env=env, binary=binary)
    srv.start()
    try:
        if fake:
            fake.reset()
            if args.limit:
                fake.config(rate_limit=args.limit)
        log("%s: %d requests, %d at a time..." % (name, args.requests, args.at_once))
        secs, outcomes = burst(srv, args.requests, args.at_once)
        m = metrics(srv)
        st = fake.stats() if fake else {}
    finally:
        srv.stop(check=False)
    row = {"scenario": name, "seconds": round(secs, 2), "outcomes": dict(outcomes),
           "upstream_attempts": int(m.get("rapport_upstream_attempts_total", 0)),
           "cap_start": m.get("rapport_upstream_cap_start"),
           "cap_max": m.get("rapport_upstream_cap_max"),
           "cap_end": m.get("rapport_upstream_cap"),
           "holds": m.get("rapport_upstream_holds_total"),
           "decreases": m.get("rapport_upstream_cap_decreases_total")}
    if fake:
        row["provider_calls"] = st["chat_calls"]
        row["provider_429"] = st["rate_limited"]
    log("  %.2f s, %s" % (secs, json.dumps(row)))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--at-once", type=int, default=100)
    ap.add_argument("--latency-ms", type=int, default=800)
    ap.add_argument("--limit-requests", type=int, default=60)
    ap.add_argument("--limit-window-ms", type=int, default=1000)
    ap.add_argument("--node", action="store_true", help="also against the Node fake")
    ap.add_argument("--baseline-bin", help="another rapport build for the limit scenario")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--fake-log", help="keep the project fake's log (not --quiet) in this file")
    args = ap.parse_args()

    pg = PgCluster(directory=REPO / "var" / "bench-pg",
                   port=int(os.environ.get("BENCH_PG_PORT", 54339)))
    pg.start()
    rows = []
    fake = None
    try:
        pg.sql_file(REPO / "sql" / "schema.sql")
        pg.sql_file(REPO / "sql" / "roles.sql")
        if int(pg.scalar("SELECT count(*) FROM contacts")) < args.requests:
            n = max(args.requests, int(os.environ.get("BENCH_CONTACTS", 10000)))
            log("loading %d demo contacts..." % n)
            pg.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": n})
        fake = FakeOpenAI(binary=os.environ.get("FAKE_BIN", str(REPO / "build" / "fake_openai")),
                          latency_ms=args.latency_ms, chunk_delay_ms=0,
                          extra_args=[] if args.fake_log else ["--quiet"])
        fake.start()
        want = set(args.only.split(",")) if args.only else None

        def run(name, upstream, env, binary=None, use_fake=True, limit=None):
            if want and name not in want:
                return
            args.limit = limit
            rows.append(scenario(name, pg, upstream, env, args, binary,
                                 fake if use_fake else None))

        fixed = {"RAPPORT_LLM_MAX_IN_FLIGHT_CEILING": "64"}
        run("room/adaptive", fake, {})
        run("room/fixed", fake, fixed)
        if args.node:
            node = NodeFake(args.latency_ms)
            try:
                run("node/adaptive", node, {}, use_fake=False)
                run("node/fixed", node, fixed, use_fake=False)
            finally:
                node.stop()
        limit = {"requests": args.limit_requests, "window_ms": args.limit_window_ms}
        run("limit/adaptive", fake, {}, limit=limit)
        if args.baseline_bin:
            run("limit/baseline", fake, {}, binary=args.baseline_bin, limit=limit)
            run("room/baseline", fake, {}, binary=args.baseline_bin)
    finally:
        if fake:
            if args.fake_log:
                Path(args.fake_log).write_text(fake.log())
            fake.stop()
        pg.stop()

    rounds = args.requests / float(args.at_once)
    ideal_room = rounds * args.latency_ms / 1000.0
    per_s = args.limit_requests * 1000.0 / args.limit_window_ms
    ideal_limit = max(ideal_room, args.requests / per_s)
    machine = "%s, %d cores, %s" % (platform.processor() or platform.machine(), os.cpu_count(),
                                    platform.platform())
    out = {"machine": machine, "args": vars(args), "rows": rows,
           "ideal_room_s": ideal_room, "ideal_limit_s": ideal_limit}
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / ("burst-%s.json" % time.strftime("%Y%m%d-%H%M%S"))).write_text(
        json.dumps(out, indent=2))

    print("\nBurst: %d distinct cold requests, %d at a time, upstream latency %d ms; %s"
          % (args.requests, args.at_once, args.latency_ms, machine))
    print("| scenario | time | vs ideal | cap start → max (end) | upstream 429s | clients |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ideal = ideal_limit if r["scenario"].startswith("limit") else ideal_room
        p429 = ("%d of %d (%.1f %%)" % (r["provider_429"], r["provider_calls"],
                                        100.0 * r["provider_429"] / max(1, r["provider_calls"]))
                if "provider_calls" in r else "–")
        cap = ("%g → %g (%g)" % (r["cap_start"], r["cap_max"], r["cap_end"])
               if r["cap_start"] is not None else "64 (fixed)")
        clients = ", ".join("%s: %d" % kv for kv in sorted(r["outcomes"].items()))
        print("| %s | %.2f s | %.2f× | %s | %s | %s |" % (
            r["scenario"], r["seconds"], r["seconds"] / ideal, cap, p429, clients))
    print("ideal: %.1f s with room; %.1f s under the limit of %d per %d ms"
          % (ideal_room, ideal_limit, args.limit_requests, args.limit_window_ms))


if __name__ == "__main__":
    main()
