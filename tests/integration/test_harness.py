"""The test harness itself: the PostgreSQL fixture and helpers, the demo data,
tools/pg.sh's crash recovery, and the fake/server fixtures' wiring."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.pg import PgCluster

REPO = Path(__file__).resolve().parents[2]


# Other tests may add rows to the session database (ids above the demo's),
# so these look at the demo's ids 1..200 only.

def test_pg_fixture_has_schema_and_demo(pg):
    assert pg.scalar("select count(*) from contacts where id <= 200") == "200"
    assert pg.scalar("select min(id) from contacts") == "1"
    for table in ("deals", "activities"):
        assert int(pg.scalar("select count(*) from %s" % table)) > 0, table


def test_pg_url_is_usable_by_libpq(pg):
    out = subprocess.run(["psql", "-X", "-At", "-d", pg.url, "-c",
                          "select current_database()"],
                         stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "rapport"


def test_pg_sql_returns_rows(pg):
    rows = pg.sql("select 1, 'a'; select 2, null::text")
    assert rows == [["1", "a"], ["2", ""]]
    with pytest.raises(AssertionError):
        pg.sql("select * from no_such_table")


def test_pg_restart_keeps_port_and_data(pg):
    port = pg.port
    before = pg.scalar("select count(*) from contacts")
    pg.restart()
    assert pg.port == port
    assert pg.is_running()
    assert pg.scalar("select count(*) from contacts") == before
    assert pg.scalar("show port") == str(port)


def _checksum(pg, db):
    return pg.sql("""
        select md5(string_agg(concat_ws('|', id, first_name, last_name, email,
                                        company, industry, lifecycle_stage),
                              ',' order by id)) from contacts;
        select md5(string_agg(concat_ws('|', id, contact_id, name, stage,
                                        amount, probability),
                              ',' order by id)) from deals;
        select md5(string_agg(concat_ws('|', id, contact_id, kind, subject),
                              ',' order by id)) from activities;
    """, dbname=db)


def test_demo_data_is_deterministic(pg):
    sums = []
    for db in ("rapport_det_a", "rapport_det_b"):
        pg.create_database(db)
        try:
            pg.sql_file(REPO / "sql" / "schema.sql", dbname=db)
            pg.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": 50},
                        dbname=db)
            assert pg.scalar("select count(*) from contacts", dbname=db) == "50"
            sums.append(_checksum(pg, db))
        finally:
            pg.sql('drop database if exists "%s" with (force)' % db,
                   dbname="postgres")
    assert sums[0] == sums[1]


def test_schema_load_is_idempotent(pg):
    before = pg.scalar("select count(*) from contacts")
    pg.sql_file(REPO / "sql" / "schema.sql")
    assert pg.scalar("select count(*) from contacts") == before


def test_pg_sh_survives_a_crash():
    """kill -9 of the postmaster leaves a stale postmaster.pid: start works."""
    with PgCluster() as c:
        # synchronous_commit=off: flush before the "crash" so the row is kept
        c.sql("create table t (x int); insert into t values (42); checkpoint")
        c.start()  # already running: a no-op
        pid = int((Path(c.dir) / "data" / "postmaster.pid")
                  .read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while c.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not c.is_running()
        assert (Path(c.dir) / "data" / "postmaster.pid").exists()
        c.start()
        assert c.scalar("select x from t") == "42"


def test_fake_fixture_is_reset_and_reachable(fake):
    stats = fake.stats()
    assert isinstance(stats, dict)
    assert fake.base_url.startswith("http://127.0.0.1:%d" % fake.port)


def test_server_fixture_serves_healthz(server):
    r = server.get("/healthz")
    assert r.status == 200
    assert server.pid and server.is_running()
    assert server.log_lines(), "rapport logged no JSON line on stderr"
    assert server.non_json_lines() == []
