#!/usr/bin/env python3
"""Cold-path phases of two rapport builds, side by side, on one machine.

    bench/compare_cold.py A_TREE B_TREE [ROUNDS]

Each TREE is a checkout with ./rapport and build/fake_openai built (for
example a `git worktree add /tmp/base <commit>` next to this one). One
throwaway PostgreSQL cluster (1000 demo contacts, loaded from this tree's
sql/) and one fake upstream (20 ms latency) serve both; the builds take
turns, ROUNDS times (default 2), so the machine's noise falls on both.
Each turn makes 300 sequential `?refresh=1` requests per shipped type and
prints the medians of the responses' timings_ms (the first 20 dropped):
db, script, and total - llm (everything above the upstream exchange).
A tree older than the reader role (sql/roles.sql) runs as the owner with
RAPPORT_DB_ALLOW_WRITE=1."""
import json
import statistics
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.fake import FakeOpenAI  # noqa: E402
from helpers.pg import PgCluster  # noqa: E402
from helpers.server import Rapport  # noqa: E402

TYPES = ("relationship_health", "smart_tips", "contextual_research")


def turn(pg, fake, tree, out):
    tree = Path(tree)
    reader = (tree / "sql" / "roles.sql").exists()
    env = {"RAPPORT_SCRIPTS": tree / "scripts", "RAPPORT_PROMPTS": tree / "prompts",
           "DATABASE_URL": pg.url if reader else pg.owner_url,
           "RAPPORT_DB_ALLOW_WRITE": None if reader else "1",
           "RAPPORT_REFRESH_PER_MIN": "0", "RAPPORT_LOG_LEVEL": "warn"}
    srv = Rapport(pg=pg, fake=fake, binary=tree / "rapport", env=env)
    srv.start()
    try:
        for t in TYPES:
            db, script, above = [], [], []
            for i in range(300):
                url = "%s/v1/contacts/%d/analyses/%s?refresh=1" % (srv.base_url, 1 + i % 500, t)
                d = json.loads(urllib.request.urlopen(url).read())["timings_ms"]
                if i >= 20:
                    db.append(d["db"])
                    script.append(d["script"])
                    above.append(d["total"] - d["llm"])
            out.setdefault((str(tree), t), []).append(
                (statistics.median(db), statistics.median(script), statistics.median(above)))
    finally:
        srv.stop()


def main():
    trees = sys.argv[1:3]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    pg = PgCluster()
    pg.start()
    fake = None
    try:
        for f in ("schema.sql", "roles.sql"):
            pg.sql_file(REPO / "sql" / f)
        pg.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": 1000})
        fake = FakeOpenAI(binary=str(REPO / "build" / "fake_openai"), latency_ms=20)
        fake.start()
        out = {}
        for _ in range(rounds):
            for tree in trees:
                turn(pg, fake, tree, out)
        for (tree, t), rows in sorted(out.items()):
            print("%-40s %-20s %s" % (tree, t, "  ".join(
                "db %.3f script %.3f above %.3f" % r for r in rows)))
    finally:
        if fake:
            fake.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
