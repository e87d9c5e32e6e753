#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis that distasks and its tests need are reachable, and writes
# .local/services.env (DISTASKS_PG_ADMIN_DSN, DATABASE_URL, REDIS_URL) for `make` to source;
# it sets only those the environment does not already set.
#
# Why: developers' machines and CI usually run shared servers on 127.0.0.1:5432 (user postgres,
# trust auth) and 127.0.0.1:6379, and those are used when they answer. A machine without them
# still has to pass `make test` from a fresh clone, so then this script starts private, throwaway
# instances owned by this checkout (PostgreSQL on 54329 in .local/pg, Redis on 63799 in
# .local/redis), installing the Debian packages first if needed. Running it again reuses
# whatever is up. Only private instances are ever stopped by this script.
#
# Usage: scripts/services.sh [up|stop|purge]
#   up     (default) reuse or start the servers, write .local/services.env
#   stop   stop the private instances of this checkout, if running
#   purge  stop them and delete their data
#
# Environment (all optional):
#   DISTASKS_SHARED_PG_PORT=5432      DISTASKS_SHARED_REDIS_PORT=6379     shared servers to try
#   DISTASKS_PRIVATE_PG_PORT=54329    DISTASKS_PRIVATE_REDIS_PORT=63799   private instances
# Pointing a shared port at a closed one (e.g. 1) forces the private instance.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL="$ROOT/.local"
ENV_FILE="$LOCAL/services.env"
HOST=127.0.0.1
DB_NAME=distasks

SHARED_PG_PORT=${DISTASKS_SHARED_PG_PORT:-5432}
SHARED_REDIS_PORT=${DISTASKS_SHARED_REDIS_PORT:-6379}
PRIVATE_PG_PORT=${DISTASKS_PRIVATE_PG_PORT:-54329}
PRIVATE_REDIS_PORT=${DISTASKS_PRIVATE_REDIS_PORT:-63799}
REDIS_DIR="$LOCAL/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"

say() { printf '%s\n' "$*"; }
die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

apt_install() {
    say "installing $* (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# Prints the path of a PostgreSQL program: from PATH, else the newest /usr/lib/postgresql/*/bin
# (Debian keeps initdb and pg_ctl there, off PATH).
pg_tool() {
    local found
    if found=$(command -v "$1"); then
        printf '%s\n' "$found"
        return 0
    fi
    found=$(printf '%s\n' /usr/lib/postgresql/*/bin/"$1" | sort -V | tail -n 1)
    [[ -x $found ]] && printf '%s\n' "$found"
}

# Prints the directory of the PostgreSQL programs that match initdb's major version (PATH may
# hold a wrapper or another version), installing the postgresql package if there is no initdb.
pg_bin() {
    local initdb
    if ! initdb=$(pg_tool initdb); then
        [[ ${1:-} == --install ]] || return 1
        apt_install postgresql
        initdb=$(pg_tool initdb) || die "no initdb after installing postgresql"
    fi
    dirname "$(readlink -f "$initdb")"
}

# pg_works PSQL PG_ISREADY PORT: a server answers on PORT and lets user postgres in.
pg_works() {
    "$2" -q -h "$HOST" -p "$3" -U postgres -t 5 &&
        [[ $("$1" -X -w -q -h "$HOST" -p "$3" -U postgres -d postgres -Atc 'select 1' 2>/dev/null) == 1 ]]
}

# Runs a command as the user that owns the private cluster: initdb refuses to run as root.
as_pg() {
    if [[ $EUID -ne 0 ]]; then
        (cd / && "$@")
    elif command -v runuser >/dev/null; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    fi
}

# Prints the directory of the private cluster, normally .local/pg. As root the server runs as
# `postgres`, which cannot enter a checkout under a private folder (mktemp -d is mode 0700), and
# a Unix socket path may not exceed 107 bytes: in either case the cluster lives in a new folder
# under /tmp and .local/pg is a symlink to it.
pg_home() {
    local link="$LOCAL/pg" target
    if [[ -L $link ]]; then
        target=$(readlink "$link")
        mkdir -p "$target" # /tmp may have been emptied since
        printf '%s\n' "$target"
        return
    fi
    if [[ -d $link ]]; then
        printf '%s\n' "$link"
        return
    fi
    mkdir -p "$LOCAL"
    if (( ${#link} + 20 < 100 )) && { [[ $EUID -ne 0 ]] || as_pg test -x "$LOCAL"; }; then
        mkdir -p "$link"
        printf '%s\n' "$link"
    else
        target=$(mktemp -d /tmp/distasks-pg.XXXXXX)
        ln -s "$target" "$link"
        printf '%s\n' "$target"
    fi
}

start_private_pg() {
    local bin pg_dir data
    bin=$(pg_bin --install)
    PSQL="$bin/psql"
    if pg_works "$PSQL" "$bin/pg_isready" "$PRIVATE_PG_PORT"; then
        say "postgres: private instance at $HOST:$PRIVATE_PG_PORT (already running)"
        return
    fi
    if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
    fi

    pg_dir=$(pg_home)
    data="$pg_dir/data"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$pg_dir"; fi
    if [[ ! -f $data/PG_VERSION ]]; then
        rm -rf "$data"
        as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale \
            >"$pg_dir/initdb.log" 2>&1 || { cat "$pg_dir/initdb.log" >&2; die "initdb failed"; }
        cat >>"$data/postgresql.conf" <<EOF

# distasks private instance (scripts/services.sh); the port is given at start.
listen_addresses = '$HOST'
unix_socket_directories = '$pg_dir'
EOF
    fi
    as_pg "$bin/pg_ctl" -D "$data" -l "$pg_dir/postgres.log" -o "-p $PRIVATE_PG_PORT" -w -t 60 start \
        >/dev/null || { tail -n 20 "$pg_dir/postgres.log" >&2; die "private PostgreSQL did not start"; }
    pg_works "$PSQL" "$bin/pg_isready" "$PRIVATE_PG_PORT" || die "private PostgreSQL started but does not answer"
    say "postgres: private instance at $HOST:$PRIVATE_PG_PORT, started (data in $data)"
}

stop_private_pg() {
    local data bin
    [[ -e $LOCAL/pg/data/postmaster.pid ]] || return 0
    data="$(readlink -f "$LOCAL/pg")/data"
    bin=$(pg_bin) || die "pg_ctl not found"
    # `status` first: a postmaster.pid left by a crash or reboot needs no stopping.
    as_pg "$bin/pg_ctl" -D "$data" status >/dev/null || return 0
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    say "postgres: private instance stopped"
}

# Sets PG_PORT and PSQL, and makes sure the database exists.
ensure_pg() {
    local psql pg_isready
    if psql=$(pg_tool psql) && pg_isready=$(pg_tool pg_isready) &&
        pg_works "$psql" "$pg_isready" "$SHARED_PG_PORT"; then
        PG_PORT=$SHARED_PG_PORT
        PSQL=$psql
        say "postgres: shared server at $HOST:$PG_PORT"
    else
        start_private_pg
        PG_PORT=$PRIVATE_PG_PORT
    fi
    local exists
    exists=$("$PSQL" -X -w -q -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atc \
        "select 1 from pg_database where datname = '$DB_NAME'")
    if [[ $exists != 1 ]]; then
        "$PSQL" -X -w -q -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -c "create database $DB_NAME" >/dev/null
    fi
}

# ---------------------------------------------------------------------------------------------
# Redis

# redis_works PORT: a Redis server on PORT answers PING (redis-cli if there, else bash /dev/tcp).
redis_works() {
    if command -v redis-cli >/dev/null; then
        [[ $(timeout 5 redis-cli -h "$HOST" -p "$1" ping 2>/dev/null) == PONG ]]
    else
        # shellcheck disable=SC2016 # expanded by the inner bash
        timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 &&
            IFS= read -r reply <&3 && [[ $reply == "+PONG"* ]]' "$HOST" "$1" 2>/dev/null
    fi
}

start_private_redis() {
    if redis_works "$PRIVATE_REDIS_PORT"; then
        say "redis: private instance at $HOST:$PRIVATE_REDIS_PORT (already running)"
        return
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p "$REDIS_DIR"
    redis-server --port "$PRIVATE_REDIS_PORT" --bind "$HOST" --save '' --appendonly no \
        --daemonize yes --dir "$REDIS_DIR" --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_DIR/redis.log"
    for _ in $(seq 50); do
        redis_works "$PRIVATE_REDIS_PORT" && break
        sleep 0.2
    done
    redis_works "$PRIVATE_REDIS_PORT" || { tail -n 20 "$REDIS_DIR/redis.log" >&2; die "private Redis did not start"; }
    say "redis: private instance at $HOST:$PRIVATE_REDIS_PORT, started (log in $REDIS_DIR)"
}

stop_private_redis() {
    local pid
    [[ -f $REDIS_PIDFILE ]] || return 0
    pid=$(<"$REDIS_PIDFILE")
    # Only a live redis-server whose pid this checkout recorded; never anything found by name.
    if [[ $pid =~ ^[0-9]+$ ]] && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        say "redis: private instance stopped"
    fi
    rm -f "$REDIS_PIDFILE"
}

# Sets REDIS_PORT.
ensure_redis() {
    if redis_works "$SHARED_REDIS_PORT"; then
        REDIS_PORT=$SHARED_REDIS_PORT
        say "redis: shared server at $HOST:$REDIS_PORT"
    else
        start_private_redis
        REDIS_PORT=$PRIVATE_REDIS_PORT
    fi
}

# ---------------------------------------------------------------------------------------------

# The file gives defaults only: a variable the user set (DATABASE_URL=… make run) wins, or
# two checkouts would silently share one database and Redis DB.
write_env() {
    mkdir -p "$LOCAL"
    cat >"$ENV_FILE.tmp" <<EOF
# Written by scripts/services.sh; sourced by make. Do not edit: it is rewritten on every run.
# Each line is a default: a variable already set in the environment is kept.
: "\${DISTASKS_PG_ADMIN_DSN:=host=$HOST port=$PG_PORT user=postgres dbname=postgres}"
: "\${DATABASE_URL:=postgresql://postgres@$HOST:$PG_PORT/$DB_NAME}"
: "\${REDIS_URL:=redis://$HOST:$REDIS_PORT/0}"
export DISTASKS_PG_ADMIN_DSN DATABASE_URL REDIS_URL
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

main() {
    case "${1:-up}" in
    up)
        ensure_pg
        ensure_redis
        write_env
        ;;
    stop)
        stop_private_pg
        stop_private_redis
        ;;
    purge)
        stop_private_pg
        stop_private_redis
        if [[ -L $LOCAL/pg && $(readlink "$LOCAL/pg") == /tmp/distasks-pg.* ]]; then
            rm -rf "$(readlink "$LOCAL/pg")"
        fi
        rm -rf "$LOCAL/pg" "$REDIS_DIR" "$ENV_FILE"
        ;;
    *)
        die "usage: $0 [up|stop|purge]"
        ;;
    esac
}

# Sourcing the file (for testing its functions) runs nothing.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
