"""The C unit tests (tests/unit/test_*.c, built by make to build/tests/test_*,
or build/asan/tests/test_* when RAPPORT_BIN points into build/asan), each run
as one pytest test.

The binaries print TAP and read TEST_DATABASE_URL (the session's throwaway
cluster) and TEST_OPENAI_BASE_URL (the fake upstream). Exit 0 passes (unless a
"not ok" line or a sanitizer report says otherwise), exit 77 is a skip that
the binary itself asked for, anything else fails with the output shown. A
source without its binary fails: the build is incomplete.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers.server import SANITIZER_PATTERNS, rapport_binary

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "tests" / "unit").glob("test_*.c"))


def unit_dir():
    try:
        rel = rapport_binary().resolve().relative_to(REPO / "build" / "asan")
    except ValueError:
        rel = None
    if rel is not None:
        return REPO / "build" / "asan" / "tests"
    return REPO / "build" / "tests"


def tap_failures(output):
    """TAP "not ok" lines that are not TODO."""
    return [l for l in output.splitlines()
            if re.match(r"\s*not ok\b", l) and not re.search(r"#\s*TODO", l, re.I)]


def skip_reason(output):
    m = re.search(r"#\s*SKIP\S*\s*(.*)", output, re.I)
    if m and m.group(1).strip():
        return m.group(1).strip()
    lines = [l for l in output.splitlines() if l.strip()]
    return lines[-1].strip() if lines else "skipped by the test binary (exit 77)"


if SOURCES:
    @pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
    def test_unit(source, pg, fake):
        binary = unit_dir() / source.stem
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail("%s is not built (from %s) — run `make`"
                        % (binary.relative_to(REPO), source.relative_to(REPO)),
                        pytrace=False)
        env = dict(os.environ,
                   TEST_DATABASE_URL=pg.url,
                   TEST_OPENAI_BASE_URL=fake.base_url)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        try:
            proc = subprocess.run([str(binary)], cwd=str(REPO), env=env,
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=300)
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode("utf-8", "replace")
            pytest.fail("%s timed out after 300 s; output:\n%s"
                        % (binary.name, out[-8000:]), pytrace=False)
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode == 77:
            pytest.skip("%s: %s" % (binary.name, skip_reason(out)))
        problems = []
        if proc.returncode != 0:
            problems.append("exit status %d" % proc.returncode)
        bad = tap_failures(out)
        if bad:
            problems.append("%d TAP failure(s): %s" % (len(bad), "; ".join(bad[:10])))
        if any(p.search(out) for p in SANITIZER_PATTERNS):
            problems.append("sanitizer report")
        if problems:
            pytest.fail("%s: %s\n--- output ---\n%s"
                        % (binary.name, ", ".join(problems), out[-12000:]),
                        pytrace=False)
