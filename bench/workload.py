"""The CRM-day benchmark (`make bench-workload`): one compressed working day of
a CRM team against two rapport servers side by side, the seed-like policy
(ttl only: no grace, no fingerprints, no warm jobs) and rapport's full policy
(grace, fingerprints, warm jobs), on the same data, the same views and the
same writes at the same moments.

    bench/workload.py [--contacts 10000] [--day-seconds 120] [--latency-ms 1000] …

The day (defaults; every one is a flag, see --help):
- Data: 10,000 demo contacts (sql/demo.sql) in the
  database `rapport_workload` of bench/bench.py's kept cluster var/bench-pg,
  reloaded when a previous run wrote to it, so every run starts from the same
  rows.
- Clock: 8 working hours in 120 s (240x). Every script's ttl and stale_ttl are
  scaled by the same factor (RAPPORT_TTL_SCALE when the binary knows it,
  otherwise a copy of scripts/ with the ttl fields multiplied), so a 1-hour
  ttl lasts 15 s of the run.
- Views: 40 users x 75 contact pages a day = 3,000 views (25 a second at
  240x), Poisson arrivals. Each view shows 1-3 insight types (uniform), picked
  by weight (relationship_health 0.5, smart_tips 0.3, contextual_research
  0.2) and fetched in parallel, as a page does; the view's latency is its
  slowest insight. Contacts come from a Zipf-Mandelbrot popularity
  (weight 1/(rank+10)^1.1). Popularity follows recent activity, loosely: the
  popularity rank is the contact's rank by latest activity (what
  warm_candidates orders by) times a log-normal factor (sigma 0.5), so the
  contacts a team works are mostly, not only, the recently active ones; the
  report gives the share of views that fell on the warm job's top N.
- Writes: 25 new activities and 5 deal changes per user and day (1,200), as
  SQL on the owner connection so the NOTIFY triggers fire; 70 % on contacts
  drawn from the same popularity (the rep who works a contact logs it), 30 %
  uniform (mail sync, other teams). The bench records each commit's time per
  contact.
- Upstream: one fake per policy (so each has its own call counter) at a fixed
  1000 ms latency.
- Warm (full policy only): before the day, POST /v1/warm {"top": 2000} with
  the fake at 50 ms (the night's job: its latency does not matter, its calls
  are counted apart), then {"top": 500} every 2 working hours during the day.
  The bench posts the in-day jobs itself rather than setting
  RAPPORT_WARM_EVERY, so their period follows the compressed clock exactly. A
  server without /v1/warm gets "warm unavailable" in the report.

Measures, per policy: the share of views that waited for the model (a view
waited when any of its insights answered cache.status "miss" or "coalesced";
the share of views slower than 100 ms is printed as a cross-check that needs
no status), view latency p50/p95/p99 (client side, from the moment the view
was sent), model calls and cost per 1,000 views (the fake's call counter;
rapport_llm_cost_usd_total from /metrics), and freshness: the share of views
that showed a result whose generated_at is before a change of the contact that
was committed before the view was sent, and the longest such lag (view time
minus the first change the result does not reflect). A Markdown table goes to
stdout, the table and every figure to bench/results/workload-<stamp>.{md,json},
every answer (one JSON line each) to workload-<stamp>-answers.jsonl.

Knobs the policies need (RAPPORT_FRESHNESS, RAPPORT_TTL_SCALE) are passed only
when the binary knows them (their names are in its settings table), so the
benchmark runs on a server without them and says what was missing.
"""

import argparse
import ast
import bisect
import collections
import datetime
import http.client
import json
import math
import operator
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.fake import FakeOpenAI          # noqa: E402
from helpers.pg import PgCluster, PgError, PG_SH      # noqa: E402
from helpers.server import Rapport           # noqa: E402


def ensure_data(db, contacts):
    """The demo schema, the reader role and `contacts` demo contacts (loaded
    once; a different count reloads); returns [contacts, deals, activities]."""
    db.sql_file(REPO / "sql" / "schema.sql")
    db.sql_file(REPO / "sql" / "roles.sql")      # rapport logs in as rapport_reader
    have = int(db.scalar("SELECT count(*) FROM contacts"))
    if have != contacts:
        log("loading %d demo contacts (once; kept in var/bench-pg)..." % contacts)
        t0 = time.monotonic()
        db.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": contacts})
        log("  loaded in %.0f s" % (time.monotonic() - t0))
    counts = db.sql("SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM deals),"
                    " (SELECT count(*) FROM activities)")[0]
    return [int(x) for x in counts]


TYPES = ("relationship_health", "smart_tips", "contextual_research")
TYPE_WEIGHTS = (0.5, 0.3, 0.2)
WAITED = ("miss", "coalesced")          # the statuses that waited for the model
SLOW_MS = 100.0                         # the status-free cross-check of "waited"
POLICIES = (("ttl", "seed-like (ttl only)"), ("full", "rapport full policy"))
DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def parse_iso(s):
    """generated_at ("2026-11-26T00:30:38.260Z") -> epoch seconds."""
    for f in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(s, f).replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except (TypeError, ValueError):
            pass
    return None


# ---- the database ------------------------------------------------------------

class WorkloadDb(PgCluster):
    """bench/bench.py's kept cluster, with `dbname` as the default database
    of every call, so the loader fills this database and leaves its
    own 100,000-contact one alone."""

    def __init__(self, directory, port, dbname):
        super().__init__(directory=directory, port=port)
        self.dbname = dbname

    def sql(self, text, dbname=None, timeout=300):
        return super().sql(text, dbname=dbname or self.dbname, timeout=timeout)

    def scalar(self, text, dbname=None):
        return super().scalar(text, dbname=dbname or self.dbname)

    def sql_file(self, path, vars=None, dbname=None, timeout=900):
        return super().sql_file(path, vars=vars, dbname=dbname or self.dbname, timeout=timeout)

    @property
    def url(self):
        return self.dsn(dbname=self.dbname, user=self.READER)

    @property
    def owner_url(self):
        return self.dsn(dbname=self.dbname)

    def ensure_database(self, name, fresh=False):
        if fresh:
            self.sql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, dbname="postgres")
        if not self.sql("SELECT 1 FROM pg_database WHERE datname = '%s'" % name, dbname="postgres"):
            self.sql('CREATE DATABASE "%s"' % name, dbname="postgres")

    def marker(self):
        return self.scalar("SELECT coalesce(shobj_description(oid, 'pg_database'), '')"
                           "  FROM pg_database WHERE datname = current_database()")

    def set_marker(self, text):
        self.sql("COMMENT ON DATABASE \"%s\" IS '%s'" % (self.dbname, text))


def prepare_data(db, contacts):
    """Demo data at `contacts`, pristine: the loader, then a reload if
    an earlier run's writes are in it (the database's comment says so)."""
    db.ensure_database(db.dbname)
    dirty = db.marker() == "written"
    try:
        have = int(db.scalar("SELECT count(*) FROM contacts"))
    except PgError:             # a new database: no tables yet
        have = None
    counts = ensure_data(db, contacts)
    if dirty and have == contacts:     # (a count that differed was just reloaded)
        log("reloading %d demo contacts (an earlier run wrote to them)..." % contacts)
        t0 = time.monotonic()
        db.sql_file(REPO / "sql" / "demo.sql", vars={"contacts": contacts})
        log("  reloaded in %.0f s" % (time.monotonic() - t0))
        counts = [int(x) for x in db.sql(
            "SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM deals),"
            " (SELECT count(*) FROM activities)")[0]]
    db.set_marker("pristine")
    return counts


WRITER_SETUP = r"""
PREPARE wl_activity(bigint, int) AS
  INSERT INTO activities (contact_id, kind, direction, subject, body, outcome, occurred_at)
  SELECT $1, k.kind, k.direction, k.subject, k.body, k.outcome, now()
    FROM (VALUES
      (0, 'call', 'outbound', 'Check-in call', 'Walked through the rollout plan; they want pricing for two more teams.', 'connected'),
      (1, 'email', 'inbound', 'Re: proposal', 'Asked for a revised quote before Friday and a security review.', 'replied'),
      (2, 'meeting', NULL, 'Quarterly review', 'Reviewed usage; the new VP wants a demo of reporting.', 'completed'),
      (3, 'note', NULL, 'Internal note', 'Our champion moves to another role next month.', NULL),
      (4, 'email', 'outbound', 'Follow-up', 'Sent the case study they asked for.', 'no_reply'),
      (5, 'call', 'outbound', 'Renewal call', 'Left a voicemail about the renewal date.', 'voicemail'))
      AS k(i, kind, direction, subject, body, outcome)
   WHERE k.i = $2;
PREPARE wl_deal(bigint, int) AS
  UPDATE deals SET
      stage = CASE stage WHEN 'prospecting' THEN 'qualification' WHEN 'qualification' THEN 'proposal'
                         WHEN 'proposal' THEN 'negotiation' WHEN 'negotiation' THEN 'closed_won'
                         ELSE stage END,
      amount = round(coalesce(amount, 1000) * (1.05 + ($2 % 5) * 0.05), 2),   -- always a visible change
      probability = least(100, coalesce(probability, 10) + 10)
   WHERE id = (SELECT id FROM deals WHERE contact_id = $1 ORDER BY (id * 7 + $2) % 97, id LIMIT 1);
PREPARE wl_new_deal(bigint, int) AS
  INSERT INTO deals (contact_id, name, stage, amount, currency, probability, close_date)
  SELECT $1, 'Expansion ' || $2, 'prospecting', 5000 + ($2 % 50) * 1000, 'USD', 10, current_date + 30
   WHERE NOT EXISTS (SELECT 1 FROM deals WHERE contact_id = $1);
"""


class Writer:
    """One long-lived psql on the owner connection (no Python driver on the
    box): each batch is one transaction of prepared statements whose
    arguments are integers, then an \\echo marker, so the commit time is
    known to the millisecond."""

    def __init__(self, db, workdir):
        self.err = open(Path(workdir) / "writer.stderr", "wb")
        self.proc = subprocess.Popen(
            [str(PG_SH), "psql", str(db.dir), str(db.port), "-q", "-At",
             "-v", "ON_ERROR_STOP=1", "-d", db.dbname],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
            text=True, bufsize=1)
        self.n = 0
        self._run(WRITER_SETUP)

    def _run(self, sql):
        self.n += 1
        mark = "WL_DONE %d" % self.n
        self.proc.stdin.write(sql + "\n\\echo " + mark + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the writer's psql exited (status %s); see writer.stderr"
                                   % self.proc.poll())
            if line.strip() == mark:
                return

    def batch(self, writes):
        """writes: [(contact_id, "activity"|"deal", arg)]; returns the time
        (epoch s) the transaction had committed."""
        stmts = ["BEGIN;"]
        for cid, kind, arg in writes:
            if kind == "activity":
                stmts.append("EXECUTE wl_activity(%d, %d);" % (int(cid), int(arg) % 6))
            else:
                stmts.append("EXECUTE wl_deal(%d, %d);" % (int(cid), int(arg)))
                stmts.append("EXECUTE wl_new_deal(%d, %d);" % (int(cid), int(arg)))
        stmts.append("COMMIT;")
        self._run("\n".join(stmts))
        return time.time()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


# ---- the scripts' ttl under the compressed clock -------------------------------

TTL_LINE = re.compile(r"^(\s*)(ttl|stale_ttl)(\s*=\s*)([^,\n]+?)(\s*),", re.M)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def _arith(expr):
    """A script's `ttl = 6 * 3600` right-hand side, evaluated (numbers and
    + - * / only); None for anything else."""
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return float(n.value)
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError(expr)
    try:
        return ev(ast.parse(expr.strip(), mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError):
        return None


def script_ttls(scripts_dir):
    """{type: {"ttl": s, "stale_ttl": s or None}} as the script files say."""
    out = {}
    for f in sorted(Path(scripts_dir).glob("*.lua")):
        d = {"ttl": None, "stale_ttl": None}
        for m in TTL_LINE.finditer(f.read_text()):
            d[m.group(2)] = _arith(m.group(4))
        out[f.stem] = d
    return out


def scaled_scripts_copy(dst, scale):
    """scripts/ copied with every ttl and stale_ttl multiplied by `scale`:
    the compressed clock for a server without RAPPORT_TTL_SCALE."""
    shutil.copytree(REPO / "scripts", dst)
    for f in Path(dst).glob("*.lua"):
        text = f.read_text()
        f.write_text(TTL_LINE.sub(lambda m: "%s%s%s(%s) * %r%s," % (
            m.group(1), m.group(2), m.group(3), m.group(4), scale, m.group(5)), text))
    return dst


def binary_knows(binary, name):
    """Whether `name` is one of the binary's string constants (its settings
    table): the knob exists in this build."""
    try:
        return (name.encode() + b"\0") in Path(binary).read_bytes()
    except OSError:
        return False


# ---- HTTP ---------------------------------------------------------------------------

class Client:
    """Keep-alive connections to one server, one per thread, as a CRM back
    end's pool would hold them."""

    def __init__(self, host, port, timeout=60):
        self.host, self.port, self.timeout = host, port, timeout
        self.local = threading.local()

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                r = conn.getresponse()
                raw = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, raw
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                # Once more on a fresh connection, for a keep-alive one the
                # server closed while idle; never a POST (it may have run).
                if attempt or method != "GET":
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, body=None):
        status, headers, raw = self.request(method, path, body)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return status, headers, doc


def metrics(client):
    """/metrics as {sample name with labels: value}."""
    status, _, raw = client.request("GET", "/metrics")
    out = {}
    if status != 200:
        return out
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, family):
    return sum(v for k, v in m.items() if k == family or k.startswith(family + "{"))


# ---- the day's plan -------------------------------------------------------------------

def zipf_cum(n, s, q):
    w, acc, cum = 0.0, 0.0, []
    for r in range(n):
        w = 1.0 / (r + 1 + q) ** s
        acc += w
        cum.append(acc)
    return cum


def plan_day(args, by_recency, rng):
    """The day, identical for both policies: views [(t, contact, types)],
    writes [(t, contact, kind, arg)] with t in seconds from the start, and
    the popularity order."""
    n = len(by_recency)
    # Popularity: recency rank times a log-normal factor, re-ranked.
    keyed = sorted(range(n), key=lambda r: math.log(r + 1) + rng.gauss(0, args.recency_sigma))
    popular = [by_recency[r] for r in keyed]
    cum = zipf_cum(n, args.zipf_s, args.zipf_q)

    def popular_contact():
        return popular[bisect.bisect_left(cum, rng.random() * cum[-1])]

    def arrivals(total):
        rate = total / args.day_seconds
        t, out = 0.0, []
        while total > 0:
            t += rng.expovariate(rate)
            if t >= args.day_seconds:
                break
            out.append(t)
        return out

    views = []
    for t in arrivals(args.users * args.views_per_user):
        k = rng.randint(1, 3)
        types, pool, weights = [], list(TYPES), list(TYPE_WEIGHTS)
        for _ in range(k):
            i = rng.choices(range(len(pool)), weights=weights)[0]
            types.append(pool.pop(i))
            weights.pop(i)
        views.append((t, popular_contact(), types))
    writes = []
    per_user = args.activities_per_user + args.deal_changes_per_user
    p_deal = args.deal_changes_per_user / per_user if per_user else 0
    for t in arrivals(args.users * per_user):
        cid = popular_contact() if rng.random() < args.writes_popular else by_recency[rng.randrange(n)]
        writes.append((t, cid, "deal" if rng.random() < p_deal else "activity", rng.randrange(1 << 30)))
    return views, writes, popular


# ---- one policy's server ---------------------------------------------------------------

class Side:
    """One policy: its fake upstream, its server, its client, its results."""

    def __init__(self, policy, label, args, db, workdir, knobs, scripts_dir, threads):
        self.policy, self.label, self.args = policy, label, args
        # rapport's own state (warm jobs) in a database per policy: the two
        # servers never share a job's items, and no job of an earlier run
        # resumes.
        state_db = "%s_state_%s" % (db.dbname, policy)
        db.ensure_database(state_db, fresh=True)
        self.fake = FakeOpenAI(binary=args.fake_bin, latency_ms=args.latency_ms,
                               chunk_delay_ms=0, extra_args=["--quiet"])
        self.fake.start()
        env = {"RAPPORT_LOG_LEVEL": "warn",
               "RAPPORT_CACHE_BYTES": str(512 << 20),
               "RAPPORT_STATE_URL": db.dsn(dbname=state_db),
               "RAPPORT_PROMPTS": str(REPO / "prompts")}
        if knobs["RAPPORT_FRESHNESS"]:
            env["RAPPORT_FRESHNESS"] = policy
        if knobs["RAPPORT_TTL_SCALE"]:
            env["RAPPORT_TTL_SCALE"] = repr(args.scale)
        else:
            env["RAPPORT_SCRIPTS"] = str(scripts_dir)
        extra = dict(kv.split("=", 1) for kv in args.full_env) if policy == "full" else {}
        env.update(extra)
        self.env_shown = {k: v for k, v in env.items()
                          if k in ("RAPPORT_FRESHNESS", "RAPPORT_TTL_SCALE", "RAPPORT_SCRIPTS")
                          or k in extra}
        self.srv = Rapport(pg=db, fake=self.fake, env=env, binary=args.rapport_bin,
                           workdir=Path(workdir) / ("rapport-" + policy))
        try:
            self.srv.start(timeout=30)
        except BaseException:
            self.fake.stop()
            raise
        self.client = Client(self.srv.host, self.srv.port)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="views-" + policy)
        self.results = collections.defaultdict(list)   # view index -> [insight record]
        self.lock = threading.Lock()
        self.warm = {"available": None, "jobs": [], "note": ""}

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _, _ = self.client.request("GET", "/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("%s: /readyz not 200 after %d s" % (self.label, timeout))

    def analysis_types(self):
        status, _, doc = self.client.json("GET", "/v1/analysis-types")
        if status != 200 or not isinstance(doc, dict):
            return {}
        items = doc.get("types") or doc.get("analysis_types") or []
        return {t.get("name"): t for t in items if isinstance(t, dict)}

    # -- warm jobs ------------------------------------------------------------
    def start_warm(self, top, patience=0.0):
        """POSTs a warm job of the top N; its path, or None. A 503 (rapport's
        state database still connecting or migrating) is retried for
        `patience` seconds."""
        deadline = time.monotonic() + patience
        while True:
            status, headers, doc = self.client.json("POST", "/v1/warm", {"top": top})
            if status != 503 or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if status != 202:
            err = (doc or {}).get("error") if isinstance(doc, dict) else None
            self.warm["available"] = False
            self.warm["note"] = "POST /v1/warm answered %d%s" % (
                status, " %s: %s" % (err.get("code"), err.get("message")) if isinstance(err, dict) else "")
            return None
        self.warm["available"] = True
        job = (doc or {}).get("job") or {}
        loc = headers.get("location") or ("/v1/jobs/%s" % job.get("id"))
        if "://" in loc:        # an absolute Location: its path
            parts = urllib.parse.urlsplit(loc)
            loc = parts.path + ("?" + parts.query if parts.query else "")
        self.warm["jobs"].append({"top": top, "location": loc, "posted_at": time.time()})
        return loc

    def job_state(self, loc):
        status, _, doc = self.client.json("GET", loc)
        job = (doc or {}).get("job") if status == 200 and isinstance(doc, dict) else None
        return job or {}

    def wait_job(self, loc, timeout):
        deadline = time.monotonic() + timeout
        last = 0.0
        job = {}
        while time.monotonic() < deadline:
            job = self.job_state(loc)
            if job.get("state") in ("done", "cancelled", "failed"):
                return job
            if time.monotonic() - last > 5:
                log("  %s warm job: %s" % (self.label, {k: job.get(k) for k in
                                                        ("state", "total", "done", "skipped", "failed")}))
                last = time.monotonic()
            time.sleep(0.25)
        job["timed_out"] = True
        return job

    # -- views ------------------------------------------------------------------
    def view(self, i, cid, types, t_sched):
        for ty in types:
            self.pool.submit(self._one, i, cid, ty, t_sched)

    def _one(self, i, cid, ty, t_sched):
        sent = time.time()
        rec = {"type": ty, "contact": cid, "sent": sent}
        try:
            status, headers, doc = self.client.json("GET", "/v1/contacts/%d/analyses/%s" % (cid, ty))
            rec["ms"] = (time.perf_counter() - t_sched) * 1000.0
            rec["status"] = status
            if status == 200 and isinstance(doc, dict):
                cache = doc.get("cache") or {}
                rec["cache"] = cache.get("status") or (headers.get("x-cache") or "").lower()
                rec["generated_at"] = parse_iso(doc.get("generated_at"))
                rec["ttl_ms"] = cache.get("ttl_ms")
            else:
                rec["error"] = ((doc or {}).get("error") or {}).get("code") if isinstance(doc, dict) else None
        except Exception as e:      # a failed view is a result, not a crash
            rec["ms"] = (time.perf_counter() - t_sched) * 1000.0
            rec["status"] = 0
            rec["error"] = repr(e)
        with self.lock:
            self.results[i].append(rec)

    def drain(self):
        self.pool.shutdown(wait=True)

    def settle(self, timeout=15):
        """Waits for background refreshes and warm items still running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if metrics(self.client).get("rapport_analysis_flights", 0) == 0:
                return True
            time.sleep(0.2)
        return False

    def counters(self):
        m = metrics(self.client)
        return {"chat_calls": self.fake.stats().get("chat_calls", 0),
                "cost_usd": metric_sum(m, "rapport_llm_cost_usd_total"),
                "llm_calls": metric_sum(m, "rapport_llm_calls_total"),
                "metrics": m}

    def stop(self):
        try:
            self.srv.stop(check=False)
        finally:
            self.fake.stop()


# ---- the figures ---------------------------------------------------------------------

def summarise(side, views, changes, before, after, pre_warm, graces, scale, warmed=frozenset()):
    """Per-policy figures from the view records and the counters."""
    n_views = len(views)
    recs = [side.results.get(i, []) for i in range(n_views)]
    answered = [r for r in recs if r]
    statuses = collections.Counter()
    waited = slow = failed_views = outdated = 0
    lat, lags, miss_ms, outdated_recs = [], [], [], []
    outdated_status = collections.Counter()     # a "hit" here would mean a lost NOTIFY
    insights = 0
    for i, rs in enumerate(recs):
        if len(rs) != len(views[i][2]):
            failed_views += 1
            continue
        insights += len(rs)
        if any(r["status"] != 200 for r in rs):
            failed_views += 1
        v_ms = max(r["ms"] for r in rs)
        lat.append(v_ms)
        if v_ms > SLOW_MS:
            slow += 1
        if any(r.get("cache") in WAITED for r in rs):
            waited += 1
        lag = None
        for r in rs:
            statuses[r.get("cache") or ("error %s" % r["status"])] += 1
            if r.get("cache") == "miss":
                miss_ms.append(r["ms"])
            g = r.get("generated_at")
            if g is None:
                continue
            ws = changes.get(r["contact"], [])
            j = bisect.bisect_right(ws, g)
            if j < len(ws) and ws[j] <= r["sent"]:
                this = r["sent"] - ws[j]
                r["lag_s"] = this
                outdated_recs.append(r)
                lag = this if lag is None else max(lag, this)
                outdated_status[r.get("cache")] += 1
        if lag is not None:
            outdated += 1
            lags.append(lag)
    # "One refresh": what a model wait took in this run (p99 of the misses),
    # at least the fake's latency.
    refresh_s = max(pct(miss_ms, 99) or 0.0, float(side.args.latency_ms)) / 1000.0
    bound_misses = sum(1 for r in outdated_recs
                       if r["lag_s"] > graces.get(r["type"], 0.0) + refresh_s)
    lag_by_type = {}
    for r in outdated_recs:
        t = lag_by_type.setdefault(r["type"], {"max_lag_s": 0.0, "bound_s": graces.get(r["type"], 0.0) + refresh_s,
                                               "answers": 0})
        t["max_lag_s"] = max(t["max_lag_s"], r["lag_s"])
        t["answers"] += 1
    # Why each wait happened, per (contact, type) in the order sent: the
    # first view of the day (of a contact the night's job warmed or not, and
    # if warmed, whether it changed before the view), a change since the
    # last result shown, or else the ttl (or grace) ran out.
    causes = collections.Counter()
    by_key = collections.defaultdict(list)
    for rs in recs:
        for r in rs:
            if r["status"] == 200:
                by_key[(r["contact"], r["type"])].append(r)
    for key, rs in by_key.items():
        shown = None
        for r in sorted(rs, key=lambda r: r["sent"]):
            if r.get("cache") in WAITED:
                ws = changes.get(key[0], [])
                j = bisect.bisect_right(ws, shown) if shown is not None else 0
                if shown is None:
                    causes["first view"] += 1
                    if key[0] in warmed:    # and why warming it did not help
                        causes["first view, warmed"] += 1
                        if ws and ws[0] <= r["sent"]:
                            causes["first view, warmed, changed before"] += 1
                else:
                    causes["changed" if j < len(ws) and ws[j] <= r["sent"] else "expired"] += 1
            if r.get("generated_at") is not None:
                shown = max(shown or 0.0, r["generated_at"])
    counted = len(lat)
    calls = after["chat_calls"] - before["chat_calls"]
    cost = after["cost_usd"] - before["cost_usd"]
    per_k = 1000.0 / counted if counted else 0.0
    # Every counter's change over the day (revalidations, model calls saved,
    # warm items… under whatever names the server has), for the JSON.
    deltas = {k: after["metrics"].get(k, 0) - before["metrics"].get(k, 0)
              for k in after["metrics"] if k.split("{")[0].endswith("_total")}
    return {
        "label": side.label, "policy": side.policy, "env": side.env_shown,
        "views_sent": n_views, "views_answered": len(answered), "views_counted": counted,
        "views_failed": failed_views, "insights": insights,
        "waited_share": waited / counted if counted else 0.0,
        "slow_share": slow / counted if counted else 0.0,
        "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
        "statuses": dict(statuses),
        "wait_causes": dict(causes),
        "model_calls": calls, "model_calls_per_1k_views": calls * per_k,
        "cost_usd": cost, "cost_per_1k_views_usd": cost * per_k,
        "llm_calls_metric": after["llm_calls"] - before["llm_calls"],
        "pre_day_warm": pre_warm,
        "outdated_share": outdated / counted if counted else 0.0,
        "outdated_views": outdated,
        "outdated_insights_by_status": dict(outdated_status),
        "max_lag_s": max(lags) if lags else 0.0,
        "max_lag_workday_min": (max(lags) if lags else 0.0) / scale / 60.0,
        "p95_lag_s": pct(lags, 95) or 0.0,
        "lag_over_bound_insights": bound_misses,
        "lag_by_type": lag_by_type,
        "miss_p99_ms": pct(miss_ms, 99),
        "one_refresh_s": refresh_s,
        "grace_s": graces,
        "warm": side.warm,
        "counters_delta": {k: v for k, v in sorted(deltas.items()) if v},
    }


def fmt_pct(x):
    return "%.1f %%" % (100.0 * x)


def fmt_ms(x):
    return "–" if x is None else ("%.1f" % x if x < 100 else "%.0f" % x)


def table(out):
    a, b = out["policies"]
    rows = []

    def row(name, target, fa, fb):
        rows.append("| %s | %s | %s | %s |" % (name, target, fa(a), fb(b) if fb else fa(b)))

    row("views (insight requests)", "", lambda s: "%d (%d)" % (s["views_counted"], s["insights"]), None)
    row("views that waited for the model (an insight *miss*/*coalesced*)", "full ≤ 3 %",
        lambda s: fmt_pct(s["waited_share"]), None)
    row("views slower than %d ms (cross-check)" % SLOW_MS, "", lambda s: fmt_pct(s["slow_share"]), None)
    row("view latency p50 / p95 / p99 (ms)", "full p95 ≤ 20",
        lambda s: "%s / %s / %s" % (fmt_ms(s["p50_ms"]), fmt_ms(s["p95_ms"]), fmt_ms(s["p99_ms"])), None)
    row("insight answers by cache.status", "",
        lambda s: ", ".join("%s %d" % kv for kv in sorted(s["statuses"].items(), key=lambda kv: -kv[1])), None)
    row("insights that waited, by cause: first view of the day (of them warmed; of those changed"
        " first) / data changed since shown / ttl ran out", "",
        lambda s: "%d (%d; %d) / %d / %d" % tuple(s["wait_causes"].get(k, 0) for k in (
            "first view", "first view, warmed", "first view, warmed, changed before", "changed", "expired")),
        None)
    row("model calls per 1,000 views, during the day", "full ≤ 50 % of seed-like",
        lambda s: "%.0f (%d calls)" % (s["model_calls_per_1k_views"], s["model_calls"]), None)
    row("model calls before the day (the night's warm job)", "",
        lambda s: "%d" % s["pre_day_warm"]["model_calls"] if s["pre_day_warm"]["ran"] else "none", None)
    row("model cost per 1,000 views, during the day", "",
        lambda s: "$%.4f" % s["cost_per_1k_views_usd"], None)
    row("views showing a result older than the contact's latest change", "",
        lambda s: "%s (%d)" % (fmt_pct(s["outdated_share"]), s["outdated_views"]), None)
    row("longest such lag, run seconds ≈ working-day minutes (per type: longest / bound)",
        "full ≤ grace + one refresh",
        lambda s: "%.1f s ≈ %.0f min%s" % (s["max_lag_s"], s["max_lag_workday_min"], "".join(
            "; %s %.1f / %.1f s" % (ty, d["max_lag_s"], d["bound_s"])
            for ty, d in sorted(s["lag_by_type"].items()))), None)
    row("failed views", "", lambda s: "%d" % s["views_failed"], None)
    head = "| measure | target | %s | %s |\n|---|---|---|---|" % (a["label"], b["label"])
    return head + "\n" + "\n".join(rows)


def verdicts(out):
    a, b = out["policies"]
    v = []
    v.append(("≥ 97 % of views without waiting (full)", 1 - b["waited_share"] >= 0.97,
              "%s without waiting" % fmt_pct(1 - b["waited_share"])))
    v.append(("view p95 ≤ 20 ms (full)", b["p95_ms"] is not None and b["p95_ms"] <= 20,
              "p95 %s ms" % fmt_ms(b["p95_ms"])))
    ratio = (b["model_calls_per_1k_views"] / a["model_calls_per_1k_views"]
             if a["model_calls_per_1k_views"] else None)
    v.append(("model calls per 1,000 views ≤ 50 % of seed-like (during the day)",
              ratio is not None and ratio <= 0.5,
              "%s of seed-like" % ("–" if ratio is None else fmt_pct(ratio))))
    with_night = b["model_calls"] + b["pre_day_warm"]["model_calls"]
    ratio_n = with_night / a["model_calls"] if a["model_calls"] else None
    v.append(("the same, counting the night's warm job", ratio_n is not None and ratio_n <= 0.5,
              "%s of seed-like" % ("–" if ratio_n is None else fmt_pct(ratio_n))))
    v.append(("no view older than the latest change by more than grace + one refresh (full)",
              b["lag_over_bound_insights"] == 0,
              "%d insight answers over the bound, longest lag %.1f s" % (
                  b["lag_over_bound_insights"], b["max_lag_s"])))
    return v


# ---- the run -----------------------------------------------------------------------------

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
        mem = ", %.0f GiB" % (kb / (1 << 20))
    except (OSError, ValueError, IndexError):
        pass
    return "%s, %d cores%s, %s" % (cpu, os.cpu_count(), mem, platform.platform())


def run(args):
    args.scale = args.day_seconds / (args.day_hours * 3600.0)
    rng = random.Random(args.seed)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="rapport-workload-"))
    knobs = {k: binary_knows(args.rapport_bin, k) for k in
             ("RAPPORT_FRESHNESS", "RAPPORT_TTL_SCALE", "RAPPORT_WARM_EVERY")}
    log("knobs this binary knows: %s" % ", ".join("%s=%s" % kv for kv in knobs.items()))

    db = WorkloadDb(args.pg_dir, args.pg_port, args.database)
    was_running = db.is_running()
    db.start()
    sides = []
    writer = None
    answers = []
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "loadavg_start": os.getloadavg(), "knobs": knobs,
           "settings": {k: v for k, v in vars(args).items() if k not in ("rapport_bin", "fake_bin")},
           "rapport_bin": str(args.rapport_bin)}
    try:
        counts = prepare_data(db, args.contacts)
        out.update(contacts=counts[0], deals=counts[1], activities=counts[2])
        by_recency = [int(r[0]) for r in db.sql(
            "SELECT c.id FROM contacts c LEFT JOIN LATERAL"
            " (SELECT max(a.occurred_at) AS m FROM activities a WHERE a.contact_id = c.id) x ON true"
            " ORDER BY x.m DESC NULLS LAST, c.id")]
        views, writes, popular = plan_day(args, by_recency, rng)
        top = set(by_recency[:args.warm_top])
        out["views_on_warm_top"] = (sum(1 for v in views if v[1] in top) / len(views)) if views else 0.0
        out["distinct_contacts_viewed"] = len({v[1] for v in views})
        out["writes_planned"] = len(writes)

        scripts_dir = None
        if not knobs["RAPPORT_TTL_SCALE"]:
            scripts_dir = scaled_scripts_copy(workdir / "scripts", args.scale)
        threads = args.threads
        for policy, label in POLICIES:
            sides.append(Side(policy, label, args, db, workdir, knobs, scripts_dir, threads))
        for s in sides:
            s.wait_ready()

        # The grace each type gets under each policy, in run seconds.
        ttls = script_ttls(REPO / "scripts")
        types_info = sides[1].analysis_types()
        # Unscaled grace: stale_ttl as the server lists it, else as the script
        # says, else the ttl (the documented default). The server may list
        # scaled or unscaled figures: its ttl against the script's says which.
        graces = {}
        for ty in TYPES:
            src = ttls.get(ty, {})
            info = types_info.get(ty, {})
            grace = src.get("stale_ttl") or src.get("ttl") or 300.0
            if info.get("stale_ttl") is not None and info.get("ttl") and src.get("ttl"):
                listed_scale = float(info["ttl"]) / src["ttl"]
                grace = float(info["stale_ttl"]) / listed_scale
            graces[ty] = grace * args.scale if knobs["RAPPORT_FRESHNESS"] else 0.0
        out["types"] = {ty: {"ttl_s": (ttls.get(ty, {}).get("ttl") or 300.0) * args.scale,
                             "grace_s_full": graces[ty]} for ty in TYPES}

        # The night before: the full policy's warm job, the fake quick.
        pre = {s.policy: {"ran": False, "model_calls": 0, "cost_usd": 0.0} for s in sides}
        full = sides[1]
        if args.warm_top > 0:
            full.fake.config(latency_ms=args.night_latency_ms)
            c0 = full.counters()
            loc = full.start_warm(args.warm_top, patience=30.0)
            if loc:
                log("pre-day warm job: top %d..." % args.warm_top)
                t0 = time.monotonic()
                job = full.wait_job(loc, args.warm_timeout)
                c1 = full.counters()
                pre["full"] = {"ran": True, "job": job, "seconds": time.monotonic() - t0,
                               "model_calls": c1["chat_calls"] - c0["chat_calls"],
                               "cost_usd": c1["cost_usd"] - c0["cost_usd"]}
            full.fake.config(latency_ms=args.latency_ms)
        if full.warm["available"] is False:
            log("warm unavailable (%s)" % full.warm["note"])

        # The day.
        changes = collections.defaultdict(list)      # contact -> commit times
        before = {s.policy: s.counters() for s in sides}
        db.set_marker("written")
        writer = Writer(db, workdir)
        stop = threading.Event()
        t_start = time.perf_counter() + 0.5
        wall_start = time.time() + 0.5
        write_err = []

        def write_loop():
            i = 0
            try:
                while i < len(writes) and not stop.is_set():
                    now = time.perf_counter() - t_start
                    batch = []
                    while i < len(writes) and writes[i][0] <= now:
                        batch.append(writes[i][1:])
                        i += 1
                    if batch:
                        t = writer.batch(batch)
                        for cid, _, _ in batch:
                            changes[cid].append(t)
                    time.sleep(args.write_tick)
            except Exception as e:
                write_err.append(repr(e))

        warm_times = []
        if full.warm["available"] and args.warm_day_top > 0 and args.warm_every_hours > 0:
            step = args.warm_every_hours * 3600.0 * args.scale
            warm_times = [step * k for k in range(1, int(args.day_seconds / step) + 1)
                          if step * k < args.day_seconds]
        day_jobs = []

        def warm_loop():
            running = None
            for wt in warm_times:
                while time.perf_counter() - t_start < wt:
                    if stop.wait(0.05):
                        return
                if running and full.job_state(running).get("state") in ("queued", "running"):
                    day_jobs.append({"at_s": wt, "skipped": "previous job still running"})
                    continue
                running = full.start_warm(args.warm_day_top)
                day_jobs.append({"at_s": wt, "location": running})

        wt_thread = threading.Thread(target=write_loop, daemon=True)
        wm_thread = threading.Thread(target=warm_loop, daemon=True)
        log("the day: %d views, %d writes, %.0f s (%g working hours; ttl x %.5f)..." % (
            len(views), len(writes), args.day_seconds, args.day_hours, args.scale))
        wt_thread.start()
        wm_thread.start()
        next_log = 0
        for i, (t, cid, types) in enumerate(views):
            delay = t_start + t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ts = time.perf_counter()
            for s in sides:
                s.view(i, cid, types, ts)
            if t >= next_log:
                log("  %3.0f s: %d views sent, %d contacts written" % (t, i + 1, len(changes)))
                next_log += 15
        rest = t_start + args.day_seconds - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
        stop.set()
        wt_thread.join(30)
        wm_thread.join(30)
        for s in sides:
            s.drain()
        for s in sides:
            s.settle()
        after = {s.policy: s.counters() for s in sides}
        if write_err:
            raise RuntimeError("writer failed: %s" % write_err[0])
        for j in day_jobs:
            if j.get("location"):
                j["job"] = full.job_state(j["location"])
        full.warm["day_jobs"] = day_jobs

        out["writes_committed"] = sum(len(v) for v in changes.values())
        out["contacts_written"] = len(changes)
        out["contacts_written_share"] = len(changes) / float(counts[0])
        out["day_started_at"] = wall_start
        out["policies"] = [summarise(s, views, changes, before[s.policy], after[s.policy],
                                     pre[s.policy], graces if s.policy == "full" else
                                     {ty: 0.0 for ty in TYPES}, args.scale,
                                     top if pre[s.policy]["ran"] else frozenset()) for s in sides]
        # Every answer, for digging (times in seconds from the day's start).
        answers = []
        for s in sides:
            for i in range(len(views)):
                for r in s.results.get(i, []):
                    answers.append(json.dumps({
                        "policy": s.policy, "view": i, "t": round(r["sent"] - wall_start, 3),
                        "contact": r["contact"], "type": r["type"], "status": r["status"],
                        "cache": r.get("cache"), "ms": round(r["ms"], 2),
                        "generated": None if r.get("generated_at") is None else
                        round(r["generated_at"] - wall_start, 3),
                        "lag_s": r.get("lag_s"), "error": r.get("error")}, separators=(",", ":")))
        out["loadavg_end"] = os.getloadavg()
        out["verdicts"] = [{"target": t, "met": m, "measured": d} for t, m, d in verdicts(out)]
    finally:
        if writer:
            writer.close()
        for s in sides:
            s.stop()
        if not was_running:
            db.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    md = report_md(out, args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results_dir / ("workload-%s.json" % stamp)).write_text(json.dumps(out, indent=2, default=str))
    (results_dir / ("workload-%s.md" % stamp)).write_text(md)
    (results_dir / ("workload-%s-answers.jsonl" % stamp)).write_text("\n".join(answers) + "\n")
    out["files"] = [str(results_dir / ("workload-%s%s" % (stamp, e)))
                    for e in (".json", ".md", "-answers.jsonl")]
    print(md)
    return out


def report_md(out, args):
    a, b = out["policies"]
    knobs = out["knobs"]
    missing = [k for k in ("RAPPORT_FRESHNESS", "RAPPORT_TTL_SCALE") if not knobs[k]]
    lines = [
        "CRM day, %s, on %s (load average %.1f at start, %.1f at end: other work shares the machine)." % (
            out["date"], out["machine"], out["loadavg_start"][0], out["loadavg_end"][0]),
        "",
        "- data: %d contacts, %d deals, %d activities; %d views of %d distinct contacts by %d users"
        " in %.0f s standing for %g working hours (ttl and grace x %.5f); Zipf popularity"
        " 1/(rank+%g)^%g over recency rank x lognormal(%.2f): %s of views on warm_candidates' top %d" % (
            out["contacts"], out["deals"], out["activities"], a["views_sent"],
            out["distinct_contacts_viewed"], args.users, args.day_seconds, args.day_hours, args.scale,
            args.zipf_q, args.zipf_s, args.recency_sigma, fmt_pct(out["views_on_warm_top"]), args.warm_top),
        "- writes: %d commits of new activities and deal changes on %d contacts (%s of them), through SQL"
        " (NOTIFY triggers)" % (out["writes_committed"], out["contacts_written"],
                                fmt_pct(out["contacts_written_share"])),
        "- upstream: the fake at %d ms, one per policy; ttl per type in run seconds: %s" % (
            args.latency_ms, ", ".join("%s %.1f" % (t, v["ttl_s"]) for t, v in out["types"].items())),
        "- policies: %s; %s" % (
            "; ".join("%s: %s" % (s["label"], " ".join("%s=%s" % kv for kv in sorted(s["env"].items()))
                                  if s["env"] else "defaults") for s in (a, b)),
            ("knobs missing in this binary: %s (both servers run its one policy; the ttl scale comes from"
             " a copy of scripts/)" % ", ".join(missing)) if missing else "all knobs present"),
        "- warm: %s" % (
            "unavailable (%s)" % b["warm"]["note"] if b["warm"]["available"] is False else
            "off" if args.warm_top <= 0 else
            "night job top %d: %d model calls in %.0f s; in-day jobs top %d every %g working hours: %d" % (
                args.warm_top, b["pre_day_warm"]["model_calls"], b["pre_day_warm"].get("seconds", 0),
                args.warm_day_top, args.warm_every_hours, len(b["warm"].get("day_jobs", [])))),
        "",
        table(out),
        "",
        "Targets:",
    ]
    for v in out["verdicts"]:
        lines.append("- %s: **%s** (%s)" % (v["target"], "met" if v["met"] else "missed", v["measured"]))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    env = os.environ.get
    ap.add_argument("--contacts", type=int, default=int(env("WORKLOAD_CONTACTS", 10000)))
    ap.add_argument("--day-seconds", type=float, default=float(env("WORKLOAD_DAY_SECONDS", 120)),
                    help="how long the compressed day runs")
    ap.add_argument("--day-hours", type=float, default=8.0, help="the working day it stands for")
    ap.add_argument("--users", type=int, default=40, help="the CRM team")
    ap.add_argument("--views-per-user", type=float, default=75, help="contact pages a user opens a day")
    ap.add_argument("--activities-per-user", type=float, default=25, help="new activities a user logs a day")
    ap.add_argument("--deal-changes-per-user", type=float, default=5, help="deal changes a user makes a day")
    ap.add_argument("--writes-popular", type=float, default=0.7,
                    help="share of writes on contacts drawn from the views' popularity (the rest uniform)")
    ap.add_argument("--zipf-s", type=float, default=1.1)
    ap.add_argument("--zipf-q", type=float, default=10.0, help="Zipf-Mandelbrot offset: flattens the very top")
    ap.add_argument("--recency-sigma", type=float, default=0.5,
                    help="how loosely popularity follows recent activity (lognormal sigma on the rank)")
    ap.add_argument("--latency-ms", type=int, default=1000, help="the fake upstream's latency during the day")
    ap.add_argument("--night-latency-ms", type=int, default=50, help="the fake's latency for the pre-day warm job")
    ap.add_argument("--warm-top", type=int, default=2000, help="the pre-day warm job's top N (0: none)")
    ap.add_argument("--warm-day-top", type=int, default=500, help="in-day warm jobs' top N (0: none)")
    ap.add_argument("--warm-every-hours", type=float, default=2.0, help="in-day warm period, working hours")
    ap.add_argument("--warm-timeout", type=float, default=300.0, help="seconds to wait for the pre-day job")
    ap.add_argument("--write-tick", type=float, default=0.2, help="seconds between write transactions")
    ap.add_argument("--threads", type=int, default=160, help="client threads per policy")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--full-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the full policy's server only (repeatable), e.g. "
                         "RAPPORT_REFRESH_WARMED=1")
    ap.add_argument("--pg-dir", default=str(REPO / "var" / "bench-pg"),
                    help="the PostgreSQL cluster (bench/bench.py's kept one; started if not running)")
    ap.add_argument("--pg-port", type=int, default=int(env("BENCH_PG_PORT", 54339)))
    ap.add_argument("--database", default="rapport_workload",
                    help="the database in it (the demo data; <name>_state_<policy> for rapport's state)")
    ap.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--rapport-bin", default=env("RAPPORT_BIN") or str(REPO / "rapport"))
    ap.add_argument("--fake-bin", default=env("FAKE_BIN") or str(REPO / "build" / "fake_openai"))
    args = ap.parse_args(argv)
    if not DB_NAME.match(args.database):
        ap.error("--database: lower-case letters, digits and _ only")
    for name in ("rapport_bin", "fake_bin"):
        p = Path(getattr(args, name))
        setattr(args, name, str(p if p.is_absolute() else REPO / p))
    if args.day_seconds <= 0 or args.day_hours <= 0 or args.contacts <= 0:
        ap.error("--day-seconds, --day-hours and --contacts must be positive")
    return args


if __name__ == "__main__":
    run(parse_args())
