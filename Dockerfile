# dbward as a container image: the stripped binary on Debian bookworm with the PostgreSQL 15
# client tools (pg_dump, pg_restore; a server newer than 15 needs a newer client: build from a
# base that has it) and the system CA certificates (S3, R2 and PostgreSQL TLS).
#   docker build -t dbward .
#   docker run --rm -v app-data:/data -v dbward-state:/var/lib/dbward dbward \
#     --database sqlite:/data/app.db --store file:///var/lib/dbward/snapshots snapshots
# In docker compose, use it as the one-shot `migrate` service before the app, or copy
# /usr/bin/dbward into the app's image (`COPY --from=dbward /usr/bin/dbward /usr/bin/`) and
# make `dbward run -- APP` its entrypoint (README: Recipes). /usr/bin/dbward is where the Debian
# package puts it too. It runs as the user `dbward` (uid 10001), which owns the state dir.
# The Rust toolchain is the oldest every locked dependency builds with (Cargo.toml's
# rust-version; tests/it/toolchain.rs checks both against `cargo metadata`). Without a Docker
# engine, scripts/image.sh builds the same image from Debian's packages (the suite runs it).
FROM rust:1.94.1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/dbward /dbward

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-client zstd \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /dbward /usr/bin/dbward
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/dbward --shell /usr/sbin/nologin dbward \
 && install -d -o dbward -g dbward -m 0750 /var/lib/dbward
# The state dir (deploy records, failed batches, replaced copies): keep it on a volume. Given as
# STATE_DIRECTORY, which ranks below a config file's state_dir (DBWARD_STATE_DIR would win).
ENV STATE_DIRECTORY=/var/lib/dbward
VOLUME /var/lib/dbward
# Relative paths (the default local store, ./.dbward/snapshots) land in the state volume.
WORKDIR /var/lib/dbward
# A data volume dbward writes to (a SQLite database and its lock file) must be writable by
# uid 10001: give the service `user: "10001"` and the volume that owner, or run as root with
# `user: root`. A state volume an earlier, root-run image wrote needs `chown -R 10001:10001`.
USER dbward
ENTRYPOINT ["/usr/bin/dbward"]
CMD ["--help"]
