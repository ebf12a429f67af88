#!/usr/bin/env bash
# tools/test.sh — what `make test` runs after installing packages and building:
# every test through one pytest run (Debian's python3, which has pytest):
#   tests/test_unit.py        the C unit tests, build/tests/test_* (TAP binaries)
#   tests/test_scripts_lua.py lua5.4 tests/scripts/test_scripts.lua
#   tests/integration/        real PostgreSQL, the fake upstream, the real binary
# Extra arguments go to pytest (a path among them replaces the default "tests"):
#   tools/test.sh -k harness        tools/test.sh tests/integration/test_harness.py -x
# RAPPORT_BIN and FAKE_BIN choose the binaries (make asan points them into build/asan).
# The last line printed is pytest's summary and pytest's exit status is ours,
# so "no tests collected" (5) is a failure too.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

abs() { [[ "$1" == /* ]] && echo "$1" || echo "$ROOT/$1"; }
export RAPPORT_BIN FAKE_BIN
RAPPORT_BIN=$(abs "${RAPPORT_BIN:-rapport}")
FAKE_BIN=$(abs "${FAKE_BIN:-build/fake_openai}")

PYTHON=/usr/bin/python3
if ! "$PYTHON" -c 'import pytest' 2>/dev/null; then
    echo "test.sh: $PYTHON has no pytest — install the Debian package python3-pytest (tools/deps.sh does)" >&2
    exit 1
fi

args=(-q -ra)
have_path=0
for a in "$@"; do
    if [[ "$a" != -* && -e "${a%%::*}" ]]; then have_path=1; fi
done
[[ $have_path -eq 1 ]] || args+=(tests)

export PYTHONDONTWRITEBYTECODE=1
"$PYTHON" -m pytest "${args[@]}" "$@" </dev/null
exit $?
