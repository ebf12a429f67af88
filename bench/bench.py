"""rapport benchmarks (`make bench`): cached hits against a bare evhttp
ceiling, the cold path split into rapport's own phases and the upstream
exchange against two fakes, and how each figure changes with the data
(10,000 → 100,000 → 1,000,000 contacts) and the cache (1 → 10,000 entries),
and the shared cache: L2 hits in Redis against L1 hits, one instance against
two behind HAProxy (bench/shared.py).

Parts: one PostgreSQL cluster under var/bench-pg (kept between runs) with
one database per scale, each loaded once (bench/benchdata.py); the C fake
(build/fake_openai) and the Node fake (/work/shared/fake-openai-node); the
optimised rapport (build/bench/rapport) with the per-request log line on
(RAPPORT_LOG_LEVEL=info, stderr to a file, as in production); bench/bare_evhttp
for the ceiling; wrk for load. A benchmark, not a test: it asserts nothing.
Figures land in bench/results/bench-<stamp>.json and as Markdown on stdout.

The machine is shared: every comparison (rapport against bare evhttp, one
scale against another) is measured in the same run, taking turns, medians
of --rounds; compare ratios, not absolute figures, across runs.

    bench/run.sh [--scales 10000,100000[,1000000]] [--rounds 3] [--duration 10]
                 [--entries 1,100,1000,10000] [--requests 20] [--skip-callgrind]
                 [--keys 1000] [--skip-shared]
"""

import argparse
import asyncio
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import benchdata                             # noqa: E402
import cold                                  # noqa: E402
import hits                                  # noqa: E402
import shared                                # noqa: E402
from helpers.fake import FakeOpenAI          # noqa: E402
from helpers.server import Rapport           # noqa: E402

TYPE = "relationship_health"
RAPPORT_BIN = os.environ.get("RAPPORT_BIN", str(REPO / "build" / "bench" / "rapport"))
FAKE_BIN = os.environ.get("FAKE_BIN", str(REPO / "build" / "bench" / "fake_openai"))
BARE_BIN = os.environ.get("BARE_BIN", str(REPO / "build" / "bench" / "bare_evhttp"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def get(srv, path, headers=None):
    req = urllib.request.Request(srv.base_url + path, headers=headers or {})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        return (time.perf_counter() - t0) * 1000, r.status, dict(r.headers), body


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def rss_kb(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(srv, name):
    _, _, _, body = get(srv, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = ", %.0f GiB" % (kb / 1048576)
    except (OSError, ValueError, IndexError):
        pass
    return "%s, %d vCPU%s, %s" % (cpu, os.cpu_count(), mem, platform.platform())


def server(pg, contacts, fake, **env):
    e = {"DATABASE_URL": benchdata.url(pg, contacts), "RAPPORT_LOG_LEVEL": "info",
         "RAPPORT_REFRESH_PER_MIN": "0", "RAPPORT_CACHE_BYTES": str(256 << 20)}
    e.update(env)
    return Rapport(pg=None, fake=fake, binary=RAPPORT_BIN, env=e).start()


def done(srv):
    srv.stop(check=False)
    shutil.rmtree(srv.workdir, ignore_errors=True)   # its log file grows ~40 MB a wrk run


# ---- 1. cached hits against the bare ceiling ---------------------------------

def hit_vs_bare(pg, contacts, fake, args, out):
    log("cached hits: rapport and bare evhttp, %d turns of wrk -t1 -c%d -d%ds..." % (
        args.rounds, args.connections, args.duration))
    srv = server(pg, contacts, fake)
    try:
        h = hits.measure(srv, BARE_BIN, args.rounds, args.duration, args.connections)
    finally:
        done(srv)
    h.pop("headers")
    out["hits"] = h
    if not args.skip_callgrind:
        log("instructions per hit (callgrind)...")
        r = subprocess.run([sys.executable, str(REPO / "bench" / "callgrind_hits.py"),
                            "--contacts", str(contacts)], stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, RAPPORT_BIN=RAPPORT_BIN, BARE_BIN=BARE_BIN,
                                    FAKE_BIN=FAKE_BIN))
        out["hits_callgrind"] = r.stdout.strip().splitlines()[0] if r.stdout.strip() else "failed"


# ---- 2. the cache from 1 to 10,000 entries ----------------------------------------

def entries_scale(pg, contacts, fake, args, out):
    srv = server(pg, contacts, fake)
    rows = []
    try:
        fake.config(latency_ms=0)
        rss0 = rss_kb(srv.pid)
        have = 0
        lua = REPO / "bench" / "results" / "rotate.lua"
        for n in args.entries:
            log("cache with %d entries: warming, then wrk rotating over them..." % n)
            for cid in range(have + 1, n + 1):
                get(srv, "/v1/contacts/%d/analyses/%s" % (cid, TYPE))
            have = max(have, n)
            lua.write_text("local i = 0\nrequest = function()\n  i = i %% %d + 1\n"
                           "  return wrk.format('GET', '/v1/contacts/' .. i .. '/analyses/%s')\n"
                           "end\n" % (n, TYPE))
            w = hits.wrk(srv.base_url, args.duration, args.connections, script=lua)
            rows.append({"entries": n, "rps": w["rps"], "p99_ms": w["99%"], "non2xx": w["non2xx"],
                         "rss_mb": rss_kb(srv.pid) / 1024.0,
                         "cache_mb": (metric(srv, "rapport_cache_bytes") or 0) / (1 << 20)})
            log("  %.0f req/s, p99 %.2f ms, RSS %.1f MB" % (w["rps"], w["99%"], rows[-1]["rss_mb"]))
    finally:
        done(srv)
    first, last = rows[0], rows[-1]
    per = (last["rss_mb"] - first["rss_mb"]) * 1024 / max(1, last["entries"] - first["entries"])
    out["entries"] = {"rows": rows, "rss_start_mb": rss0 / 1024.0, "rss_kb_per_entry": per,
                      "cache_kb_per_entry": last["cache_mb"] * 1024 / last["entries"]}


# ---- 3. the data from 10,000 to 1,000,000 contacts ---------------------------------

def context_fetch(srv, contacts, fake, n=300):
    fake.config(latency_ms=0)
    db_ms = []
    for i in range(n):
        cid = 1 + (i * 7919) % contacts
        _, status, _, body = get(srv, "/v1/contacts/%d/analyses/%s?refresh=1" % (cid, TYPE))
        if status == 200:
            db_ms.append(json.loads(body)["timings_ms"]["db"])
    return pct(db_ms[20:], 50), pct(db_ms[20:], 99)


def scale(pg, contacts, fake, args, out):
    counts = benchdata.ensure(pg, contacts)
    row = {"contacts": counts[0], "deals": counts[1], "activities": counts[2]}
    log("%d contacts: context fetch..." % contacts)
    srv = server(pg, contacts, fake)
    try:
        row["rss_start_mb"] = rss_kb(srv.pid) / 1024.0
        row["fetch_p50_ms"], row["fetch_p99_ms"] = context_fetch(srv, contacts, fake)
        row["rss_end_mb"] = rss_kb(srv.pid) / 1024.0
    finally:
        done(srv)
    log("%d contacts: cold path against both fakes..." % contacts)
    row["cold"] = cold.measure(pg, contacts, RAPPORT_BIN, FAKE_BIN, args.requests,
                               args.c_latency_ms, args.node_latency_ms)
    out.setdefault("scales", []).append(row)


# ---- 4. the other figures (one scale) ----------------------------------------------

async def one_stream(host, port, path, out):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(("GET %s HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n" % path).encode())
    await writer.drain()
    got_result = False
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"event: result"):
            got_result = True
            break
    writer.close()
    out.append(got_result)


async def many_streams(srv, path, n, pid, peak):
    out = []
    tasks = [asyncio.create_task(one_stream(srv.host, srv.port, path, out)) for _ in range(n)]
    while not all(t.done() for t in tasks):
        peak[0] = max(peak[0], rss_kb(pid))
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    return out


def sse_first_delta(srv, path):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    r = conn.getresponse()
    first = None
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            name = line[7:].strip().decode()
            if name == "delta" and first is None:
                first = time.monotonic() * 1000
            if name in ("result", "error"):
                break
    conn.close()
    return first


def others(pg, contacts, fake, out):
    srv = server(pg, contacts, fake)
    o = {}
    try:
        log("singleflight: 100 identical concurrent cold requests...")
        fake.config(latency_ms=300)
        before = fake.stats()["chat_calls"]
        barrier = threading.Barrier(100)
        statuses = []

        def one():
            barrier.wait()
            statuses.append(get(srv, "/v1/contacts/4242/analyses/%s" % TYPE)[1])
        ts = [threading.Thread(target=one) for _ in range(100)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        o["singleflight_calls"] = fake.stats()["chat_calls"] - before
        o["singleflight_ok"] = statuses.count(200)

        log("streaming: the upstream's first content chunk -> the client's first delta...")
        fake.config(latency_ms=50, chunk_delay_ms=20, chunks=8)
        ttfd = []
        for i in range(100):
            first = sse_first_delta(srv, "/v1/contacts/%d/analyses/%s?refresh=1" % (1 + i * 613 % contacts, TYPE))
            sent = fake.stats().get("last_first_content_mono_ms")
            if first is not None and sent:
                ttfd.append(first - sent)
        o["ttfd_p50_ms"], o["ttfd_p99_ms"] = pct(ttfd, 50), pct(ttfd, 99)

        log("1000 streaming clients on one cold key...")
        fake.config(latency_ms=1500, chunk_delay_ms=20, chunks=8)
        before = fake.stats()["chat_calls"]
        peak = [0]
        res = asyncio.run(many_streams(srv, "/v1/contacts/777/analyses/%s?refresh=1" % TYPE, 1000,
                                       srv.pid, peak))
        o["streams_ok"] = sum(1 for x in res if x)
        o["streams_calls"] = fake.stats()["chat_calls"] - before
        o["streams_peak_rss_mb"] = peak[0] / 1024.0
        fake.config(latency_ms=0, chunk_delay_ms=0)
    finally:
        done(srv)
    out["others"] = o


# ---- the table ---------------------------------------------------------------------

def table(out, args):
    p = print
    h = out["hits"]
    p("### Cached hit against a bare evhttp server (same bytes, same log line)\n")
    p("wrk -t1 -c%d -d%ds, one hot key, %d-byte body, medians of %d turns each, taking turns.\n" % (
        args.connections, args.duration, h["body_bytes"], args.rounds))
    p("| | req/s | p50 | p99 |\n|---|---|---|---|")
    p("| rapport | %.0f | %.2f ms | %.2f ms |" % (h["rapport_rps"], h["rapport_p50_ms"], h["rapport_p99_ms"]))
    p("| bare evhttp (bench/bare_evhttp.c) | %.0f | %.2f ms | %.2f ms |" % (
        h["bare_rps"], h["bare_p50_ms"], h["bare_p99_ms"]))
    p("| **rapport / bare** | **%.2f×** | | **%.2f×** |" % (h["rps_ratio"], h["p99_ratio"]))
    if out.get("hits_callgrind"):
        p("\n%s (callgrind, bench/callgrind_hits.py)." % out["hits_callgrind"])
    e = out["entries"]
    p("\n### Cache entries (one server, warmed step by step; wrk rotates over all entries)\n")
    p("| entries | req/s | p99 | RSS | cache bytes |\n|---|---|---|---|---|")
    for r in e["rows"]:
        p("| %d | %.0f | %.2f ms | %.1f MB | %.2f MB |" % (r["entries"], r["rps"], r["p99_ms"],
                                                         r["rss_mb"], r["cache_mb"]))
    p("\nRSS per entry: %.1f KB (the entry's own bytes: %.1f KB).\n" % (
        e["rss_kb_per_entry"], e["cache_kb_per_entry"]))
    p("### Contacts (each scale its own database; cold path: %d sequential regenerations a type)\n"
      % args.requests)
    p("| contacts | activities | context fetch p50 / p99 | RSS after 300 regenerations |")
    p("|---|---|---|---|")
    for s in out["scales"]:
        p("| %d | %d | %.2f / %.2f ms | %.1f MB |" % (s["contacts"], s["activities"], s["fetch_p50_ms"],
                                                     s["fetch_p99_ms"], s["rss_end_mb"]))
    p("\nCold path, p50 in ms. overhead = client total − the fake's nominal latency; "
      "above curl = client total − a plain libcurl client's exchange with the same fake and body; "
      "own = client total − rapport's upstream exchange (HTTP in, database, Lua, HTTP out); "
      "exchange = rapport's exchange − plain curl's; fake = plain curl's exchange − nominal latency.\n")
    p("| contacts | fake | type | overhead | above curl | own (db, Lua, HTTP) | exchange | fake |")
    p("|---|---|---|---|---|---|---|---|")
    for s in out["scales"]:
        for fk, per in s["cold"].items():
            lat = args.c_latency_ms if fk == "c" else args.node_latency_ms
            for t, c in per.items():
                p("| %d | %s %d ms | %s | %.2f | %.2f | %.2f (%.2f, %.2f, %.2f) | %.2f | %.2f |" % (
                    s["contacts"], "C" if fk == "c" else "Node", lat, t, c["overhead_p50_ms"],
                    c["above_curl_p50_ms"], c["own_p50_ms"], c["db_p50_ms"], c["script_p50_ms"],
                    c["http_p50_ms"], c["exchange_p50_ms"], c["curl_above_latency_ms"]))
    o = out.get("others")
    if o:
        p("\n### Other figures (%d contacts)\n" % out["scales"][0]["contacts"])
        p("| measure | result |\n|---|---|")
        p("| 100 identical concurrent cold requests | %d upstream call(s), %d/100 answered |" % (
            o["singleflight_calls"], o["singleflight_ok"]))
        p("| streaming: upstream's first content chunk → client's first delta | p50 %.2f ms, p99 %.2f ms |"
          % (o["ttfd_p50_ms"], o["ttfd_p99_ms"]))
        p("| 1000 concurrent SSE clients on one cold key | %d upstream call(s), %d/1000 got the result, "
          "peak RSS %.1f MB |" % (o["streams_calls"], o["streams_ok"], o["streams_peak_rss_mb"]))
    p("\n%s; %s." % (out["machine"], out["date"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default=os.environ.get("BENCH_SCALES"),
                    help="contacts per scale, comma-separated; default 10000,100000 and 1000000 "
                         "when that database is already loaded (the first load takes ~20 min)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--entries", default="1,100,1000,10000")
    ap.add_argument("--requests", type=int, default=20, help="cold regenerations per type and fake")
    ap.add_argument("--c-latency-ms", type=int, default=50)
    ap.add_argument("--node-latency-ms", type=int, default=800)
    ap.add_argument("--skip-callgrind", action="store_true")
    ap.add_argument("--skip-others", action="store_true")
    ap.add_argument("--keys", type=int, default=1000, help="L2 results rotated over (bench/shared.py)")
    ap.add_argument("--skip-shared", action="store_true", help="no Redis L2 / HAProxy figures")
    args = ap.parse_args()
    args.entries = [int(x) for x in args.entries.split(",")]

    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    pg = benchdata.cluster()
    if args.scales:
        scales = [int(x) for x in args.scales.split(",")]
    else:
        scales = [10000, 100000] + ([1000000] if benchdata.loaded(pg, 1000000) else [])
    for n in scales:
        benchdata.ensure(pg, n)
    fake = FakeOpenAI(binary=FAKE_BIN, latency_ms=0, chunk_delay_ms=0, extra_args=["--quiet"])
    fake.start()
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "args": vars(args), "load_before": os.getloadavg()}
    try:
        hit_vs_bare(pg, scales[0], fake, args, out)
        entries_scale(pg, max(scales), fake, args, out)
        for n in scales:
            scale(pg, n, fake, args, out)
        if not args.skip_others:
            others(pg, scales[0], fake, out)
        if not args.skip_shared:
            log("the shared cache and several instances (bench/shared.py)...")
            out["shared"] = shared.measure(pg, scales[0], fake, args)
    finally:
        fake.stop()
    out["load_after"] = os.getloadavg()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / ("bench-%s.json" % stamp)).write_text(json.dumps(out, indent=2))
    table(out, args)
    if out.get("shared"):
        print()
        shared.table(out["shared"], args)


if __name__ == "__main__":
    main()
