#!/usr/bin/env bash
# Benchmark: what a deploy costs and how long the guard takes to undo it, on a PostgreSQL
# cluster (pgbench scale SCALE) archiving to dbward and pgBackRest at once, in one run:
#   deploy latency: `dbward migrate` of a one-statement migration with a restore point as its
#     pre-deploy snapshot ([pitr.server] set; the point alone is the manifest's duration_ms)
#     vs the same migrate taking a pg_dump (the logical path), vs pgBackRest's way to the same
#     protection: pg_create_restore_point, pg_switch_wal, and a wait until that segment is in
#     its repository;
#   RTO: the guard rewinding the cluster to that restore point (`health --restore-on-failure`:
#     the base extracted beside the data directory while the cluster runs, stop, swap, start,
#     promoted; the report's `seconds` and `downtime_seconds`) vs pgBackRest restoring the
#     same point from its full backup of the same moment (stop, data directory moved aside,
#     `pgbackrest restore --type=name`, start, promoted), and the logical path's restore of the
#     dump (`dbward restore <dump> --to` a new database: every index rebuilt).
# Each run takes a new base with both tools (a rewind starts a new timeline) and TXNS pgbench
# transactions after it. Medians of RUNS; both tools check the rows they brought back.
# Usage: bench/deploy.sh [SCALE=10] [RUNS=3] [TXNS=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-10}; RUNS=${2:-3}; TXNS=${3:-1000}
. bench/common.sh # the working directory is the repository (cd above)
pg_work dbward-bench-deploy "-c max_wal_size=4GB"
. bench/pitr-cluster.sh # a cluster archiving to both tools, pgbench scale $SCALE in `bench`

PROJECT=$WORK/project
mkdir -p "$PROJECT/migrations"
CTL="$BINDIR/pg_ctl -D $WORK/data"
[ "$(id -u)" = 0 ] && CTL="runuser -u postgres -- $CTL"
cat > "$PROJECT/point.toml" <<TOML
[pitr.server]
data_dir = "$WORK/data"
stop = "$CTL -m fast -w -t 300 stop"
start = "$CTL -l $WORK/log -o '-p $PORT -k $WORK/data -c listen_addresses=127.0.0.1 -c max_wal_size=4GB' -w -t 3600 start"
user = "$( [ "$(id -u)" = 0 ] && echo postgres || id -un)"
TOML
: > "$PROJECT/dump.toml"
M=("${D[@]}" --migrations "$PROJECT/migrations")
rows() { "${PSQL[@]}" -d bench -c "SELECT count(*), sum(abalance) FROM pgbench_accounts"; }
promoted() { until [ "$("${PSQL[@]}" -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done; }
# pgBackRest's way to a restore point before a deploy: the point, a switch, and a wait until
# the switched segment is in its repository.
cat > "$WORK/pgbr-point.sh" <<SH
set -e
seg=\$(${PSQL[*]} -d postgres -c "SELECT pg_create_restore_point('\$1')" -c "SELECT pg_walfile_name(pg_switch_wal())" | tail -1)
until ls $WORK/pgbr/archive/bench/*/\${seg:0:16}/\$seg-* >/dev/null 2>&1; do sleep 0.01; done
SH
# pgBackRest's way to put a cluster back to a restore point.
cat > "$WORK/pgbr-rewind.sh" <<SH
set -e
$CTL -m fast -w -t 300 stop >/dev/null
mv $WORK/data $WORK/data.pgbr-old
${AS[*]} mkdir -m 700 $WORK/data
${AS[*]} ${BR[*]} restore --type=name --target="\$1" --target-action=promote --target-timeline=current
$CTL -l $WORK/log -o '-p $PORT -k $WORK/data -c listen_addresses=127.0.0.1 -c max_wal_size=4GB' -w -t 3600 start >/dev/null
until [ "\$(${PSQL[*]} -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done
SH

checkpoint() { "${PSQL[@]}" -d postgres -c CHECKPOINT >/dev/null; }
for r in $(seq 1 "$RUNS"); do
  echo "run $r: bases, $TXNS transactions..." >&2
  checkpoint
  PATH="$BINDIR:$PATH" "${D[@]}" backup --physical >/dev/null
  as_pg "${BR[@]}" backup --type=full >/dev/null
  "$BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -c 2 -t "$((TXNS / 2))" bench >/dev/null 2>&1
  WANT=$(rows)

  # Deploy latency: the logical path first (its dump is the RTO comparison's), then pgBackRest's
  # restore point, then dbward's (the one the guard rewinds to).
  echo "CREATE TABLE deploy_dump_$r (id int);" > "$PROJECT/migrations/V$((3 * r - 2))__dump_$r.sql"
  PATH="$BINDIR:$PATH" run migrate_dump "${M[@]}" --config "$PROJECT/dump.toml" migrate
  run point_pgbr bash "$WORK/pgbr-point.sh" "pgbr-$r"
  echo "CREATE TABLE deploy_point_$r (id int);" > "$PROJECT/migrations/V$((3 * r - 1))__point_$r.sql"
  PATH="$BINDIR:$PATH" run migrate_point "${M[@]}" --config "$PROJECT/point.toml" migrate
  POINT=$(ls -t "$WORK/store/bench/" | grep -m1 -- '-pre-deploy-.*\.json$')
  grep -q '"format": "pgpoint"' "$WORK/store/bench/$POINT" || { echo "the deploy took no restore point: $POINT" >&2; exit 1; }
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['duration_ms'] / 1000)" "$WORK/store/bench/$POINT" >> "$WORK/point_only"
  # The release fails its health check after a destructive batch.
  echo "DROP TABLE pgbench_history;" > "$PROJECT/migrations/V$((3 * r))__drop_$r.sql"
  PATH="$BINDIR:$PATH" "${M[@]}" --config "$PROJECT/point.toml" migrate >/dev/null
  "${PSQL[@]}" -d bench -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1" >/dev/null
  PATH="$BINDIR:$PATH" "${M[@]}" --config "$PROJECT/point.toml" --json health --restore-on-failure \
    --url http://127.0.0.1:9/healthz --timeout 1s > "$WORK/guard.json" 2>"$WORK/guard.err" && true
  python3 - "$WORK/guard.json" "$WORK" <<'PY' || { cat "$WORK/guard.err" >&2; exit 1; }
import json, sys
g = json.load(open(sys.argv[1]))
assert g["exit_code"] == 5 and g["rewound"], g
open(sys.argv[2] + "/rewind_seconds", "a").write(f'{g["restored"]["seconds"]:.4f} 0\n')
open(sys.argv[2] + "/rewind_downtime", "a").write(f'{g["restored"]["downtime_seconds"]:.4f} 0\n')
PY
  GOT=$(rows)
  [ "$GOT" = "$WANT" ] || { echo "the rewound cluster holds $GOT, the point $WANT" >&2; exit 1; }
  rm -rf "$WORK"/data.dbward-replaced-*
  rm -f "$PROJECT/migrations/V$((3 * r))__drop_$r.sql"

  # pgBackRest to the same point, from its base of the same moment.
  checkpoint
  run rewind_pgbr bash "$WORK/pgbr-rewind.sh" "${POINT%.json}"
  GOT=$(rows)
  [ "$GOT" = "$WANT" ] || { echo "pgBackRest's cluster holds $GOT, the point $WANT" >&2; exit 1; }
  rm -rf "$WORK/data.pgbr-old"

  # The logical path's undo: the deploy's dump restored into a new database.
  DUMP=$(ls "$WORK/store/bench/" | grep -- '-pre-deploy-.*\.pgdump\.zst$' | sort | tail -1)
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS logical_copy" >/dev/null
  checkpoint
  PATH="$BINDIR:$PATH" run restore_dump "${D[@]}" restore "${DUMP%.pgdump.zst}" --yes --to "postgres://postgres@127.0.0.1:$PORT/logical_copy?sslmode=disable"
  "${PSQL[@]}" -d postgres -c "DROP DATABASE logical_copy" >/dev/null
done

PGSIZE=$("${PSQL[@]}" -d postgres -c "SELECT pg_database_size('bench')")
python3 - "$WORK" "$RUNS" "$SCALE" "$PGSIZE" "$TXNS" <<'PY'
import os, statistics, sys
work, runs, scale, size, txns = sys.argv[1:]
def med(label):
    return statistics.median(float(l.split()[0]) for l in open(os.path.join(work, label)))
md, mp, pp, po = med("migrate_dump"), med("migrate_point"), med("point_pgbr"), med("point_only")
rw, dt, rp, rd = med("rewind_seconds"), med("rewind_downtime"), med("rewind_pgbr"), med("restore_dump")
print(f"pgbench scale {scale} ({int(size) / 1e6:.0f} MB), {txns} transactions after each base, medians of {runs}:")
print(f"  deploy latency  migrate with a restore point {mp:6.2f} s (the point itself {po:.2f} s)  with a pg_dump {md:6.2f} s  ratio {mp / md:.2f}x")
print(f"                  pgBackRest restore point + switch + archived {pp:6.2f} s  (dbward's point / pgBackRest's: {po / pp:.2f}x)")
print(f"  RTO             guard rewind {rw:6.2f} s (cluster down {dt:.2f} s)  pgBackRest restore to the point {rp:6.2f} s  ratio {rw / rp:.2f}x")
print(f"                  logical undo (the dump restored) {rd:6.2f} s  (rewind / logical: {rw / rd:.2f}x)")
PY
