#!/usr/bin/env bash
# Set-up test: install.sh's package step (tests/install-packages.sh) on a fresh Debian root that looks like
# this project's machine image: a clean root of this machine's release from this machine's own Debian mirror,
# with qemu-utils preinstalled from <codename>-backports and backports then dropped from its sources (as the
# image ships it). Asserts that qemu-system-x86, qemu-img and every package of tests/packages.txt end up
# installed, at one QEMU version, with apt's dependencies consistent.
#
# Needs root and mmdebstrap; uses the network only to reach the Debian mirror apt already uses. About 4 min.
# Usage: tests/setup_fresh_machine.sh [INSTALL_SCRIPT]   (default tests/install-packages.sh; another script is
#        how the test is shown to fail when the suite selection is removed)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
install_script="$(realpath "${1:-$repo/tests/install-packages.sh}")"

fail() { echo "setup_fresh_machine: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (mmdebstrap root mode, chroot)"
command -v mmdebstrap >/dev/null || fail "mmdebstrap not installed (tests/packages.txt has it)"

# shellcheck disable=SC1091
codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
# This machine's Debian archives, as one-line sources, minus backports (the image ships without it).
mapfile -t mirrors < <(apt-get indextargets --format '$(ORIGIN)|$(SITE)|$(RELEASE)' 'Created-By: Packages' \
  | awk -F'|' -v bpo="$codename-backports" '$1 == "Debian" && $3 != bpo { print "deb " $2 " " $3 " main" }' | sort -u)
[ "${#mirrors[@]}" -gt 0 ] || fail "no Debian archive configured on this machine"
mirror="$(printf '%s\n' "${mirrors[@]}" | awk -v c="$codename" '$3 == c { print $2; exit }')"

work="$(mktemp -d /var/tmp/testbed-setup-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
bpo='"$1/etc/apt/sources.list.d/image-backports.list"'
started=$(date +%s)

# The image: qemu-utils from backports, installed the way the machine image has it, then backports removed.
mmdebstrap --variant=apt --quiet \
  --customize-hook="echo 'deb $mirror $codename-backports main' > $bpo" \
  --chrooted-customize-hook="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t $codename-backports qemu-utils" \
  --customize-hook="rm $bpo" \
  "$codename" "$root" "${mirrors[@]}"
mkdir -p "$root/opt/testbed/tests"
cp "$install_script" "$root/opt/testbed/tests/install-packages.sh"
cp "$repo/tests/packages.txt" "$root/opt/testbed/tests/packages.txt"
preinstalled="$(chroot "$root" dpkg-query -W -f '${Version}' qemu-utils)"
echo "setup_fresh_machine: image root ready: qemu-utils $preinstalled preinstalled, sources without backports"

# The package step, inside the root. Services must not start there (openssh-server).
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"
for fs in proc sys dev; do mount --rbind "/$fs" "$root/$fs" && mount --make-rslave "$root/$fs"; done
cp /etc/resolv.conf "$root/etc/resolv.conf"
trap 'for fs in dev sys proc; do umount -R "$root/$fs" 2>/dev/null || true; done; rm -rf "$work"' EXIT
step_rc=0
chroot "$root" bash /opt/testbed/tests/install-packages.sh >"$work/install.log" 2>&1 || step_rc=$?
if [ "$step_rc" -ne 0 ]; then
  tail -n 25 "$work/install.log" >&2
  fail "the package step exited $step_rc"
fi

# Every listed package installed.
missing=()
while read -r p; do
  chroot "$root" dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done < <(grep -v -e '^#' -e '^[[:space:]]*$' "$repo/tests/packages.txt")
[ "${#missing[@]}" -eq 0 ] || fail "not installed: ${missing[*]}"
# One QEMU: every installed qemu-* package at the preinstalled version, and both binaries saying so.
versions="$(chroot "$root" dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' 'qemu-*' | awk '$1 == "ii" { print $2, $3 }')"
if echo "$versions" | awk -v v="$preinstalled" '$2 != v { bad = 1 } END { exit !bad }'; then
  fail "QEMU packages at different versions:"$'\n'"$versions"
fi
img="$(chroot "$root" qemu-img --version | head -1)"
sys="$(chroot "$root" qemu-system-x86_64 --version | head -1)"
[ "${img#qemu-img version }" = "${sys#QEMU emulator version }" ] || fail "qemu-img says '$img', qemu-system '$sys'"
chroot "$root" apt-get check -qq || fail "apt-get check: broken dependencies"

echo "setup_fresh_machine: ok in $(($(date +%s) - started)) s: $(echo "$versions" | wc -l) QEMU packages at $preinstalled; $img"
