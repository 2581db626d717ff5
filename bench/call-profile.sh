#!/usr/bin/env bash
# Where a Python, a JavaScript and a Rust step's call goes (issue 29,
# BENCHMARKS.md "Where an interpreter step's call goes"): each component in
# a 200-item forEach at concurrency 1 (every item a fresh instance), as
# bench/peers.sh measures it, and the same with 1 item, so that what a
# process pays once (reading, hashing and loading the component) cancels:
#
#   - per call: the forEach step's duration (its `step_finished` event) / 200;
#   - page faults per call: (faults of 200 items - faults of 1) / 199, from
#     `perf stat` (with wasmtime 48.0.8, the pages of an interpreter's heap
#     that the slot's reset decommitted, faulted in and copied again: see
#     BENCHMARKS.md "Why an interpreter step faults its heap in again");
#   - TLB shootdowns per call, the same way, from /proc/interrupts (the
#     machine's, all cores): a copy-on-write fault in a process with a
#     thread on another core interrupts that core to flush the old mapping,
#     which costs a VM exit on a virtual machine;
#   - the 200-item run's hottest symbols (`perf record`, CPU clock), and for
#     the Python step what calls into wasmtime's `ref_func` (the guest's
#     `ref.func`s, each making a function reference on first use in an
#     instance), with DWARF call graphs.
#
#   bench/call-profile.sh            (needs perf; uses the release build)
#
#   SANDFLOW_BIN   a sandflow binary to measure instead of this tree's release build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${SANDFLOW_BIN:-}"
if [ -z "$bin" ]; then
  cargo build -q --release -p sandflow
  bin="$PWD/target/release/sandflow"
fi
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dist="$PWD/components/dist"
items="$(seq -s, 0 199)"
flow() { # name component config input items
  printf 'name: %s\ncomponents:\n  c: { path: %s/%s.wasm%s }\nsteps:\n  - id: each\n    component: c\n    concurrency: 1\n    forEach: [%s]\n    input: %s\n' \
    "$1" "$dist" "$2" "$3" "$5" "$4" > "$work/$1.yaml"
}
per_call_ms() { "$bin" -q --state-dir "$work/state" run --json "$1" 2>&1 >/dev/null | grep '"step_finished"' | grep -o '"duration_ms":[0-9.]*' | cut -d: -f2 | awk '{printf "%.3f", $1 / 200}'; }
shootdowns() { awk '/TLB shootdowns/ { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i } END { print n + 0 }' /proc/interrupts; }
# One run of "$1": its page faults and the machine's TLB shootdowns meanwhile.
faults_and_shootdowns() {
  local before pf
  before=$(shootdowns)
  pf=$(perf stat -e page-faults -x, "$bin" -q --state-dir "$work/state" run "$1" 2>&1 >/dev/null | grep page-faults | cut -d, -f1)
  echo "$pf $(( $(shootdowns) - before ))"
}
echo "| step | per call (3 runs) | page faults per call | TLB shootdowns per call |"
echo "| --- | ---: | ---: | ---: |"
for spec in "Python textstats ', config: { stopwords: [the, a] }' '{ text: \"It works. It really works!\", top: 3 }'" \
            "JavaScript template '' '{ template: { \$literal: \"# {{ t }}\" }, data: { t: hi } }'" \
            "Rust text '' '{ op: upper, text: hi }'"; do
  eval "set -- $spec"
  flow "$2-200" "$2" "$3" "$4" "$items"
  flow "$2-1" "$2" "$3" "$4" 0
  "$bin" -q --state-dir "$work/state" run "$work/$2-1.yaml" >/dev/null   # compiled and cached
  calls="$(per_call_ms "$work/$2-200.yaml") $(per_call_ms "$work/$2-200.yaml") $(per_call_ms "$work/$2-200.yaml")"
  read -r f1 s1 < <(faults_and_shootdowns "$work/$2-1.yaml")
  read -r f200 s200 < <(faults_and_shootdowns "$work/$2-200.yaml")
  echo "| $1 ($2) | ${calls// / / } ms | $(( (f200 - f1) / 199 )) | $(awk -v a="$s200" -v b="$s1" 'BEGIN { printf "%.1f", (a - b) / 199 }') |"
done
for name in textstats template; do
  echo
  echo "== $name, 200 calls: the hottest symbols"
  perf record -q -e cpu-clock -o "$work/$name.data" "$bin" -q --state-dir "$work/state" run "$work/$name-200.yaml" >/dev/null 2>&1
  perf report -i "$work/$name.data" --sort dso,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 || true
done
echo
echo "== textstats, 200 calls: what calls wasmtime's ref_func"
perf record -q -e cpu-clock --call-graph dwarf,16384 -o "$work/refs.data" "$bin" -q --state-dir "$work/state" run "$work/textstats-200.yaml" >/dev/null 2>&1
perf report -i "$work/refs.data" --children --no-inline --stdio -g none --sort sym 2>/dev/null \
  | grep -E 'ref_func|get_func_ref|func_loc|exc_page_fault|in_fresh_store|_PyEval_EvalFrameDefault|deallocate_memories|build_imports' | head -12 || true
