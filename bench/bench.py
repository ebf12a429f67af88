"""rapport benchmarks: cached throughput, cold-path overhead, singleflight,
context-fetch time and memory, on demo data at a stated scale.

Parts: a PostgreSQL cluster under var/bench-pg (kept between runs, so the
100,000-contact load happens once), the fake upstream with a fixed latency,
the optimised ./rapport, and wrk for load. Figures are printed as a Markdown
table and saved under bench/results/. This is a benchmark, not a test: it
asserts nothing, it measures.

    bench/run.sh [--contacts N] [--duration S] [--connections C]
"""

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.fake import FakeOpenAI          # noqa: E402
from helpers.pg import PgCluster             # noqa: E402
from helpers.server import Rapport           # noqa: E402

TYPE = "relationship_health"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_data(pg, contacts):
    pg.sql_file(REPO / "sql" / "schema.sql")
    pg.sql_file(REPO / "sql" / "roles.sql")      # rapport logs in as rapport_reader (pg.url)
    have = int(pg.scalar("SELECT count(*) FROM contacts"))
    if have != contacts:
        log("loading %d demo contacts (once; kept in var/bench-pg)..." % contacts)
        t0 = time.monotonic()
        pg.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": contacts})
        log("  loaded in %.0f s" % (time.monotonic() - t0))
    counts = pg.sql("SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM deals),"
                    " (SELECT count(*) FROM activities)")[0]
    return [int(x) for x in counts]


def get(srv, path, headers=None):
    req = urllib.request.Request(srv.base_url + path, headers=headers or {})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        return (time.perf_counter() - t0) * 1000, r.status, dict(r.headers), body


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def wrk(url_lua, srv, duration, connections, threads=2):
    out = subprocess.run(
        ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % duration, "--latency",
         "-s", str(url_lua), srv.base_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True).stdout
    res = {"raw": out}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(line.split()[1])
        for p in ("50%", "99%"):
            if line.startswith(p):
                res[p] = line.split()[1]
        if "Non-2xx" in line:
            res["non2xx"] = line
    return res


def sse_first_delta(srv, path):
    """Opens an SSE request; returns (monotonic time of the first delta
    event, all events' names). CLOCK_MONOTONIC is shared with the fake."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    r = conn.getresponse()
    first = None
    names = []
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            name = line[7:].strip().decode()
            names.append(name)
            if name == "delta" and first is None:
                first = time.monotonic() * 1000
            if name in ("result", "error"):
                break
    conn.close()
    return first, names


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=int(os.environ.get("BENCH_CONTACTS", 100000)))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--latency-ms", type=int, default=50, help="the fake upstream's fixed latency")
    ap.add_argument("--keys", type=int, default=1000, help="distinct cached keys wrk rotates over")
    args = ap.parse_args()

    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    pg = PgCluster(directory=REPO / "var" / "bench-pg", port=int(os.environ.get("BENCH_PG_PORT", 54339)))
    pg.start()
    counts = ensure_data(pg, args.contacts)
    fake = FakeOpenAI(binary=os.environ.get("FAKE_BIN", str(REPO / "build" / "fake_openai")),
                      latency_ms=args.latency_ms,
                      chunk_delay_ms=0, extra_args=["--quiet"])
    fake.start()
    srv = Rapport(pg=pg, fake=fake, env={"RAPPORT_LOG_LEVEL": "warn",
                                         "RAPPORT_REFRESH_PER_MIN": "0",   # ?refresh=1 is the load
                                         "RAPPORT_CACHE_BYTES": str(256 << 20)})
    srv.start()
    out = {"machine": "%s, %d cores, %s" % (platform.processor() or platform.machine(),
                                           os.cpu_count(), platform.platform()),
           "contacts": counts[0], "deals": counts[1], "activities": counts[2],
           "fake_latency_ms": args.latency_ms}
    try:
        rss_start = rss_kb(srv.pid)

        # 1. Cold path: sequential regenerations; overhead = latency − fake's.
        log("cold path...")
        fake.config(latency_ms=args.latency_ms)
        cold = []
        phases = []
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)   # keep-alive, as a CRM backend
        for i in range(300):
            t0 = time.perf_counter()
            conn.request("GET", "/v1/contacts/%d/analyses/%s?refresh=1" % (1 + (i * 37) % args.contacts, TYPE))
            r = conn.getresponse()
            body = r.read()
            if r.status == 200:
                cold.append((time.perf_counter() - t0) * 1000)
                phases.append(json.loads(body)["timings_ms"])
        conn.close()
        for k in ("db", "script", "llm"):
            out["cold_%s_p50_ms" % k] = statistics.median(p[k] for p in phases)
        out["cold_p50_ms"] = pct(cold, 50)
        out["cold_overhead_p50_ms"] = pct(cold, 50) - args.latency_ms
        out["cold_overhead_p99_ms"] = pct(cold, 99) - args.latency_ms

        # 2. Context fetch at scale, with the upstream out of the way.
        log("context fetch...")
        fake.config(latency_ms=0)
        db_ms = []
        for i in range(500):
            cid = 1 + (i * 7919) % args.contacts
            _, status, _, body = get(srv, "/v1/contacts/%d/analyses/%s?refresh=1" % (cid, TYPE))
            if status == 200:
                db_ms.append(json.loads(body)["timings_ms"]["db"])
        out["context_fetch_p50_ms"] = pct(db_ms, 50)
        out["context_fetch_p99_ms"] = pct(db_ms, 99)

        # 3. Singleflight: 100 identical concurrent cold requests.
        log("singleflight...")
        fake.config(latency_ms=300)
        before = fake.stats()["chat_calls"]
        barrier = threading.Barrier(100)
        statuses = []

        def one():
            barrier.wait()
            statuses.append(get(srv, "/v1/contacts/4242/analyses/%s?refresh=0" % TYPE)[1])
        ts = [threading.Thread(target=one) for _ in range(100)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out["singleflight_upstream_calls"] = fake.stats()["chat_calls"] - before
        out["singleflight_ok"] = statuses.count(200)
        fake.config(latency_ms=args.latency_ms)

        # 4. Streaming: time from the upstream writing its first content
        # chunk to our client reading the first delta event.
        log("streaming time to first delta...")
        fake.config(latency_ms=args.latency_ms, chunk_delay_ms=20, chunks=8)
        ttfd = []
        for i in range(100):
            cid = 1 + (i * 613) % args.contacts
            first, names = sse_first_delta(srv, "/v1/contacts/%d/analyses/%s?refresh=1" % (cid, TYPE))
            sent = fake.stats().get("last_first_content_mono_ms")
            if first is not None and sent:
                ttfd.append(first - sent)
        out["ttfd_p50_ms"] = pct(ttfd, 50)
        out["ttfd_p99_ms"] = pct(ttfd, 99)

        # 5. 1000 concurrent streaming clients on one cold key.
        log("1000 streaming clients on one key...")
        fake.config(latency_ms=1500, chunk_delay_ms=20, chunks=8)
        before = fake.stats()["chat_calls"]
        peak = [0]
        res = asyncio.run(many_streams(srv, "/v1/contacts/777/analyses/%s?refresh=1" % TYPE, 1000,
                                       srv.pid, peak))
        out["streams_ok"] = sum(1 for x in res if x)
        out["streams_upstream_calls"] = fake.stats()["chat_calls"] - before
        out["streams_peak_rss_mb"] = peak[0] / 1024.0
        fake.config(latency_ms=args.latency_ms, chunk_delay_ms=0)

        # 6. Cached path: warm `keys` entries, then wrk rotates over them.
        log("warming %d keys..." % args.keys)
        fake.config(latency_ms=0)
        for cid in range(1, args.keys + 1):
            get(srv, "/v1/contacts/%d/analyses/%s" % (cid, TYPE))
        lua = results_dir / "cached.lua"
        lua.write_text(
            "local i = 0\n"
            "request = function()\n"
            "  i = i %% %d + 1\n"
            "  return wrk.format('GET', '/v1/contacts/' .. i .. '/analyses/%s')\n"
            "end\n" % (args.keys, TYPE))
        _, _, _, sample = get(srv, "/v1/contacts/1/analyses/%s" % TYPE)
        out["cached_body_bytes"] = len(sample)
        log("wrk %d s at %d connections..." % (args.duration, args.connections))
        w = wrk(lua, srv, args.duration, args.connections)
        out["cached_rps"] = w.get("rps")
        out["cached_p50"] = w.get("50%")
        out["cached_p99"] = w.get("99%")
        out["cached_non2xx"] = w.get("non2xx", "none")
        (results_dir / "wrk-cached.txt").write_text(w["raw"])

        cache_bytes = metric(srv, "rapport_cache_bytes") or 0
        out["rss_start_mb"] = rss_start / 1024.0
        out["rss_end_mb"] = rss_kb(srv.pid) / 1024.0
        out["cache_bytes_mb"] = cache_bytes / (1 << 20)
        out["rss_minus_cache_mb"] = out["rss_end_mb"] - out["cache_bytes_mb"]
    finally:
        srv.stop(check=False)
        fake.stop()
        pg.stop()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results_dir / ("bench-%s.json" % stamp)).write_text(json.dumps(out, indent=2))
    rows = [
        ("data", "%d contacts, %d deals, %d activities" % (out["contacts"], out["deals"], out["activities"])),
        ("machine", out["machine"]),
        ("cached hits, wrk %d conns, %ds (%d keys, %d-byte body)" % (args.connections, args.duration, args.keys, out["cached_body_bytes"]),
         "%.0f req/s, p50 %s, p99 %s, non-2xx: %s" % (out["cached_rps"] or 0, out["cached_p50"], out["cached_p99"], out["cached_non2xx"])),
        ("cold path overhead above the fake's %d ms (300 sequential, keep-alive)" % args.latency_ms,
         "p50 %.2f ms, p99 %.2f ms (phases p50: db %.2f, script %.2f, llm %.2f ms)" % (
             out["cold_overhead_p50_ms"], out["cold_overhead_p99_ms"], out["cold_db_p50_ms"],
             out["cold_script_p50_ms"], out["cold_llm_p50_ms"])),
        ("100 identical concurrent cold requests", "%d upstream call(s), %d/100 answered 200" % (out["singleflight_upstream_calls"], out["singleflight_ok"])),
        ("context fetch (relationship_health: 4 queries in parallel), 500 contacts", "p50 %.2f ms, p99 %.2f ms" % (out["context_fetch_p50_ms"], out["context_fetch_p99_ms"])),
        ("streaming: upstream's first content chunk → client's first delta event (100 SSE requests)",
         "p50 %.2f ms, p99 %.2f ms" % (out["ttfd_p50_ms"], out["ttfd_p99_ms"])),
        ("1000 concurrent SSE clients on one cold key", "%d upstream call(s), %d/1000 got the result, peak RSS %.1f MB" % (out["streams_upstream_calls"], out["streams_ok"], out["streams_peak_rss_mb"])),
        ("resident memory", "%.1f MB at start, %.1f MB at end with %.1f MB of cache → %.1f MB besides the cache" % (out["rss_start_mb"], out["rss_end_mb"], out["cache_bytes_mb"], out["rss_minus_cache_mb"])),
    ]
    print("| measure | result |\n|---|---|")
    for k, v in rows:
        print("| %s | %s |" % (k, v))


if __name__ == "__main__":
    main()
