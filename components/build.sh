#!/usr/bin/env bash
# Builds every guest component for wasm32-wasip2 and copies the results to
# components/dist/ (examples) and components/dist/hostile/ (test components).
#
#   components/build.sh           build and refresh dist/
#   components/build.sh --check   build, then fail if dist/ differs from the
#                                 fresh build (CI uses this: dist/ is committed
#                                 so a fresh clone runs without the wasm target)
#
# dist/compat/ is left alone: components built against older versions of the
# WIT contract, kept to prove the host still runs them. So are the JS and
# Python components: components/polyglot.sh builds and checks those.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target list --installed | grep -qx wasm32-wasip2

# Reproducible bytes wherever the checkout lives: strip local paths from
# panic messages and symbol names.
export RUSTFLAGS="--remap-path-prefix=$here=/sandflow/components --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo ${RUSTFLAGS:-}"
cargo build --locked --release --target wasm32-wasip2 --target-dir "$here/target"

# JS and Python components (polyglot.sh) share dist/ but are built and
# checked by polyglot.sh: left alone here.
polyglot=()
for dir in js/examples/*/ python/examples/*/; do
  [ -d "$dir" ] || continue
  name="$(basename "$dir")"; polyglot+=(-x "$name.wasm" -x "$name.wasm.sources")
done

out="$here/target/wasm32-wasip2/release"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/hostile"
for dir in examples/*/; do
  name="$(basename "$dir")"; cp "$out/${name//-/_}.wasm" "$stage/$name.wasm"
done
for dir in hostile/*/; do
  name="$(basename "$dir")"; cp "$out/${name//-/_}.wasm" "$stage/hostile/$name.wasm"
done

if [ "${1:-}" = "--check" ]; then
  # dist/compat/ holds components built against older versions of the
  # contract, frozen on purpose (see components/README.md): not rebuilt.
  if ! diff -r -x compat "${polyglot[@]}" "$stage" "$here/dist" >/dev/null; then
    echo "components/dist/ does not match a fresh build of the sources:" >&2
    diff -rq -x compat "${polyglot[@]}" "$stage" "$here/dist" >&2 || true
    echo "run components/build.sh and commit components/dist/" >&2
    exit 1
  fi
  echo "components/dist/ matches the sources"
else
  # Everything but the frozen dist/compat/ and polyglot.sh's files is replaced.
  keep=(! -name compat)
  for ((i = 1; i < ${#polyglot[@]}; i += 2)); do keep+=(! -name "${polyglot[i]}"); done
  mkdir -p "$here/dist" && find "$here/dist" -mindepth 1 -maxdepth 1 "${keep[@]}" -exec rm -rf {} + && cp -r "$stage"/. "$here/dist/"
  ls -l "$here/dist" "$here/dist/hostile" | awk 'NF>5 {print $5, $NF}'
fi
