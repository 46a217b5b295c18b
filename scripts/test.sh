#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what is missing first (Debian, as root):
# PostgreSQL server binaries, sqlite3, zstd, openssl, pgbouncer, systemd-analyze (the recipe
# units are verified), curl (the cron recipe pings with it), PyYAML (compose files are parsed),
# age (encrypted snapshots are opened with the real CLI), dpkg-deb and cargo-deb (the Debian
# package is built and installed),
# the S3 test server s3s-fs, boto3 and croniter.
# mmdebstrap, umoci and runc (the container image is built from Debian's packages and run),
# chromium (the status page is rendered headless).
# Nothing in the suite skips: a dependency this script cannot install fails the run. (The one
# step outside the suite that can be skipped, `docker build` of the Dockerfile where no Docker
# engine runs, says so aloud; the image itself is always built and run.)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s (at %ss)\n' "$*" "$SECONDS" >&2; }

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v zstd >/dev/null || missing+=(zstd)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -x /usr/bin/curl ] || missing+=(curl)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
command -v unshare >/dev/null || missing+=(util-linux)
command -v age >/dev/null || missing+=(age)
command -v dpkg-deb >/dev/null || missing+=(dpkg-dev)
# The container image is built with mmdebstrap and umoci, and run with runc.
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v umoci >/dev/null || missing+=(umoci)
command -v runc >/dev/null || missing+=(runc)
# java: runs the reference that computes Flyway's checksums as Flyway reads files.
command -v java >/dev/null || missing+=(default-jre-headless)
command -v npm >/dev/null || missing+=(npm)
# chromium: renders `dbward report --html` headless, as a phone's browser would.
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  [ "$(id -u)" = 0 ] || { echo "need root to install ${missing[*]} (or install them yourself)" >&2; exit 1; }
  apt-get update -qq
  # policy-rc.d keeps the package from starting a system cluster we do not use.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
# Test clusters run as `postgres` when we are root (initdb refuses root).
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi

# boto3: the plain S3 client tests use to fetch snapshots without dbward.
python3 -c 'import boto3' 2>/dev/null || { log "installing boto3"; python3 -m pip install --quiet boto3; }
# croniter: the reference cron implementation the schedule test compares next run times with.
python3 -c 'import croniter' 2>/dev/null || { log "installing croniter"; python3 -m pip install --quiet croniter; }
# moto's S3 server: lists multipart uploads (s3s-fs does not), for prune's abort of stale ones.
python3 -c 'import moto.server' 2>/dev/null || { log "installing moto[server]"; python3 -m pip install --quiet 'moto[server]'; }
# jsonschema: validates manifests against docs/manifest.schema.json (a validator that is not ours).
python3 -c 'import jsonschema' 2>/dev/null || { log "installing jsonschema"; python3 -m pip install --quiet jsonschema; }

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v s3s-fs >/dev/null; then
  log "installing s3s-fs (the S3-compatible test server)"
  cargo install s3s-fs --version 0.14.1 --locked --features binary --quiet
fi
command -v cargo-nextest >/dev/null || { log "installing cargo-nextest"; cargo install cargo-nextest --locked --quiet; }
command -v cargo-deb >/dev/null || { log "installing cargo-deb"; cargo install cargo-deb --locked --quiet; }
# The migration tools whose histories dbward adopts, as real peers (tests/it/importers.rs).
if ! command -v sqlx >/dev/null; then
  log "installing sqlx-cli"
  cargo install sqlx-cli --version 0.9.0 --locked --no-default-features --features rustls,postgres,sqlite --quiet
fi
command -v dbmate >/dev/null || { log "installing dbmate"; npm install -g --silent dbmate@2.36.0; }
if ! command -v refinery >/dev/null; then
  log "installing refinery_cli"
  cargo install refinery_cli --version 0.10.0 --locked --no-default-features --features postgresql,sqlite-bundled --quiet
fi

# Every test server keeps its files under this run's own directory (tests/it/common: server_dir),
# so the cleanup ends exactly the servers a killed test process left (Drop did not run), and
# never those of another checkout running its suite on the same machine.
DBWARD_TEST_RUN_DIR=$(mktemp -d /tmp/dbward-test-run-XXXXXX)
chmod 755 "$DBWARD_TEST_RUN_DIR" # PostgreSQL runs as `postgres` when we are root
export DBWARD_TEST_RUN_DIR
cleanup() { pkill -f -- "$DBWARD_TEST_RUN_DIR/" 2>/dev/null || true; rm -rf "$DBWARD_TEST_RUN_DIR"; }
trap cleanup EXIT

log "cargo fmt --check"
cargo fmt --all -- --check
# One build does the compiling and clippy's checking: clippy-driver (the compiler with clippy's
# lints) compiles the workspace's own crates, every target the suite runs and every feature
# there is (`failpoints` is the only one), with every warning an error. That is
# `cargo clippy --workspace --all-targets --all-features -- -D warnings` (the workspace has no
# benches or examples) without a second compilation of the whole tree.
export RUSTC_WORKSPACE_WRAPPER=clippy-driver RUSTFLAGS="-D warnings"
log "build with clippy's lints (the suite, with the failure points of tests/it/crash.rs)"
cargo build --workspace --tests --all-features --locked --quiet
log "package"
# The Debian package tests/it/package.rs installs (and purges) on this machine.
DBWARD_TEST_DEB=$(scripts/package.sh --test | tail -1)
export DBWARD_TEST_DEB
# The container image, built from Debian's packages without a Docker engine (scripts/image.sh);
# tests/it/image.rs runs it with runc. The Dockerfile itself is built where an engine answers.
log "image"
DBWARD_TEST_IMAGE=$(scripts/image.sh target/debug/dbward target/image | tail -1)
export DBWARD_TEST_IMAGE
if docker info >/dev/null 2>&1; then
  log "docker build"
  docker build -q -t dbward:test . >/dev/null
  [ "$(docker run --rm dbward:test --version)" = "dbward $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]
else
  log "docker build SKIPPED: no Docker engine answers here (docker info failed); the same image was built by scripts/image.sh"
fi
log "tests"
# .config/nextest.toml: how many at once, and the slow group that starts first.
cargo nextest run --workspace --all-features --no-fail-fast "$@"
