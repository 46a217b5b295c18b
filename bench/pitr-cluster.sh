# Sourced by bench/pitr.sh and bench/deploy.sh (from the repository's root, after common.sh's
# pg_work, with $SCALE set): a cluster in $WORK whose archive_command pushes every WAL file to dbward's
# archive ($STORE) and to pgBackRest's repository ($WORK/pgbr, stanza `bench`), the two pushes
# side by side; a pgbench database `bench` of scale $SCALE; $D (dbward's command line), $BR
# (pgBackRest's), $AS (as the cluster's user when root), $PSQL. pgBackRest is Debian's package,
# installed when missing (as root).
if ! command -v pgbackrest >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "needs pgbackrest (apt-get install pgbackrest)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest >/dev/null
fi
# pgBackRest runs as the cluster's user (a function cannot be timed by /usr/bin/time).
AS=(); [ "$(id -u)" = 0 ] && AS=(runuser -u postgres --)

STORE=file://$WORK/store
APP="postgres://postgres@127.0.0.1:$PORT/bench?sslmode=disable"
D=("$DBWARD" -q --database "$APP" --store "$STORE" --state-dir "$WORK/state")
BR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
mkdir -p "$WORK/pgbr" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/copies"
cat > "$WORK/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/pgbr
compress-type=zst
compress-level=3
process-max=2
log-level-console=warn
log-level-file=off
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
start-fast=y

[bench]
pg1-path=$WORK/data
pg1-port=$PORT
pg1-socket-path=$WORK/data
EOF
[ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
cat >> "$WORK/data/postgresql.conf" <<EOF
wal_level = replica
archive_mode = on
archive_command = '$DBWARD -q --database postgres://postgres@127.0.0.1/bench --store $STORE wal-push %p & d=\$!; pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench archive-push %p; b=\$?; wait \$d && [ \$b = 0 ]'
EOF
as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/log" -o "-p $PORT -k $WORK/data -c listen_addresses=127.0.0.1 -c max_wal_size=4GB" -w restart >/dev/null
PSQL=("$BINDIR/psql" -X -q -tA -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench" >/dev/null
echo "building pgbench scale $SCALE..." >&2
"$BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -q -s "$SCALE" bench >/dev/null 2>&1
as_pg "${BR[@]}" stanza-create >/dev/null
"${PSQL[@]}" -d postgres -c "SELECT pg_switch_wal()" >/dev/null
as_pg "${BR[@]}" check >/dev/null # waits until a segment is archived by both

