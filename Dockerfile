# syntax=docker/dockerfile:1
#
# Images of the two couponrush services, built from one workspace build:
#
#   docker build --target coupon-api      -t couponrush/coupon-api .
#   docker build --target coupon-consumer -t couponrush/coupon-consumer .
#
# docker-compose.yml builds both targets. The last stage (coupon-api) is what a plain
# `docker build .` produces. Cache mounts need BuildKit, the default builder since Docker 23.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# Build stage: compiles both binaries in one cargo invocation, so the shared dependencies
# (tokio, sqlx, rdkafka and the librdkafka it bundles) are built once.
# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# rust:*-bookworm already carries gcc, make and the common -dev packages (buildpack-deps).
# rdkafka-sys compiles its bundled librdkafka with librdkafka's own configure script and make;
# zlib (rdkafka's default "libz" feature) comes through libz-sys, which finds zlib1g-dev with
# pkg-config. cmake is only used if rdkafka's "cmake-build" feature is ever switched on; it is
# small, so it is installed to keep that switch from breaking this image. libssl-dev and
# libsasl2-dev are left out: the workspace enables neither rdkafka's "ssl" nor its "gssapi"
# feature, and sqlx/reqwest are built without TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The registry, git checkouts and target/ live in BuildKit cache mounts, so a rebuild after a
# source change recompiles only the workspace crates. target/ is a cache mount and so is not
# part of the image layer: the binaries are copied out to /out inside the same RUN.
# --locked: the image is built from exactly the committed Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p coupon-api -p coupon-consumer \
 && mkdir -p /out \
 && cp target/release/coupon-api target/release/coupon-consumer /out/

# ---------------------------------------------------------------------------------------------
# Runtime base shared by both service images.
# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# Same Debian release as the build stage, so the glibc the binaries were linked against is
# present. ca-certificates for any TLS endpoint a deployment points the services at (it also
# pulls in libssl3). librdkafka is linked statically; zlib1g is part of every Debian base.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user with a fixed numeric id (10001), so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 coupon \
 && useradd --system --uid 10001 --gid coupon --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin coupon

USER 10001:10001
WORKDIR /
ENV RUST_LOG=info

# ---------------------------------------------------------------------------------------------
# Final targets. Every setting (DATABASE_URL, REDIS_URL, KAFKA_BROKERS, API_LISTEN,
# METRICS_LISTEN, ...) comes from the environment; see docker-compose.yml.
# The binary runs as PID 1 here, which the kernel shields from signals it has no handler for;
# docker-compose.yml therefore adds `init: true` (a tiny init as PID 1 that forwards SIGTERM).
# ---------------------------------------------------------------------------------------------
FROM runtime AS coupon-consumer
COPY --from=builder /out/coupon-consumer /usr/local/bin/coupon-consumer
# Prometheus metrics only; the consumer serves no other HTTP.
EXPOSE 9465
ENTRYPOINT ["/usr/local/bin/coupon-consumer"]

FROM runtime AS coupon-api
COPY --from=builder /out/coupon-api /usr/local/bin/coupon-api
# 8080: public API (API_LISTEN), 9464: Prometheus metrics (METRICS_LISTEN).
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/coupon-api"]
