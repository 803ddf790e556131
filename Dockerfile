# One image recipe for the three services:
#   docker build --build-arg SERVICE=sales    -t orders/sales .
#   docker build --build-arg SERVICE=product  -t orders/product .
#   docker build --build-arg SERVICE=delivery -t orders/delivery .
# (docker-compose.yml builds all three.) Stages:
#   chef     Rust toolchain + cargo-chef + a C toolchain (aws-lc-sys, ring and mimalloc compile C)
#   planner  reduces the workspace to recipe.json (the dependency graph only)
#   builder  builds the dependencies from the recipe (a layer cached until Cargo.lock or a
#            manifest changes), then the service itself
#   runtime  debian slim, curl for health checks, CA certificates, a non-root user
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config perl \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked
WORKDIR /app
# The services' SQL is checked at compile time against the committed .sqlx/ offline data
# (COPY . . brings it, and .cargo/config.toml), so no database is needed to build;
# SQLX_OFFLINE=true makes sure a build never tries to reach one. Migrations are embedded
# with sqlx::migrate!, which only reads migrations/ from the source tree.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG SERVICE
RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=sales|product|delivery" >&2; exit 1; }
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --package "$SERVICE"
COPY . .
RUN cargo build --release --locked --package "$SERVICE" --bin "$SERVICE" \
 && cp "target/release/$SERVICE" /app/service

FROM debian:bookworm-slim AS runtime
ARG SERVICE
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /app/service /usr/local/bin/service
# Listen on every interface inside the container (the services default to 127.0.0.1);
# compose and the Kubernetes manifests set {SALES,PRODUCT,DELIVERY}_LISTEN_ADDR explicitly.
ENV SERVICE=${SERVICE} LOG_FORMAT=json RUST_LOG=info,sqlx=warn
USER 10001:10001
EXPOSE 8080 8081 8082
# No HEALTHCHECK here: the port differs per service; docker-compose.yml checks
# /health/ready with curl, Kubernetes probes /health/live and /health/ready.
ENTRYPOINT ["/usr/local/bin/service"]
