# syntax=docker/dockerfile:1
# The `cube` binary in a small image: `docker build -t cube:latest .` (BuildKit, the default
# builder since Docker 23, for the cache mounts). One image serves every role: `cube
# manager`, `cube worker`, and the client commands; `docker compose up` builds it when it is
# missing. Without a registry, see `scripts/compose-images` instead.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directory persist between builds, so a rebuild compiles only what
# changed; the binary is copied out of the cache mount to be seen by the next stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cube && cp target/release/cube /cube

# The same Debian release as the builder, so the binary finds the glibc it was linked with.
FROM debian:bookworm-slim
# CA certificates for `tls://` NATS servers whose certificates a public CA signed. /etc/cube
# belongs to `cube`, and so does a new volume mounted there (docker-compose.yml's NATS
# passwords, which `cube auth-passwords` writes as that user).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cube \
    && install -d -o cube -g cube -m 0755 /etc/cube
COPY --from=build /cube /usr/local/bin/cube
# The manager and the client commands need no privileges. A worker talks to the Docker
# socket, which needs root or the socket's group: compose runs workers as root.
USER cube
ENTRYPOINT ["cube"]
CMD ["--help"]
