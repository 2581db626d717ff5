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
#   WORKERS=N      N worker processes (16 slots each) instead of 2
#   MODE=api       submit through `serve`'s API from 4 kept-alive clients
#                  (bench/api-clients.py) instead of a `submit` process per run;
#                  `serve`'s CPU is then counted in place of the submits'
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/pg-bench.sh "$@"
small_workflow "$work/small.yaml"
state="$work/state"
"$bin" -q --state-dir "$state" validate "$work/small.yaml" >/dev/null
hz=$(getconf CLK_TCK)
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# utime + stime of processes "$@".
cpu_of() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
# Every server process's, with the time of its children that ended.
server() { for p in $(pgrep -u postgres postgres); do awk '{print $14+$15+$16+$17}' "/proc/$p/stat" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'; }
secs() { echo "($2 - $1) / $hz" | bc -l | awk '{printf "%.2f s", $1}'; }
mode="${MODE:-submit}"
start_serve "$state"   # API mode's front door, and the warm-up's
pids=()
for _ in $(seq 1 "${WORKERS:-2}"); do "$bin" -q --state-dir "$state" --store "$url" worker --concurrency 16 & pids+=($!); done
sleep 1
warm_small_runs
[ "$mode" = api ] && api_clients 4 25 "$work/small.yaml" "$echo_wasm"
backends=$(psql -tAq "$base" -c "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name LIKE 'sandflow worker%'")
x0=$(commits); b0=$(busy); w0=$(cpu_of "${pids[@]}"); s0=$(server); k0=$(cpu_of $backends); t0=$(date +%s.%N)
[ "$mode" = api ] && v0=$(cpu_of "$serve_pid")
clients=()
if [ "$mode" = api ]; then
  api_go; clients+=("$api_pid"); echo 0 > "$work/client1"
else
  for c in 1 2 3 4; do
    ( for _ in $(seq 1 25); do "$bin" -q --state-dir "$state" --store "$url" submit "$work/small.yaml" >/dev/null; done
      awk '{print $16+$17}' "/proc/$BASHPID/stat" > "$work/client$c" ) & clients+=($!)
  done
fi
wait "${clients[@]}"
t_sub=$(date +%s.%N)
wait_small_runs
t1=$(date +%s.%N); b1=$(busy); w1=$(cpu_of "${pids[@]}"); s1=$(server); k1=$(cpu_of $backends)
[ "$mode" = api ] && v1=$(cpu_of "$serve_pid")
c=$(cat "$work"/client? | awk '{s+=$1} END {print s+0}')
sleep 1.5; x1=$(commits)
echo "| 100 small runs, 4 clients ($mode), ${WORKERS:-2} workers | |"
echo "| --- | ---: |"
echo "| wall (submits done) | $(echo "$t1 - $t0" | bc | awk '{printf "%.2f s", $1}') ($(echo "$t_sub - $t0" | bc | awk '{printf "%.2f s", $1}')) |"
echo "| all CPU | $(secs "$b0" "$b1") |"
echo "| PostgreSQL transactions per run | $(echo "($x1 - $x0) / 100" | bc -l | awk '{printf "%.1f", $1}') |"
echo "| server, the workers' backends | $(secs "$k0" "$k1") |"
echo "| server, the others (the submits') | $(secs "$((s0 + k1))" "$((s1 + k0))") |"
echo "| the worker processes | $(secs "$w0" "$w1") |"
if [ "$mode" = api ]; then
  echo "| serve (the API) | $(secs "$v0" "$v1") |"
else
  echo "| the submit processes | $(secs 0 "$c") |"
fi
