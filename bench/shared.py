"""The shared cache and several instances: L2 hits against L1 hits, and cached
throughput of one instance against two behind HAProxy (etc/haproxy.cfg.example).

    python3 bench/shared.py [--rounds 3] [--duration 10] [--keys 1000]   # standalone

L2 hits: instance A generates `keys` results (the fake at 0 ms) and writes
them to a private redis-server; instance B, whose L1 is too small to keep
anything (RAPPORT_CACHE_BYTES=1), answers every request from Redis. wrk
rotates over the keys on B (every request an L2 hit) and on A (every request
an L1 hit), taking turns; the fake's call counter shows none of it reached
the model.
Instances: wrk on one hot key, straight to one instance, through HAProxy to
one instance, and through HAProxy to two (roundrobin), taking turns. On a
machine with few cores wrk, HAProxy and the instances share them, so the
ratio says what the proxy costs here, not what a second machine would add.

Used by bench/bench.py; needs var/bench-pg (bench/benchdata.py), redis-server
and haproxy (tools/deps.sh --test).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import benchdata                             # noqa: E402
import hits                                  # noqa: E402
from helpers.fake import FakeOpenAI          # noqa: E402
from helpers.haproxy import HAProxy          # noqa: E402
from helpers.redis import Redis              # noqa: E402
from helpers.server import Rapport           # noqa: E402
from helpers.upstream import metric          # noqa: E402

TYPE = "relationship_health"
RAPPORT_BIN = os.environ.get("RAPPORT_BIN", str(REPO / "build" / "bench" / "rapport"))
FAKE_BIN = os.environ.get("FAKE_BIN", str(REPO / "build" / "bench" / "fake_openai"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def instance(pg, contacts, fake, redis, **env):
    e = {"DATABASE_URL": benchdata.url(pg, contacts), "RAPPORT_LOG_LEVEL": "info",
         "RAPPORT_REFRESH_PER_MIN": "0", "RAPPORT_CACHE_BYTES": str(256 << 20),
         "REDIS_URL": redis.url, "RAPPORT_REDIS_PREFIX": "bench"}
    e.update(env)
    srv = Rapport(pg=None, fake=fake, binary=RAPPORT_BIN, env=e).start()
    return srv


def done(srv):
    srv.stop(check=False)
    shutil.rmtree(srv.workdir, ignore_errors=True)


def get(base_url, path):
    with urllib.request.urlopen(base_url + path, timeout=30) as r:
        return r.status, json.loads(r.read())


def rotate_script(workdir, n):
    lua = Path(workdir) / ("rotate-%d.lua" % n)
    lua.write_text("local i = 0\nrequest = function()\n  i = i %% %d + 1\n"
                   "  return wrk.format('GET', '/v1/contacts/' .. i .. '/analyses/%s')\n"
                   "end\n" % (n, TYPE))
    return lua


def turns(targets, rounds, run):
    """targets: name -> base URL; run(url) -> wrk result. Medians per name."""
    got = {name: [] for name in targets}
    for r in range(rounds):
        for name, url in targets.items():
            w = run(url)
            if w["non2xx"]:
                raise AssertionError("%s: %d non-2xx answers" % (name, w["non2xx"]))
            got[name].append(w)
            log("  turn %d %-22s %8.0f req/s  p50 %.2f ms  p99 %.2f ms" % (
                r + 1, name, w["rps"], w["50%"], w["99%"]))
    return {name: {"rps": statistics.median(x["rps"] for x in ws),
                   "p50_ms": statistics.median(x["50%"] for x in ws),
                   "p99_ms": statistics.median(x["99%"] for x in ws)} for name, ws in got.items()}


def l2_hits(pg, contacts, fake, redis, args, tmp):
    a = instance(pg, contacts, fake, redis)
    b = instance(pg, contacts, fake, redis, RAPPORT_CACHE_BYTES="1")
    try:
        log("L2: %d results generated on A and written to Redis..." % args.keys)
        for cid in range(1, args.keys + 1):
            get(a.base_url, "/v1/contacts/%d/analyses/%s" % (cid, TYPE))
        stored = metric(a, "rapport_l2_stores_total")
        if stored < args.keys:
            raise AssertionError("only %d of %d results reached Redis" % (stored, args.keys))
        calls0 = fake.stats()["chat_calls"]
        hits0 = metric(b, "rapport_l2_hits_total")
        _, doc = get(b.base_url, "/v1/contacts/1/analyses/%s" % TYPE)
        if doc["cache"].get("tier") != "l2":
            raise AssertionError("B did not answer from the L2: %r" % doc["cache"])
        lua = rotate_script(tmp, args.keys)
        log("L2 against L1: wrk -t1 -c%d -d%ds rotating over %d keys, %d turns..." % (
            args.connections, args.duration, args.keys, args.rounds))
        res = turns({"L1 hit (A)": a.base_url, "L2 hit (B, no L1)": b.base_url}, args.rounds,
                    lambda url: hits.wrk(url, args.duration, args.connections, script=lua))
        res["l2_hits_counted"] = metric(b, "rapport_l2_hits_total") - hits0
        res["l2_errors"] = metric(b, "rapport_l2_errors_total")
        res["l2_timeouts"] = metric(b, "rapport_l2_timeouts_total")
        res["model_calls_during"] = fake.stats()["chat_calls"] - calls0
        res["keys"] = args.keys
        return res
    finally:
        done(a)
        done(b)


def instances(pg, contacts, fake, redis, args, tmp):
    a = instance(pg, contacts, fake, redis)
    b = instance(pg, contacts, fake, redis)
    one = HAProxy(Path(tmp) / "hx1", [a.address]).start()
    two = HAProxy(Path(tmp) / "hx2", [a.address, b.address]).start()
    try:
        path = hits.HOT_PATH
        get(a.base_url, path)
        get(b.base_url, path)               # an L2 hit: both now hold it in L1
        log("instances: wrk -t1 -c%d -d%ds on one hot key, %d turns..." % (
            args.connections, args.duration, args.rounds))
        res = turns({"one, direct": a.base_url,
                     "HAProxy → one": "http://%s:%d" % (one.host, one.port),
                     "HAProxy → two": "http://%s:%d" % (two.host, two.port)}, args.rounds,
                    lambda url: hits.wrk(url, args.duration, args.connections, path=path))
        res["cores"] = os.cpu_count()
        return res
    finally:
        one.stop()
        two.stop()
        done(a)
        done(b)


def measure(pg, contacts, fake, args):
    tmp = tempfile.mkdtemp(prefix="bench-shared-")
    redis = Redis(Path(tmp) / "redis").start()
    try:
        fake.config(latency_ms=0)
        return {"l2": l2_hits(pg, contacts, fake, redis, args, tmp),
                "instances": instances(pg, contacts, fake, redis, args, tmp)}
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def table(res, args):
    p = print
    l2 = res["l2"]
    p("### The L2 in Redis against L1 (wrk -t1 -c%d -d%ds rotating over %d keys, medians of %d turns)\n"
      % (args.connections, args.duration, l2["keys"], args.rounds))
    p("| | req/s | p50 | p99 |\n|---|---|---|---|")
    for name in ("L1 hit (A)", "L2 hit (B, no L1)"):
        r = l2[name]
        p("| %s | %.0f | %.2f ms | %.2f ms |" % (name, r["rps"], r["p50_ms"], r["p99_ms"]))
    p("\nL2 hits counted on B: %d; L2 errors %d, timeouts %d; model calls during: %d.\n" % (
        l2["l2_hits_counted"], l2["l2_errors"], l2["l2_timeouts"], l2["model_calls_during"]))
    i = res["instances"]
    p("### Cached throughput: one instance against two behind HAProxy (one hot key, %d cores)\n"
      % i["cores"])
    p("| | req/s | p50 | p99 |\n|---|---|---|---|")
    for name in ("one, direct", "HAProxy → one", "HAProxy → two"):
        r = i[name]
        p("| %s | %.0f | %.2f ms | %.2f ms |" % (name, r["rps"], r["p50_ms"], r["p99_ms"]))
    p("\nHAProxy → two / HAProxy → one: %.2f×; HAProxy → one / direct: %.2f×." % (
        i["HAProxy → two"]["rps"] / i["HAProxy → one"]["rps"],
        i["HAProxy → one"]["rps"] / i["one, direct"]["rps"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--keys", type=int, default=1000)
    args = ap.parse_args()
    pg = benchdata.cluster()
    benchdata.ensure(pg, args.contacts)
    fake = FakeOpenAI(binary=FAKE_BIN, latency_ms=0, chunk_delay_ms=0, extra_args=["--quiet"])
    fake.start()
    try:
        res = measure(pg, args.contacts, fake, args)
    finally:
        fake.stop()
    table(res, args)


if __name__ == "__main__":
    main()
