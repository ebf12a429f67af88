"""The docs name what the code has: every metric family `/metrics` serves is in
docs/operations.md's metrics table and every name there is served; every
setting core/config.c reads is in docs/operations.md's settings table, and
every setting the docs, the README and etc/rapport.conf.example name is read
by the code. A new metric or setting without its line of docs fails here."""

import re

from helpers.redis import Redis
from helpers.server import REPO

OPS = REPO / "docs" / "operations.md"


def section(text, title):
    start = text.index("\n## " + title)
    end = text.find("\n## ", start + 4)
    return text[start:end if end > 0 else len(text)]


def first_cells(block, prefix):
    """Backticked names starting with prefix in the first cell of each
    table row of block."""
    names = set()
    for row in block.splitlines():
        if row.startswith("| `"):
            names.update(re.findall(r"`(%s[A-Za-z0-9_]*)" % prefix, row.split("|")[1]))
    return names


def code_settings():
    src = (REPO / "core" / "config.c").read_text()
    table = src[src.index("static const struct setting settings[]"):]
    table = table[:table.index("};")]
    return set(re.findall(r'\{\s*"([A-Z][A-Z0-9_]*)"', table))


def code_env_names():
    names = code_settings()
    for f in (REPO / "core").glob("*.c"):
        names.update(re.findall(r'getenv\("((?:RAPPORT|OPENAI|DATABASE)_[A-Z0-9_]*)"\)', f.read_text()))
    return names


def test_every_metric_served_is_documented_and_every_documented_one_is_served(
        make_server, tmp_path):
    # With an L2, so its families (served only with REDIS_URL) count too.
    redis = Redis(tmp_path / "redis").start()
    try:
        text = make_server(REDIS_URL=redis.url).get("/metrics").text
    finally:
        redis.stop()
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert served, text[:500]
    documented = first_cells(section(OPS.read_text(), "Metrics"), "rapport_")
    assert served - documented == set(), "served but not in docs/operations.md#metrics"
    assert documented - served == set(), "in docs/operations.md#metrics but not served"


def test_every_setting_the_code_reads_is_in_the_settings_table():
    documented = first_cells(section(OPS.read_text(), "Every setting"), "")
    missing = code_settings() - documented
    assert not missing, "settings core/config.c reads, not in docs/operations.md: %s" % sorted(missing)


def test_every_setting_the_docs_name_is_read_by_the_code():
    code = code_env_names()
    ops = first_cells(section(OPS.read_text(), "Every setting"), "")
    readme = first_cells(section((REPO / "README.md").read_text(), "Configuration"), "")
    readme = {n for n in readme if n.isupper()}
    for where, names in (("docs/operations.md", ops), ("README.md", readme)):
        unknown = {n for n in names if n.isupper()} - code
        assert not unknown, "%s names settings the code does not read: %s" % (where, sorted(unknown))


def test_every_setting_in_the_example_config_is_one_the_config_file_accepts():
    text = (REPO / "etc" / "rapport.conf.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)\s*=", text, re.M))
    assert named, "no NAME = value lines found"
    unknown = named - code_settings()
    assert not unknown, "etc/rapport.conf.example names what the config file refuses: %s" % sorted(unknown)
