# syntax=docker/dockerfile:1
# The Aspen image: aspen-operator, aspen-node and aspenctl on a distroless
# base (glibc and libgcc; no shell, no package manager), run as the non-root
# user 65532 that the operator's pods ask for. From the repository root:
#   docker build -t ghcr.io/aspen-dev/aspen:0.1.0 .
# The operator starts nodes from it as /usr/local/bin/aspen-node, with
# /usr/local/bin/aspenctl for their preStop hook. CI checks that the
# binaries copied here are the bin targets of the packages built.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# --locked: exactly the dependency versions of Cargo.lock, which CI tests.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p aspen-node -p aspen-operator \
 && install -D -m 755 -t /out \
      target/release/aspen-node target/release/aspenctl target/release/aspen-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/aspen-dev/aspen" \
      org.opencontainers.image.description="Aspen: replicated key-value store and its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aspen-operator"]
CMD ["run"]
