#!/usr/bin/env python3
"""Builds a SQLite file from a dbward stream without dbward (docs/streams.md).

    stream-restore.py GENERATION_DIR OUT.db

GENERATION_DIR holds a generation as the store keeps it (`<database>/stream/<generation>/`:
`base.sqlite.zst` and the `<seq>.step.zst` objects; decrypt `.age` ones with `age -d` first and
drop the `.age`). Needs only Python 3 and the `zstd` command. The base is decoded, each step
applied in order (a gap stops it), and the result's page hashes checked against the last
step's `state`.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys

HEADER_MAGIC = 0x184D2A5E


def zstd_d(path):
    return subprocess.run(["zstd", "-d", "-c", "-q", path], check=True, stdout=subprocess.PIPE).stdout


def state_of(path, page_size):
    total = 0
    with open(path, "rb") as f:
        pgno = 0
        while True:
            page = f.read(page_size)
            if len(page) < page_size:
                return total
            pgno += 1
            digest = hashlib.sha256(struct.pack(">I", pgno) + page).digest()
            total = (total + int.from_bytes(digest[:16], "big")) % (1 << 128)


def main(gen_dir, out):
    with open(out, "xb") as f:
        f.write(zstd_d(os.path.join(gen_dir, "base.sqlite.zst")))
    # The steps themselves (compacted ones, `<first>-<last>.L<n>.step.zst`, are shortcuts).
    steps = sorted(n for n in os.listdir(gen_dir) if n.endswith(".step.zst") and ".L" not in n)
    state = None
    page_size = None
    for expected, name in enumerate(steps, start=1):
        if int(name.split(".")[0], 16) != expected:
            sys.exit(f"step {expected} is missing: stopping before {name}")
        path = os.path.join(gen_dir, name)
        with open(path, "rb") as f:
            magic, length = struct.unpack("<II", f.read(8))
            if magic != HEADER_MAGIC:
                sys.exit(f"{name} is not a step")
            header = json.loads(f.read(length))
        payload = zstd_d(path)
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            sys.exit(f"{name}: its payload does not match its header")
        page_size = header["page_size"]
        record = 4 + page_size
        with open(out, "r+b") as db:
            for at in range(0, len(payload), record):
                (pgno,) = struct.unpack(">I", payload[at:at + 4])
                db.seek((pgno - 1) * page_size)
                db.write(payload[at + 4:at + record])
            db.truncate(header["page_count"] * page_size)
        state = header["state"]
    if state is not None and format(state_of(out, page_size), "032x") != state:
        sys.exit("the built file's page hashes do not match the last step's state")
    print(f"{out}: base and {len(steps)} step(s)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
