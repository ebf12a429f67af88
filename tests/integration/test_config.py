"""Configuration sources: defaults < config file < environment < flags,
and bad values are refused with a clear message."""

import subprocess
from pathlib import Path

from helpers.pg import free_port
from helpers.server import rapport_binary

REPO = Path(__file__).resolve().parents[2]


def run(args, env=None, timeout=20):
    return subprocess.run([str(rapport_binary()), *args], cwd=REPO, env=env or {"PATH": "/usr/bin:/bin"},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def test_the_example_config_file_parses():
    r = run(["check", "--no-lint", "--config", "etc/rapport.conf.example"])
    assert "unknown setting" not in r.stderr and "expected" not in r.stderr, r.stderr


def test_a_flag_beats_the_environment_which_beats_the_file(make_server, tmp_path):
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    conf = tmp_path / "r.conf"
    conf.write_text("RAPPORT_LISTEN = 127.0.0.1:%d\nRAPPORT_MODEL = from-file\n" % file_port)
    srv = make_server(RAPPORT_CONFIG=str(conf), RAPPORT_LISTEN="127.0.0.1:%d" % env_port, start=False,
                      args=("serve", "--listen", "127.0.0.1:%d" % flag_port))
    srv.port = flag_port
    srv.start()
    line = srv.wait_for_log(lambda l: l.get("msg") == "rapport serving")
    assert line["listen"] == "127.0.0.1:%d" % flag_port
    assert line["model"] == "from-file", "the file still sets what nothing overrides"


def test_bad_values_are_refused_with_a_clear_message(tmp_path):
    r = run(["serve"], env={"PATH": "/usr/bin:/bin", "RAPPORT_CACHE_BYTES": "lots"})
    assert r.returncode == 2 and "RAPPORT_CACHE_BYTES" in r.stderr
    r = run(["serve", "--no-such-flag", "1"])
    assert r.returncode == 2 and "unknown option --no-such-flag" in r.stderr
    conf = tmp_path / "bad.conf"
    conf.write_text("NOT_A_SETTING = 1\n")
    r = run(["serve", "--config", str(conf)])
    assert r.returncode == 2 and "bad.conf:1: unknown setting NOT_A_SETTING" in r.stderr


def test_db_allow_write_is_a_yes_or_no_like_the_other_switches():
    # "2" once passed as an integer meaning yes; a switch takes 1/0, true/false, yes/no, on/off.
    r = run(["serve"], env={"PATH": "/usr/bin:/bin", "RAPPORT_DB_ALLOW_WRITE": "2"})
    assert r.returncode == 2 and "RAPPORT_DB_ALLOW_WRITE: expected 1 or 0" in r.stderr, r.stderr


def test_help_lists_the_commands():
    r = run(["--help"])
    assert r.returncode == 0
    for cmd in ("serve", "check", "analyze", "console"):
        assert cmd in r.stdout


def test_a_trailing_comment_in_the_config_file_is_not_part_of_the_value(make_server, tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("RAPPORT_MODEL = my-model   # the model for scripts that name none\n")
    srv = make_server(RAPPORT_CONFIG=str(conf))
    line = srv.wait_for_log(lambda l: l.get("msg") == "rapport serving")
    assert line["model"] == "my-model"
