#!/usr/bin/env bash
# A throwaway PostgreSQL for the Studio tests, on loopback only: installs Debian's postgresql if
# it is missing, creates a cluster in $TENPAK_PG_DIR (default /tmp/tenpak-postgres) trusting local
# connections, starts it on 127.0.0.1:$TENPAK_PG_PORT (default 55432) unless it already runs, and
# prints its URL (postgres://postgres@127.0.0.1:PORT/postgres) as the last line. Safe to run again.
set -euo pipefail
PORT="${TENPAK_PG_PORT:-55432}"
DIR="${TENPAK_PG_DIR:-/tmp/tenpak-postgres}"
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN="$(bin_dir)"
if [[ -z "$BIN" || ! -x "$BIN/initdb" ]]; then
    echo "start-postgres: apt-get install postgresql" >&2
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    BIN="$(bin_dir)"
fi
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"
# One caller at a time (tests may start it from parallel processes).
exec 9>"/tmp/tenpak-postgres-$PORT.lock"
flock 9
if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    echo "$URL"
    exit 0
fi
# PostgreSQL refuses to run as root: as root, the cluster belongs to the package's `postgres` user.
AS=()
if [[ "$(id -u)" == 0 ]]; then AS=(runuser -u postgres --); fi
mkdir -p "$DIR"
if [[ "$(id -u)" == 0 ]]; then chown postgres "$DIR"; chmod 700 "$DIR"; fi
# A cluster whose server was killed (a CI run ends every process it started) leaves its lock
# files behind; they are stale unless their pid is a live postgres.
for lock in "$DIR/postmaster.pid" "$DIR/.s.PGSQL.$PORT.lock"; do
    if [[ -f "$lock" ]]; then
        pid="$(head -n 1 "$lock")"
        if ! ps -p "$pid" -o comm= 2>/dev/null | grep -q postgres; then rm -f "$lock"; fi
    fi
done
if [[ ! -f "$DIR/PG_VERSION" ]]; then
    "${AS[@]}" "$BIN/initdb" -D "$DIR" -U postgres --auth=trust --no-sync >/dev/null
fi
# 9>&-: the server must not inherit (and so hold) the lock, or the next caller waits forever.
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off" start >/dev/null 9>&-
echo "$URL"
