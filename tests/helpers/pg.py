"""A throwaway PostgreSQL cluster for the tests, driven through tools/pg.sh.

    pg = PgCluster().start()
    pg.sql_file(REPO / "sql/schema.sql")
    pg.sql_file(REPO / "sql/demo.sql", vars={"contacts": 200})
    pg.sql("select count(*) from contacts")      # -> [["200"]]
    pg.sql_file(REPO / "sql/roles.sql")           # the read-only role
    pg.url                                        # rapport's DATABASE_URL: that role
    pg.owner_url                                  # the owner/superuser (psql set-up)
    pg.restart(); pg.stop(); pg.destroy()

tools/pg.sh does the real work (initdb as the postgres user when root, a unix
socket in its own directory, stale pid files), so the tests and `make run` use
one implementation. Stdlib only.
"""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PG_SH = REPO / "tools" / "pg.sh"


class PgError(AssertionError):
    """A psql or pg.sh call failed; the message carries its output."""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, directory=None, port=None):
        self._own_dir = directory is None
        self.dir = Path(directory) if directory else Path(
            tempfile.mkdtemp(prefix="rapport-test-pg-"))
        self.port = port or free_port()
        self.started = False

    # -- lifecycle ---------------------------------------------------------
    def _pg(self, *args, timeout=120, check=True):
        proc = subprocess.run(
            [str(PG_SH), *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise PgError("tools/pg.sh %s failed (exit %d):\n%s"
                          % (" ".join(args), proc.returncode, proc.stdout))
        return proc

    def start(self):
        self._pg("start", str(self.dir), str(self.port))
        self.started = True
        return self

    def stop(self):
        if self.dir.exists():
            self._pg("stop", str(self.dir))
        self.started = False
        return self

    def restart(self):
        """Stop, then start again on the same port (same data)."""
        self.stop()
        return self.start()

    def is_running(self):
        return self._pg("status", str(self.dir), check=False).returncode == 0

    def destroy(self):
        """Stop and delete every file of the cluster."""
        if self.dir.exists():
            self._pg("destroy", str(self.dir), check=False)
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
        self.started = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()

    # -- connecting ----------------------------------------------------------
    @property
    def socket_dir(self):
        return os.path.realpath(self.dir / "run")

    READER = "rapport_reader"   # the role sql/roles.sql creates

    def dsn(self, dbname="rapport", user="postgres"):
        """libpq keyword connection string for database `dbname`."""
        return "host=%s port=%d dbname=%s user=%s" % (
            self.socket_dir, self.port, dbname, user)

    @property
    def url(self):
        """rapport's DATABASE_URL (unix socket, trust auth): the read-only
        role of sql/roles.sql, which must have been run (conftest's pg does)."""
        return self.dsn(user=self.READER)

    @property
    def owner_url(self):
        """The superuser that owns the tables: for set-up, never for rapport."""
        return self.dsn()

    def _psql(self, args, input_text=None, dbname="rapport", timeout=120):
        cmd = [str(PG_SH), "psql", str(self.dir), str(self.port),
               "-q", "-At", "-F", "\t", "-d", dbname, *args]
        proc = subprocess.run(
            cmd, input=input_text if input_text is not None else "",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, timeout=timeout)
        if proc.returncode != 0:
            raise PgError("psql failed (exit %d): %s\n%s"
                          % (proc.returncode, " ".join(args),
                             (proc.stderr + proc.stdout).strip()))
        return proc.stdout

    @staticmethod
    def _rows(out):
        return [line.split("\t") for line in out.splitlines()]

    def sql(self, text, dbname="rapport", timeout=120):
        """Runs SQL (one or more statements, ON_ERROR_STOP); returns the rows
        of every result as lists of strings ('' for NULL)."""
        return self._rows(self._psql(["-f", "-"], input_text=text,
                                     dbname=dbname, timeout=timeout))

    def scalar(self, text, dbname="rapport"):
        """The single value of a one-row, one-column query (a string)."""
        rows = self.sql(text, dbname=dbname)
        if len(rows) != 1 or len(rows[0]) != 1:
            raise PgError("expected one value from %r, got %r" % (text, rows))
        return rows[0][0]

    def sql_file(self, path, vars=None, dbname="rapport", timeout=300):
        """Runs a SQL file with psql -v name=value for each of `vars`."""
        args = []
        for k, v in (vars or {}).items():
            args += ["-v", "%s=%s" % (k, v)]
        return self._rows(self._psql(args + ["-f", str(path)],
                                     dbname=dbname, timeout=timeout))

    def create_database(self, name):
        """A fresh, empty database `name` (dropped first if it exists)."""
        self.sql('drop database if exists "%s" with (force)' % name,
                 dbname="postgres")
        self.sql('create database "%s"' % name, dbname="postgres")
        return name
