#!/usr/bin/env bash
# Benchmark: a store prefix with many snapshots. `restore latest` and `snapshots --limit 3` on
# an S3 prefix holding 10 snapshots, then the same prefix holding COUNT (older ones added),
# against the S3 test server (s3s-fs) on loopback. The target: `restore latest` with 2,000
# snapshots within 1.2x of the time with 10 (it reads a listing and a few manifests, not all).
# Medians of RUNS runs. A real store 20-60 ms away multiplies every request these commands make.
# Usage: bench/many-snapshots.sh [COUNT=2001] [RUNS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-2001}; RUNS=${2:-5}
cargo build --release --quiet
DBWARD=$PWD/target/release/dbward
command -v s3s-fs >/dev/null || { echo "needs s3s-fs (scripts/test.sh installs it)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/dbward-bench-XXXX)
mkdir -p "$WORK/s3/bench"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key benchsecret "$WORK/s3" >/dev/null 2>&1 &
S3PID=$!
trap 'kill $S3PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done

. bench/common.sh # the working directory is the repository (cd above)

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
S3=(--store s3://bench/p --s3-endpoint "http://127.0.0.1:$PORT" --s3-path-style --state-dir "$WORK/state")
DB=$WORK/app.db
sqlite3 "$DB" "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) SELECT hex(randomblob(100)) FROM generate_series(1, 1000);" 2>/dev/null ||
  sqlite3 "$DB" "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) INSERT INTO t (v) SELECT hex(randomblob(100)) FROM n;"
"$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" backup >/dev/null

# Older snapshots beside the real one: copies of its manifest under older ids (their data
# objects are not needed: only the newest is restored), written into the server's directory.
add_older() {
  python3 - "$WORK/s3/bench/p/app" "$1" <<'PY'
import json, os, sys, datetime
folder, want = sys.argv[1], int(sys.argv[2])
have = sorted(f for f in os.listdir(folder) if f.endswith(".json") and not f.startswith("."))
newest = json.load(open(os.path.join(folder, have[-1])))
base = datetime.datetime.strptime(newest["id"][:16], "%Y%m%dT%H%M%SZ")
for i in range(len(have), want):
    at = base - datetime.timedelta(hours=i)
    sid = at.strftime("%Y%m%dT%H%M%SZ") + "-scheduled-%04x" % (i % 65536)
    m = dict(newest, id=sid, kind="scheduled", created_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    m["data_key"] = newest["data_key"].replace(newest["id"], sid)
    json.dump(m, open(os.path.join(folder, sid + ".json"), "w"))
PY
}

measure() { # LABEL_SUFFIX
  for r in $(seq 1 "$RUNS"); do
    rm -f "$WORK/out.db"
    run "restore_$1" "$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" restore latest --to "$WORK/out.db" --yes
    run "list_$1" "$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" snapshots --limit 3
  done
}

add_older 10
"$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" snapshots --limit 3 >/dev/null # the server reads them back
measure few
add_older "$COUNT"
"$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" snapshots --limit 3 >/dev/null
measure many

python3 - "$WORK" "$RUNS" "$COUNT" <<'PY'
import sys, statistics, os
work, runs, count = sys.argv[1], sys.argv[2], sys.argv[3]
def med(label):
    rows = [l.split() for l in open(os.path.join(work, label)) if l.strip()]
    return statistics.median(float(r[0]) for r in rows)
rf, rm, lf, lm = med("restore_few"), med("restore_many"), med("list_few"), med("list_many")
print(f"S3 test server on loopback, medians of {runs}:")
print(f"  restore latest, 10 snapshots          {rf:6.3f} s")
print(f"  restore latest, {count} snapshots     {rm:6.3f} s   {rm/rf:.2f}x the time with 10 (target <= 1.2x)")
print(f"  snapshots --limit 3, 10 snapshots     {lf:6.3f} s")
print(f"  snapshots --limit 3, {count} snapshots {lm:6.3f} s   {lm/lf:.2f}x")
PY
