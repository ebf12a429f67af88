#!/usr/bin/env bash
# tools/deps.sh — make sure the Debian packages rapport needs to build, run and
# test are installed. Runs on every `make run` / `make test`, so when nothing is
# missing it prints nothing and exits 0 (one dpkg-query call).
#   root, something missing     → apt-get update + apt-get install (non-interactive)
#   not root, something missing → prints the exact command to run, exits 1
#   --test (make test, make asan): also tests/browser's npm packages (playwright-core)
set -euo pipefail

PACKAGES=(
    build-essential pkg-config                      # compiler, make, pkg-config
    libevent-dev libcurl4-openssl-dev libpq-dev     # HTTP server, upstream client, PostgreSQL client
    liblua5.4-dev lua5.4 lua-cjson-dev libjansson-dev
    libreadline-dev                                 # line editing and history in `rapport console`
    libssl-dev                                      # libcrypto: SHA-256 of model requests, HMAC of stream tokens
    libhiredis-dev redis-server                     # the shared L2 cache in Redis (server: tests)
    haproxy                                         # make run REDIS=1 and tests: several instances behind it
    ca-certificates                                 # TLS to the real upstream (not pulled in without recommends)
    postgresql postgresql-client                    # server 15 (private cluster) and psql
    python3 python3-pytest                          # test driver (Debian's python3, stdlib only)
    wrk lua-check valgrind curl procps
    nghttp2-proxy openssl                           # tests: a TLS + HTTP/2 front for the fake upstream
    clang libclang-rt-dev                           # libFuzzer targets: compiler + fuzzer/ASan runtimes (make fuzz)
    chromium                                        # tests: the panel in a real headless browser
)
# node and npm drive chromium in the browser tests (playwright-core, from npm,
# into tests/browser/node_modules; it never downloads a browser). A node that
# is already there (e.g. from another source) is used as it is.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm)
fi

# playwright-core at the version tests/browser/package-lock.json pins.
# Only for the tests (`tools/deps.sh --test`, as `make test` calls it): `make
# run` needs no npm package, and a copy without tests/ has no lock file.
node_modules() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
    [[ "${1:-}" == --test && -f "$dir/package-lock.json" ]] || return 0
    [[ -d "$dir/node_modules/playwright-core" ]] && return 0
    echo "deps.sh: installing playwright-core into tests/browser/node_modules (npm ci)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error </dev/null
}

missing=()
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for p in "${PACKAGES[@]}"; do
    if ! grep -qx "$p .i.*" <<<"$installed"; then missing+=("$p"); fi
done
if [[ ${#missing[@]} -eq 0 ]]; then node_modules "${1:-}"; exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps.sh: missing packages: ${missing[*]}" >&2
    echo "deps.sh: apt-get not found — rapport is set up for Debian 12; install the equivalents by hand." >&2
    exit 1
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
    echo "deps.sh: run this, then try again:" >&2
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "deps.sh: installing missing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
apt-get "${APT_OPTS[@]}" update </dev/null
apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null

# Check again: a package that apt could not install must stop the build here.
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
still=()
for p in "${missing[@]}"; do
    if ! grep -qx "$p .i.*" <<<"$installed"; then still+=("$p"); fi
done
if [[ ${#still[@]} -gt 0 ]]; then
    echo "deps.sh: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "deps.sh: packages installed"
node_modules "${1:-}"
