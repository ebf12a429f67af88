"""The Lua script tests: `lua5.4 tests/scripts/test_scripts.lua` (TAP), run
from the repo root as one pytest test. Generated only when that file exists."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LUA_TEST = REPO / "tests" / "scripts" / "test_scripts.lua"

if LUA_TEST.exists():
    def test_lua_scripts():
        lua = shutil.which("lua5.4")
        if lua is None:
            pytest.fail("lua5.4 not found (Debian package lua5.4; tools/deps.sh "
                        "installs it)", pytrace=False)
        try:
            proc = subprocess.run([lua, str(LUA_TEST.relative_to(REPO))],
                                  cwd=str(REPO), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=300)
        except subprocess.TimeoutExpired as e:
            pytest.fail("test_scripts.lua timed out after 300 s:\n%s"
                        % (e.output or b"").decode("utf-8", "replace")[-8000:],
                        pytrace=False)
        out = proc.stdout.decode("utf-8", "replace")
        bad = [l for l in out.splitlines()
               if re.match(r"\s*not ok\b", l)
               and not re.search(r"#\s*TODO", l, re.I)]
        if proc.returncode != 0 or bad:
            pytest.fail("lua5.4 tests/scripts/test_scripts.lua: exit %d, %d "
                        "failure(s)\n--- output ---\n%s"
                        % (proc.returncode, len(bad), out[-12000:]),
                        pytrace=False)
