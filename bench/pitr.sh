#!/usr/bin/env bash
# Benchmark: point-in-time recovery of a PostgreSQL cluster (pgbench scale SCALE), in one run:
#   base:    dbward backup --physical            vs  pgbackrest backup --type=full (zst 3, process-max 2)
#   restore: dbward restore --physical latest    vs  pgbackrest restore + pg_ctl start + wait,
#            both to the end of the same archived WAL (TXNS pgbench transactions after the base),
#            both done only once the server has promoted (pg_is_in_recovery() = false);
#            and the logical path: dbward restore latest --to a new database (a pg_dump of the
#            same data: every index rebuilt).
# The cluster archives every WAL file to both (archive_command runs dbward wal-push and
# pgbackrest archive-push side by side: bench/pitr-cluster.sh). Local directories for both repositories; medians of RUNS runs;
# peak RSS from /usr/bin/time. pgBackRest is Debian's package (installed when missing, as root).
# Usage: bench/pitr.sh [SCALE=10] [RUNS=3] [TXNS=20000]
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-10}; RUNS=${2:-3}; TXNS=${3:-20000}
. bench/common.sh # the working directory is the repository (cd above)
pg_work dbward-bench-pitr "-c max_wal_size=4GB"
. bench/pitr-cluster.sh # a cluster archiving to both tools, pgbench scale $SCALE in `bench`

checkpoint() { "${PSQL[@]}" -d postgres -c CHECKPOINT >/dev/null; }
checkpoint
PATH="$BINDIR:$PATH" run base_dbward "${D[@]}" backup --physical
checkpoint
run base_pgbr "${AS[@]}" "${BR[@]}" backup --type=full
PATH="$BINDIR:$PATH" run logical_backup "${D[@]}" backup

echo "replaying $TXNS pgbench transactions after the bases..." >&2
"$BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -c 2 -t "$((TXNS / 2))" bench >/dev/null 2>&1
ROWS=$("${PSQL[@]}" -d bench -c "SELECT count(*), sum(abalance) FROM pgbench_accounts")
as_pg "${BR[@]}" check >/dev/null # the last segment is archived by both (one archive_command)
LAST=$("${PSQL[@]}" -d postgres -c "SELECT last_archived_wal FROM pg_stat_archiver")
[ -e "$WORK/store/bench/wal/$LAST.zst" ] || { echo "$LAST is not in dbward's archive" >&2; exit 1; }
WAL_MB=$(du -sm "$WORK/store/bench/wal" | cut -f1)

# The restored copy answers, out of recovery, with the cluster's rows.
check_copy() {
  local got
  got=$("$BINDIR/psql" -X -q -tA -h "$1" -p "$2" -U postgres -d bench -c "SELECT count(*), sum(abalance) FROM pgbench_accounts")
  [ "$got" = "$ROWS" ] || { echo "the copy in $1 holds $got, the cluster $ROWS" >&2; exit 1; }
}
# pgBackRest's documented way: restore, start, and recovery promotes at the end of the archive.
PGBR_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/pgbr-restore.sh" <<EOF
set -e
as() { if [ "\$(id -u)" = 0 ]; then runuser -u postgres -- "\$@"; else "\$@"; fi; }
as ${BR[*]} --pg1-path="\$1" restore --archive-mode=off
as $BINDIR/pg_ctl -D "\$1" -l "\$1.log" -o "-p $PGBR_PORT -k \$1 -c listen_addresses=" -w -t 3600 start
until [ "\$($BINDIR/psql -X -tA -h "\$1" -p $PGBR_PORT -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done
EOF

for r in $(seq 1 "$RUNS"); do
  checkpoint
  PATH="$BINDIR:$PATH" run restore_dbward "${D[@]}" restore --physical latest --to "$WORK/copies/dbward"
  check_copy "$WORK/copies/dbward" 5432
  as_pg "$BINDIR/pg_ctl" -D "$WORK/copies/dbward" -m fast -w stop >/dev/null
  rm -rf "$WORK/copies/dbward"

  checkpoint
  run restore_pgbr bash "$WORK/pgbr-restore.sh" "$WORK/copies/pgbr"
  check_copy "$WORK/copies/pgbr" "$PGBR_PORT"
  as_pg "$BINDIR/pg_ctl" -D "$WORK/copies/pgbr" -m fast -w stop >/dev/null
  rm -rf "$WORK/copies/pgbr" "$WORK/copies/pgbr.log"

  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS logical_copy" >/dev/null
  checkpoint
  PATH="$BINDIR:$PATH" run restore_logical "${D[@]}" restore latest --yes --to "postgres://postgres@127.0.0.1:$PORT/logical_copy?sslmode=disable"
done
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS logical_copy" >/dev/null

PGSIZE=$("${PSQL[@]}" -d postgres -c "SELECT pg_database_size('bench')")
python3 - "$WORK" "$RUNS" "$SCALE" "$PGSIZE" "$TXNS" "$WAL_MB" <<'PY'
import os, statistics, sys
work, runs, scale, size, txns, wal = sys.argv[1:]
def med(label):
    rows = [l.split() for l in open(os.path.join(work, label))]
    return statistics.median(float(r[0]) for r in rows), max(int(r[1]) for r in rows)
(b, bm), (bp, _), (lb, _) = med("base_dbward"), med("base_pgbr"), med("logical_backup")
(r, rm), (rp, _), (rl, _) = med("restore_dbward"), med("restore_pgbr"), med("restore_logical")
print(f"pgbench scale {scale} ({int(size) / 1e6:.0f} MB), {txns} transactions of WAL after the base ({wal} MB archived, compressed), medians of {runs}:")
print(f"  base backup   dbward --physical {b:6.2f} s  pgBackRest full {bp:6.2f} s  ratio {b / bp:.2f}x   (dbward logical: {lb:.2f} s)  peak RSS {bm / 1024:.0f} MiB")
print(f"  restore (RTO) dbward --physical {r:6.2f} s  pgBackRest      {rp:6.2f} s  ratio {r / rp:.2f}x   peak RSS {rm / 1024:.0f} MiB")
print(f"                dbward logical    {rl:6.2f} s  (physical / logical: {r / rl:.2f}x)")
PY
