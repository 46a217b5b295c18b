#!/usr/bin/env bash
# Benchmark: what age encryption costs a snapshot, in the same run.
#   SQLite (~SIZE MiB):
#     backup:  dbward backup (encrypted)  vs  dbward backup (plaintext)
#              and the standard tools: sqlite3 .backup + zstd -3 -T2 | age -r, vs without age
#     restore: dbward restore (encrypted) vs  dbward restore (plaintext)
# Local directory store; medians of RUNS runs; peak RSS from /usr/bin/time.
# Usage: bench/encryption.sh [SIZE_MIB=512] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-512}; RUNS=${2:-3}
cargo build --release --quiet
DBWARD=$PWD/target/release/dbward
WORK=$(mktemp -d /tmp/dbward-bench-XXXX)
trap 'rm -rf "$WORK"' EXIT
command -v age-keygen >/dev/null || { echo "needs the age CLI (apt-get install age)" >&2; exit 1; }

. bench/common.sh # the working directory is the repository (cd above)

age-keygen -o "$WORK/key.txt" 2>/dev/null
PUB=$(age-keygen -y "$WORK/key.txt")
printf '[encryption]\nrecipients = ["%s"]\n' "$PUB" > "$WORK/enc.toml"
: > "$WORK/plain.toml"

DB=$WORK/app.db
sqlite_events "$DB" "$SIZE"
RAW=$(stat -c %s "$DB")

# Alternating, so both see the same machine state.
for r in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/plain-store" "$WORK/enc-store" "$WORK"/copy.db*
  run plain "$DBWARD" -q --config "$WORK/plain.toml" --database "sqlite:$DB" --store "file://$WORK/plain-store" --state-dir "$WORK/state" backup
  run enc "$DBWARD" -q --config "$WORK/enc.toml" --database "sqlite:$DB" --store "file://$WORK/enc-store" --state-dir "$WORK/state" backup
  sh_run std_plain "sqlite3 '$DB' \".backup '$WORK/copy.db'\" && zstd -q -3 -T2 -c '$WORK/copy.db' > '$WORK/copy.db.zst'"
  rm -f "$WORK"/copy.db*
  sh_run std_enc "sqlite3 '$DB' \".backup '$WORK/copy.db'\" && zstd -q -3 -T2 -c '$WORK/copy.db' | age -r '$PUB' > '$WORK/copy.db.zst.age'"
done
for r in $(seq 1 "$RUNS"); do
  run restore_plain "$DBWARD" -q --config "$WORK/plain.toml" --database "sqlite:$DB" --store "file://$WORK/plain-store" --state-dir "$WORK/state" restore latest --yes
  rm -f "$WORK"/app.db.replaced-*
  DBWARD_AGE_IDENTITY_FILE="$WORK/key.txt" run restore_enc "$DBWARD" -q --config "$WORK/enc.toml" --database "sqlite:$DB" --store "file://$WORK/enc-store" --state-dir "$WORK/state" restore latest --yes
  rm -f "$WORK"/app.db.replaced-*
done

python3 - "$WORK" "$RAW" "$RUNS" <<'PY'
import sys, statistics, os
work, raw, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(label):
    rows = [l.split() for l in open(os.path.join(work, label)) if l.strip()]
    return statistics.median(float(r[0]) for r in rows), max(int(r[1]) for r in rows) / 1024
p, pm = load("plain"); e, em = load("enc"); sp, _ = load("std_plain"); se, _ = load("std_enc")
rp, rpm = load("restore_plain"); re_, rem = load("restore_enc")
print(f"SQLite {raw/2**20:.0f} MiB, medians of {runs}:")
print(f"  dbward backup, plaintext             {p:6.2f} s   peak RSS {pm:6.1f} MiB")
print(f"  dbward backup, age                   {e:6.2f} s   peak RSS {em:6.1f} MiB   encrypted/plain {e/p:.2f}x")
print(f"  sqlite3 .backup + zstd -3 -T2        {sp:6.2f} s")
print(f"  ... | age -r                         {se:6.2f} s   encrypted/plain {se/sp:.2f}x   dbward age / std age {e/se:.2f}x")
print(f"  dbward restore, plaintext            {rp:6.2f} s   peak RSS {rpm:6.1f} MiB")
print(f"  dbward restore, age                  {re_:6.2f} s   peak RSS {rem:6.1f} MiB   encrypted/plain {re_/rp:.2f}x")
PY
