"""Instructions per cached hit, counted by callgrind (repeatable where wall
time on a shared machine is not): rapport and bench/bare_evhttp.c run under
valgrind --tool=callgrind, each serves N1 then N2 keep-alive hits of one hot
key, and the per-hit figure is (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up
and shutdown cancel out. The profile of the larger run is kept for
callgrind_annotate.

    python3 bench/callgrind_hits.py [--n1 500] [--n2 2500] [--out DIR]
"""
import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import benchdata                                # noqa: E402
import hits                                     # noqa: E402
from helpers.fake import FakeOpenAI             # noqa: E402
from helpers.server import Rapport              # noqa: E402


def drive(host, port, n, path=hits.HOT_PATH):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    for _ in range(n):
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    conn.close()


def total_ir(outfile):
    text = Path(outfile).read_text(errors="replace")
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    return int(m.group(1))


def rapport_run(pg_url, fake, n, outfile):
    srv = Rapport(pg=None, fake=fake, binary=os.environ.get("RAPPORT_BIN", REPO / "build/bench/rapport"),
                  env={"DATABASE_URL": pg_url, "RAPPORT_LOG_LEVEL": "info",
                       "RAPPORT_REFRESH_PER_MIN": "0"})
    srv.wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % outfile,
                   "--log-file=%s" % (srv.workdir / "valgrind.log")]
    srv.start(timeout=120)
    try:
        drive(srv.host, srv.port, 2)              # miss, then the entry is there
        headers, body = hits.capture_hit(srv.host, srv.port)
        drive(srv.host, srv.port, n)
    finally:
        srv.stop(timeout=120, check=False)
    return total_ir(outfile), headers, body


def bare_run(binary, headers, body, n, outfile):
    d = Path(tempfile.mkdtemp(prefix="rapport-bare-cg-"))
    (d / "headers").write_text(headers)
    (d / "body").write_bytes(body)
    port = hits.free_port()
    with open(d / "stderr", "ab") as err:
        p = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % outfile,
                              "--log-file=%s" % (d / "valgrind.log"), str(binary), str(port),
                              str(d / "headers"), str(d / "body")],
                             stdout=subprocess.DEVNULL, stderr=err)
    for _ in range(600):
        try:
            drive("127.0.0.1", port, 1)
            break
        except OSError:
            time.sleep(0.1)
    drive("127.0.0.1", port, n)
    p.terminate()
    p.wait(120)
    return total_ir(outfile)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n1", type=int, default=500)
    ap.add_argument("--n2", type=int, default=2500)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--contacts", type=int, default=10000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pg = benchdata.cluster()
    benchdata.ensure(pg, args.contacts)
    fake = FakeOpenAI(binary=os.environ.get("FAKE_BIN", str(REPO / "build/bench/fake_openai")),
                      latency_ms=0, chunk_delay_ms=0, extra_args=["--quiet"])
    fake.start()
    try:
        url = benchdata.url(pg, args.contacts)
        r1, headers, body = rapport_run(url, fake, args.n1, out / "callgrind.rapport.n1")
        r2, _, _ = rapport_run(url, fake, args.n2, out / "callgrind.rapport.out")
    finally:
        fake.stop()
    bare = os.environ.get("BARE_BIN", REPO / "build/bench/bare_evhttp")
    b1 = bare_run(bare, headers, body, args.n1, out / "callgrind.bare.n1")
    b2 = bare_run(bare, headers, body, args.n2, out / "callgrind.bare.out")
    per_r = (r2 - r1) / (args.n2 - args.n1)
    per_b = (b2 - b1) / (args.n2 - args.n1)
    print("instructions per cached hit: rapport %.0f, bare evhttp %.0f, ratio %.2f"
          % (per_r, per_b, per_r / per_b))
    print("profiles: %s, %s (callgrind_annotate --inclusive=yes)"
          % (out / "callgrind.rapport.out", out / "callgrind.bare.out"))


if __name__ == "__main__":
    main()
