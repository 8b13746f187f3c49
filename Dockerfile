# syntax=docker/dockerfile:1
# Sesame's container image: the release binary on distroless, as non-root.
#
#   docker build -t sesame:0.1.0 .
#
# The binary alone is also what `cargo build --release` makes; nothing else
# goes into the image (configuration and certificates are mounted).

# The toolchain the project is built and tested with.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# Cache mounts keep the registry and build directory across builds; the
# binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sesame \
 && install -D -m 0755 target/release/sesame /out/sesame

# glibc, CA certificates and a nonroot user (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sesame /sesame
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/sesame", "serve"]
