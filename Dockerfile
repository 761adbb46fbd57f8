# syntax=docker/dockerfile:1
#
# The Lettuce worker image: one static-enough binary on a slim Debian runtime.
#
#   docker build -t ghcr.io/uselettuce/worker:0.1.0 .
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/uselettuce/worker:0.1.0 .
#
# VERSION is the release this checkout builds: the workspace version in Cargo.toml, which is
# also what `worker --version` prints. Tag the image with it. A VERSION build-arg that differs
# from Cargo.toml fails the build, so an image never carries a binary of another release.
#
# Stage 1 compiles; its dependency layer is cached separately from our sources, so a change to
# worker/src rebuilds only the worker crate. Stage 2 is what ships.

ARG RUST_VERSION=1.95
ARG VERSION=0.1.0

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependency layer: the manifests, the lockfile, build.rs and schema/ (build.rs embeds it),
# with empty stand-ins for our own sources. This layer only changes when dependencies do.
COPY Cargo.toml Cargo.lock ./
COPY worker/Cargo.toml worker/build.rs worker/
COPY xtests/Cargo.toml xtests/
COPY schema schema
RUN mkdir -p worker/src xtests/src \
    && echo 'fn main() {}' > worker/src/main.rs \
    && touch worker/src/lib.rs xtests/src/lib.rs \
    && cargo build --release --locked -p lettuce-worker \
    && rm -rf worker/src

# The release guard: VERSION must be the workspace version (after the dependency layer, so a
# new VERSION does not invalidate it).
ARG VERSION
RUN crate=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1) \
    && if [ "$VERSION" != "$crate" ]; then \
         echo "VERSION=$VERSION, but this checkout builds $crate (Cargo.toml): build with --build-arg VERSION=$crate, or check out release $VERSION" >&2; \
         exit 1; \
       fi

# Our sources, and the compose files `worker init` embeds. COPY keeps the files' original
# modification times, which can be older than the stand-ins built above; touching them makes
# cargo's fingerprint see the change. The release profile strips debug info (Cargo.toml) and
# keeps the symbol table, so a backtrace still names every function.
COPY worker worker
COPY compose/docker-compose.yml compose/otel-collector.yaml compose/
RUN find worker -type f -exec touch {} + \
    && cargo build --release --locked -p lettuce-worker \
    && install -D -m 0755 target/release/worker /out/worker \
    && built=$(/out/worker --version) \
    && if [ "$built" != "worker $VERSION" ]; then echo "the binary says \"$built\", not worker $VERSION" >&2; exit 1; fi

FROM debian:bookworm-slim AS runtime

# git: repository jobs clone and fetch; ca-certificates: TLS to S3, GitHub and telemetry.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/*

# A fixed non-root uid/gid so volume permissions are predictable across releases.
RUN groupadd --system --gid 10001 lettuce \
    && useradd --system --uid 10001 --gid lettuce --home-dir /var/lib/lettuce/data \
       --no-create-home --shell /usr/sbin/nologin lettuce \
    && mkdir -p /var/lib/lettuce/data /var/cache/lettuce \
    && chown lettuce:lettuce /var/lib/lettuce/data /var/cache/lettuce

COPY --from=builder /out/worker /usr/local/bin/worker
# The vendor public key is owned by root and read-only, so the worker cannot swap it.
COPY --chown=root:root --chmod=0644 worker/assets/public.pem /var/lib/lettuce/public.pem

ENV LETTUCE_LICENSE_PUBLIC_KEY=/var/lib/lettuce/public.pem \
    LETTUCE_LICENSE_CACHE_PATH=/var/cache/lettuce/license.json \
    CODEWAZE_DATA_DIR=/var/lib/lettuce/data \
    LETTUCE_HTTP_ADDR=0.0.0.0:9090

USER lettuce:lettuce
WORKDIR /var/lib/lettuce/data
EXPOSE 9090
STOPSIGNAL SIGTERM

# The start period covers LETTUCE_DB_CONNECT_TIMEOUT_MS (60 s) while Postgres comes up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["worker", "healthcheck"]

ARG VERSION
ARG REVISION=unknown
LABEL org.opencontainers.image.title="lettuce-worker" \
      org.opencontainers.image.description="The background worker of self-hosted Lettuce" \
      org.opencontainers.image.vendor="Lettuce" \
      org.opencontainers.image.source="https://github.com/uselettuce/lettuce" \
      org.opencontainers.image.url="https://uselettuce.dev" \
      org.opencontainers.image.licenses="LicenseRef-Lettuce" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

ENTRYPOINT ["worker"]
CMD ["run"]
