# The `cube` binary in a small image: `docker build -t cube:latest .`
# One image serves every role: `cube manager`, `cube worker`, and the client commands.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cube && cp target/release/cube /cube

FROM debian:bookworm-slim
COPY --from=build /cube /usr/local/bin/cube
# The manager and the client commands need no privileges. A worker talks to the Docker
# socket, which needs root or the socket's group: compose runs workers as root.
RUN useradd --system --uid 10001 cube
USER cube
ENTRYPOINT ["cube"]
CMD ["--help"]
