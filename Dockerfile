# dbward as a container image: the stripped binary on Debian bookworm with the PostgreSQL 15
# client tools (pg_dump, pg_restore; a server newer than 15 needs a newer client: build from a
# base that has it) and the system CA certificates (S3, R2 and PostgreSQL TLS).
#   docker build -t dbward .
#   docker run --rm -v app-data:/data -v dbward-state:/var/lib/dbward dbward \
#     --database sqlite:/data/app.db --store file:///var/lib/dbward/snapshots snapshots
# In docker compose, use it as the one-shot `migrate` service before the app, or copy
# /usr/bin/dbward into the app's image (`COPY --from=dbward /usr/bin/dbward /usr/bin/`) and
# make `dbward run -- APP` its entrypoint (README: Recipes).
FROM rust:1.92-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/dbward /dbward

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-client zstd \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /dbward /usr/bin/dbward
# The state dir (deploy records, failed batches, replaced copies): keep it on a volume. Given as
# STATE_DIRECTORY, which ranks below a config file's state_dir (DBWARD_STATE_DIR would win).
ENV STATE_DIRECTORY=/var/lib/dbward
VOLUME /var/lib/dbward
ENTRYPOINT ["/usr/bin/dbward"]
CMD ["--help"]
