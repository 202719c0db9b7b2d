#!/usr/bin/env bash
# The test command (README.md, second set-up command): unit tests, real-kernel tests of the agent, and
# end-to-end tests that boot real QEMU VMs (image build, up, exec, conformance, down).
# The test binaries run as root (through sudo when you are not root); the packages in tests/packages.txt must be
# installed (install.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup puts cargo in ~/.cargo/bin, which a fresh shell may not have on its PATH yet.
PATH="$PATH:$HOME/.cargo/bin"
# Each step's start, in seconds since this script began: where CI's time goes (its budget is 45 minutes).
step() { echo "tests/run.sh: ${SECONDS}s: $*" >&2; }
if [ "$(id -u)" -ne 0 ]; then
  # Build as you; run the test binaries as root (network namespaces, taps and cgroups need it).
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo --preserve-env=TESTBED_AGENT,TESTBED_CACHE_DIR,CI,RUST_BACKTRACE"
fi

# Lints first (workspace lints live in Cargo.toml): formatting, and clippy with warnings as errors, which also
# catches dead code. Skipped only where the toolchain has no rustfmt/clippy component.
step lints
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets --locked -- -D warnings; fi

# The agent runs inside the guests, which have no Rust runtime: a static glibc binary.
step "static agent"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p testbed-agent --target x86_64-unknown-linux-gnu
export TESTBED_AGENT="$PWD/target/x86_64-unknown-linux-gnu/release/testbed-agent"

# On CI, build the guest image from Debian packages into a fresh cache, as a new machine would; people
# running the tests keep their cached image.
if [ "${CI:-}" = "true" ] && [ -z "${TESTBED_CACHE_DIR:-}" ]; then
  TESTBED_CACHE_DIR="$(mktemp -d /var/tmp/testbed-ci-cache.XXXXXX)"
  export TESTBED_CACHE_DIR
  trap 'rm -rf "$TESTBED_CACHE_DIR"' EXIT
fi

# VM tests share two cores: one test binary at a time, tests inside a binary one at a time.
step "test build"
cargo test --workspace --locked --no-run
step tests
cargo test --workspace --locked --no-fail-fast -- --test-threads=1

# The set-up path of a fresh machine of the project's kind: install.sh's package step in a clean Debian root
# whose qemu-utils came from backports (about 70 s; needs the Debian mirror apt already uses).
step "fresh-machine set-up"
if [ "$(id -u)" -ne 0 ]; then sudo bash tests/setup_fresh_machine.sh; else bash tests/setup_fresh_machine.sh; fi
step done
