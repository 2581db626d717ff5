#!/usr/bin/env bash
# The "hostile steps" table of BENCHMARKS.md: every hostile component run
# once with `sandflow call` (release build, default limits unless the row
# says otherwise), what stopped it, how long the whole call took, and the
# host's peak RSS (GNU time). Run by hand:  bench/hostile.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -q --release --locked -p sandflow
bin="$PWD/target/release/sandflow"
state="$(mktemp -d)"; trap 'rm -rf "$state"' EXIT
dist=components/dist/hostile

echo "| behaviour | component and input | what stops it | result | wall time | host peak RSS |"
echo "| --- | --- | --- | --- | ---: | ---: |"
row() {
  local what="$1" name="$2" input="$3" limit="$4"; shift 4
  # Compile first, so the time is the step's, not the compiler's.
  "$bin" --state-dir "$state" component inspect "$dist/$name.wasm" >/dev/null 2>&1 || true
  local code=0
  /usr/bin/time -f "%e %M" -o "$state/time" "$bin" -q --state-dir "$state" call "$dist/$name.wasm" --input "$input" "$@" \
    >/dev/null 2>"$state/err" || code=$?
  read -r secs kib < <(tail -1 "$state/time")
  local result
  case $code in
    0) result="succeeds" ;;
    1) result="kind \`$(grep -o 'failed ([a-z]*)' "$state/err" | head -1 | tr -d '()' | cut -d' ' -f2)\`" ;;
    *) result="refused, exit $code" ;;
  esac
  printf '| %s | `%s` `%s` %s | %s | %s | %.2f s | %d MiB |\n' "$what" "$name" "$input" "$*" "$limit" "$result" "$secs" $((kib / 1024))
}
row "loops forever" spin 'null' "fuel budget" --fuel 1000000000
row "loops forever" spin 'null' "deadline" --timeout 1s --fuel 1000000000000
row "blocks in a WASI sleep" sleep '{"secs":3600}' "deadline (time in host calls counts)" --timeout 1s
row "allocates without bound" memory-bomb 'null' "memory cap (128 MiB)"
row "recurses without bound" recurse 'null' "wasm stack (1 MiB)"
row "panics" panic 'null' "trap, with the panic message"
row "returns text that is not JSON" bad-json 'null' "output check"
row "returns 8 MiB of JSON" huge-output '{"mib":8}' "output cap (4 MiB)"
row "writes 64 MiB to stdout and stderr" flood '{"mib":32}' "log quota (1 MiB): dropped and counted"
row "reads /etc/passwd" read-file 'null' "no preopened dirs: it sees nothing"
row "reads the environment" read-env 'null' "no env vars unless granted"
row "imports wasi:sockets" net 'null' "refused before it runs"
row "puts distinct 8 MiB blobs in a loop" host-bomb '{"bomb":"blobs"}' "quota \`blob_bytes\` (128 MiB)"
row "sets 512 KiB state values under new keys" host-bomb '{"bomb":"state"}' "quota \`state_bytes\` (64 MiB)"
row "1,000,000 log calls (empty and 4 KiB lines)" host-bomb '{"bomb":"log","lines":1000000}' "log quota: bytes and lines"
row "creates pollables and never drops them" host-bomb '{"bomb":"handles"}' "quota \`handles\` (10,000)"
row "blobs, state and log lines in one loop" host-bomb '{"bomb":"all"}' "the first quota reached (\`blob_bytes\`)"
row "a component of another world" foreign '1' "not a step: refused"
