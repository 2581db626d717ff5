#!/usr/bin/env bash
# The web view's runs page over a store of 100,000 runs: how long a page of
# 50 takes, newest first, deep in the history (a cursor), and filtered.
# Run by hand: bench/web-runs.sh [RUNS]   (needs python3 for the filling;
# SANDFLOW_BIN=path uses that binary instead of building a release one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-100000}"
bin="${SANDFLOW_BIN:-target/release/sandflow}"
[ -n "${SANDFLOW_BIN:-}" ] || cargo build -q --release --locked -p sandflow
state="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$state"' EXIT
# One real run creates the store at the current schema; the rest are copies
# of its row with their own ids, workflows, states and start times.
"$bin" --state-dir "$state" -q run workflows/diamond.yaml --input '{"text": "a b"}' >/dev/null
python3 - "$state/sandflow.db" "$runs" <<'PY'
import sqlite3, sys, uuid, datetime
db, n = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(db)
cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
row = dict(zip(cols, conn.execute("SELECT * FROM runs").fetchone()))
start = datetime.datetime(2026, 1, 1)
rows = []
for i in range(n):
    r = dict(row)
    r["id"] = str(uuid.uuid4())
    r["workflow"] = ["diamond", "etl", "report", "nightly"][i % 4]
    r["status"] = ["completed", "completed", "failed", "cancelled"][i % 4]
    r["started_at"] = (start + datetime.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    rows.append(tuple(r[c] for c in cols))
conn.executemany(f"INSERT INTO runs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", rows)
conn.commit()
PY
"$bin" --state-dir "$state" serve --listen 127.0.0.1:0 2>"$state/serve.log" &
server=$!
for _ in $(seq 50); do grep -q "serving" "$state/serve.log" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's|.*http://\([^/]*\)/.*|\1|p' "$state/serve.log")"
deep="$(curl -s "http://$addr/api/runs?limit=500" | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][-1]["id"])')"
# The median of 20 requests of each page, in milliseconds.
measure() {
  for _ in $(seq 20); do curl -s -o /dev/null -w '%{time_total}\n' "http://$addr/api/runs?$1"; done | sort -n | sed -n 10p | awk '{ printf "%.1f", $1 * 1000 }'
}
echo "runs in the store: $((runs + 1))"
printf '| page of 50 | median ms |\n| --- | ---: |\n'
printf '| newest | %s |\n' "$(measure 'limit=50')"
printf '| after the 500th (cursor) | %s |\n' "$(measure "limit=50&after=$deep")"
printf '| state = failed | %s |\n' "$(measure 'limit=50&status=failed')"
printf '| workflow = nightly, state = cancelled | %s |\n' "$(measure 'limit=50&workflow=nightly&status=cancelled')"
printf '| workflow = nightly, state = failed (none match) | %s |\n' "$(measure 'limit=50&workflow=nightly&status=failed')"
