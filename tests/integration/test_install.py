"""make install (issue 9 item 6): the files land under DESTDIR/PREFIX, and the
installed binary, started with the environment the systemd template unit
gives it (its paths moved into DESTDIR), serves /readyz and an analysis."""

import re
import subprocess

from helpers.server import REPO
from helpers.upstream import wait_until

TYPE = "relationship_health"
CID = 741001


def install(tmp_path):
    dest = tmp_path / "dest"
    subprocess.run(["make", "-s", "--no-print-directory", "install",
                    "DESTDIR=%s" % dest, "PREFIX=/usr"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    return dest


def unit_environment(dest):
    """Environment= lines of the installed rapport@.service, instance %i."""
    text = (dest / "usr/lib/systemd/system/rapport@.service").read_text()
    env = {}
    for m in re.finditer(r"^Environment=([A-Z_]+)=(.*)$", text, re.M):
        env[m.group(1)] = m.group(2)
    return text, env


def test_make_install_lays_out_binary_share_and_units_under_destdir(tmp_path):
    dest = install(tmp_path)
    assert (dest / "usr/bin/rapport").stat().st_mode & 0o111
    share = dest / "usr/share/rapport"
    for d in ("scripts", "prompts", "web"):
        src = sorted(p.relative_to(REPO / d) for p in (REPO / d).rglob("*") if p.is_file())
        got = sorted(p.relative_to(share / d) for p in (share / d).rglob("*") if p.is_file())
        assert src and got == src, d
    assert (share / "rapport.conf.example").is_file()
    assert (share / "haproxy.cfg.example").is_file()
    text, env = unit_environment(dest)
    assert "ExecStart=/usr/bin/rapport serve" in text
    assert env["RAPPORT_SCRIPTS"] == "/usr/share/rapport/scripts"
    assert env["RAPPORT_PROMPTS"] == "/usr/share/rapport/prompts"
    assert env["RAPPORT_WEB"] == "/usr/share/rapport/web"
    assert "@" not in env["RAPPORT_SCRIPTS"] + text.split("ExecStart=")[1].split("\n")[0]
    single = (dest / "usr/lib/systemd/system/rapport.service").read_text()
    assert "ExecStart=/usr/bin/rapport " in single


def test_the_installed_binary_with_the_units_environment_serves_readyz_and_an_analysis(
        tmp_path, make_server, pg, fake):
    dest = install(tmp_path)
    _, env = unit_environment(dest)
    pg.sql("INSERT INTO contacts (id, first_name, last_name, title) "
           "VALUES (%d, 'Ina', 'Stall', 'COO') ON CONFLICT (id) DO NOTHING" % CID)
    moved = {k: str(dest) + v for k, v in env.items()
             if k in ("RAPPORT_SCRIPTS", "RAPPORT_PROMPTS", "RAPPORT_WEB")}
    srv = make_server(binary=dest / "usr/bin/rapport", **moved)
    # /healthz answers before the pool's first connection is up; readiness
    # follows within the connect, so wait for it rather than race it.
    wait_until(lambda: srv.get("/readyz").status == 200, "/readyz 200")
    r = srv.get("/readyz")
    assert r.status == 200, r.body
    a = srv.get("/v1/contacts/%d/analyses/%s" % (CID, TYPE))
    assert a.status == 200, a.body
    assert a.json()["contact_id"] == CID and a.json()["type"] == TYPE, a.json()
    page = srv.get("/")
    assert page.status == 200 and b"<html" in page.body.lower()
