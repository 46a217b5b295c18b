#!/usr/bin/env bash
# Benchmark: `dbward migrate` against the standard tools, in the same run.
#   1. 300 small migrations on PostgreSQL: dbward migrate vs psql --single-transaction of the same SQL.
#   2. A no-op migrate (nothing pending) on SQLite vs a bare sqlite3 query of the history table.
#   3. One 8 MB seed migration (100k+ INSERTs) on SQLite vs sqlite3, and on PostgreSQL vs psql.
# Reports medians and ratios. Needs PostgreSQL server binaries, psql and sqlite3 (scripts/test.sh installs them).
# Usage: bench/migrate.sh [runs]   (default 7 runs for PostgreSQL, 31 for the no-op)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-7}
cargo build --release --quiet
DBWARD=$PWD/target/release/dbward
BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
WORK=$(mktemp -d /tmp/dbward-bench-XXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$BINDIR/initdb" -A trust -U postgres -D "$WORK/data" >/dev/null
as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/log" -o "-p $PORT -k $WORK/data -c listen_addresses=127.0.0.1" -w start >/dev/null
trap 'as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null; rm -rf "$WORK"' EXIT
PSQL=("$BINDIR/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres)

# 300 small migrations: a table, an index, a row, a view now and then.
mkdir -p "$WORK/m"
for i in $(seq 1 300); do
  f="$WORK/m/V${i}__step_${i}.sql"
  echo "CREATE TABLE t$i (id bigint PRIMARY KEY, name text NOT NULL, created_at timestamptz DEFAULT now());" > "$f"
  echo "CREATE INDEX t${i}_name ON t$i (name);" >> "$f"
  echo "INSERT INTO t$i (id, name) VALUES (1, 'row $i');" >> "$f"
  [ $((i % 10)) = 0 ] && echo "CREATE VIEW v$i AS SELECT id, name FROM t$i;" >> "$f"
done
cat $(ls "$WORK"/m/*.sql | sort -V) > "$WORK/all.sql"

median() { python3 -c 'import sys, statistics; print(f"{statistics.median(map(float, sys.argv[1:])):.4f}")' "$@"; }
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); python3 -c "print($e - $s)"; }

fresh() { "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS b" -c "CREATE DATABASE b" >/dev/null 2>&1; }
d=(); p=()
for r in $(seq 1 "$RUNS"); do
  fresh; d+=("$(timed "$DBWARD" -q --database "postgres://postgres@127.0.0.1:$PORT/b?sslmode=disable" --migrations "$WORK/m" migrate --no-snapshot)")
  [ "$("${PSQL[@]}" -d b -tAc 'SELECT count(*) FROM refinery_schema_history')" = 300 ] || { echo "dbward did not apply 300 migrations" >&2; exit 1; }
  fresh; p+=("$(timed "${PSQL[@]}" -d b -v ON_ERROR_STOP=1 --single-transaction -f "$WORK/all.sql")")
done
dm=$(median "${d[@]}"); pm=$(median "${p[@]}")

# No-op migrate on SQLite.
DB="$WORK/app.db"
"$DBWARD" -q --database "sqlite:$DB" --migrations migrations migrate >/dev/null
n=(); s=()
for r in $(seq 1 $((RUNS * 4 + 3))); do
  n+=("$(timed "$DBWARD" -q --database "sqlite:$DB" --migrations migrations migrate)")
  s+=("$(timed sqlite3 "$DB" 'SELECT max(version) FROM refinery_schema_history')")
done
nm=$(median "${n[@]}"); sm=$(median "${s[@]}")

# One 8 MB seed migration on SQLite (100k+ INSERTs): dbward migrate vs sqlite3 in one transaction.
mkdir -p "$WORK/seed"
python3 - "$WORK/seed/V1__seed.sql" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("CREATE TABLE seed (id INTEGER PRIMARY KEY, v TEXT);\n")
    i = n = 0
    while n < 8 << 20:
        line = f"INSERT INTO seed (v) VALUES ('row {i} {'x' * 20}');\n"
        f.write(line); n += len(line); i += 1
PY
{ echo "BEGIN;"; cat "$WORK/seed/V1__seed.sql"; echo "COMMIT;"; } > "$WORK/seed.sql"
g=(); q=()
for r in $(seq 1 "$RUNS"); do
  rm -f "$WORK"/seed-a.db* "$WORK"/seed-b.db*
  g+=("$(timed "$DBWARD" -q --database "sqlite:$WORK/seed-a.db" --migrations "$WORK/seed" migrate --no-snapshot)")
  q+=("$(timed sh -c "sqlite3 '$WORK/seed-b.db' < '$WORK/seed.sql'")")
done
gm=$(median "${g[@]}"); qm=$(median "${q[@]}")

# The same 8 MB seed file on PostgreSQL, a batch of one large file: dbward migrate vs psql.
l=(); k=()
for r in $(seq 1 "$RUNS"); do
  fresh; l+=("$(timed "$DBWARD" -q --database "postgres://postgres@127.0.0.1:$PORT/b?sslmode=disable" --migrations "$WORK/seed" migrate --no-snapshot)")
  [ "$("${PSQL[@]}" -d b -tAc 'SELECT count(*) > 100000 FROM seed')" = t ] || { echo "dbward did not apply the seed" >&2; exit 1; }
  fresh; k+=("$(timed "${PSQL[@]}" -d b -v ON_ERROR_STOP=1 --single-transaction -f "$WORK/seed/V1__seed.sql")")
done
lm=$(median "${l[@]}"); km=$(median "${k[@]}")

python3 - "$dm" "$pm" "$nm" "$sm" "$RUNS" "$gm" "$qm" "$lm" "$km" <<'PY'
import sys
dm, pm, nm, sm = map(float, sys.argv[1:5]); runs = sys.argv[5]; gm, qm, lm, km = map(float, sys.argv[6:10])
print(f"300 migrations on PostgreSQL ({runs} runs, medians):")
print(f"  dbward migrate                 {dm*1000:8.1f} ms")
print(f"  psql --single-transaction      {pm*1000:8.1f} ms")
print(f"  ratio dbward / psql            {dm/pm:8.2f}x   (target <= 1.2x)")
print("no-op migrate on SQLite (nothing pending, medians):")
print(f"  dbward migrate                 {nm*1000:8.1f} ms")
print(f"  sqlite3 history query          {sm*1000:8.1f} ms")
print(f"  ratio dbward / sqlite3         {nm/sm:8.2f}x")
print("one 8 MB seed migration on SQLite (medians; lint included):")
print(f"  dbward migrate                 {gm*1000:8.1f} ms")
print(f"  sqlite3, one transaction       {qm*1000:8.1f} ms")
print(f"  ratio dbward / sqlite3         {gm/qm:8.2f}x   (target <= 3x)")
print("the same seed migration on PostgreSQL (medians; lint included):")
print(f"  dbward migrate                 {lm*1000:8.1f} ms")
print(f"  psql --single-transaction      {km*1000:8.1f} ms")
print(f"  ratio dbward / psql            {lm/km:8.2f}x   (target <= 1.1x)")

# The README's table, as printed here.
print()
print("| what | dbward | standard tool | ratio |")
print("|---|---|---|---|")
print(f"| 300 small migrations, PostgreSQL | {dm*1000:.0f} ms | `psql --single-transaction` {pm*1000:.0f} ms | {dm/pm:.2f}x (target ≤ 1.2x) |")
print(f"| no-op `migrate` (nothing pending), SQLite | {nm*1000:.1f} ms | `sqlite3` history query {sm*1000:.1f} ms | {nm/sm:.2f}x (target < 10 ms) |")
print(f"| one 8 MB seed migration (100k+ INSERTs), SQLite, lint included | {gm*1000:.0f} ms | `sqlite3` in one transaction {qm*1000:.0f} ms | {gm/qm:.2f}x |")
print(f"| the same seed migration, PostgreSQL, lint included | {lm*1000:.0f} ms | `psql --single-transaction` {km*1000:.0f} ms | {lm/km:.2f}x (target ≤ 1.1x) |")
PY
