"""Cached hits against their ceiling: rapport and bench/bare_evhttp.c (the
same headers and body, captured from a real hit, and the same per-request
JSON line on stderr into a file) measured in the same run with the same wrk
settings, taking turns so the machine's noise falls on both.

    python3 bench/hits.py [--rounds 3] [--duration 10]    # standalone

Used by bench/bench.py; needs var/bench-pg (bench/benchdata.py).
"""
import argparse
import http.client
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
from helpers.pg import free_port              # noqa: E402

TYPE = "relationship_health"
HOT_PATH = "/v1/contacts/1/analyses/%s" % TYPE


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ms(text):
    """wrk's latency figure ("1.23ms", "850.00us", "1.02s") in ms."""
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * f
    return float(text)


def wrk(base_url, duration, connections, threads=1, script=None, path=HOT_PATH):
    cmd = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % duration, "--latency"]
    if script:
        cmd += ["-s", str(script)]
    cmd.append(base_url + ("" if script else path))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         check=True).stdout
    res = {"raw": out, "non2xx": 0}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(line.split()[1])
        for p in ("50%", "99%"):
            if line.startswith(p):
                res[p] = ms(line.split()[1])
        if "Non-2xx" in line:
            res["non2xx"] = int(line.split()[-1])
    return res


def capture_hit(host, port, path=HOT_PATH):
    """(headers as "Name: value" lines, body) of a real cached hit."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for _ in range(2):            # the first may be the miss that fills the cache
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        headers = r.getheaders()
    conn.close()
    assert dict(headers).get("X-Cache") == "HIT", headers
    return "".join("%s: %s\n" % (k, v) for k, v in headers), body


class Bare:
    def __init__(self, binary, headers, body):
        self.dir = Path(tempfile.mkdtemp(prefix="rapport-bare-"))
        (self.dir / "headers").write_text(headers)
        (self.dir / "body").write_bytes(body)
        self.port = free_port()
        self.base_url = "http://127.0.0.1:%d" % self.port
        with open(self.dir / "bare.stderr", "ab") as err:
            self.proc = subprocess.Popen([str(binary), str(self.port), str(self.dir / "headers"),
                                          str(self.dir / "body")], stdout=subprocess.DEVNULL,
                                         stderr=err, stdin=subprocess.DEVNULL)
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", HOT_PATH)
                c.getresponse().read()
                c.close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("bare_evhttp did not start")

    def log_lines(self):
        return sum(1 for _ in open(self.dir / "bare.stderr", "rb"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)   # the log file grows ~40 MB a run


def measure(srv, bare_bin, rounds=3, duration=10, connections=64, others=None, path=HOT_PATH):
    """Median req/s and p99 of rapport (srv), the bare server, and any
    `others` ({name: server}, e.g. an older build) over `rounds` turns
    each, the order rotating every round."""
    headers, body = capture_hit(srv.host, srv.port, path)
    for o in (others or {}).values():
        capture_hit(o.host, o.port, path)
    bare = Bare(bare_bin, headers, body)
    targets = [("rapport", srv.base_url), ("bare", bare.base_url)]
    targets += [(n, o.base_url) for n, o in (others or {}).items()]
    res = {name: [] for name, _ in targets}
    try:
        for i in range(rounds):
            order = targets[i % len(targets):] + targets[:i % len(targets)]
            for name, url in order:
                w = wrk(url, duration, connections, path=path)
                log("  %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d" % (
                    name, w["rps"], w["50%"], w["99%"], w["non2xx"]))
                res[name].append(w)
        bare_lines = bare.log_lines()
    finally:
        bare.stop()
    out = {"body_bytes": len(body), "headers": headers, "bare_log_lines": bare_lines}
    for name in res:
        out[name + "_rps"] = statistics.median(w["rps"] for w in res[name])
        out[name + "_p50_ms"] = statistics.median(w["50%"] for w in res[name])
        out[name + "_p99_ms"] = statistics.median(w["99%"] for w in res[name])
        out[name + "_non2xx"] = sum(w["non2xx"] for w in res[name])
        out[name + "_runs"] = [(w["rps"], w["99%"]) for w in res[name]]
    out["rps_ratio"] = out["rapport_rps"] / out["bare_rps"]
    out["p99_ratio"] = out["rapport_p99_ms"] / out["bare_p99_ms"]
    return out


def main():
    import benchdata
    from helpers.fake import FakeOpenAI
    from helpers.server import Rapport
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--contacts", type=int, default=10000)
    ap.add_argument("--base", help="another rapport binary measured in the same turns")
    args = ap.parse_args()
    pg = benchdata.cluster()
    benchdata.ensure(pg, args.contacts)
    fake = FakeOpenAI(binary=os.environ.get("FAKE_BIN", str(REPO / "build/bench/fake_openai")),
                      latency_ms=0, chunk_delay_ms=0, extra_args=["--quiet"])
    fake.start()
    srv_env = {"DATABASE_URL": benchdata.url(pg, args.contacts), "RAPPORT_LOG_LEVEL": "info",
               "RAPPORT_REFRESH_PER_MIN": "0"}
    srv = Rapport(pg=None, fake=fake, binary=os.environ.get("RAPPORT_BIN", REPO / "build/bench/rapport"),
                  env=srv_env)
    srv.start()
    others = {}
    if args.base:
        others["base"] = Rapport(pg=None, fake=fake, binary=args.base, env=srv_env)
        others["base"].start()
    try:
        out = measure(srv, os.environ.get("BARE_BIN", REPO / "build/bench/bare_evhttp"),
                      args.rounds, args.duration, others=others)
    finally:
        srv.stop(check=False)
        for o in others.values():
            o.stop(check=False)
        fake.stop()
    lines = sum(1 for _ in open(srv.stderr_path, "rb"))
    for o in [srv, *others.values()]:
        shutil.rmtree(o.workdir, ignore_errors=True)
    print("rapport %.0f req/s p99 %.2f ms | bare %.0f req/s p99 %.2f ms | ratio %.2f, p99 ratio %.2f"
          " | log lines rapport %d bare %d" % (
              out["rapport_rps"], out["rapport_p99_ms"], out["bare_rps"], out["bare_p99_ms"],
              out["rps_ratio"], out["p99_ratio"], lines, out["bare_log_lines"]))
    if args.base:
        print("base %.0f req/s p99 %.2f ms (ratio to bare %.2f)" % (
            out["base_rps"], out["base_p99_ms"], out["base_rps"] / out["bare_rps"]))
    print(out["headers"])


if __name__ == "__main__":
    main()
