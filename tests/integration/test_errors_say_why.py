"""Errors that say why, and logs a person can read: a database that cannot be
reached gives its class of cause in /readyz and in the error message (once),
a DATABASE_URL that is neither a URI nor key=value pairs stops the start, an
unknown type is named as sent, `rapport serve` logs text on a terminal and
JSON otherwise, and fields that do not apply are absent from the log."""

import fcntl
import json
import os
import pty
import select
import subprocess
import termios
import time

import pytest

from helpers.pg import free_port
from helpers.server import REPO, rapport_binary


def ready(srv):
    r = srv.get("/readyz")
    return r.status, r.json()


def wait_cause(srv, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status, body = ready(srv)
        if "database_cause" in body:
            return status, body
        time.sleep(0.05)
    return ready(srv)


# ---- database causes -----------------------------------------------------------

def test_a_database_url_at_a_closed_port_gives_readyz_the_cause_refused(make_server):
    srv = make_server(DATABASE_URL="postgresql://127.0.0.1:%d/rapport" % free_port())
    status, body = wait_cause(srv)
    assert status == 503 and body["database"] == "down", body
    assert body["database_cause"] == "refused", body
    r = srv.get("/v1/contacts/1/analyses/smart_tips")
    assert r.status == 503
    msg = r.json()["error"]["message"]
    assert msg.startswith("database unreachable (refused): "), msg
    assert msg.count("Connection refused") == 1 and "unavailable (database unavailable" not in msg, msg
    assert "Is the server running" not in msg, "libpq's hint is replaced by ours, not repeated"


def test_a_missing_database_and_an_unknown_role_are_told_apart(make_server, pg):
    base = pg.url.replace("dbname=rapport", "")
    missing = make_server(DATABASE_URL=base + " dbname=no_such_db")
    assert wait_cause(missing)[1]["database_cause"] == "database_missing"
    assert "does not exist" in missing.get("/v1/contacts/1/analyses/smart_tips").json()["error"]["message"]
    role = make_server(DATABASE_URL=pg.url.replace("user=rapport_reader", "user=no_such_role"))
    assert wait_cause(role)[1]["database_cause"] == "authentication"


def test_the_db_down_log_line_names_the_cause_once_not_per_retry(make_server):
    srv = make_server(DATABASE_URL="postgresql://127.0.0.1:%d/rapport" % free_port())
    wait_cause(srv)
    time.sleep(1.5)          # several reconnect attempts (100 ms backoff, doubling)
    down = [json.loads(l) for l in srv.stderr_text().splitlines()
            if l.startswith("{") and json.loads(l)["msg"] == "db down"]
    assert len(down) == 1 and down[0]["cause"] == "refused", down


@pytest.mark.parametrize("url", ["localhost:5432/rapport", "rapport", "host=x port"])
def test_a_database_url_neither_uri_nor_pairs_is_a_start_up_error(make_server, url):
    srv = make_server(start=False, DATABASE_URL=url)
    r = subprocess.run([str(srv.binary), "serve"], env=srv.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, r.stderr
    assert "DATABASE_URL" in r.stderr and ("neither a URI nor key=value" in r.stderr
                                           or "does not parse" in r.stderr), r.stderr


# ---- unknown types -----------------------------------------------------------------

def test_an_unknown_type_in_another_case_is_named_as_sent_with_the_lowercase_suggestion(server):
    r = server.get("/v1/contacts/1/analyses/Smart_Tips")
    assert r.status == 404
    msg = r.json()["error"]["message"]
    assert "'Smart_Tips'" in msg and "did you mean 'smart_tips'?" in msg, msg


def test_an_unknown_type_with_odd_bytes_is_named_escaped(server):
    # Control characters are refused before routing (400); a quote and
    # bytes beyond ASCII reach the type lookup and are shown escaped.
    r = server.get("/v1/contacts/1/analyses/a%27b%C3%A9c")
    assert r.status == 404
    msg = r.json()["error"]["message"]
    assert "'a\\x27b\\xc3\\xa9c'" in msg, msg


# ---- the log: text on a terminal, fields that apply ----------------------------------

def run_on_pty(env, seconds, then=None):
    master, slave = pty.openpty()

    def tty():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    p = subprocess.Popen([str(rapport_binary()), "serve"], env=env, cwd=str(REPO),
                         stdin=slave, stdout=slave, stderr=slave, preexec_fn=tty)
    os.close(slave)
    out = b""
    end = time.monotonic() + seconds
    did = False
    while time.monotonic() < end:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
        if then and not did and b"rapport serving" in out:
            then()
            did = True
            end = time.monotonic() + 1.0
    p.terminate()
    p.wait(10)
    try:
        while select.select([master], [], [], 0.2)[0]:
            d = os.read(master, 65536)
            if not d:
                break
            out += d
    except OSError:
        pass
    os.close(master)
    return out.decode("utf-8", "replace")


def test_serve_logs_short_text_lines_on_a_terminal(make_server):
    srv = make_server(start=False, RAPPORT_LOG_LEVEL="info")
    import urllib.request

    def hit():
        try:
            urllib.request.urlopen("http://127.0.0.1:%d/v1/contacts/1/analyses/nope" % srv.port, timeout=5)
        except Exception:
            pass

    out = run_on_pty(srv.env, 15, then=hit)
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines and not any(l.lstrip().startswith("{") for l in lines), out
    serving = [l for l in lines if "rapport serving" in l]
    assert serving and " INFO  rapport serving listen=127.0.0.1:%d" % srv.port in serving[0], out
    req = [l for l in lines if "path=/v1/contacts/1/analyses/nope" in l]
    assert req and "status=404" in req[0], out
    assert "prompt_tokens" not in req[0] and "=-1" not in req[0], req[0]


def test_rapport_log_format_json_wins_on_a_terminal_and_a_bad_value_stops_the_start(make_server):
    srv = make_server(start=False, RAPPORT_LOG_LEVEL="info", RAPPORT_LOG_FORMAT="json")
    out = run_on_pty(srv.env, 10, then=lambda: None)
    assert any(l.startswith('{"ts"') for l in out.splitlines()), out
    env = dict(srv.env, RAPPORT_LOG_FORMAT="pretty")
    r = subprocess.run([str(srv.binary), "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "RAPPORT_LOG_FORMAT must be json or text" in r.stderr, r.stderr


def test_json_request_lines_leave_out_fields_that_do_not_apply(server):
    server.get("/v1/contacts/1/analyses/no_such_type")
    lines = [json.loads(l) for l in server.stderr_text().splitlines() if l.startswith("{")]
    req = [l for l in lines if l["msg"] == "request" and l.get("path", "").endswith("/no_such_type")]
    assert req, lines[-5:]
    line = req[0]
    assert line["status"] == 404 and line["error"] == "unknown_analysis_type", line
    assert "prompt_tokens" not in line and "completion_tokens" not in line, line
    assert all(v != -1 and v is not None for v in line.values()), line
