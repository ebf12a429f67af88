#!/usr/bin/env bash
# tools/pg.sh — a private PostgreSQL cluster for development and tests.
#
#   tools/pg.sh start   DIR PORT        initdb if needed, start, wait until ready,
#                                        create database "rapport" if missing
#   tools/pg.sh stop    DIR             fast shutdown (no error if not running)
#   tools/pg.sh status  DIR             exit 0 running, 3 not running
#   tools/pg.sh url     DIR PORT [USER] print a libpq URL (keyword form) for USER
#                                        (default postgres, the owner/superuser;
#                                        rapport's DATABASE_URL uses the reader
#                                        role of sql/roles.sql: rapport_reader)
#   tools/pg.sh psql    DIR PORT [args…] psql on database "rapport" as user postgres
#   tools/pg.sh destroy DIR             stop and delete the cluster's files
#
# Layout: DIR/data (PGDATA), DIR/run (unix socket), DIR/postgres.log.
# The server listens on the unix socket in DIR/run and on 127.0.0.1:PORT only;
# authentication is "trust" for those local connections only (initdb -A trust;
# nothing listens on another address). The database superuser is always
# "postgres", whoever runs the server.
#
# Who runs the server: PostgreSQL refuses to run as root. As root the cluster
# runs as the OS user "postgres" (runuser) and its files are owned by it; as an
# ordinary user it runs as that user.
#
# Where the files live: as root, the postgres user must be able to reach DIR
# (every parent directory traversable, e.g. not under a 0700 /root), and the
# socket path must fit the 107-byte unix socket limit. When either fails, the
# files live in /tmp/rapport-pg-<hash of DIR> instead, and DIR/data and DIR/run
# are symlinks to it (DIR/WHERE says so). Every command resolves through those
# symlinks, so callers never need to know. If /tmp was wiped, the dangling
# symlinks are replaced by a fresh cluster on the next start.
#
# Durability is traded for speed on purpose: this is a throwaway dev/test
# cluster, so fsync=off, synchronous_commit=off and full_page_writes=off. Never
# use these settings for data you care about.
#
# Crash safety: a postmaster.pid whose pid is not a running postgres serving
# this data directory (e.g. after kill -9, a reboot or pid reuse in a
# container) is removed before starting, together with stale socket lock files.
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------- binaries --
pg_bindir() {
    if [[ -n "${PG_BINDIR:-}" ]]; then echo "$PG_BINDIR"; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n "$d" && -x "$d/pg_ctl" ]]; then echo "$d"; return; fi
    d=$(command -v pg_ctl 2>/dev/null || true)
    [[ -n "$d" ]] || die "PostgreSQL server binaries not found (install the Debian package 'postgresql', or run tools/deps.sh)"
    dirname "$d"
}
BIN=$(pg_bindir)
[[ -x "$BIN/pg_ctl" && -x "$BIN/initdb" ]] || die "no pg_ctl/initdb in $BIN"
PSQL="$BIN/psql"; [[ -x "$PSQL" ]] || PSQL=$(command -v psql) || die "psql not found"
PG_ISREADY="$BIN/pg_isready"; [[ -x "$PG_ISREADY" ]] || PG_ISREADY=$(command -v pg_isready) || die "pg_isready not found"

# Connection settings from the caller's environment must not redirect us.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSERVICE PGSERVICEFILE PGOPTIONS PGDATA

IS_ROOT=0; [[ $(id -u) -eq 0 ]] && IS_ROOT=1
PGOS_USER=postgres   # OS user running the server when we are root

own() { # as root, give files to the cluster's OS user
    if [[ $IS_ROOT -eq 1 ]]; then chown "$PGOS_USER:" "$@"; fi
}

# Run a command as the OS user that owns the cluster (from "/", so that an
# unreadable current directory such as /root does not bother it).
as_owner() {
    if [[ $IS_ROOT -eq 1 ]]; then
        (cd / && runuser -u "$PGOS_USER" -- "$@")
    else
        (cd / && "$@")
    fi
}

# ------------------------------------------------------------------ paths --
abspath() { # absolute path, without resolving symlinks of the last parts
    local p=$1
    [[ "$p" == /* ]] || p="$PWD/$p"
    # normalise /./ and trailing slashes; realpath -m -s does not touch the disk
    realpath -m -s -- "$p"
}

# Can the cluster's OS user traverse directory $1 (and all its parents)?
reachable_by_owner() {
    if [[ $IS_ROOT -eq 1 ]]; then
        runuser -u "$PGOS_USER" -- test -x "$1" 2>/dev/null
    else
        test -x "$1"
    fi
}

fallback_dir() { # /tmp/rapport-pg-<hash of DIR>
    local h
    h=$(printf '%s' "$DIR" | md5sum | cut -c1-12)
    echo "/tmp/rapport-pg-$h"
}

# Decide where the files really live (sets REAL). Pure: touches nothing.
decide_real() {
    local parent sock
    parent=$(dirname "$DIR")
    sock="$DIR/run/.s.PGSQL.99999.lock"
    if [[ "$DIR" =~ [[:space:]\'\"\\] ]] || (( ${#sock} > 100 )); then
        REAL=$(fallback_dir); return
    fi
    # The nearest existing ancestor must be traversable by the cluster's user.
    while [[ ! -d "$parent" ]]; do parent=$(dirname "$parent"); done
    if reachable_by_owner "$parent"; then REAL=$DIR; else REAL=$(fallback_dir); fi
}

# The data and socket directories as they are now (following symlinks).
resolve() {
    DATA=$(readlink -f -- "$DIR/data" 2>/dev/null || echo "$DIR/data")
    RUN=$(readlink -f -- "$DIR/run" 2>/dev/null || echo "$DIR/run")
    LOG="$(dirname "$DATA")/postgres.log"
    if [[ ! -e "$DIR/run" ]]; then
        # not created yet: predict it (so `url` works before `start`)
        decide_real; RUN="$REAL/run"
    fi
}

# Create the directory layout (and the fallback symlinks) for a new cluster.
prepare_layout() {
    # Dangling symlinks (fallback dir wiped from /tmp): start over.
    for l in "$DIR/data" "$DIR/run"; do
        if [[ -L "$l" && ! -e "$l" ]]; then rm -f -- "$l"; fi
    done
    mkdir -p -- "$DIR"
    if [[ -e "$DIR/data" ]]; then return; fi
    decide_real
    if [[ "$REAL" != "$DIR" ]]; then
        if [[ -e "$REAL" && ! -O "$REAL" ]]; then
            # Owned by someone else: do not trust a predictable /tmp path.
            [[ $IS_ROOT -eq 1 && "$(stat -c %U "$REAL")" == "$PGOS_USER" ]] ||
                die "$REAL exists and is not ours; remove it"
        fi
        mkdir -p -m 700 -- "$REAL"
        own "$REAL"
        chmod 755 "$REAL"
        ln -sfn -- "$REAL/data" "$DIR/data"
        ln -sfn -- "$REAL/run" "$DIR/run"
        cat >"$DIR/WHERE" <<EOF
The files of this PostgreSQL cluster live in $REAL
(the postgres user cannot reach $DIR, or its socket path would be too long).
data and run here are symlinks to it. Stop it with: tools/pg.sh stop $DIR
EOF
    else
        own "$DIR"
        chmod 755 "$DIR" 2>/dev/null || true
    fi
}

# ------------------------------------------------------------- processes --
# Is $1 a live postgres process whose working directory is our data dir?
is_our_postgres() {
    local pid=$1 comm cwd
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -d /proc/$pid ]] || return 1
    comm=""; read -r comm 2>/dev/null <"/proc/$pid/comm" || true
    [[ "$comm" == postgres* || "$comm" == postmaster* ]] || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    [[ "$cwd" == "$DATA" ]]
}

postmaster_pid() { # prints the pid of our running postmaster, or fails
    local pid
    [[ -f "$DATA/postmaster.pid" ]] || return 1
    pid=$(head -n1 "$DATA/postmaster.pid" 2>/dev/null || true)
    is_our_postgres "$pid" || return 1
    echo "$pid"
}

running_port() { sed -n '4p' "$DATA/postmaster.pid" 2>/dev/null || true; }

# Processes left over from a postmaster that died (its children hold shared
# memory, which blocks a new start): wait a little for them, then kill them.
reap_orphans() {
    local i pids p
    for i in $(seq 1 50); do
        pids=""
        for p in /proc/[0-9]*; do
            p=${p#/proc/}
            is_our_postgres "$p" && pids="$pids $p"
        done
        [[ -z "$pids" ]] && return 0
        if (( i == 30 )); then
            echo "pg.sh: killing leftover postgres processes of $DATA:$pids" >&2
            kill -KILL $pids 2>/dev/null || true
        fi
        sleep 0.1
    done
    die "postgres processes of $DATA do not go away:$pids"
}

clear_stale() {
    if [[ -f "$DATA/postmaster.pid" ]] && ! postmaster_pid >/dev/null; then
        echo "pg.sh: removing stale $DATA/postmaster.pid (pid $(head -n1 "$DATA/postmaster.pid" 2>/dev/null) is not our running postgres)" >&2
        rm -f -- "$DATA/postmaster.pid"
    fi
    if ! postmaster_pid >/dev/null; then
        reap_orphans
        rm -f -- "$RUN"/.s.PGSQL.* 2>/dev/null || true
    fi
}

port_busy() { # is something listening on 127.0.0.1:$1 ?
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

psql_admin() { # psql as superuser on database postgres
    "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$PORT" -U postgres -d postgres "$@"
}

# --------------------------------------------------------------- commands --
cmd_start() {
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "bad port: $PORT"
    prepare_layout
    resolve

    if [[ ! -f "$DATA/PG_VERSION" ]]; then
        if [[ -d "$DATA" ]] && [[ -n "$(ls -A "$DATA" 2>/dev/null)" ]]; then
            die "$DATA exists but is not a PostgreSQL data directory; remove it"
        fi
        echo "pg.sh: creating a new PostgreSQL cluster in $DATA"
        mkdir -p -m 700 -- "$DATA" "$RUN"
        chmod 755 "$RUN"
        own "$DATA" "$RUN"
        local out
        if ! out=$(as_owner "$BIN/initdb" -D "$DATA" -U postgres -A trust \
                    -E UTF8 --locale=C --no-sync 2>&1); then
            echo "$out" >&2
            die "initdb failed"
        fi
        cat >>"$DATA/postgresql.conf" <<'EOF'

# --- rapport dev/test cluster (tools/pg.sh) ---
# Throwaway cluster: durability traded for speed on purpose.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
# Port, listen address and socket dir are rewritten by tools/pg.sh at each start.
include_if_exists = 'rapport.conf'
EOF
    fi

    # As root, run the cluster as the owner of its data directory.
    if [[ $IS_ROOT -eq 1 ]]; then
        local owner
        owner=$(stat -c %U "$DATA")
        if [[ "$owner" == root ]]; then
            chown -R "$PGOS_USER:" "$DATA"; owner=$PGOS_USER
        fi
        PGOS_USER=$owner
        reachable_by_owner "$DATA" || die "$PGOS_USER cannot reach $DATA; remove $DIR and start again"
    fi

    local pid
    if pid=$(postmaster_pid); then
        if [[ "$(running_port)" == "$PORT" ]]; then
            wait_ready
            ensure_db
            echo "pg.sh: PostgreSQL already running (pid $pid, port $PORT, socket dir $RUN)"
            return 0
        fi
        echo "pg.sh: PostgreSQL running on port $(running_port), restarting on port $PORT"
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
    clear_stale

    if port_busy "$PORT"; then
        die "port $PORT on 127.0.0.1 is already in use by another program; choose another port"
    fi

    local conf
    conf=$(cat <<EOF
# written by tools/pg.sh at each start — do not edit
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
EOF
)
    if [[ $IS_ROOT -eq 1 ]]; then
        printf '%s\n' "$conf" | runuser -u "$PGOS_USER" -- tee "$DATA/rapport.conf" >/dev/null
    else
        printf '%s\n' "$conf" >"$DATA/rapport.conf"
    fi
    [[ -d "$RUN" ]] || { mkdir -p -m 755 -- "$RUN"; own "$RUN"; }
    # the log file lives next to the data directory, writable by its owner
    if [[ $IS_ROOT -eq 1 ]]; then touch "$LOG"; own "$LOG"; fi

    if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -s start </dev/null >/dev/null 2>&1; then
        echo "pg.sh: PostgreSQL failed to start; last lines of $LOG:" >&2
        tail -n 25 "$LOG" >&2 || true
        exit 1
    fi
    wait_ready
    ensure_db
    echo "pg.sh: PostgreSQL running (pid $(postmaster_pid || echo '?'), port $PORT, socket dir $RUN)"
}

wait_ready() {
    local i
    for i in $(seq 1 300); do
        if "$PG_ISREADY" -q -h "$RUN" -p "$PORT" -d postgres -U postgres; then return 0; fi
        sleep 0.1
    done
    echo "pg.sh: PostgreSQL not ready after 30 s; last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2 || true
    exit 1
}

ensure_db() {
    local have
    have=$(psql_admin -Atc "select 1 from pg_database where datname = 'rapport'")
    if [[ "$have" != 1 ]]; then
        psql_admin -c "create database rapport" >/dev/null
    fi
}

cmd_stop() {
    resolve
    [[ -f "$DATA/PG_VERSION" ]] || return 0
    if [[ $IS_ROOT -eq 1 ]]; then PGOS_USER=$(stat -c %U "$DATA"); fi
    if postmaster_pid >/dev/null; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 -s stop </dev/null
        echo "pg.sh: PostgreSQL stopped ($DATA)"
    fi
}

cmd_status() {
    resolve
    local pid
    if [[ -f "$DATA/PG_VERSION" ]] && pid=$(postmaster_pid); then
        echo "running (pid $pid, port $(running_port), socket dir $RUN, data $DATA)"
        return 0
    fi
    echo "not running ($DATA)"
    return 3
}

cmd_url() {
    resolve
    echo "host=$RUN port=$PORT dbname=rapport user=${1:-postgres}"
}

cmd_psql() {
    resolve
    exec "$PSQL" -X -v ON_ERROR_STOP=1 -h "$RUN" -p "$PORT" -U postgres -d rapport "$@"
}

cmd_destroy() {
    cmd_stop
    resolve
    local real; real=$(dirname "$DATA")
    if [[ "$real" != "$DIR" && "$real" == /tmp/rapport-pg-* ]]; then rm -rf -- "$real"; fi
    rm -rf -- "$DIR/data" "$DIR/run" "$DIR/WHERE" "$DIR/postgres.log"
    rmdir -- "$DIR" 2>/dev/null || true
}

# ------------------------------------------------------------------- main --
[[ $# -ge 2 ]] || usage
CMD=$1; DIR=$(abspath "$2"); shift 2
case "$CMD" in
    start)   [[ $# -eq 1 ]] || usage; PORT=$1; cmd_start ;;
    stop)    [[ $# -eq 0 ]] || usage; cmd_stop ;;
    status)  [[ $# -eq 0 ]] || usage; cmd_status ;;
    url)     [[ $# -eq 1 || $# -eq 2 ]] || usage; PORT=$1; cmd_url "${2:-}" ;;
    psql)    [[ $# -ge 1 ]] || usage; PORT=$1; shift; cmd_psql "$@" ;;
    destroy) [[ $# -eq 0 ]] || usage; cmd_destroy ;;
    *) usage ;;
esac
