"""The cold path split into rapport's own phases and the upstream exchange,
against two fakes, so a fake's quirks do not pass for rapport's cost.

For each fake (the project's C one, build/fake_openai, and the Node one in
/work/shared/fake-openai-node) and each shipped type:
  * rapport: sequential ?refresh=1 requests on one keep-alive connection;
    per request the client's total and the reply's timings_ms (db, script,
    llm = the upstream exchange as rapport sees it, total);
  * plain libcurl: the same upstream request body (captured from the C
    fake's last_request) sent by the curl tool, the same count, on one
    reused connection (`curl --next`): the exchange with nothing of
    rapport in it.
Reported per fake and type (medians):
  overhead   = client total - the fake's nominal latency (the issue's figure)
  above_curl = client total - plain curl's exchange (what rapport adds)
  own        = client total - llm (HTTP in, database, Lua, HTTP out)
  exchange   = llm - plain curl's exchange (request encoding, curl in the
               loop, SSE parsing)

    python3 bench/cold.py [--contacts 100000] [--requests 20] [--node-latency-ms 800]
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import benchdata                                   # noqa: E402
from helpers.fake import FakeOpenAI                # noqa: E402
from helpers.pg import free_port                   # noqa: E402
from helpers.server import Rapport                 # noqa: E402

TYPES = ("relationship_health", "smart_tips", "contextual_research")
NODE_FAKE = Path(os.environ.get("NODE_FAKE", "/work/shared/fake-openai-node/server.js"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class NodeFake:
    def __init__(self, latency_ms):
        self.port = free_port()
        self.base_url = "http://127.0.0.1:%d/v1" % self.port
        env = dict(os.environ, PORT=str(self.port), LATENCY_MS=str(latency_ms),
                   TTFT_MS=str(latency_ms), CHUNK_DELAY_MS="0")
        self.proc = subprocess.Popen(["node", str(NODE_FAKE)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/health")
                c.getresponse().read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Node fake did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def rapport_runs(srv, contacts, type_, n, warm=3):
    """[(client ms, timings_ms)] of n sequential regenerations."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)
    out = []
    for i in range(warm + n):
        cid = 1 + (i * 7919) % contacts
        t0 = time.perf_counter()
        conn.request("GET", "/v1/contacts/%d/analyses/%s?refresh=1" % (cid, type_))
        r = conn.getresponse()
        body = r.read()
        ms = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            raise RuntimeError("%s: %d %r" % (type_, r.status, body[:300]))
        if i >= warm:
            out.append((ms, json.loads(body)["timings_ms"]))
    conn.close()
    return out


def curl_runs(base_url, body, n, warm=2):
    """Plain libcurl's exchange times (ms) for n POSTs of body on one
    reused connection, streamed as rapport asks for it."""
    d = Path(tempfile.mkdtemp(prefix="rapport-cold-"))
    try:
        (d / "body.json").write_text(json.dumps(body))
        one = ["-s", "-o", "/dev/null", "-w", "%{time_total}\\n", "-H", "Content-Type: application/json",
               "-H", "Accept: text/event-stream", "-H", "Expect:", "-H", "Authorization: Bearer x",
               "--data-binary", "@%s" % (d / "body.json"), base_url + "/chat/completions"]
        cmd = ["curl"] + one
        for _ in range(warm + n - 1):
            cmd += ["--next"] + one
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        return [float(x) * 1000 for x in out[warm:]]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def summarize(runs, curl_ms, latency_ms):
    med = statistics.median
    client = [c for c, _ in runs]
    llm = [t["llm"] for _, t in runs]
    own = [c - t["llm"] for c, t in runs]
    base = med(curl_ms)
    return {
        "client_p50_ms": med(client),
        "overhead_p50_ms": med(client) - latency_ms,
        "above_curl_p50_ms": med(client) - base,
        "own_p50_ms": med(own),
        "db_p50_ms": med(t["db"] for _, t in runs),
        "script_p50_ms": med(t["script"] for _, t in runs),
        "http_p50_ms": med(c - t["total"] for c, t in runs),
        "exchange_p50_ms": med(llm) - base,
        "curl_p50_ms": base,
        "curl_above_latency_ms": base - latency_ms,
    }


def measure(pg, contacts, rapport_bin, fake_bin, requests=20, c_latency_ms=50,
            node_latency_ms=800, types=TYPES, env=None):
    """{fake: {type: summary}} at one scale."""
    cfake = FakeOpenAI(binary=fake_bin, latency_ms=c_latency_ms, chunk_delay_ms=0,
                       extra_args=["--quiet"])
    cfake.start()
    node = NodeFake(node_latency_ms)
    res = {"c": {}, "node": {}}
    servers = []
    try:
        bodies = {}
        base_env = {"DATABASE_URL": benchdata.url(pg, contacts), "RAPPORT_LOG_LEVEL": "info",
                    "RAPPORT_REFRESH_PER_MIN": "0", **(env or {})}
        for name, fk, lat in (("c", cfake, c_latency_ms), ("node", node, node_latency_ms)):
            srv = Rapport(pg=None, fake=fk, binary=rapport_bin, env=base_env)
            servers.append(srv)
            srv.start()
            for t in types:
                log("  %s fake, %s: %d requests..." % (name, t, requests))
                runs = rapport_runs(srv, contacts, t, requests)
                if name == "c":
                    bodies[t] = cfake.stats()["last_request"]
                curl = curl_runs(fk.base_url, bodies[t], requests)
                res[name][t] = summarize(runs, curl, lat)
            srv.stop(check=False)
    finally:
        for s in servers:
            s.stop(check=False)
            shutil.rmtree(s.workdir, ignore_errors=True)
        cfake.stop()
        node.stop()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=100000)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--c-latency-ms", type=int, default=50)
    ap.add_argument("--node-latency-ms", type=int, default=800)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    pg = benchdata.cluster()
    benchdata.ensure(pg, args.contacts)
    res = measure(pg, args.contacts, os.environ.get("RAPPORT_BIN", str(REPO / "build/bench/rapport")),
                  os.environ.get("FAKE_BIN", str(REPO / "build/bench/fake_openai")),
                  args.requests, args.c_latency_ms, args.node_latency_ms, args.types.split(","))
    print("| fake | type | overhead | above plain curl | own (db, script, http) | exchange vs curl | curl above latency |")
    print("|---|---|---|---|---|---|---|")
    for fk, per in res.items():
        for t, s in per.items():
            print("| %s | %s | %.2f | %.2f | %.2f (%.2f, %.2f, %.2f) | %.2f | %.2f |" % (
                fk, t, s["overhead_p50_ms"], s["above_curl_p50_ms"], s["own_p50_ms"], s["db_p50_ms"],
                s["script_p50_ms"], s["http_p50_ms"], s["exchange_p50_ms"], s["curl_above_latency_ms"]))


if __name__ == "__main__":
    main()
