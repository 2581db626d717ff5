# Set-up shared by the benchmarks of runs on PostgreSQL workers, sourced by
# distributed.sh and small-runs-cpu.sh from the repository's root with the
# script's arguments: [postgres://USER@HOST/DATABASE].
#
# Sets `base` (the server), `bin` (SANDFLOW_BIN, or this tree's release
# build), `work` (a scratch dir), `schema` and `url` (a fresh schema on the
# server and a store URL in it; both dropped at exit, with any process the
# script left running) and `echo_wasm`; defines `small_workflow FILE`.
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
