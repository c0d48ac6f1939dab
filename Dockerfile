# The nftpol image that deploy/nftpol.yaml runs: the `nftpol` binary and `nft`.
#   docker build -t REGISTRY/nftpol:TAG .
# .dockerignore sends only Cargo.toml, Cargo.lock, src/ and benches/.

FROM rust:1-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# 1. The dependencies alone, against stub sources: this layer is rebuilt only
#    when Cargo.toml or Cargo.lock change, not on every source change.
#    Cargo loads the manifest only if every target it declares has its file,
#    so each [[bench]] gets a stub too (at its default path, benches/NAME.rs).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } \
         b && /^name *=/ { split($0, q, "\""); print q[2] }' Cargo.toml \
    | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
 && cargo build --release --locked --bin nftpol \
 && rm -rf src benches

# 2. nftpol itself (benches/ only so that the manifest loads; they are not
#    built). COPY keeps the files' modification times, which can be older
#    than the stubs': touch the crate roots so cargo rebuilds them.
COPY src ./src
COPY benches ./benches
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked --bin nftpol \
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
