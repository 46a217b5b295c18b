# Shared by the bench scripts (sourced from the repository's root).

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# pg_work PREFIX [SERVER_OPTIONS]: a release build ($DBWARD), a work dir /tmp/PREFIX-XXXX ($WORK,
# removed on exit) and a PostgreSQL cluster of the newest installed version in it, on a free
# loopback port ($BINDIR, $PORT), stopped on exit; SERVER_OPTIONS (`-c name=value ...`) are
# added to the server's command line.
pg_work() {
  cargo build --release --quiet
  DBWARD=$PWD/target/release/dbward
  BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  WORK=$(mktemp -d "/tmp/$1-XXXX")
  [ "$(id -u)" = 0 ] && chown postgres "$WORK"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg "$BINDIR/initdb" -A trust -U postgres -D "$WORK/data" >/dev/null
  as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/log" -o "-p $PORT -k $WORK/data -c listen_addresses=127.0.0.1 ${2:-}" -w start >/dev/null
  trap bench_exit EXIT
}

# What a bench script started, stopped, and its work dir removed.
bench_exit() {
  [ -n "${S3PID:-}" ] && kill "$S3PID" 2>/dev/null
  [ -n "${BINDIR:-}" ] && as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null
  rm -rf "$WORK"
}

# s3_server [LOG]: the S3 test server (s3s-fs) on a free loopback port ($S3PORT, $S3PID)
# serving $WORK/s3 with a bucket `bench`, killed on exit, and the AWS_* variables that reach it.
# With LOG, every request and its duration are logged to $WORK/s3.log.
s3_server() {
  command -v s3s-fs >/dev/null || { echo "needs s3s-fs (scripts/test.sh installs it)" >&2; exit 1; }
  mkdir -p "$WORK/s3/bench"
  S3PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  RUST_LOG=${1:+s3s::service=debug} s3s-fs --host 127.0.0.1 --port "$S3PORT" --access-key bench --secret-key benchsecret "$WORK/s3" >>"$WORK/s3.log" 2>&1 &
  S3PID=$!
  trap bench_exit EXIT
  for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$S3PORT") 2>/dev/null && break; sleep 0.1; done
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
}

# run LABEL CMD...: appends "seconds peak_kib" to $WORK/LABEL (wall time to the 0.1 ms, from
# bash's clock; /usr/bin/time's own is to 10 ms)
run() {
  local label=$1; shift
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { echo "$label failed:" >&2; cat "$WORK/err" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }') $(tail -1 "$WORK/t")" >> "$WORK/$label"
}
sh_run() { run "$1" sh -c "$2"; }

# sqlite_events DB SIZE_MIB: a WAL-mode SQLite database of about SIZE_MIB MiB of event rows
# (about 3.5x compressible with zstd -3).
sqlite_events() {
  local db=$1 size=$2
  echo "building a ~${size} MiB SQLite database..." >&2
  local rows=$((size * 1024 * 1024 / 200))
  sqlite3 "$db" "PRAGMA journal_mode=WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INT, kind TEXT, body TEXT, at TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
INSERT INTO events (user_id, kind, body, at) SELECT abs(random()) % 100000, 'kind-' || (abs(random()) % 20),
  'event ' || i || ' payload ' || hex(randomblob(24)) || ' status=ok region=eu-west-1 agent=Mozilla/5.0', datetime('now', '-' || (i % 100000) || ' seconds') FROM n;" >/dev/null
}
