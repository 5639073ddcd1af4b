# psw-cron-app: build in a Rust image, run in a small Debian one as a non-root user.
#   docker build -t psw-cron-app .
#   docker run --rm psw-cron-app --help
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# aws-lc-rs (rustls' crypto) builds C with cc; no OpenSSL is linked.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p psw-cron-app \
    && cp target/release/psw-cron-app /usr/local/bin/psw-cron-app

FROM debian:bookworm-slim
# ca-certificates: the HTTPS roots of the quote providers, Telegram and Sentry.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /app --uid 10001 psw
COPY --from=build /usr/local/bin/psw-cron-app /usr/local/bin/psw-cron-app
USER psw
WORKDIR /app
ENV PSW_DATA_DIR=/app/data RUST_LOG=info
VOLUME ["/app/data"]
ENTRYPOINT ["psw-cron-app"]
