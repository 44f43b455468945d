#!/usr/bin/env bash
# Builds the release binary the image ships, and prints its path. The one place that says how:
# CI (.ci/run) runs it once and hands the binary to deploy/check.sh and the image; the Dockerfile's
# source stage runs it too.
#
#   bash deploy/build.sh        # -> target/<host triple>/release/cognito-gateway
#
# - Static (glibc's crt-static), so that the image needs no libc: its runtime stage is `scratch`.
#   glibc's NSS modules are then out of reach; the resolver the AWS SDK uses (getaddrinfo) still
#   reads /etc/hosts and /etc/resolv.conf, which the container runtime provides (deploy/image.sh
#   resolves an AWS endpoint name by DNS inside the image).
# - An explicit --target, even for this machine: with crt-static, proc-macro crates cannot be built
#   for the host, and RUSTFLAGS then reach the target's crates only. The output lands apart from
#   target/release, so a plain `cargo build --release` is not invalidated by it or the reverse.
# - `cargo auditable`: the crate list (names, versions, sources) is embedded in the binary, where
#   scanners (Trivy, Grype, Syft, `cargo audit bin`) read it, so the image needs no separate SBOM.
#   It is a wrapper around `cargo build`, not a second build; installing it costs about 45 s of CPU
#   once per machine, less than generating and keeping an SBOM file right by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

AUDITABLE_VERSION=0.7.7
if ! cargo install --list | grep -qx "cargo-auditable v$AUDITABLE_VERSION:"; then
  cargo install --quiet --locked cargo-auditable --version "$AUDITABLE_VERSION" >&2
fi
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo auditable build --release --locked --target "$target" --bin cognito-gateway >&2
echo "target/$target/release/cognito-gateway"
