#!/usr/bin/env bash
# Installs testbed on a Debian/Ubuntu host: the system packages (tests/packages.txt), then `testbed` and the
# static `testbed-agent` into /usr/local/bin. Builds with your Rust toolchain (>= 1.85, https://rustup.rs) and
# uses sudo for the steps that need root (nothing when run as root).
set -euo pipefail
cd "$(dirname "$0")"

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
# rustup puts cargo in ~/.cargo/bin, which a fresh shell may not have on its PATH yet.
PATH="$PATH:$HOME/.cargo/bin"
if ! command -v cargo >/dev/null; then
  echo "install.sh: cargo not found: install Rust >= 1.85 with rustup (https://rustup.rs), then run this again" >&2
  exit 3
fi

# The packages of tests/packages.txt, with a QEMU that agrees with one the machine already has.
bash tests/install-packages.sh

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p testbed-agent --target x86_64-unknown-linux-gnu
cargo build --release --locked -p testbed
$sudo install -m 0755 target/release/testbed /usr/local/bin/testbed
$sudo install -m 0755 target/x86_64-unknown-linux-gnu/release/testbed-agent /usr/local/bin/testbed-agent
echo "installed: $(/usr/local/bin/testbed --version)"
