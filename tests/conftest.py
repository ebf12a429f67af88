"""Fixtures shared by every test (run through tools/test.sh / `make test`).

    pg            session: a throwaway PostgreSQL cluster (helpers.pg.PgCluster)
                  with sql/schema.sql, sql/roles.sql and 200 demo contacts
                  loaded; pg.url logs in as the read-only role rapport_reader
                  (what rapport gets), pg.sql()/pg.owner_url as the owner
    fake          function: the fake upstream (helpers.fake.FakeOpenAI), started
                  once per session and reset before each test
    server        function: the real binary (helpers.server.Rapport) started
                  with the defaults against pg and fake; stopped after the test
                  (a non-zero exit or a sanitizer report fails the test)
    make_server   function: factory, make_server(**options_and_env) -> started
                  Rapport. UPPERCASE keywords are environment variables (None
                  removes one); lowercase ones are options: start=False,
                  args=("serve",), timeout=10, binary=path
    scripts_copy  function: scripts/ and prompts/ copied to a temp dir, for
                  tests that edit them: .scripts, .prompts, .env

Binaries: RAPPORT_BIN (default ./rapport) and FAKE_BIN (default
build/fake_openai); relative paths are taken from the repo root.
Every test has a time limit: RAPPORT_TEST_TIMEOUT seconds (default 300), or
@pytest.mark.timeout(seconds).
"""

import os
import shutil
import signal
import sys
import threading
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# `from helpers.x import y` works whatever pytest's import mode.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from helpers.pg import PgCluster  # noqa: E402
from helpers.redis import Redis  # noqa: E402
from helpers.server import Rapport, rapport_binary  # noqa: E402

DEMO_CONTACTS = 200


def _repo_path(value, default):
    p = Path(value or default)
    return p if p.is_absolute() else REPO / p


def fake_binary():
    return _repo_path(os.environ.get("FAKE_BIN"), "build/fake_openai")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timeout(seconds): time limit of this test (default "
        "RAPPORT_TEST_TIMEOUT or 300 s)")


def pytest_report_header(config):
    return ["rapport: %s" % rapport_binary(), "fake_openai: %s" % fake_binary()]


# ---- a time limit for every test (no plugin needed) ------------------------

class HarnessTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    seconds = int(os.environ.get("RAPPORT_TEST_TIMEOUT") or 300)
    m = item.get_closest_marker("timeout")
    if m and m.args:
        seconds = int(m.args[0])
    if (seconds <= 0 or not hasattr(signal, "SIGALRM")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def on_alarm(signum, frame):
        raise HarnessTimeout("%s took longer than %d s (time limit: "
                             "RAPPORT_TEST_TIMEOUT or @pytest.mark.timeout)"
                             % (item.nodeid, seconds))

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- PostgreSQL ---------------------------------------------------------------

@pytest.fixture(scope="session")
def pg():
    cluster = PgCluster()
    try:
        cluster.start()
        cluster.sql_file(REPO / "sql" / "schema.sql")
        cluster.sql_file(REPO / "sql" / "roles.sql")
        cluster.sql_file(REPO / "sql" / "demo.sql",
                         vars={"contacts": DEMO_CONTACTS})
        yield cluster
    finally:
        cluster.destroy()


# ---- the fake upstream ------------------------------------------------------------

@pytest.fixture(scope="session")
def _fake_session():
    from helpers.fake import FakeOpenAI
    binary = fake_binary()
    if not binary.exists():
        pytest.fail("%s does not exist — build it with `make`" % binary)
    f = FakeOpenAI(binary=str(binary))
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def fake(_fake_session):
    _fake_session.reset()
    return _fake_session


# ---- the real binary ---------------------------------------------------------------

_OPTIONS = {"start", "args", "timeout", "binary"}


@pytest.fixture
def make_server(pg, fake, tmp_path):
    servers = []

    def make(**kw):
        opts = {k: kw.pop(k) for k in list(kw) if k in _OPTIONS}
        bad = [k for k in kw if not k.isupper()]
        if bad:
            raise TypeError("make_server: unknown option(s) %s (environment "
                            "variables are UPPERCASE)" % ", ".join(bad))
        srv = Rapport(pg=pg, fake=fake, env=kw, binary=opts.get("binary"),
                      args=opts.get("args", ("serve",)),
                      workdir=tmp_path / ("rapport-%d" % len(servers)))
        servers.append(srv)
        if opts.get("start", True):
            srv.start(timeout=opts.get("timeout", 10.0))
        return srv

    yield make

    errors = []
    for srv in servers:
        try:
            srv.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def server(make_server):
    return make_server()


class ScriptsCopy:
    def __init__(self, root):
        self.root = Path(root)
        self.scripts = self.root / "scripts"
        self.prompts = self.root / "prompts"
        shutil.copytree(REPO / "scripts", self.scripts)
        shutil.copytree(REPO / "prompts", self.prompts)

    @property
    def env(self):
        """For make_server(**scripts_copy.env)."""
        return {"RAPPORT_SCRIPTS": str(self.scripts),
                "RAPPORT_PROMPTS": str(self.prompts)}


@pytest.fixture
def scripts_copy(tmp_path):
    return ScriptsCopy(tmp_path / "live")


@pytest.fixture
def redis(tmp_path):
    """A private redis-server on its own port (tests/helpers/redis.py)."""
    r = Redis(tmp_path / "redis").start()
    yield r
    r.stop()


@pytest.fixture
def state(pg):
    """A fresh database for rapport's own state (RAPPORT_STATE_URL): its
    libpq conninfo, owner role (may write). Dropped after the test."""
    name = "state_" + uuid.uuid4().hex[:12]
    pg.create_database(name)
    yield pg.dsn(dbname=name)
    pg.sql('drop database if exists "%s" with (force)' % name, dbname="postgres")
