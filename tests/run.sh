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
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  # Build as you; run the test binaries as root (network namespaces, taps and cgroups need it). sudo asks for
  # a password here, in the foreground, once: the background steps below must not.
  sudo -v
  as_root=(sudo -n --preserve-env=TESTBED_CACHE_DIR)
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo --preserve-env=TESTBED_AGENT,TESTBED_CACHE_DIR,CI,RUST_BACKTRACE"
fi

# Steps that need nothing the compiles make run in the background beside them (the machine has two cores and
# a compile keeps them about 80% busy); each writes a log that is shown, and its exit checked, when it is
# waited for. An early exit waits for them too rather than killing them: both mount /proc, /sys and /dev into
# a root they are building, and only they know how to unmount it before anything is removed.
background=()
cleanup=":"
trap 'for pid in "${background[@]}"; do wait "$pid" 2>/dev/null || true; done; eval "$cleanup"' EXIT
start_background() { # log command...
  local log="$1"
  shift
  "$@" >"$log" 2>&1 &
  background+=("$!")
}
wait_background() { # what pid log
  local rc=0
  wait "$2" || rc=$?
  cat "$3"
  rm -f "$3"
  [ "$rc" -eq 0 ] || echo "tests/run.sh: $1 failed (exit $rc)" >&2
  return "$rc"
}

# The set-up path of a fresh machine of the project's kind: install.sh's package step in a clean Debian root
# whose qemu-utils came from backports (about 130 s, mostly downloads and dpkg; needs the Debian mirror apt
# already uses). Independent of the build, so it starts first and is waited for at the end.
step "fresh-machine set-up (background)"
fresh_log="$(mktemp /tmp/testbed-fresh-machine.XXXXXX)"
start_background "$fresh_log" "${as_root[@]}" bash tests/setup_fresh_machine.sh
fresh_pid="${background[-1]}"

# On CI, compile without incremental data (nothing is rebuilt there, and writing it costs time) and build the
# guest image from Debian packages into a fresh cache, as a new machine would; people running the tests keep
# their incremental builds and their cached image.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
  if [ -z "${TESTBED_CACHE_DIR:-}" ]; then
    TESTBED_CACHE_DIR="$(mktemp -d /var/tmp/testbed-ci-cache.XXXXXX)"
    export TESTBED_CACHE_DIR
    cleanup='rm -rf "$TESTBED_CACHE_DIR"'
  fi
fi

# Lints first (workspace lints live in Cargo.toml): formatting, and clippy with warnings as errors, which also
# catches dead code. Skipped only where the toolchain has no rustfmt/clippy component.
step lints
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets --locked -- -D warnings; fi

step "test build"
cargo test --workspace --locked --no-run

# With a fresh cache, the guest image and the debian-tools container image (mmdebstrap, about 50 s each) are
# built beside the static agent's compile rather than inside the first VM test that needs them. The tests wait
# for both: the guest image's cache has no lock against two builds at once.
image_pid=""
if [ "${CI:-}" = "true" ]; then
  step "guest and debian-tools image builds (background)"
  image_log="$(mktemp /tmp/testbed-image-build.XXXXXX)"
  start_background "$image_log" "${as_root[@]}" sh -c \
    'target/debug/testbed image build & g=$!; target/debug/testbed image oci build debian-tools; o=$?; wait $g && exit $o'
  image_pid="${background[-1]}"
fi

# The agent runs inside the guests, which have no Rust runtime: a static glibc binary. It compiles (about
# 400 s) beside the unit tests, which mostly wait on their fakes' timers; in a target directory of its own,
# since cargo holds one build directory's lock for as long as it runs (a release build for another target
# shares no artifact with the test build anyway).
step "static agent (background)"
agent_log="$(mktemp /tmp/testbed-static-agent.XXXXXX)"
start_background "$agent_log" env RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$PWD/target/static" \
  cargo build --release --locked -p testbed-agent --target x86_64-unknown-linux-gnu
agent_pid="${background[-1]}"

# Unit tests of the libraries and the CLI (fakes only) run in parallel: the CLI's mostly wait on their fakes'
# timers (8 at once took 76 s, one at a time 188 s). The agent's unit tests (some on the real kernel) and every
# integration test run one at a time: VM tests share two cores, one test binary at a time, tests inside a
# binary one at a time. A failure is reported once the fresh-machine step has been waited for too.
step "unit tests"
tests_rc=0
cargo test --workspace --locked --no-fail-fast --lib --bin testbed -- --test-threads=8 || tests_rc=$?
cargo test --workspace --locked --no-fail-fast --doc || tests_rc=$?

# Integration test targets by what they need: the `*_e2e` ones boot VMs with the static agent and run once
# it is built; the others (the agent's real-kernel tests, the control plane's against a real etcd, the CLI's
# without VMs) wait on processes of their own most of the time (the host was 98 % idle while they ran alone)
# and run beside the agent's compile. A VM test must be named `*_e2e` (README.md).
vm_tests=()
other_tests=(--bin testbed-agent)
for file in agent/tests/*.rs agent/control-plane/tests/*.rs cli/tests/*.rs tests/*.rs; do
  name="$(basename "$file" .rs)"
  case "$name" in
    *_e2e) vm_tests+=(--test "$name") ;;
    *) other_tests+=(--test "$name") ;;
  esac
done
step "agent, control-plane and CLI integration tests without VMs"
cargo test --workspace --locked --no-fail-fast "${other_tests[@]}" -- --test-threads=1 || tests_rc=$?

step "static agent (waiting)"
wait_background "the static agent's compile" "$agent_pid" "$agent_log"
export TESTBED_AGENT="$PWD/target/static/x86_64-unknown-linux-gnu/release/testbed-agent"
if [ -n "$image_pid" ]; then
  step "guest and debian-tools image builds (waiting)"
  wait_background "the image builds" "$image_pid" "$image_log"
fi

step "VM tests"
rm -f target/tmp/conformance-time-*.txt
cargo test --workspace --locked --no-fail-fast "${vm_tests[@]}" -- --test-threads=1 || tests_rc=$?
# Where conformance_e2e's time went, per group and backend (it writes these even when it passes).
cat target/tmp/conformance-time-*.txt 2>/dev/null || true

step "fresh-machine set-up (waiting)"
fresh_rc=0
wait_background "the fresh-machine set-up" "$fresh_pid" "$fresh_log" || fresh_rc=$?
step done
[ "$tests_rc" -eq 0 ] || exit "$tests_rc"
exit "$fresh_rc"
