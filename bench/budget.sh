#!/usr/bin/env bash
# Where a `sandflow run`'s CPU time goes, part by part (issue 12): perf
# samples with DWARF call graphs of a 2,000-step wide workflow of `echo` and
# of a 1-step one, each sample given to the deepest part of sandflow on its
# stack and scaled to the run's CPU time (`perf stat`). The parts are listed
# in bench/budget.py. Needs `perf` (Debian: linux-perf); run by hand, not by
# CI. BENCHMARKS.md holds the last output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v perf >/dev/null || { echo "budget.sh needs perf (Debian: apt-get install linux-perf)" >&2; exit 2; }
cargo build --release --locked -q -p sandflow
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 bench/budget.py --sandflow target/release/sandflow --component components/dist/echo.wasm --scratch "$scratch"
