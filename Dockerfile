# syntax=docker/dockerfile:1
# The nftpol image that deploy/nftpol.yaml runs: the `nftpol` binary and `nft`.
#   docker build -t REGISTRY/nftpol:TAG .
# .dockerignore sends only the workspace manifests and crates/ (the test
# bench crate too: Cargo resolves the whole workspace, but only the product
# crate is built).

FROM rust:1-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The product crate alone: `-p nftpol --bin nftpol` builds no test, bench or
# lab code. The registry and target/ are BuildKit cache mounts, so a source
# change rebuilds nftpol, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked -p nftpol --bin nftpol \
 && install -D -m 0755 target/release/nftpol /out/nftpol


FROM debian:bookworm-slim
# nftables: the `nft` that nftpol runs for every transaction (`nft -j -f -`).
# ca-certificates: the system roots, for a kubeconfig whose cluster has no
# certificate-authority of its own (in-cluster, the service account's CA is used).
# Versions are not pinned: the Debian archive drops old versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/nftpol /usr/local/bin/nftpol

# No USER: nftpol runs as root, and cannot usefully run as another user.
# It changes the HOST's nftables, which takes CAP_NET_ADMIN in the initial
# user namespace (a user-namespaced pod, hostUsers: false, cannot share the
# host network namespace). Kubernetes gives the capabilities a container adds
# to uid 0 only: a non-root process starts with an empty effective set (no
# ambient capabilities), and nftpol execs `nft`, which would then need file
# capabilities plus allowPrivilegeEscalation, a weaker setup. So
# deploy/nftpol.yaml runs it as root, unprivileged, with every capability
# dropped except NET_ADMIN, no privilege escalation and a read-only root
# filesystem.

# /healthz, /readyz, /metrics, /status (--metrics-addr, default 0.0.0.0:9798)
EXPOSE 9798
ENTRYPOINT ["nftpol"]
CMD ["run"]
