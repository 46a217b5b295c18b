#!/usr/bin/env bash
# Scale run (once, not in CI): dbward backup, restore and restore-drill of a large SQLite
# database and a large pgbench database, each with its time, peak memory and peak extra disk.
# Memory and temp space should be flat in the database's size; only time grows.
#   Peak extra disk: the most the file system's free space dropped below its level before the
#   command, minus what the command leaves behind on purpose (the stored snapshot, the restored
#   database and the replaced one kept aside), sampled every 0.2 s.
# Usage: bench/scale.sh [SIZE_MIB=10240] [SCALE=700]   (needs about 3.5x SIZE of free disk)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-10240}; SCALE=${2:-700}
. bench/common.sh # the working directory is the repository (cd above)
pg_work dbward-scale

free_kib() { df -k --output=avail "$WORK" | tail -1; }
# measure LABEL CMD...: time and peak RSS (run), and the lowest free space seen while it ran.
measure() {
  local label=$1; shift
  local before low now
  before=$(free_kib); low=$before
  ( while :; do free_kib; sleep 0.2; done ) > "$WORK/free.$label" &
  local sampler=$!
  run "$label" "$@"
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  low=$(sort -n "$WORK/free.$label" | head -1)
  now=$(free_kib)
  # Peak used beyond what is still there afterwards: temp space.
  echo "$(( (before - low) - (before - now) ))" > "$WORK/tmp.$label"
}

DB=$WORK/app.db
sqlite_events "$DB" "$SIZE"
RAW=$(stat -c %s "$DB")
measure sqlite_backup "$DBWARD" -q --database "sqlite:$DB" --store "file://$WORK/store" --state-dir "$WORK/state" backup
STORED=$(du -sb "$WORK/store" | cut -f1)
measure sqlite_restore "$DBWARD" -q --database "sqlite:$DB" --store "file://$WORK/store" --state-dir "$WORK/state" restore latest --yes
rm -f "$WORK"/app.db.replaced-*
measure sqlite_drill "$DBWARD" -q --database "sqlite:$DB" --store "file://$WORK/store" --state-dir "$WORK/state" restore-drill latest
rm -f "$DB" "$DB"-wal "$DB"-shm; rm -rf "$WORK/store"

echo "building pgbench scale $SCALE..." >&2
PGB=("$BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres)
PSQL=("$BINDIR/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE DATABASE bench" >/dev/null
"${PGB[@]}" -i -q -s "$SCALE" bench >/dev/null 2>&1
PGSIZE=$("${PSQL[@]}" -tAc "SELECT pg_database_size('bench')")
URL="postgres://postgres@127.0.0.1:$PORT/bench?sslmode=disable"
PATH="$BINDIR:$PATH" measure pg_backup "$DBWARD" -q --database "$URL" --store "file://$WORK/pgstore" --state-dir "$WORK/state" backup
PGSTORED=$(du -sb "$WORK/pgstore" | cut -f1)
PATH="$BINDIR:$PATH" measure pg_restore "$DBWARD" -q --database "$URL" --store "file://$WORK/pgstore" --state-dir "$WORK/state" restore latest --yes
"${PSQL[@]}" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'bench\_replaced\_%'" | while read -r d; do "${PSQL[@]}" -c "DROP DATABASE \"$d\"" >/dev/null; done
PATH="$BINDIR:$PATH" measure pg_drill "$DBWARD" -q --database "$URL" --store "file://$WORK/pgstore" --state-dir "$WORK/state" restore-drill latest

python3 - "$WORK" "$RAW" "$STORED" "$PGSIZE" "$PGSTORED" <<'PY'
import sys, os
work, raw, stored, pgsize, pgstored = sys.argv[1], *map(int, sys.argv[2:])
def row(label, what):
    secs, kib = open(os.path.join(work, label)).read().split()
    tmp = max(0, int(open(os.path.join(work, "tmp." + label)).read())) / 2**20
    print(f"| {what} | {float(secs):.1f} s | {int(kib)/1024:.1f} MiB | {tmp:.2f} GiB |")
print(f"SQLite {raw/2**30:.1f} GiB (stored {stored/2**30:.2f} GiB); pgbench {pgsize/2**30:.1f} GiB on disk (stored {pgstored/2**30:.2f} GiB)")
print()
print("| what | time | peak RSS | peak extra disk |")
print("|---|---|---|---|")
row("sqlite_backup", "SQLite backup")
row("sqlite_restore", "SQLite restore")
row("sqlite_drill", "SQLite restore drill")
row("pg_backup", "PostgreSQL backup")
row("pg_restore", "PostgreSQL restore")
row("pg_drill", "PostgreSQL restore drill")
PY
