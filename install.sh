#!/usr/bin/env bash
# Installs testbed on a Debian/Ubuntu host: system packages, then `testbed` and the static `testbed-agent`
# into /usr/local/bin. Needs root and a Rust toolchain >= 1.85 (https://rustup.rs).
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo ./install.sh)" >&2
  exit 2
fi
if ! command -v cargo >/dev/null; then
  echo "install.sh: cargo not found: install Rust >= 1.85 with rustup, then run this again" >&2
  exit 3
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2046
apt-get install -y --no-install-recommends $(grep -v '^#' tests/packages.txt)

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p testbed-agent --target x86_64-unknown-linux-gnu
cargo build --release --locked -p testbed
install -m 0755 target/release/testbed /usr/local/bin/testbed
install -m 0755 target/x86_64-unknown-linux-gnu/release/testbed-agent /usr/local/bin/testbed-agent
echo "installed: $(/usr/local/bin/testbed --version)"
