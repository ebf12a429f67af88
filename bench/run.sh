#!/usr/bin/env bash
# make bench: the benchmark harness (see bench/bench.py). Results go to
# bench/results/ and a Markdown table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 bench/bench.py "$@"
# The burst benchmark: the adaptive upstream cap (bench/burst.py; BENCH_BURST=0 skips it).
[ "${BENCH_BURST:-1}" = 0 ] || /usr/bin/python3 bench/burst.py --node
