#!/usr/bin/env bash
# The incumbent of the remote benchmark: Celery with a Redis broker and result backend, two
# prefork worker processes, the same trivial task. Celery comes from PyPI into a virtualenv
# under target/; it is never a dependency of the project. Needs python3 and redis-server.
#
#   crates/smol-offload-remote/benches/celery/run.sh [round_trips] [burst]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
venv="$root/target/celery-venv"
round_trips=${1:-500}
burst=${2:-10000}

[ -x "$venv/bin/celery" ] || {
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "celery[redis]>=5.3,<6"
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
redis_pid=$!
worker_pid=
cleanup() {
    [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
    kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    true
}
trap cleanup EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

export BENCH_REDIS_URL="redis://127.0.0.1:$port/0"
cd "$here"
"$venv/bin/celery" -A tasks worker --concurrency 2 --pool prefork --loglevel WARNING >/dev/null 2>&1 &
worker_pid=$!
echo "| contender | round trip median | p99 | burst of $burst |"
echo "| --- | ---: | ---: | ---: |"
"$venv/bin/python" bench.py "$round_trips" "$burst"
