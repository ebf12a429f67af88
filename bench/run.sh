#!/usr/bin/env bash
# make bench: the benchmark harness (see bench/bench.py). Results go to
# bench/results/ and a Markdown table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/bench.py "$@"
