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
# It writes var/run/env (DATABASE_URL, OPENAI_BASE_URL, RAPPORT_LISTEN of this
# run; never a key): `rapport console`, `analyze` and `check` read it when
# DATABASE_URL is not set, so they reach the same demo.
# Ctrl-C stops rapport and the fake (exit status 0); the cluster keeps running
# (tools/pg.sh stop var/pg).
# REDIS=1 (make run REDIS=1): instead of step 3, a private redis-server on a
# unix socket under var/redis, two rapport instances on the two ports after
# RAPPORT_LISTEN's sharing it as their L2 (REDIS_URL), and a local HAProxy on
# RAPPORT_LISTEN in front of them (config rendered from etc/haproxy.cfg.example
# into var/run/haproxy-<port>.cfg). Ctrl-C stops all of them, by pid.
# Several runs side by side: each has its own RAPPORT_LISTEN and
# RAPPORT_FAKE_PORT and its own files var/run/run-<listen port>.* (owner pid,
# rapport and fake pids, env); they share the cluster. A later run cleans up
# only what a run whose owner (this script's process) is dead left behind,
# never a live run's processes.
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

# Stop process $1 if it really is a $2.
stop_pid() {
    local pid=$1 name=$2
    if is_proc "$pid" "$name"; then
        say "stopping $name left over from a run that is gone (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do is_proc "$pid" "$name" || break; sleep 0.1; done
        if is_proc "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    fi
}

# Is pid $1 a live run.sh (the owner of a run's files)?
is_run_owner() {
    local pid=$1
    [[ "$pid" =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tools/run\.sh'
}

# A run's state file: OWNER=, RAPPORT=, FAKE= (pids), LISTEN=, FAKE_PORT=.
state_get() { sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n1; }

# Leftovers of runs that crashed or were killed: only those whose owner is
# dead; a live run (another terminal) is left alone.
clean_dead_runs() {
    local f owner
    for f in "$RUN_DIR"/run-*.state; do
        [[ -e "$f" ]] || continue
        owner=$(state_get "$f" OWNER)
        is_run_owner "$owner" && continue
        stop_pid "$(state_get "$f" RAPPORT)" "$(basename -- "$RAPPORT_BIN")"
        stop_pid "$(state_get "$f" FAKE)" fake_openai
        rm -f -- "$f" "${f%.state}.env"
    done
    # The files of an older run.sh (one run at a time, no owner recorded).
    local old
    for old in rapport fake; do
        [[ -f "$RUN_DIR/$old.pid" ]] || continue
        if [[ $old == rapport ]]; then stop_pid "$(head -n1 "$RUN_DIR/$old.pid")" "$(basename -- "$RAPPORT_BIN")"
        else stop_pid "$(head -n1 "$RUN_DIR/$old.pid")" fake_openai; fi
        rm -f -- "$RUN_DIR/$old.pid"
    done
    relink_env
}

# var/run/env is the env file of the newest live run (a symlink), or absent.
relink_env() {
    local f newest=""
    for f in "$RUN_DIR"/run-*.env; do
        [[ -e "$f" ]] || continue
        [[ -z "$newest" || "$f" -nt "$newest" ]] && newest=$f
    done
    if [[ -n "$newest" ]]; then ln -sfn -- "$(basename -- "$newest")" "$RUN_DIR/env"
    else rm -f -- "$RUN_DIR/env"; fi
}

[[ -x "$RAPPORT_BIN" ]] || die "$RAPPORT_BIN not built — run 'make run' (it builds first)"
[[ -f sql/schema.sql ]] || die "sql/schema.sql is missing"
[[ -f sql/demo.sql ]] || die "sql/demo.sql is missing"
mkdir -p -m 755 "$ROOT/var"
mkdir -p "$RUN_DIR" "$LOG_DIR"

LISTEN_HOST=${LISTEN%:*}
LISTEN_PORT=${LISTEN##*:}
[[ "$LISTEN_PORT" =~ ^[0-9]+$ ]] || die "RAPPORT_LISTEN must be HOST:PORT, got '$LISTEN'"
[[ "$FAKE_PORT" =~ ^[0-9]+$ ]] || die "RAPPORT_FAKE_PORT must be a port number, got '$FAKE_PORT'"
STATE="$RUN_DIR/run-$LISTEN_PORT.state"
ENV_FILE="$RUN_DIR/run-$LISTEN_PORT.env"

clean_dead_runs
if [[ -f "$STATE" ]]; then
    die "another 'make run' (pid $(state_get "$STATE" OWNER)) is serving on port $LISTEN_PORT.
  Run a second one next to it on other ports:
    RAPPORT_LISTEN=127.0.0.1:$((LISTEN_PORT + 1)) RAPPORT_FAKE_PORT=$((FAKE_PORT + 1)) make run"
fi
if port_busy "$LISTEN_HOST" "$LISTEN_PORT"; then
    die "port $LISTEN_PORT ($LISTEN) is already in use by another program.
  Stop that program, or choose another address: RAPPORT_LISTEN=127.0.0.1:$((LISTEN_PORT + 1)) make run"
fi

# ---- PostgreSQL ------------------------------------------------------------
# The cluster is shared by the runs side by side: when a live run already
# uses it on another port, stay on that port (moving it would cut that run off).
if pg_status=$(tools/pg.sh status "$PG_DIR" 2>/dev/null); then
    running=$(sed -n 's/.*port \([0-9]*\),.*/\1/p' <<<"$pg_status")
    if [[ -n "$running" && "$running" != "$PG_PORT" ]] && compgen -G "$RUN_DIR/run-*.state" >/dev/null; then
        say "PostgreSQL already serves another run on port $running: using that port (not $PG_PORT)"
        PG_PORT=$running
    fi
fi
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
EXTRA_PIDS=""   # REDIS=1: haproxy, the two instances, redis-server (that order)
cleanup() {
    trap - INT TERM EXIT
    local p
    for p in $EXTRA_PIDS; do
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [[ -n "$RAPPORT_PID" ]] && kill -0 "$RAPPORT_PID" 2>/dev/null; then
        kill -TERM "$RAPPORT_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$RAPPORT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RAPPORT_PID" 2>/dev/null || true
        wait "$RAPPORT_PID" 2>/dev/null || true
    fi
    if [[ -n "$FAKE_PID" ]]; then
        kill -TERM "$FAKE_PID" 2>/dev/null || true
        wait "$FAKE_PID" 2>/dev/null || true
        rm -f -- "$FAKE_PORT_FILE"
    fi
    if [[ -n "$OWN_STATE" ]]; then
        rm -f -- "$STATE" "$ENV_FILE"
        relink_env
    fi
    echo
    if [[ -n "$STARTED" ]]; then say "rapport stopped."; fi
    say "PostgreSQL keeps running (var/pg, port $PG_PORT); stop it with: tools/pg.sh stop var/pg"
}
# Ctrl-C is how a person ends `make run`: a normal end (status 0), so make
# does not report "Error 130". TERM (from a supervisor) keeps its status.
trap 'cleanup; exit 0' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

# This run's state file: who owns it (this script) and what it started.
OWN_STATE=1
write_state() {
    printf 'OWNER=%s\nLISTEN=%s\nFAKE_PORT=%s\nRAPPORT=%s\nFAKE=%s\n' \
        "$$" "$LISTEN" "$FAKE_PORT" "$RAPPORT_PID" "$FAKE_PID" >"$STATE.tmp"
    mv -f -- "$STATE.tmp" "$STATE"
}
write_state
FAKE_PORT_FILE="$RUN_DIR/fake-$FAKE_PORT.port"

if [[ -n "${OPENAI_API_KEY:-}" ]]; then
    UPSTREAM=${OPENAI_BASE_URL:-https://api.openai.com/v1}
    say "upstream: OPENAI_API_KEY is set — using the real model API at $UPSTREAM"
else
    [[ -x "$FAKE_BIN" ]] || die "$FAKE_BIN not built — run 'make run' (it builds first)"
    if port_busy 127.0.0.1 "$FAKE_PORT"; then
        die "port $FAKE_PORT (fake upstream) is already in use by another program; set RAPPORT_FAKE_PORT"
    fi
    rm -f -- "$FAKE_PORT_FILE"
    FAKE_LOG="$LOG_DIR/fake-$FAKE_PORT.log"
    "$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --port-file "$FAKE_PORT_FILE" \
        </dev/null >"$FAKE_LOG" 2>&1 &
    FAKE_PID=$!
    write_state
    for _ in $(seq 1 100); do
        [[ -s "$FAKE_PORT_FILE" ]] && break
        kill -0 "$FAKE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -s "$FAKE_PORT_FILE" ]] || ! kill -0 "$FAKE_PID" 2>/dev/null; then
        tail -n 20 "$FAKE_LOG" >&2 || true
        die "the fake upstream did not start (log: ${FAKE_LOG#$ROOT/})"
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
# rapport's own schema (warm jobs) needs a role that may create it: the owner here.
RAPPORT_STATE_URL=$(tools/pg.sh url "$PG_DIR" "$PG_PORT")
export DATABASE_URL RAPPORT_STATE_URL RAPPORT_LISTEN=$LISTEN

# ---- REDIS=1: redis + two instances + HAProxy ------------------------------------
if [[ "${REDIS:-}" == 1 ]]; then
    command -v redis-server >/dev/null || die "redis-server is not installed (tools/deps.sh)"
    command -v haproxy >/dev/null || die "haproxy is not installed (tools/deps.sh)"
    PORT_A=$((LISTEN_PORT + 1)); PORT_B=$((LISTEN_PORT + 2))
    for p in "$PORT_A" "$PORT_B"; do
        port_busy 127.0.0.1 "$p" && die "port $p (an instance behind HAProxy) is already in use"
    done
    REDIS_DIR="$ROOT/var/redis"; mkdir -p "$REDIS_DIR"
    REDIS_SOCK="$REDIS_DIR/redis-$LISTEN_PORT.sock"
    rm -f -- "$REDIS_SOCK"
    redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 \
        --save "" --appendonly no --dir "$REDIS_DIR" \
        --logfile "$LOG_DIR/redis-$LISTEN_PORT.log" </dev/null >/dev/null 2>&1 &
    EXTRA_PIDS="$! $EXTRA_PIDS"
    for _ in $(seq 1 100); do [[ -S "$REDIS_SOCK" ]] && break; sleep 0.1; done
    [[ -S "$REDIS_SOCK" ]] || die "redis-server did not start (log: var/log/redis-$LISTEN_PORT.log)"
    say "Redis: private redis-server on unix://${REDIS_SOCK#$ROOT/}"
    export REDIS_URL="unix://$REDIS_SOCK" RAPPORT_REDIS_PREFIX=${RAPPORT_REDIS_PREFIX:-rapport}
    for p in "$PORT_A" "$PORT_B"; do
        RAPPORT_LISTEN=127.0.0.1:$p RAPPORT_ADMIN_SOCKET="$RUN_DIR/admin-$p.sock" \
            "$RAPPORT_BIN" serve </dev/null >>"$LOG_DIR/rapport-$p.log" 2>&1 &
        EXTRA_PIDS="$! $EXTRA_PIDS"
    done
    # HAProxy only once both answer: its first health checks then pass, and
    # neither instance starts out of the rotation (fall 2, rise 2).
    for _ in $(seq 1 150); do
        curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$PORT_A/readyz" &&
            curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$PORT_B/readyz" && break
        sleep 0.1
    done
    HX_CFG="$RUN_DIR/haproxy-$LISTEN_PORT.cfg"
    { grep -v '# @SERVERS@' etc/haproxy.cfg.example | sed "s|@LISTEN@|$LISTEN|"
      printf '    server a 127.0.0.1:%s check\n    server b 127.0.0.1:%s check\n' "$PORT_A" "$PORT_B"
    } | sed -E 's/^(\s+)maxconn [0-9]+$/\1maxconn 1000/' >"$HX_CFG"
    haproxy -db -f "$HX_CFG" </dev/null >>"$LOG_DIR/haproxy-$LISTEN_PORT.log" 2>&1 &
    HX_PID=$!
    EXTRA_PIDS="$HX_PID $EXTRA_PIDS"
    STARTED=1
    for _ in $(seq 1 150); do
        curl -fs -o /dev/null --max-time 1 "http://$LISTEN/readyz" && break
        kill -0 "$HX_PID" 2>/dev/null || die "haproxy exited (log: var/log/haproxy-$LISTEN_PORT.log)"
        sleep 0.1
    done
    {
        echo "# written by tools/run.sh (make run REDIS=1, pid $$) — removed when that run ends"
        printf "DATABASE_URL='%s'\n" "$DATABASE_URL"
        printf "OPENAI_BASE_URL='%s'\n" "$UPSTREAM"
        printf "RAPPORT_LISTEN='%s'\n" "$LISTEN"
        printf "REDIS_URL='%s'\n" "$REDIS_URL"
    } >"$ENV_FILE"
    relink_env
    U="http://$LISTEN/v1/contacts/7/analyses/relationship_health"
    cat <<EOF

rapport x2 behind HAProxy on http://$LISTEN (instances 127.0.0.1:$PORT_A and :$PORT_B,
shared L2 in Redis at $REDIS_URL). See the shared cache at work:
  curl -s -D- -o /dev/null $U | grep -i -e x-cache -e etag
  curl -s $U | grep -o '"tier":"[a-z0-9]*"'     # again: l2 (the other instance) or l1
  curl -s http://127.0.0.1:$PORT_A/metrics | grep rapport_l2_hits_total   # which instance answered
  curl -s http://127.0.0.1:$PORT_B/metrics | grep rapport_l2_hits_total
  curl -s http://$LISTEN/readyz                 # "l2":"up" on the instance that answers
One model call across both (a cold contact streamed from each at once: one waits, relayed):
  for p in $PORT_A $PORT_B; do curl -sN "http://127.0.0.1:\$p/v1/contacts/8/analyses/smart_tips?stream=1" | grep -c '^event: delta' & done; wait
  curl -s http://127.0.0.1:$PORT_A/metrics http://127.0.0.1:$PORT_B/metrics | grep -e lock_acquired_total -e lock_waits_total
Logs: var/log/rapport-$PORT_A.log, rapport-$PORT_B.log, haproxy-$LISTEN_PORT.log, redis-$LISTEN_PORT.log
Ctrl-C stops HAProxy, both instances and redis-server; PostgreSQL keeps running.

EOF
    set +e
    wait -n $EXTRA_PIDS
    set -e
    say "a process of the REDIS=1 set exited; stopping the rest"
    exit 1
fi
say "starting rapport serve on $LISTEN"
# On a terminal, rapport becomes the foreground job (job control, below): the
# terminal's Ctrl-C then reaches rapport alone, which stops cleanly, and this
# script and make end normally (status 0, no "make: *** … Interrupt"). Without
# a terminal, a SIGINT to the group is trapped above, with the same result.
JOBCTL=0
if [[ -t 0 && -t 2 ]] && set -m 2>/dev/null; then JOBCTL=1; fi
"$RAPPORT_BIN" serve </dev/null &
RAPPORT_PID=$!
STARTED=1
write_state
# For the commands run by hand next to this demo (rapport console, analyze,
# check): the same database and upstream. Single-quoted for the shell;
# rapport reads the same KEY='value' lines. The key itself is never written.
{
    echo "# written by tools/run.sh (make run, pid $$) — removed when that run ends"
    printf "DATABASE_URL='%s'\n" "$DATABASE_URL"
    printf "OPENAI_BASE_URL='%s'\n" "$UPSTREAM"
    printf "RAPPORT_LISTEN='%s'\n" "$LISTEN"
} >"$ENV_FILE"
relink_env

case "$LISTEN_HOST" in
    127.0.0.1|0.0.0.0|localhost|"") URL_HOST=localhost ;;
    *) URL_HOST=$LISTEN_HOST ;;
esac
BASE="$URL_HOST:$LISTEN_PORT"
AUTH=""
if [[ -n "${RAPPORT_API_KEYS:-}" ]]; then
    AUTH=" -H 'Authorization: Bearer ${RAPPORT_API_KEYS%%,*}'"
fi

# Prints the commands to try once rapport answers /healthz — and, with job
# control, once rapport holds the terminal, so a Ctrl-C typed after the
# banner always reaches rapport (never this script and make).
announce() {
    local up=0 fgpg
    for _ in $(seq 1 100); do
        kill -0 "$RAPPORT_PID" 2>/dev/null || return 0
        if [[ $JOBCTL -eq 1 ]]; then
            fgpg=$(ps -o tpgid= -p "$RAPPORT_PID" 2>/dev/null | tr -d ' ')
            if [[ "$fgpg" != "$RAPPORT_PID" ]]; then sleep 0.05; continue; fi
        fi
        if curl -fs -o /dev/null --max-time 1 "http://$BASE/healthz"; then up=1; break; fi
        sleep 0.1
    done
    if [[ $up -eq 1 ]]; then
        # Pretty JSON when jq is there; the stream asks for a fresh generation
        # (no-cache), so it shows the deltas arriving even after the plain GET
        # above cached that analysis.
        local JQ=""; command -v jq >/dev/null 2>&1 && JQ=" | jq ."
        # The panel opens on the demo's most useful card: open deals and
        # the most recent activity.
        local DEMO_ID
        DEMO_ID=$(psql_ -Atc "select c.id from contacts c join deals d on d.contact_id = c.id
            and d.stage not in ('closed_won', 'closed_lost') join activities a on a.contact_id = c.id
            and a.occurred_at > now() - interval '90 days' group by c.id order by count(*) desc, c.id
            limit 1" 2>/dev/null || true)
        cat <<EOF

Panel: http://$BASE/#contact=${DEMO_ID:-1}   (open it in a browser)

rapport is up on http://$BASE — try:
  curl -s $BASE/healthz
  curl -s$AUTH $BASE/v1/analysis-types$JQ
  curl -s$AUTH $BASE/v1/contacts/1/analyses/relationship_health$JQ
  curl -sN$AUTH -H 'Accept: text/event-stream' '$BASE/v1/contacts/2/analyses/smart_tips?refresh=1'
  ./rapport analyze 42 smart_tips$JQ
  ./rapport console        # then: analyze(42, "smart_tips")   (help() lists the rest)
(./rapport console, analyze and check use this run's database and upstream: var/run/env)
Ctrl-C stops rapport$([[ -n "$FAKE_PID" ]] && echo " and the fake upstream"); PostgreSQL keeps running (tools/pg.sh stop var/pg).

EOF
    elif kill -0 "$RAPPORT_PID" 2>/dev/null; then
        say "rapport has not answered /healthz after 10 s; still waiting (its log is above)"
    fi
}

set +e
RAPPORT_JOB=""
if [[ $JOBCTL -eq 1 ]]; then
    RAPPORT_JOB=$(jobs -l | sed -n "s/^\[\([0-9]*\)\][-+ ]*$RAPPORT_PID .*/\1/p")
    [[ -n "$RAPPORT_JOB" ]] || JOBCTL=0
fi
if [[ $JOBCTL -eq 1 ]]; then
    announce </dev/null &
    ANNOUNCE_PID=$!
    fg %"$RAPPORT_JOB" >/dev/null
    rc=$?
    kill "$ANNOUNCE_PID" 2>/dev/null || true
else
    announce
    wait "$RAPPORT_PID"
    rc=$?
fi
set -e
RAPPORT_PID=""
if [[ $rc -ne 0 ]]; then
    echo "run.sh: rapport exited with status $rc" >&2
fi
exit "$rc"
