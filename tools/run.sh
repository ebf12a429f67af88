#!/usr/bin/env bash
# tools/run.sh — what `make run` does after installing packages and building:
#   1. a private PostgreSQL cluster under ./var/pg (port RAPPORT_PG_PORT, default
#      54329), the demo schema, and demo data when the contacts table is empty
#      (RAPPORT_DEMO_CONTACTS contacts, default 1000);
#   2. the fake upstream build/fake_openai on 127.0.0.1:RAPPORT_FAKE_PORT (default
#      8089), unless OPENAI_API_KEY is set (then the real OPENAI_BASE_URL is used);
#   3. `./rapport serve` in the foreground on RAPPORT_LISTEN (default 127.0.0.1:8080),
#      with the descriptor limit raised to the hard limit (ulimit -n), and
#      with DATABASE_URL pointing at the private cluster as the read-only role
#      rapport_reader (sql/roles.sql; schema and demo data are loaded as the
#      owner, postgres). A DATABASE_URL in your environment is ignored here;
#      run ./rapport serve yourself to use another.
# Ctrl-C stops rapport and the fake; the cluster keeps running (tools/pg.sh stop var/pg).
# Safe to run again, and after a crash: the cluster is reused, stale pid files
# are cleaned, and a fake or rapport left over from a previous run is stopped.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PG_DIR="$ROOT/var/pg"
PG_PORT=${RAPPORT_PG_PORT:-54329}
DEMO_CONTACTS=${RAPPORT_DEMO_CONTACTS:-1000}
FAKE_PORT=${RAPPORT_FAKE_PORT:-8089}
LISTEN=${RAPPORT_LISTEN:-127.0.0.1:8080}
RAPPORT_BIN=${RAPPORT_BIN:-$ROOT/rapport}
FAKE_BIN=${FAKE_BIN:-$ROOT/build/fake_openai}
RUN_DIR="$ROOT/var/run"
LOG_DIR="$ROOT/var/log"

say() { printf '==> %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

port_busy() { # host port — is something accepting connections there?
    local h=$1
    [[ "$h" == 0.0.0.0 || "$h" == "*" || -z "$h" ]] && h=127.0.0.1
    [[ "$h" == "[::]" || "$h" == "::" ]] && h=::1
    h=${h#[}; h=${h%]}
    (exec 3<>"/dev/tcp/$h/$2") 2>/dev/null
}

# Is pid $1 a live process whose executable is named $2?
is_proc() {
    local pid=$1 name=$2 exe
    [[ "$pid" =~ ^[0-9]+$ && -d /proc/$pid ]] || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    exe=${exe% (deleted)}
    [[ "$(basename -- "$exe")" == "$name" ]]
}

# Stop the process recorded in pid file $1 if it really is a $2; drop the file.
stop_recorded() {
    local file=$1 name=$2 pid
    [[ -f "$file" ]] || return 0
    pid=$(head -n1 "$file" 2>/dev/null || true)
    if is_proc "$pid" "$name"; then
        say "stopping $name left over from a previous run (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do is_proc "$pid" "$name" || break; sleep 0.1; done
        if is_proc "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    fi
    rm -f -- "$file"
}

[[ -x "$RAPPORT_BIN" ]] || die "$RAPPORT_BIN not built — run 'make run' (it builds first)"
[[ -f sql/schema.sql ]] || die "sql/schema.sql is missing"
[[ -f sql/demo.sql ]] || die "sql/demo.sql is missing"
mkdir -p -m 755 "$ROOT/var"
mkdir -p "$RUN_DIR" "$LOG_DIR"

# Leftovers of a previous run that crashed or was killed.
stop_recorded "$RUN_DIR/rapport.pid" "$(basename -- "$RAPPORT_BIN")"
stop_recorded "$RUN_DIR/fake.pid" fake_openai

LISTEN_HOST=${LISTEN%:*}
LISTEN_PORT=${LISTEN##*:}
if port_busy "$LISTEN_HOST" "$LISTEN_PORT"; then
    die "port $LISTEN_PORT ($LISTEN) is already in use by another program.
  Stop that program, or choose another address: RAPPORT_LISTEN=127.0.0.1:8081 make run"
fi

# ---- PostgreSQL ------------------------------------------------------------
say "PostgreSQL: private cluster in var/pg, port $PG_PORT"
tools/pg.sh start "$PG_DIR" "$PG_PORT"
# Scripts' SQL runs on rapport's connections, so rapport logs in as a role
# that can only read; the schema, the demo data and the grants are the owner's.
DATABASE_URL=$(tools/pg.sh url "$PG_DIR" "$PG_PORT" rapport_reader)
psql_() { tools/pg.sh psql "$PG_DIR" "$PG_PORT" -q "$@" </dev/null; }
psql_ -f sql/schema.sql >/dev/null
psql_ -f sql/roles.sql >/dev/null
count=$(psql_ -Atc "select count(*) from contacts")
if [[ "$count" == 0 ]]; then
    say "loading demo data: $DEMO_CONTACTS contacts"
    psql_ -v contacts="$DEMO_CONTACTS" -f sql/demo.sql >/dev/null
    count=$(psql_ -Atc "select count(*) from contacts")
fi
say "database ready: $count contacts ($DATABASE_URL)"

# ---- upstream ----------------------------------------------------------------
FAKE_PID=""
RAPPORT_PID=""
STARTED=""
cleanup() {
    trap - INT TERM EXIT
    if [[ -n "$RAPPORT_PID" ]] && kill -0 "$RAPPORT_PID" 2>/dev/null; then
        kill -TERM "$RAPPORT_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$RAPPORT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RAPPORT_PID" 2>/dev/null || true
        wait "$RAPPORT_PID" 2>/dev/null || true
    fi
    rm -f -- "$RUN_DIR/rapport.pid"
    if [[ -n "$FAKE_PID" ]]; then
        kill -TERM "$FAKE_PID" 2>/dev/null || true
        wait "$FAKE_PID" 2>/dev/null || true
        rm -f -- "$RUN_DIR/fake.pid" "$RUN_DIR/fake.port"
    fi
    echo
    if [[ -n "$STARTED" ]]; then say "rapport stopped."; fi
    say "PostgreSQL keeps running (var/pg, port $PG_PORT); stop it with: tools/pg.sh stop var/pg"
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

if [[ -n "${OPENAI_API_KEY:-}" ]]; then
    UPSTREAM=${OPENAI_BASE_URL:-https://api.openai.com/v1}
    say "upstream: OPENAI_API_KEY is set — using the real model API at $UPSTREAM"
else
    [[ -x "$FAKE_BIN" ]] || die "$FAKE_BIN not built — run 'make run' (it builds first)"
    if port_busy 127.0.0.1 "$FAKE_PORT"; then
        die "port $FAKE_PORT (fake upstream) is already in use by another program; set RAPPORT_FAKE_PORT"
    fi
    rm -f -- "$RUN_DIR/fake.port"
    "$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --port-file "$RUN_DIR/fake.port" \
        </dev/null >"$LOG_DIR/fake.log" 2>&1 &
    FAKE_PID=$!
    echo "$FAKE_PID" >"$RUN_DIR/fake.pid"
    for _ in $(seq 1 100); do
        [[ -s "$RUN_DIR/fake.port" ]] && break
        kill -0 "$FAKE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -s "$RUN_DIR/fake.port" ]] || ! kill -0 "$FAKE_PID" 2>/dev/null; then
        tail -n 20 "$LOG_DIR/fake.log" >&2 || true
        die "the fake upstream did not start (log: var/log/fake.log)"
    fi
    UPSTREAM="http://127.0.0.1:$FAKE_PORT/v1"
    export OPENAI_BASE_URL=$UPSTREAM
    say "upstream: OPENAI_API_KEY is not set — using the FAKE upstream (build/fake_openai) at $UPSTREAM"
    say "          its answers are generated, not a real model's; set OPENAI_API_KEY to use OpenAI"
fi

# ---- rapport -------------------------------------------------------------------
# Every client connection is a descriptor: raise the soft limit as far as the hard
# limit allows (rapport derives its connection cap from it; see docs/operations.md).
NOFILE_HARD=$(ulimit -Hn)
if ulimit -Sn "$NOFILE_HARD" 2>/dev/null; then
    say "descriptor limit: $(ulimit -Sn) (ulimit -n, raised to the hard limit)"
else
    say "descriptor limit: $(ulimit -Sn) (could not raise it to $NOFILE_HARD)"
fi
export DATABASE_URL RAPPORT_LISTEN=$LISTEN
say "starting rapport serve on $LISTEN"
"$RAPPORT_BIN" serve </dev/null &
RAPPORT_PID=$!
STARTED=1
echo "$RAPPORT_PID" >"$RUN_DIR/rapport.pid"

case "$LISTEN_HOST" in
    127.0.0.1|0.0.0.0|localhost|"") URL_HOST=localhost ;;
    *) URL_HOST=$LISTEN_HOST ;;
esac
BASE="$URL_HOST:$LISTEN_PORT"
AUTH=""
if [[ -n "${RAPPORT_API_KEYS:-}" ]]; then
    AUTH=" -H 'Authorization: Bearer ${RAPPORT_API_KEYS%%,*}'"
fi

up=0
for _ in $(seq 1 100); do
    kill -0 "$RAPPORT_PID" 2>/dev/null || break
    if curl -fs -o /dev/null --max-time 1 "http://$BASE/healthz"; then up=1; break; fi
    sleep 0.1
done
if [[ $up -eq 1 ]]; then
    # The demo's most useful card: open deals and the most recent activity.
    DEMO_ID=$(psql_ -Atc "select c.id from contacts c join deals d on d.contact_id = c.id
        and d.stage not in ('closed_won', 'closed_lost') join activities a on a.contact_id = c.id
        and a.occurred_at > now() - interval '90 days' group by c.id order by count(*) desc, c.id
        limit 1" 2>/dev/null || true)
    cat <<EOF

Panel: http://$BASE/#contact=${DEMO_ID:-1}   (open it in a browser)

rapport is up on http://$BASE — try:
  curl -s $BASE/healthz
  curl -s$AUTH $BASE/v1/analysis-types
  curl -s$AUTH $BASE/v1/contacts/1/analyses/relationship_health
  curl -sN$AUTH -H 'Accept: text/event-stream' $BASE/v1/contacts/1/analyses/relationship_health
Ctrl-C stops rapport$([[ -n "$FAKE_PID" ]] && echo " and the fake upstream"); PostgreSQL keeps running (tools/pg.sh stop var/pg).

EOF
elif kill -0 "$RAPPORT_PID" 2>/dev/null; then
    say "rapport has not answered /healthz after 10 s; still waiting (its log is above)"
fi

set +e
wait "$RAPPORT_PID"
rc=$?
set -e
RAPPORT_PID=""
if [[ $rc -ne 0 ]]; then
    echo "run.sh: rapport exited with status $rc" >&2
fi
exit "$rc"
