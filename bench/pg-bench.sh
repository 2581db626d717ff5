# Set-up shared by the benchmarks of runs on PostgreSQL workers, sourced by
# distributed.sh and small-runs-cpu.sh from the repository's root with the
# script's arguments: [postgres://USER@HOST/DATABASE].
#
# Sets `base` (the server), `bin` (SANDFLOW_BIN, or this tree's release
# build), `work` (a scratch dir), `schema` and `url` (a fresh schema on the
# server and a store URL in it; both dropped at exit, with any process the
# script left running) and `echo_wasm`; defines `small_workflow FILE` and
# `wait_small_runs`, `commits`, `start_serve STATE_DIR` and
# `api_clients CLIENTS RUNS FILE...` / `api_go` and `warm_small_runs`.
base="${1:-${SANDFLOW_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}}"
# SANDFLOW_BIN: another build to measure (an earlier commit's, side by side).
bin="${SANDFLOW_BIN:-}"
if [ -z "$bin" ]; then
  cargo build -q --release -p sandflow
  bin="$PWD/target/release/sandflow"
fi
work="$(mktemp -d)"
schema="bench_$$"
psql -q "$base" -c "CREATE SCHEMA $schema"
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  psql -q "$base" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS $schema CASCADE" || true
  rm -rf "$work"
}
trap cleanup EXIT
sep='?'; [[ "$base" == *\?* ]] && sep='&'
url="${base}${sep}options=-csearch_path%3D${schema}"
echo_wasm="$PWD/components/dist/echo.wasm"

# The small run: a root, 8 branches, a join; every step an `echo` call.
small_workflow() {
  { echo "name: small"; echo "components: { echo: { path: '$echo_wasm' } }"; echo "steps:";
    echo "  - { id: root, component: echo, input: { n: 0 } }";
    for i in $(seq 1 8); do echo "  - { id: b$i, component: echo, needs: [root], input: { n: $i } }"; done
    echo "  - { id: join, component: echo, needs: [b1, b2, b3, b4, b5, b6, b7, b8], input: { n: 9 } }"; } > "$1"
}

# Waits until no run of the small workflow is running, asking every 5 ms
# over one connection (a `psql` per question would cost the server a
# connection's start, ~5 ms of its CPU, and the machine a process: on two
# cores, a poll every 10 ms took most of a core from what it measures).
wait_small_runs() {
  psql -q "$url" -c "DO \$\$ BEGIN WHILE EXISTS (SELECT 1 FROM runs WHERE workflow = 'small' AND status = 'running') LOOP PERFORM pg_sleep(0.005); END LOOP; END \$\$"
}

# Transactions the server committed in this database so far (its statistics
# lag: read them a second or more after the work).
commits() { psql -tAq "$base" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }

# Starts `serve` on the store with STATE_DIR, actions allowed, no scheduler,
# and waits until it answers: sets `port` and `serve_pid`.
start_serve() {
  port=$((20000 + $$ % 20000))
  "$bin" -q --state-dir "$1" --store "$url" serve --listen "127.0.0.1:$port" --allow-actions --no-scheduler & serve_pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
}

# Starts CLIENTS clients of `serve`'s API (on `port`), in one process
# (bench/api-clients.py), each to post RUNS runs of the workflow FILE (and
# the files after it), and returns once they are connected: `api_go` lets
# them post; `wait "$api_pid"` waits for them. A service's clients are not
# on its machine: their start (Python's, ~0.1 s of CPU) is not timed.
api_clients() {
  rm -f "$work/api-ready" "$work/api-go"
  mkfifo "$work/api-go"
  exec {api_fd}<>"$work/api-go"
  python3 bench/api-clients.py --ready "$work/api-ready" "127.0.0.1:$port" "$@" <&"$api_fd" & api_pid=$!
  until [ -e "$work/api-ready" ]; do sleep 0.01; done
}
api_go() { echo go >&"$api_fd"; }

# Warms the workers (and `serve`) as a service that has been running is
# warm: a burst of 20 small runs through the API from 4 clients, waited
# for, so that their connection pools are open (a new connection costs the
# server a process, its catalog caches and every statement's preparation:
# ~0.17 s of its CPU in the first 100 runs) and the workflow prepared.
warm_small_runs() {
  api_clients 4 5 "$work/small.yaml" "$echo_wasm"
  api_go; wait "$api_pid"
  wait_small_runs
}
