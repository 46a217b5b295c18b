#!/usr/bin/env bash
# Benchmark: what one WAL file costs PostgreSQL's archiver and recovery. `dbward wal-push` and
# `dbward wal-fetch` of a 16 MiB segment-shaped file (half random bytes, half zeros, as a
# segment full of new rows compresses) into a local directory store, against `zstd -3` (then
# `sync` of its output: PostgreSQL may remove a segment as soon as archive_command succeeds, so
# an archive that is not on disk by then can lose it) and `zstd -d` of the same file, medians of
# RUNS files; both sides start a process per file, as archive_command and restore_command do.
# Usage: bench/wal.sh [RUNS=9]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-9}
. bench/common.sh # the working directory is the repository (cd above)
cargo build --release --quiet
DBWARD=$PWD/target/release/dbward
WORK=$(mktemp -d /tmp/dbward-bench-XXXX)
trap 'rm -rf "$WORK"' EXIT
W=("$DBWARD" -q --database postgres://app@localhost/app --store "file://$WORK/store")
python3 - "$WORK" "$RUNS" <<'PY'
import os, struct, sys
work, runs = sys.argv[1], int(sys.argv[2])
for i in range(1, runs + 1):
    raw = bytearray(os.urandom(8 << 20) + bytes(8 << 20))
    raw[0:40] = bytes(40); raw[2] = 2  # a long page header (XLP_LONG_HEADER)
    raw[24:32] = struct.pack("<Q", 7311234567890123456); raw[32:36] = struct.pack("<I", 16 << 20)
    open(os.path.join(work, "0000000100000000000000%02X" % i), "wb").write(raw)
PY
for i in $(seq 1 "$RUNS"); do
  seg=$WORK/$(printf '0000000100000000000000%02X' "$i")
  run push "${W[@]}" wal-push "$seg"
  sh_run zstd_c "zstd -q -3 -f '$seg' -o '$seg.zst' && sync '$seg.zst'"
  run fetch "${W[@]}" wal-fetch "$(basename "$seg")" "$WORK/fetched"
  run zstd_d zstd -q -d -f "$seg.zst" -o "$WORK/plain"
  cmp -s "$seg" "$WORK/fetched" || { echo "the fetched file differs from $seg" >&2; exit 1; }
done
python3 - "$WORK" "$RUNS" <<'PY'
import os, statistics, sys
work, runs = sys.argv[1], sys.argv[2]
med = lambda label: statistics.median(float(l.split()[0]) for l in open(os.path.join(work, label)))
p, c, f, d = med("push"), med("zstd_c"), med("fetch"), med("zstd_d")
print(f"one 16 MiB WAL file, local directory store, medians of {runs}:")
print(f"  dbward wal-push    {p * 1000:6.1f} ms   zstd -3 + sync {c * 1000:6.1f} ms   ratio {p / c:.2f}x")
print(f"  dbward wal-fetch   {f * 1000:6.1f} ms   zstd -d        {d * 1000:6.1f} ms   ratio {f / d:.2f}x")
PY
