"""Benchmark data: one PostgreSQL cluster under var/bench-pg (kept between
runs) holding one database per scale, bench_<contacts>, each loaded once from
sql/demo.sql and then reused. A database is loaded again only when its row
count does not match.

    python3 bench/benchdata.py 10000 100000 [1000000]   # load ahead of a run
"""
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.pg import PgCluster, PgError   # noqa: E402

PG_PORT = int(os.environ.get("BENCH_PG_PORT", 54339))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cluster():
    pg = PgCluster(directory=REPO / "var" / "bench-pg", port=PG_PORT)
    pg.start()
    return pg


def dbname(contacts):
    return "bench_%d" % contacts


def url(pg, contacts):
    """rapport's DATABASE_URL for that scale: the read-only role."""
    return pg.dsn(dbname=dbname(contacts), user=pg.READER)


def loaded(pg, contacts):
    """True when that scale's database is there with its rows (no load)."""
    name = dbname(contacts)
    if pg.scalar("SELECT count(*) FROM pg_database WHERE datname = '%s'" % name,
                 dbname="postgres") != "1":
        return False
    try:
        return int(pg.scalar("SELECT count(*) FROM contacts", dbname=name)) == contacts
    except PgError:
        return False


def ensure(pg, contacts):
    """Loads the scale's database unless it is there; returns its counts
    (contacts, deals, activities)."""
    name = dbname(contacts)
    exists = pg.scalar("SELECT count(*) FROM pg_database WHERE datname = '%s'" % name,
                       dbname="postgres") == "1"
    have = -1
    if exists:
        try:
            have = int(pg.scalar("SELECT count(*) FROM contacts", dbname=name))
        except PgError:
            have = -1
    if have != contacts:
        if not exists:
            pg.sql('CREATE DATABASE "%s"' % name, dbname="postgres")
        log("loading %d demo contacts into %s (once; kept in var/bench-pg)..." % (contacts, name))
        t0 = time.monotonic()
        pg.sql_file(REPO / "sql" / "schema.sql", dbname=name)
        pg.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": contacts}, dbname=name,
                    timeout=24 * 3600)
        pg.sql("VACUUM ANALYZE", dbname=name, timeout=3600)
        log("  loaded in %.0f s" % (time.monotonic() - t0))
    pg.sql_file(REPO / "sql" / "roles.sql", dbname=name)
    row = pg.sql("SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM deals),"
                 " (SELECT count(*) FROM activities)", dbname=name)[0]
    return [int(x) for x in row]


if __name__ == "__main__":
    pg = cluster()
    for n in sys.argv[1:]:
        print(n, ensure(pg, int(n)))
