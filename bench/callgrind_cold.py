"""Instructions per cold request (a ?refresh=1 regeneration), by callgrind:
rapport under valgrind --tool=callgrind makes N1 then N2 regenerations of
one type against a fake at 0 ms, and the per-request figure is
(Ir(N2) - Ir(N1)) / (N2 - N1). The N2 profile is kept for
callgrind_annotate. Repeatable where wall time on a shared machine is not.

    python3 bench/callgrind_cold.py [--type smart_tips] [--fake node|c] [--n1 20 --n2 80]
"""
import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
import benchdata                                 # noqa: E402
import callgrind_hits                            # noqa: E402
import cold                                      # noqa: E402
from helpers.fake import FakeOpenAI              # noqa: E402
from helpers.server import Rapport               # noqa: E402


def run(pg_url, fk, contacts, type_, n, outfile):
    srv = Rapport(pg=None, fake=fk, binary=os.environ.get("RAPPORT_BIN", REPO / "build/bench/rapport"),
                  env={"DATABASE_URL": pg_url, "RAPPORT_LOG_LEVEL": "info",
                       "RAPPORT_REFRESH_PER_MIN": "0"})
    srv.wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % outfile,
                   "--log-file=%s" % (srv.workdir / "valgrind.log")]
    srv.start(timeout=180)
    try:
        cold.rapport_runs(srv, contacts, type_, n, warm=0)
    finally:
        srv.stop(timeout=180, check=False)
    return callgrind_hits.total_ir(outfile)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--type", default="smart_tips")
    ap.add_argument("--fake", default="node")
    ap.add_argument("--n1", type=int, default=20)
    ap.add_argument("--n2", type=int, default=80)
    ap.add_argument("--contacts", type=int, default=10000)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    pg = benchdata.cluster()
    benchdata.ensure(pg, args.contacts)
    fk = cold.NodeFake(0) if args.fake == "node" else FakeOpenAI(
        binary=os.environ.get("FAKE_BIN", str(REPO / "build/bench/fake_openai")), latency_ms=0,
        chunk_delay_ms=0, extra_args=["--quiet"])
    if args.fake != "node":
        fk.start()
    try:
        url = benchdata.url(pg, args.contacts)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        r1 = run(url, fk, args.contacts, args.type, args.n1, out / ("callgrind.cold.%s.n1" % args.fake))
        r2 = run(url, fk, args.contacts, args.type, args.n2, out / ("callgrind.cold.%s.out" % args.fake))
    finally:
        fk.stop()
    print("instructions per cold %s request (%s fake): %.0f" % (
        args.type, args.fake, (r2 - r1) / (args.n2 - args.n1)))


if __name__ == "__main__":
    main()
