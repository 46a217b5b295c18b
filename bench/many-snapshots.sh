#!/usr/bin/env bash
# Benchmark: a store prefix with many snapshots. `restore latest` and `snapshots --limit 3` on
# an S3 prefix holding 10 snapshots, then the same prefix holding COUNT (older ones added),
# against the S3 test server (s3s-fs) on loopback. The target: `restore latest` with 2,000
# snapshots within 1.2x of the time with 10 (it lists one day's keys and reads a few
# manifests, not all). Medians of RUNS runs. A real store 20-60 ms away multiplies every
# request these commands make.
#
# s3s-fs answers every listing by reading and stat-ing every file of the folder, whatever
# `start-after` says (S3 and R2 answer it from their index). So the server logs every request
# with its duration, and for each `restore latest` the script counts the requests and keys it
# made and sums the server's time in listings: the target is judged on dbward's time less that
# (what dbward adds on top of a store's answers), and on making the same requests either way.
#
# With SERVER=moto the same runs go to moto's S3 server instead (in memory, no file per key, and
# its replies are not held back by Nagle): what the times look like where listing is cheap. It
# logs requests but not their durations, so only the requests are counted there.
# Usage: bench/many-snapshots.sh [COUNT=2001] [RUNS=5] [SERVER=s3s-fs|moto]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-2001}; RUNS=${2:-5}; SERVER=${3:-s3s-fs}
. bench/common.sh # the working directory is the repository (cd above)
cargo build --release --quiet
DBWARD=$PWD/target/release/dbward
WORK=$(mktemp -d /tmp/dbward-bench-XXXX)
case $SERVER in
  s3s-fs) s3_server log ;;
  moto)
    command -v moto_server >/dev/null || { echo "needs moto_server (pip install 'moto[server]')" >&2; exit 1; }
    S3PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    moto_server -H 127.0.0.1 -p "$S3PORT" >>"$WORK/s3.log" 2>&1 &
    S3PID=$!
    trap bench_exit EXIT
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$S3PORT") 2>/dev/null && break; sleep 0.1; done
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 ;;
  *) echo "SERVER is s3s-fs or moto" >&2; exit 2 ;;
esac
PORT=$S3PORT

S3=(--store s3://bench/p --s3-endpoint "http://127.0.0.1:$PORT" --s3-path-style --state-dir "$WORK/state")
DB=$WORK/app.db
sqlite3 "$DB" "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) SELECT hex(randomblob(100)) FROM generate_series(1, 1000);" 2>/dev/null ||
  sqlite3 "$DB" "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) INSERT INTO t (v) SELECT hex(randomblob(100)) FROM n;"
# One real snapshot, taken into a directory and uploaded with a plain S3 client (moto cannot
# complete dbward's multipart uploads), then older ones beside it: copies of its manifest under
# older ids (their data objects are not needed: only the newest is restored).
"$DBWARD" -q --database "sqlite:$DB" --store "file://$WORK/seed" --state-dir "$WORK/state" backup >/dev/null
add_older() {
  python3 - "$WORK/seed/app" "$1" "http://127.0.0.1:$PORT" <<'PY'
import json, os, sys, datetime, boto3, botocore.config
folder, want, endpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s3 = boto3.client("s3", endpoint_url=endpoint, config=botocore.config.Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket="bench")
except s3.exceptions.ClientError as e:  # s3s-fs's bucket is a folder that exists already
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
for f in os.listdir(folder):
    if not f.startswith(".dbward-"):
        s3.upload_file(os.path.join(folder, f), "bench", "p/app/" + f)
manifest = next(f for f in os.listdir(folder) if f.endswith(".json") and not f.startswith(".") and not f.endswith(".drill.json"))
newest = json.load(open(os.path.join(folder, manifest)))
base = datetime.datetime.strptime(newest["id"][:16], "%Y%m%dT%H%M%SZ")
for i in range(1, want):
    at = base - datetime.timedelta(hours=i)
    sid = at.strftime("%Y%m%dT%H%M%SZ") + "-scheduled-%04x" % (i % 65536)
    m = dict(newest, id=sid, kind="scheduled", created_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    m["data_key"] = newest["data_key"].replace(newest["id"], sid)
    s3.put_object(Bucket="bench", Key="p/app/" + sid + ".json", Body=json.dumps(m).encode())
PY
}

# The requests the server logged since the last call, as "listing_seconds requests": s3s-fs's
# log gives each request a `req:` line and a `duration:` line, tied by the span's start time;
# moto's gives one access-log line per request and no duration (nan).
server_side() {
  python3 - "$WORK/s3.log" <<'PY'
import re, sys
kind, listing, durations, access = None, {}, {}, 0
for line in open(sys.argv[1], errors="replace"):
    if re.search(r'"(GET|PUT|HEAD|POST|DELETE) \S+ HTTP', line):
        access += 1
    elif "req: Request {" in line:
        kind = ("req", "list-type=2" in line)
    elif "duration: " in line:
        m = re.search(r"duration: ([0-9.]+)(ns|µs|ms|s)", line)
        kind = ("dur", float(m.group(1)) * {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1}[m.group(2)])
    elif "s3s::service::call with start_time:" in line and kind:
        span = line.split("start_time:")[1].strip()
        (listing if kind[0] == "req" else durations)[span] = kind[1]
        kind = None
if access:
    print(f"nan {access}")
else:
    print(f"{sum(d for s, d in durations.items() if listing.get(s)):.4f} {len(listing)}")
PY
  : >"$WORK/s3.log"
}

measure() { # LABEL_SUFFIX
  for r in $(seq 1 "$RUNS"); do
    rm -f "$WORK/out.db"
    server_side >/dev/null
    run "restore_$1" "$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" restore latest --to "$WORK/out.db" --yes
    server_side >>"$WORK/server_$1"
    run "list_$1" "$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" snapshots --limit 3
  done
}

add_older 10
"$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" snapshots --limit 3 >/dev/null # the server reads them back
measure few
add_older "$COUNT"
"$DBWARD" -q --database "sqlite:$DB" "${S3[@]}" snapshots --limit 3 >/dev/null
measure many

python3 - "$WORK" "$RUNS" "$COUNT" "$SERVER" <<'PY'
import sys, statistics, os
work, runs, count, server = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def rows(label):
    return [l.split() for l in open(os.path.join(work, label)) if l.strip()]
def med(label, col=0):
    return statistics.median(float(r[col]) for r in rows(label))
rf, rm, lf, lm = med("restore_few"), med("restore_many"), med("list_few"), med("list_many")
sf, sm = med("server_few"), med("server_many")
qf, qm = med("server_few", 1), med("server_many", 1)
# dbward's own time: each run's wall time less the server's time in listings during that run.
own = lambda s: statistics.median(float(a[0]) - float(b[0]) for a, b in zip(rows("restore_" + s), rows("server_" + s)))
of, om = own("few"), own("many")
import math
t = lambda x, unit=" s": "n/a" if math.isnan(x) else f"{x:.4f}{unit}"
r = lambda a, b: "n/a" if math.isnan(a) or math.isnan(b) else f"{a / b:.2f}x"
print(f"S3 test server ({server}) on loopback, medians of {runs}:")
print(f"  restore latest, 10 snapshots           {rf:7.4f} s, {qf:.0f} requests, the server {t(sf)} in listings")
print(f"  restore latest, {count} snapshots         {rm:7.4f} s, {qm:.0f} requests, the server {t(sm)} in listings   {rm/rf:.2f}x the time with 10")
print(f"  restore latest less the server's listing time: {t(of)} with 10, {t(om)} with {count}: {r(om, of)} (target <= 1.2x)")
print(f"  snapshots --limit 3, 10 snapshots      {lf:7.4f} s")
print(f"  snapshots --limit 3, {count} snapshots    {lm:7.4f} s   {lm/lf:.2f}x")
print()
print("| snapshots in the prefix | `restore latest` | its requests | the server's time listing | `restore latest` less that | `snapshots --limit 3` |")
print("|---|---|---|---|---|---|")
print(f"| 10 | {rf:.3f} s | {qf:.0f} | {t(sf)} | {t(of)} | {lf:.3f} s |")
print(f"| {count} | {rm:.3f} s ({rm/rf:.2f}x) | {qm:.0f} | {t(sm)} ({r(sm, sf)}) | {t(om)} ({r(om, of)}) | {lm:.3f} s ({lm/lf:.2f}x) |")
PY
