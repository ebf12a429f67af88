"""rapport's own state database (RAPPORT_STATE_URL, schema rapport) in tests:
SQL on it as its owner, and waiting for a server's state connection.

The `state` fixture (tests/conftest.py) gives each test a fresh database of
the pg cluster and its libpq conninfo."""

import re

from helpers.upstream import wait_until


def state_sql(pg, state_url, text):
    """Runs text on the state database state_url names, as the owner."""
    dbname = re.search(r"dbname=(\S+)", state_url).group(1)
    return pg.sql(text, dbname=dbname)


def state_up(srv, timeout=15.0):
    """Waits until srv's /readyz says its state connection is up."""
    wait_until(lambda: srv.get("/readyz").json().get("state") == "up",
               "the state database to be up on %s" % srv.address, timeout)
