#!/usr/bin/env bash
# Benchmark: an index built on a busy table, same run, same table, same writer.
#   A table of ROWS rows (default 1,000,000) takes a steady writer (pgbench, RATE one-row updates
#   a second, latency measured from each transaction's scheduled start, so a wait counts whole).
#   Each run builds the same index three ways while the writer runs:
#     plain     psql: CREATE INDEX (the blocking way: the standard tool's default)
#     psql-cic  psql: CREATE INDEX CONCURRENTLY (the standard tool's lock-safe way)
#     dbward    dbward migrate of a file marked `-- dbward:no-transaction` holding the same
#               CREATE INDEX CONCURRENTLY (--no-snapshot: the build alone is measured)
#   and reports, medians over the runs: the build's wall time and the writer's worst wait and p99
#   while it ran, with dbward's ratios to psql-cic.
# Needs PostgreSQL server binaries, psql and pgbench (scripts/test.sh installs them).
# Usage: bench/concurrent-index.sh [runs] [rows] [rate] [window]   (default 3, 1000000, 200, 20)
#   window: seconds the writer runs each time; the build starts 2 s in and must end before it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
ROWS=${2:-1000000}
RATE=${3:-200}
WINDOW=${4:-20}
. bench/common.sh
pg_work dbward-cic
PSQL=("$BINDIR/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1)
URL="postgres://postgres@127.0.0.1:$PORT/b?sslmode=disable"

"${PSQL[@]}" -d postgres -c "CREATE DATABASE b"
echo "building a table of $ROWS rows..." >&2
"${PSQL[@]}" -d b -c "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, note text NOT NULL)" \
  -c "INSERT INTO orders SELECT i, i % 5000, md5(i::text) FROM generate_series(1, $ROWS) i" -c "VACUUM ANALYZE orders"
mkdir -p "$WORK/m"
echo "SELECT 1;" > "$WORK/m/V1__start.sql"
"$DBWARD" -q --database "$URL" --migrations "$WORK/m" migrate --no-snapshot
printf -- "-- dbward:no-transaction\nCREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer);\n" > "$WORK/m/V2__index.sql"
printf '\\set id random(1, %s)\nUPDATE orders SET note = note WHERE id = :id;\n' "$ROWS" > "$WORK/writer.sql"

# build LABEL CMD...: the writer starts for WINDOW seconds, CMD builds the index two seconds in and
# must end before the writer does; appends "build_seconds worst_ms p99_ms" (the writer's transactions that were
# due while CMD ran) to $WORK/LABEL.
build() {
  local label=$1; shift
  local logs="$WORK/logs-$label"
  rm -rf "$logs"; mkdir -p "$logs"
  "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT" -U postgres -c 4 -j 2 -R "$RATE" -T "$WINDOW" -l --log-prefix="$logs/pgbench_log" -f "$WORK/writer.sql" b >"$logs/out" 2>&1 &
  local writer=$!
  sleep 2
  local t0=$EPOCHREALTIME
  "$@" >/dev/null 2>"$WORK/err" || { kill "$writer"; echo "$label failed:" >&2; cat "$WORK/err" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  kill -0 "$writer" 2>/dev/null || { echo "$label: the build outlasted the writer's ${WINDOW}s: raise the window" >&2; exit 1; }
  wait "$writer" || { echo "$label: the writer failed:" >&2; cat "$logs/out" >&2; exit 1; }
  # pgbench's log: client xact latency_us script epoch_s epoch_us [lag_us]; a transaction was
  # due at its end minus its latency.
  cat "$logs"/pgbench_log.* | python3 -c '
import sys, statistics
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
lat = []
for line in sys.stdin:
    f = line.split()
    end = int(f[4]) + int(f[5]) / 1e6
    due = end - int(f[2]) / 1e6
    if t0 <= due <= t1 or (due < t0 and end > t0):
        lat.append(int(f[2]) / 1000)
lat.sort()
p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0
print(f"{t1 - t0:.3f} {max(lat) if lat else 0:.1f} {p99:.1f}")
' "$t0" "$t1" >> "$WORK/$label"
  [ "$("${PSQL[@]}" -d b -tAc "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_customer_idx'::regclass")" = t ] || { echo "$label: no valid index" >&2; exit 1; }
}

drop() { "${PSQL[@]}" -d b -c "DROP INDEX orders_customer_idx"; }
for r in $(seq 1 "$RUNS"); do
  echo "run $r of $RUNS..." >&2
  build plain "${PSQL[@]}" -d b -c "CREATE INDEX orders_customer_idx ON orders (customer)"; drop
  build psql-cic "${PSQL[@]}" -d b -c "CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer)"; drop
  build dbward "$DBWARD" -q --database "$URL" --migrations "$WORK/m" migrate --no-snapshot
  # The next run applies the file again: its history row and its index go.
  "${PSQL[@]}" -d b -c "DELETE FROM refinery_schema_history WHERE version = 2"; drop
done

python3 - "$WORK" "$ROWS" "$RATE" <<'PY'
import sys, statistics
work, rows, rate = sys.argv[1], sys.argv[2], sys.argv[3]
def col(label, i):
    return statistics.median(float(l.split()[i]) for l in open(f"{work}/{label}"))
print(f"index on {int(rows):,} rows under {rate} updates/s, medians of {sum(1 for _ in open(work + '/dbward'))} runs")
print(f"{'':10} {'build s':>9} {'worst wait ms':>14} {'p99 ms':>8}")
for label in ["plain", "psql-cic", "dbward"]:
    print(f"{label:10} {col(label, 0):9.3f} {col(label, 1):14.1f} {col(label, 2):8.1f}")
for i, what in [(0, "build time"), (1, "worst wait"), (2, "p99")]:
    a, b = col("dbward", i), col("psql-cic", i)
    print(f"dbward / psql-cic {what}: {a / b:.2f}x" if b else f"dbward / psql-cic {what}: n/a")
PY
