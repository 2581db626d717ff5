#!/usr/bin/env bash
# Runs StepFlow's own mock test flows, unchanged, with `sandflow test`:
# fetches tests/mock/*.yaml from github.com/stepflow-ai/stepflow (by hand:
# it needs the network, so CI does not run it) into a scratch directory and
# binds their `/mock/...` components with components.yml beside this script.
#
#   tests/stepflow/run-upstream.sh [REF]      (default REF: main)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ref="${1:-main}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git clone -q --depth 1 --branch "$ref" --filter=blob:none --sparse https://github.com/stepflow-ai/stepflow "$scratch/stepflow"
git -C "$scratch/stepflow" sparse-checkout set tests/mock
cd "$here/../.."
cargo build -q --locked -p sandflow
target/debug/sandflow --state-dir "$scratch/state" test --components "$here/components.yml" "$scratch"/stepflow/tests/mock/*.yaml
