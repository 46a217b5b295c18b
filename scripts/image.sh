#!/usr/bin/env bash
# Builds dbward's container image without a Docker engine or a registry: what the Dockerfile
# makes (Debian bookworm with the PostgreSQL 15 client tools, zstd and the CA certificates;
# /usr/bin/dbward, the Debian package's path; a user `dbward`, uid 10001, owning the state dir
# /var/lib/dbward; ENTRYPOINT dbward), from Debian's own packages with mmdebstrap, as an OCI
# image layout made with umoci. Any OCI runtime runs it (the suite uses runc); `skopeo copy
# oci:DIR:dbward docker-daemon:dbward:latest` or a registry takes it from there.
#   scripts/image.sh BINARY DIR     -> DIR/oci, image `dbward`
set -euo pipefail
bin=${1:?usage: scripts/image.sh BINARY DIR}
out=${2:?usage: scripts/image.sh BINARY DIR}
[ "$(basename "$bin")" = dbward ] || { echo "image.sh: the binary must be named dbward" >&2; exit 1; }
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "image.sh: $tool is missing (apt-get install mmdebstrap umoci)" >&2; exit 1; }
done
mkdir -p "$out"
rm -rf "$out/oci" "$out/rootfs.tar"
mmdebstrap --quiet --variant=minbase --include=ca-certificates,postgresql-client,zstd \
  --customize-hook="copy-in $bin /usr/bin" \
  --customize-hook='chroot "$1" groupadd --system -K SYS_GID_MAX=10001 --gid 10001 dbward' \
  --customize-hook='chroot "$1" useradd --system -K SYS_UID_MAX=10001 --uid 10001 --gid dbward --home-dir /var/lib/dbward --shell /usr/sbin/nologin dbward' \
  --customize-hook='chroot "$1" install -d -o dbward -g dbward -m 0750 /var/lib/dbward' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/archives/*.deb' \
  bookworm "$out/rootfs.tar" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
umoci init --layout "$out/oci"
umoci new --image "$out/oci:dbward"
umoci raw add-layer --image "$out/oci:dbward" "$out/rootfs.tar"
umoci config --image "$out/oci:dbward" \
  --config.entrypoint /usr/bin/dbward --config.cmd --help \
  --config.user dbward --config.workingdir /var/lib/dbward \
  --config.env STATE_DIRECTORY=/var/lib/dbward --config.volume /var/lib/dbward
rm -f "$out/rootfs.tar"
echo "$out/oci"
