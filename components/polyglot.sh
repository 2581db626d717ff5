#!/usr/bin/env bash
# Builds the JavaScript and Python step components (components/js/examples/*,
# components/python/examples/*) into components/dist/, with the toolchains
# pinned in js/package-lock.json (componentize-js) and python/requirements.txt
# (componentize-py), installed here on first use: js/node_modules/ and
# python/.venv/.
#
#   components/polyglot.sh            build what changed into dist/
#   FORCE=1 components/polyglot.sh    build everything again
#   components/polyglot.sh --check    check dist/ against the sources (CI)
#
# Neither tool makes the same bytes twice (both snapshot a JS or Python
# engine whose heap layout and hash seeds vary), so the check cannot be a
# byte comparison as for the Rust components. It is, instead:
#   1. the SHA-256 of each component's inputs (its sources, the guest library,
#      wit/, the pinned toolchain and the build command) must equal the one
#      recorded in dist/NAME.wasm.sources when dist/NAME.wasm was built, and
#      dist/NAME.wasm must be the file recorded there: sources changed without
#      a rebuild, or a dist file replaced by hand, fail;
#   2. the sources are built again with the pinned toolchain;
#   3. with SANDFLOW=path/to/sandflow set, the component's own test workflow
#      (examples/NAME/workflow.yaml) passes with the fresh build and with the
#      committed one.
#   components/polyglot.sh --setup js|python
#                                     only install that toolchain (tests use it)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
check=false
[ "${1:-}" = "--check" ] && check=true

setup_js() {
  if [ ! -x js/node_modules/.bin/componentize-js ]; then
    echo "== installing componentize-js (js/package-lock.json)" >&2
    (cd js && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
}

setup_python() {
  if [ ! -x python/.venv/bin/componentize-py ]; then
    echo "== installing componentize-py (python/requirements.txt)" >&2
    python3 -m venv python/.venv
    python/.venv/bin/pip install --quiet --disable-pip-version-check -r python/requirements.txt >&2
  fi
}

# The command that builds example $2 of language $1 into $3 (run in a
# staging directory holding the example's files).
build_command() {
  case "$1" in
    js) echo "$here/js/node_modules/.bin/componentize-js --wit $here/../wit -n described-step -d http -d fetch-event -o $3 step.js" ;;
    python) echo "$here/python/.venv/bin/componentize-py -q -d $here/../wit -w described-step componentize app -p . -p $here/python -o $3" ;;
  esac
}

# SHA-256 over everything that goes into example $2 of language $1.
inputs_digest() {
  local lang="$1" dir="$lang/examples/$2"
  {
    case "$lang" in
      js) echo "tool componentize-js"; sha256sum js/package-lock.json js/sandflow.js ;;
      python) echo "tool componentize-py"; sha256sum python/requirements.txt python/sandflow.py ;;
    esac
    sha256sum ../wit/*.wit
    # Relative to $here, so the digest does not depend on the checkout's place.
    build_command "$lang" "$2" OUT | sed "s#$here#.#g"
    (cd "$dir" && find -L . -type f ! -name '*.wasm' ! -path '*/__pycache__/*' ! -path './node_modules/*' | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -d' ' -f1
}

build_one() { # lang name out
  local lang="$1" name="$2" out="$3" stage
  stage="$(mktemp -d)"
  cp -L "$lang/examples/$name"/* "$stage/"
  [ "$lang" = js ] && cp js/sandflow.js "$stage/sandflow.js"
  (cd "$stage" && PYTHONHASHSEED=0 $(build_command "$lang" "$name" "$out") >&2)
  rm -rf "$stage"
}

if [ "${1:-}" = "--setup" ]; then
  case "${2:-}" in
    js) setup_js ;;
    python) setup_python ;;
    *) echo "usage: polyglot.sh --setup js|python" >&2; exit 2 ;;
  esac
  exit 0
fi

status=0
for lang in js python; do
  for dir in "$lang"/examples/*/; do
    name="$(basename "$dir")"
    "setup_$lang"
    digest="$(inputs_digest "$lang" "$name")"
    record="dist/$name.wasm.sources"
    if $check; then
      recorded_inputs="$(sed -n 's/^inputs //p' "$record" 2>/dev/null || true)"
      recorded_output="$(sed -n 's/^output //p' "$record" 2>/dev/null || true)"
      if [ "$recorded_inputs" != "$digest" ]; then
        echo "dist/$name.wasm was not built from the current sources of $lang/examples/$name; run components/polyglot.sh and commit dist/" >&2
        status=1; continue
      fi
      if [ "$(sha256sum "dist/$name.wasm" | cut -d' ' -f1)" != "$recorded_output" ]; then
        echo "dist/$name.wasm is not the file its build recorded in $record; run components/polyglot.sh and commit dist/" >&2
        status=1; continue
      fi
      fresh="$(mktemp -d)"
      echo "== $name ($lang): building again from the sources" >&2
      build_one "$lang" "$name" "$fresh/$name.wasm"
      if [ -n "${SANDFLOW:-}" ]; then
        committed="$(mktemp -d)"
        cp "dist/$name.wasm" "$committed/"
        for where in "$fresh" "$committed"; do
          cp "$dir/workflow.yaml" "$where/"
          "$SANDFLOW" --state-dir "$where/.sandflow" test -q "$where/workflow.yaml" >&2 || { echo "$name: the test workflow fails with the build in $where" >&2; status=1; }
        done
        rm -rf "$committed"
      fi
      rm -rf "$fresh"
    elif [ "${FORCE:-}" != 1 ] && [ "$(sed -n 's/^inputs //p' "$record" 2>/dev/null)" = "$digest" ] \
        && [ "$(sha256sum "dist/$name.wasm" 2>/dev/null | cut -d' ' -f1)" = "$(sed -n 's/^output //p' "$record")" ]; then
      # Up to date: a rebuild would only make different bytes of the same
      # component (and another 10-20 MB in the repository's history).
      echo "== $name ($lang): up to date (FORCE=1 rebuilds)" >&2
    else
      echo "== $name ($lang)" >&2
      build_one "$lang" "$name" "$here/dist/$name.wasm"
      printf 'inputs %s\noutput %s\n' "$digest" "$(sha256sum "dist/$name.wasm" | cut -d' ' -f1)" > "$record"
      ls -l "dist/$name.wasm" | awk '{print $5, $NF}'
    fi
  done
done
if $check && [ $status -eq 0 ]; then
  echo "components/dist/ JS and Python components match their sources"
fi
exit $status
