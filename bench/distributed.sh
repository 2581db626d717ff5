#!/usr/bin/env bash
# Throughput and latency of runs on PostgreSQL workers against the embedded
# SQLite store, side by side in one run (BENCHMARKS.md, "Distributed runs").
#
#   bench/distributed.sh [postgres://USER@HOST/DATABASE]
#
# Uses a fresh schema on the server (dropped at the end) and the release
# binary. Prints one line per configuration: wall time, steps per second,
# time per step, and PostgreSQL transactions per step; then latencies from
# the events' timestamps: chain step to step (a step's end to the next
# one's end) and pick-up (a run submitted to idle workers, to its first
# step's start), p50 and p99.
#
#   SLOTS="2 16"   worker --concurrency values to compare (default "2 16")
#   WORKERS="1 2 4"  worker process counts for the wide and chain runs
#   SMALL_WORKERS="2"  worker process counts for the many small runs (the
#                  scale model: "1 2 4 8"); each line also gives the most
#                  connections the workers held at once
#   SANDFLOW_BIN   a sandflow binary to measure instead of this tree's release build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source bench/pg-bench.sh "$@"

{ echo "name: wide"; echo "components: { echo: { path: '$echo_wasm' } }"; echo "steps:";
  for i in $(seq 1 2000); do echo "  - { id: s$i, component: echo, input: { n: $i } }"; done; } > "$work/wide.yaml"
{ echo "name: chain"; echo "components: { echo: { path: '$echo_wasm' } }"; echo "steps:";
  echo "  - { id: s1, component: echo, input: { n: 1 } }";
  for i in $(seq 2 500); do echo "  - { id: s$i, component: echo, input: { n: '{{ steps.s$((i-1)).output.n }}' } }"; done; } > "$work/chain.yaml"

state="$work/state"
slot_counts="${SLOTS:-2 16}"
"$bin" -q --state-dir "$state" validate "$work/wide.yaml" >/dev/null   # compile once: caches are warm
line() { # name steps seconds transactions
  awk -v n="$1" -v s="$2" -v t="$3" -v x="$4" 'BEGIN { printf "| %-34s | %5d | %7.2f s | %7.0f | %8.0f µs | %s |\n", n, s, t, s / t, t / s * 1e6, x }'
}
now() { date +%s.%N; }

echo "| configuration | steps | wall | steps/s | per step | PG transactions per step |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for flow in wide chain; do
  steps=$([ $flow = wide ] && echo 2000 || echo 500)
  t0=$(now); "$bin" -q --state-dir "$state" --store "sqlite:$work/local.db" run "$work/$flow.yaml" >/dev/null; t1=$(now)
  line "$flow, SQLite, in-process" "$steps" "$(echo "$t1 - $t0" | bc)" "-"
  for slots in $slot_counts; do
    for n in ${WORKERS:-1 2 4}; do
      pids=()
      for _ in $(seq 1 "$n"); do
        "$bin" -q --state-dir "$state" --store "$url" worker --concurrency "$slots" & pids+=($!)
      done
      sleep 1
      c0=$(commits); t0=$(now)
      "$bin" -q --state-dir "$state" --store "$url" run --no-work "$work/$flow.yaml" >/dev/null
      t1=$(now)
      # Server backends report their counts when they end (or once a second).
      kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
      sleep 1.5; c1=$(commits)
      line "$flow, PostgreSQL, $n worker(s) × $slots" "$steps" "$(echo "$t1 - $t0" | bc)" "$(awk -v a="$c0" -v b="$c1" -v s="$steps" 'BEGIN { printf "%.1f", (b - a) / s }')"
    done
  done
done

# Many small runs: 100 runs of a 10-step workflow (a root, 8 branches, a
# join; every step a WebAssembly call) from 4 clients at once, on 2 workers
# against the same 100 runs as 4 parallel `sandflow run` loops on SQLite.
small_workflow "$work/small.yaml"
"$bin" -q --state-dir "$state" --store "sqlite:$work/small.db" run "$work/small.yaml" >/dev/null   # the store exists
t0=$(now)
for c in 1 2 3 4; do
  ( for _ in $(seq 1 25); do "$bin" -q --state-dir "$state" --store "sqlite:$work/small.db" run "$work/small.yaml" >/dev/null; done ) &
done
wait
t1=$(now)
local_s=$(echo "$t1 - $t0" | bc)
echo
echo "| 100 runs × 10 steps, 4 clients | wall | runs/s | steps/s | PG transactions per run | vs in-process | most worker connections |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -v t="$local_s" 'BEGIN { printf "| SQLite, in-process (4 parallel run loops) | %.2f s | %.0f | %.0f | - | 1.00× | - |\n", t, 100 / t, 1000 / t }'
# The front door: `serve` on the same store, its API taking the 4 clients'
# posts over kept-alive connections (bench/api-clients.py, connected before
# the clock starts), so no client opens a PostgreSQL connection of its own
# per run.
start_serve "$state"
for n in ${SMALL_WORKERS:-2}; do
 for mode in submit api; do
  pids=()
  for _ in $(seq 1 "$n"); do "$bin" -q --state-dir "$state" --store "$url" worker --concurrency "${slot_counts##* }" & pids+=($!); done
  sleep 1
  warm_small_runs
  # The workers' connections (`application_name` `sandflow worker NAME`), sampled while they work.
  ( most=0; while :; do
      c=$(psql -tAq "$base" -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'sandflow worker%'")
      [ "$c" -gt "$most" ] && most=$c && echo "$most" > "$work/most-connections"
      sleep 0.2
    done ) & sampler=$!
  [ "$mode" = api ] && api_clients 4 25 "$work/small.yaml" "$echo_wasm"
  c0=$(commits); t0=$(now)
  clients=()
  if [ "$mode" = api ]; then
    api_go; clients+=("$api_pid")
  else
    for c in 1 2 3 4; do
      ( for _ in $(seq 1 25); do "$bin" -q --state-dir "$state" --store "$url" submit "$work/small.yaml" >/dev/null; done ) & clients+=($!)
    done
  fi
  wait "${clients[@]}"
  wait_small_runs
  t1=$(now)
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  sleep 1.5; c1=$(commits)
  pg_s=$(echo "$t1 - $t0" | bc)
  awk -v t="$pg_s" -v a="$c0" -v b="$c1" -v l="$local_s" -v n="$n" -v mode="$([ "$mode" = api ] && echo "API through serve" || echo "a submit process per run")" -v m="$(cat "$work/most-connections" 2>/dev/null || echo 0)" \
    'BEGIN { printf "| PostgreSQL, %d worker(s), %s | %.2f s | %.0f | %.0f | %.1f | %.2f× | %d |\n", n, mode, t, 100 / t, 1000 / t, (b - a) / 100, l / t, m }'
  rm -f "$work/most-connections"
 done
done
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
echo

# Latencies, from the events' own timestamps, with 2 workers of the last SLOTS.
pids=()
for _ in 1 2; do "$bin" -q --state-dir "$state" --store "$url" worker --concurrency "$slots" & pids+=($!); done
sleep 1
chain_id=$("$bin" -q --state-dir "$state" --store "$url" submit "$work/chain.yaml")
"$bin" -q --state-dir "$state" --store "$url" runs follow "$chain_id" >/dev/null
{ echo "name: one"; echo "components: { echo: { path: '$echo_wasm' } }"; echo "steps:";
  echo "  - { id: s1, component: echo, input: { n: 1 } }"; } > "$work/one.yaml"
ids=()
for _ in $(seq 1 50); do
  id=$("$bin" -q --state-dir "$state" --store "$url" submit "$work/one.yaml"); ids+=("'$id'")
  "$bin" -q --state-dir "$state" --store "$url" runs follow "$id" >/dev/null
done
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
echo
echo "| latency (2 workers × $slots) | p50 | p99 |"
echo "| --- | ---: | ---: |"
psql -tAq "$url" -F ' ' -c "
  WITH f AS (SELECT at, lag(at) OVER (ORDER BY seq) AS prev FROM events
             WHERE run_id = '$chain_id' AND body LIKE '{\"event\":\"step_finished\"%')
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
  FROM (SELECT EXTRACT(EPOCH FROM at - prev) * 1e6 AS d FROM f WHERE prev IS NOT NULL) x" |
  awk '{ printf "| chain, a step'"'"'s end to the next one'"'"'s end | %.0f µs | %.0f µs |\n", $1, $2 }'
psql -tAq "$url" -F ' ' -c "
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
  FROM (SELECT EXTRACT(EPOCH FROM min(e.at) - r.began) * 1e6 AS d FROM runs r JOIN events e ON e.run_id = r.id
        WHERE r.id IN ($(IFS=,; echo "${ids[*]}")) AND e.body LIKE '{\"event\":\"step_started\"%' GROUP BY r.id, r.began) x" |
  awk '{ printf "| pick-up, a run submitted to idle workers to its step'"'"'s start | %.0f µs | %.0f µs |\n", $1, $2 }'
