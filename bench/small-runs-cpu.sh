#!/usr/bin/env bash
# Where the CPU of many small runs on workers goes (BENCHMARKS.md, "Where a
# small run's CPU goes"): 100 runs of a 10-step workflow from 4 clients (25
# `submit`s each) on 2 workers, with each process's CPU time read from /proc
# before and after: the workers, their server backends, the other server
# backends (the submits', exited: the postmaster's children's time), the
# submit processes. Run it on the machine the server runs on.
#
#   bench/small-runs-cpu.sh [postgres://USER@HOST/DATABASE]
#
#   SANDFLOW_BIN   a sandflow binary to measure instead of this tree's release build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
base="${1:-${SANDFLOW_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}}"
bin="${SANDFLOW_BIN:-}"
if [ -z "$bin" ]; then
  cargo build -q --release -p sandflow
  bin="$PWD/target/release/sandflow"
fi
work="$(mktemp -d)"
schema="cpu_$$"
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
{ echo "name: small"; echo "components: { echo: { path: '$echo_wasm' } }"; echo "steps:";
  echo "  - { id: root, component: echo, input: { n: 0 } }";
  for i in $(seq 1 8); do echo "  - { id: b$i, component: echo, needs: [root], input: { n: $i } }"; done
  echo "  - { id: join, component: echo, needs: [b1, b2, b3, b4, b5, b6, b7, b8], input: { n: 9 } }"; } > "$work/small.yaml"
state="$work/state"
"$bin" -q --state-dir "$state" validate "$work/small.yaml" >/dev/null
hz=$(getconf CLK_TCK)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# utime + stime of processes "$@".
cpu_of() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
# Every server process's, with the time of its children that ended.
server() { for p in $(pgrep -u postgres postgres); do awk '{print $14+$15+$16+$17}' "/proc/$p/stat" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
secs() { echo "($2 - $1) / $hz" | bc -l | awk '{printf "%.2f s", $1}'; }
pids=()
for _ in 1 2; do "$bin" -q --state-dir "$state" --store "$url" worker --concurrency 16 & pids+=($!); done
sleep 1
"$bin" -q --state-dir "$state" --store "$url" run --no-work "$work/small.yaml" >/dev/null   # prepared once
backends=$(psql -tAq "$base" -c "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name LIKE 'sandflow worker%'")
b0=$(busy); w0=$(cpu_of "${pids[@]}"); s0=$(server); k0=$(cpu_of $backends); t0=$(date +%s.%N)
clients=()
for c in 1 2 3 4; do
  ( for _ in $(seq 1 25); do "$bin" -q --state-dir "$state" --store "$url" submit "$work/small.yaml" >/dev/null; done
    awk '{print $16+$17}' "/proc/$BASHPID/stat" > "$work/client$c" ) & clients+=($!)
done
wait "${clients[@]}"
t_sub=$(date +%s.%N)
while [ "$(psql -tAq "$url" -c "SELECT count(*) FROM runs WHERE workflow = 'small' AND status = 'running'")" != 0 ]; do sleep 0.01; done
t1=$(date +%s.%N); b1=$(busy); w1=$(cpu_of "${pids[@]}"); s1=$(server); k1=$(cpu_of $backends)
c=$(cat "$work"/client? | awk '{s+=$1} END {print s+0}')
echo "| 100 small runs, 4 clients, 2 workers | |"
echo "| --- | ---: |"
echo "| wall (submits done) | $(echo "$t1 - $t0" | bc | awk '{printf "%.2f s", $1}') ($(echo "$t_sub - $t0" | bc | awk '{printf "%.2f s", $1}')) |"
echo "| all CPU | $(secs "$b0" "$b1") |"
echo "| server, the workers' backends | $(secs "$k0" "$k1") |"
echo "| server, the others (the submits') | $(secs "$((s0 + k1))" "$((s1 + k0))") |"
echo "| the worker processes | $(secs "$w0" "$w1") |"
echo "| the submit processes | $(secs 0 "$c") |"
