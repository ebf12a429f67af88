"""The database role is the boundary (core/db.c, core/main.c): scripts' SQL
never changes the CRM, whatever it sends; rapport refuses a DATABASE_URL whose
role may write; sessions that ran a script's own SQL are reset before reuse;
results are capped in rows and bytes.

The tests' rapport logs in as rapport_reader (sql/roles.sql, pg.url); the
owner's psql (pg.sql) sets up and checks. Contacts 120..129 belong to this
file. RAPPORT_DB_POOL=1 makes "the same session" certain.
"""

import subprocess
import time

import pytest

from helpers.server import REPO, rapport_binary
from test_analysis_api import make_scripts

CONTACT = 121

# Every way a statement can try to write, in one run: undo the session's
# read-only default first, then a writable CTE, then a SECURITY DEFINER
# function owned by the superuser (the role check cannot see what a
# function does; the READ ONLY transaction stops it).
WRITER = r'''
return {
  description = "tries to change the CRM",
  run = function(ctx)
    local out = {}
    local _, e1 = db.query("select set_config('default_transaction_read_only', 'off', false)")
    out.set_config = e1 or "ok"
    local _, e2 = db.query("with x as (update contacts set notes = 'pwned' where id = $1 returning 1) select * from x",
                           { ctx.contact_id })
    out.cte = e2 or "ok"
    local _, e3 = db.query("select rapport_test_touch($1)", { ctx.contact_id })
    out.definer = e3 or "ok"
    local _, e4 = db.query("select set_config('transaction_read_only', 'off', false)")
    out.tx = e4 or "ok"
    local _, e5 = db.query("with x as (delete from activities where contact_id = $1 returning 1) select count(*) from x",
                           { ctx.contact_id })
    out.delete = e5 or "ok"
    return out
  end,
}
'''

# Leaves its session dirty: settings, and a session-level advisory lock
# (which no ROLLBACK releases).
DIRTY = r'''
return {
  description = "changes its session",
  run = function(ctx)
    assert(db.query("select set_config('application_name', 'rapport_dirty', false)"))
    assert(db.query("select set_config('search_path', 'pg_catalog', false)"))
    assert(db.query("select pg_advisory_lock(424242)"))
    return { done = true }
  end,
}
'''

LOOK = r'''
return {
  description = "reports its session",
  run = function(ctx)
    local r = assert(db.query("select current_setting('application_name') as app, current_setting('search_path') as path"))
    return { app = r[1].app, path = r[1].path }
  end,
}
'''

BIG = r'''
return {
  description = "asks for too much",
  run = function(ctx)
    local rows, err = db.query(@SQL@)
    if not rows then error(err, 0) end
    return { n = #rows }
  end,
}
'''

BIG_NAMED = r'''
return {
  description = "a named query over the cap",
  queries = { "many" },
  sql = { many = [[SELECT g, $1::bigint AS id FROM generate_series(1, 500) g]] },
  prompt = function(ctx)
    return { { role = "user", content = "rows " .. #ctx.many } }
  end,
}
'''


def big(sql):
    return BIG.replace("@SQL@", "[[" + sql + "]]")


@pytest.fixture(scope="module", autouse=True)
def definer_function(pg):
    """A function with a side effect that runs as the superuser."""
    pg.sql("""
        create or replace function rapport_test_touch(cid bigint) returns int
        language sql security definer as $$
          update contacts set notes = 'pwned by a function' where id = cid returning 1
        $$;
        grant execute on function rapport_test_touch(bigint) to public;
        update contacts set notes = 'original' where id = %d;
    """ % CONTACT)
    yield
    pg.sql("drop function if exists rapport_test_touch(bigint)")


def scripts(tmp_path, **extra):
    return make_scripts(tmp_path / "s", extra={"%s.lua" % k: v for k, v in extra.items()})


def analysis(srv, type_, contact=CONTACT):
    return srv.get("/v1/contacts/%d/analyses/%s?refresh=1" % (contact, type_), timeout=60)


def crm_state(pg):
    return (pg.scalar("select notes from contacts where id = %d" % CONTACT),
            pg.scalar("select count(*) from activities where contact_id = %d" % CONTACT))


def assert_nothing_changed(pg, before, r):
    after = crm_state(pg)
    assert after == before, "a script changed the CRM: %r -> %r (%s)" % (before, after, r.body)
    assert r.status == 200, r.body
    res = r.json()["result"]
    for k in ("cte", "definer", "delete"):
        assert res[k] != "ok", "%s was not refused: %r" % (k, res)
    return res


# ---- whatever the SQL, the CRM stays as it was --------------------------------

def test_a_run_script_cannot_change_the_crm_through_set_config_a_writable_cte_or_a_function(
        make_server, tmp_path, pg):
    before = crm_state(pg)
    srv = make_server(RAPPORT_DB_POOL=1, **scripts(tmp_path, writer=WRITER))
    r = analysis(srv, "writer")
    res = assert_nothing_changed(pg, before, r)
    assert "read-only transaction" in res["definer"], res


@pytest.mark.parametrize("allow", ["1", "yes"])
def test_allow_write_starts_on_the_owner_with_a_warning_and_writes_still_fail(
        make_server, tmp_path, pg, allow):
    before = crm_state(pg)
    # RAPPORT_STATE_URL would default to the owner too, and rapport would
    # create its own schema in the shared CRM database.
    srv = make_server(DATABASE_URL=pg.owner_url, RAPPORT_DB_ALLOW_WRITE=allow, RAPPORT_DB_POOL=1,
                      RAPPORT_STATE_URL=pg.url, **scripts(tmp_path, writer=WRITER))
    warn = srv.wait_for_log(lambda l: "RAPPORT_DB_ALLOW_WRITE=1" in l.get("msg", ""))
    assert warn["level"] == "warn" and "superuser" in warn["error"]
    r = analysis(srv, "writer")
    res = assert_nothing_changed(pg, before, r)
    for k in ("cte", "definer", "delete"):
        assert "read-only transaction" in res[k], res


# ---- the role is checked at start ----------------------------------------------

def refused(make_server, tmp_path, url):
    srv = make_server(start=False, DATABASE_URL=url, **scripts(tmp_path))
    srv.start(wait_healthy=False)
    try:
        rc = srv.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        srv.kill()
        pytest.fail("rapport kept running on a role that may write:\n" + srv.stderr_tail())
    srv.returncode = rc
    srv._stopped = True
    srv._start_failed = True
    assert rc == 1, srv.stderr_tail()
    return srv.stderr_text()


def assert_names_the_fix(err):
    assert "CREATE ROLE rapport_reader LOGIN" in err, err
    assert "GRANT SELECT ON ALL TABLES IN SCHEMA public TO rapport_reader" in err, err
    assert "ALTER DEFAULT PRIVILEGES" in err and "RAPPORT_DB_ALLOW_WRITE=1" in err, err


def test_a_superuser_database_url_is_refused_at_start_with_the_sql_of_the_fix(
        make_server, tmp_path, pg):
    err = refused(make_server, tmp_path, pg.owner_url)
    assert "superuser" in err
    assert_names_the_fix(err)


@pytest.fixture
def role(pg):
    """A login role of the test's own, dropped afterwards."""
    made = []

    def make(name, *grants):
        pg.sql("drop owned by %s; drop role %s;" % (name, name)
               if pg.scalar("select count(*) from pg_roles where rolname = '%s'" % name) != "0"
               else "select 1")
        pg.sql("create role %s login; grant usage on schema public to %s; "
               "grant select on all tables in schema public to %s; %s"
               % (name, name, name, "".join(g + ";" for g in grants)))
        made.append(name)
        return pg.dsn(user=name)

    yield make
    for name in made:
        pg.sql("drop owned by %s; drop role %s" % (name, name))


def test_a_role_that_may_insert_into_one_table_is_refused(make_server, tmp_path, pg, role):
    url = role("rapport_t_inserter", "grant insert on activities to rapport_t_inserter")
    err = refused(make_server, tmp_path, url)
    assert "public.activities" in err and "superuser" not in err, err
    assert_names_the_fix(err)


def test_a_role_that_owns_a_table_it_reads_is_refused(make_server, tmp_path, pg, role):
    url = role("rapport_t_owner", "create table rapport_t_owned (x int)",
               "alter table rapport_t_owned owner to rapport_t_owner")
    err = refused(make_server, tmp_path, url)
    assert "public.rapport_t_owned" in err, err


def test_a_role_that_may_become_a_writer_is_refused(make_server, tmp_path, pg, role):
    """SET ROLE to a member role that may write counts as writing."""
    role("rapport_t_w", "grant update on contacts to rapport_t_w")
    url = role("rapport_t_r", "grant rapport_t_w to rapport_t_r",
               "alter role rapport_t_r noinherit")
    err = refused(make_server, tmp_path, url)
    assert "public.contacts" in err, err


def test_a_role_that_may_create_schemas_is_refused(make_server, tmp_path, pg, role):
    url = role("rapport_t_dbc", "grant create on database rapport to rapport_t_dbc")
    err = refused(make_server, tmp_path, url)
    assert "it may create schemas in the database" in err, err


def test_analyze_and_console_refuse_the_owner_and_work_as_the_reader(make_server, tmp_path, pg):
    srv = make_server(start=False, **scripts(tmp_path))
    env = dict(srv.env, DATABASE_URL=pg.owner_url)
    for argv in (["analyze", str(CONTACT), "echo"], ["console", "-e", "return 1"]):
        p = subprocess.run([str(rapport_binary()), *argv], env=env, cwd=str(REPO),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "CREATE ROLE rapport_reader" in p.stderr, (argv, p.stderr)
    p = subprocess.run([str(rapport_binary()), "analyze", str(CONTACT), "echo"], env=srv.env,
                       cwd=str(REPO), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr + p.stdout


# ---- a session that ran a script's SQL is reset ----------------------------------

def test_a_session_that_ran_a_scripts_sql_is_reset_before_the_next_request(
        make_server, tmp_path, pg):
    srv = make_server(RAPPORT_DB_POOL=1, **scripts(tmp_path, dirty=DIRTY, look=LOOK))
    r = analysis(srv, "dirty")
    assert r.status == 200, r.body
    locks = pg.scalar("select count(*) from pg_locks where locktype = 'advisory' "
                      "and objid = 424242")
    assert locks == "0", "the script's advisory lock outlived its request"
    r = analysis(srv, "look")
    assert r.status == 200, r.body
    res = r.json()["result"]
    assert res["app"] == "rapport" and res["path"] == '"$user", public', res
    # The named queries' prepared statements went with DISCARD ALL; the
    # pool prepares them again instead of failing.
    for _ in range(2):
        r = analysis(srv, "echo")
        assert r.status == 200, r.body


# ---- results are capped ------------------------------------------------------------

def test_a_result_over_the_row_cap_is_a_script_error_naming_the_cap(make_server, tmp_path):
    # A streaming SRF in the select list: the whole set would be 100 M rows
    # (far past the query timeout); over the cap it ends at once.
    srv = make_server(RAPPORT_DB_MAX_ROWS=1000, RAPPORT_DB_TIMEOUT_MS=60000,
                      **scripts(tmp_path, big=big("select generate_series(1, 100000000) as g"),
                                ok=big("select generate_series(1, 1000) as g")))
    r = analysis(srv, "big")
    assert r.status == 500, r.body
    e = r.json()["error"]
    assert e["code"] == "script_error" and "more than 1000 rows (RAPPORT_DB_MAX_ROWS)" in e["message"], e
    assert srv.wait_for_log(lambda l: l.get("msg") == "db result over the cap")["level"] == "warn"
    r = analysis(srv, "ok")
    assert r.status == 200 and r.json()["result"]["n"] == 1000, r.body


def test_a_result_over_the_byte_cap_is_a_script_error_naming_the_cap(make_server, tmp_path):
    srv = make_server(RAPPORT_DB_MAX_BYTES="64KiB",
                      **scripts(tmp_path, big=big("select repeat('x', 1000) as x from generate_series(1, 100)")))
    r = analysis(srv, "big")
    assert r.status == 500, r.body
    assert "more than 65536 bytes (RAPPORT_DB_MAX_BYTES)" in r.json()["error"]["message"], r.body


def test_a_named_query_over_the_cap_fails_naming_the_query_and_the_cap(make_server, tmp_path, fake):
    srv = make_server(RAPPORT_DB_MAX_ROWS=100, **scripts(tmp_path, many=BIG_NAMED))
    r = analysis(srv, "many")
    assert r.status == 500, r.body
    e = r.json()["error"]
    assert e["code"] == "query_failed", e
    assert "query 'many'" in e["message"] and "RAPPORT_DB_MAX_ROWS" in e["message"], e
    assert fake.stats()["chat_calls"] == 0


@pytest.mark.timeout(120)
def test_every_new_session_checks_the_role_again(make_server, tmp_path, pg, role, fake):
    """A role granted more after start is refused on its next session (503,
    logged once) and serves again once the grant is revoked."""
    url = role("rapport_t_later")
    srv = make_server(DATABASE_URL=url, RAPPORT_DB_POOL=1, **scripts(tmp_path))
    assert analysis(srv, "echo").status == 200
    pg.sql("grant insert on deals to rapport_t_later; "
           "select pg_terminate_backend(pid) from pg_stat_activity "
           "where usename = 'rapport_t_later' and application_name = 'rapport'")
    line = srv.wait_for_log(lambda l: l.get("msg") == "db role refused", timeout=15)
    assert line["level"] == "error" and "public.deals" in line["error"], line
    r = analysis(srv, "echo")
    assert r.status == 503 and r.json()["error"]["code"] == "database_unavailable", r.body
    pg.sql("revoke insert on deals from rapport_t_later")
    deadline = time.monotonic() + 20
    while analysis(srv, "echo").status != 200:
        assert time.monotonic() < deadline, "the pool did not heal after the revoke"
        time.sleep(0.2)
    assert len([l for l in srv.log_lines() if l.get("msg") == "db role refused"]) == 1
