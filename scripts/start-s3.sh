#!/usr/bin/env bash
# A throwaway S3-compatible object store for the Studio tests, on loopback only: moto's server
# (PyPI `moto[server]`, in a virtualenv under $TENPAK_S3_DIR, default /tmp/tenpak-s3), started on
# 127.0.0.1:$TENPAK_S3_PORT (default 55433) unless it already answers, with the bucket
# $TENPAK_S3_BUCKET (default tenpak-test). Prints the endpoint URL as the last line. Safe to run
# again. moto keeps objects in memory and does not check signatures: for tests, never for data.
set -euo pipefail
PORT="${TENPAK_S3_PORT:-55433}"
DIR="${TENPAK_S3_DIR:-/tmp/tenpak-s3}"
BUCKET="${TENPAK_S3_BUCKET:-tenpak-test}"
URL="http://127.0.0.1:${PORT}"
exec 9>"/tmp/tenpak-s3-$PORT.lock"
flock 9
up() { curl -s -o /dev/null "$URL/" ; }
if ! up; then
    if [[ ! -x "$DIR/venv/bin/moto_server" ]]; then
        echo "start-s3: pip install moto[server] into $DIR/venv" >&2
        python3 -m venv "$DIR/venv"
        "$DIR/venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.*' >&2
    fi
    # setsid: the server outlives this script (and the test that started it).
    # 9>&-: the server must not inherit (and so hold) the lock.
    setsid "$DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$DIR/server.log" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 100); do
        if up; then break; fi
        sleep 0.2
    done
    up || { echo "start-s3: moto_server did not start; see $DIR/server.log" >&2; exit 1; }
fi
# Creating a bucket that exists is fine with moto (us-east-1 semantics).
curl -sf -X PUT -o /dev/null "$URL/$BUCKET"
echo "$URL"
