#!/usr/bin/env bash
# Coverage-guided fuzzing of sandflow's parsers (libFuzzer via cargo-fuzz),
# for longer than CI's bounded run. Usage:
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    default: 300, every target
#
# cargo-fuzz needs nightly compiler flags; this machine has only stable
# Rust, so RUSTC_BOOTSTRAP=1 lets stable accept them. Crashes land in
# fuzz/artifacts/TARGET/; copy one to fuzz/corpus/TARGET/ once fixed, so
# the CI run replays it for good.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-300}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(workflow template condition path set component)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t ($secs s)"
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 -max_len=65536 2>&1 \
    | grep -E "^(#[0-9]+.*DONE|Done|==|SUMMARY|.*(panicked|crash|deadly|Test unit written))" || true
done
