#!/usr/bin/env bash
# Installs the Debian packages testbed needs (tests/packages.txt), with a QEMU whose packages agree with each
# other. install.sh and .ci/run both call this script; it is the only copy of the package logic.
#
# Why: a machine may already carry a QEMU package (qemu-utils, qemu-system-*) from a newer suite than the one
# apt's sources list, bookworm-backports say. Its qemu-utils then Breaks the qemu-system-common that the
# default suite offers, and a plain `apt-get install qemu-system-x86` fails. So: when an installed QEMU package
# has a version that no configured suite offers, enable the suite of the machine's own Debian mirror that does
# offer it (deb822 file under /etc/apt/sources.list.d/) and install every QEMU package from that suite.
# The decision comes from dpkg-query and apt-cache, never from version numbers written here.
#
# Usage: install-packages.sh [--print-plan]   (root, or sudo on PATH)
#   --print-plan   resolve (enabling the QEMU suite when needed) and print the apt-get commands; install nothing
# Environment: TESTBED_APT_ROOT_CMD runs the root steps (default: nothing as root, sudo otherwise).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
if [ -n "${TESTBED_APT_ROOT_CMD:-}" ]; then read -r -a as_root <<<"$TESTBED_APT_ROOT_CMD"; fi
print_plan=false
[ "${1:-}" = "--print-plan" ] && print_plan=true

say() { echo "install-packages: $*" >&2; }

mapfile -t packages < <(grep -v -e '^#' -e '^[[:space:]]*$' "$here/packages.txt")

# The installed QEMU packages, "name version" per line (status "ii" only).
installed_qemu() {
  dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\n' 'qemu-*' 2>/dev/null \
    | awk '$1 == "ii" { print $2, $3 }'
}

# "SUITE PRIORITY" of the archive that offers PACKAGE at VERSION (bookworm-backports 100, say); nothing when no
# configured archive does. Read from apt-cache policy's version table: version lines are indented 5 (or
# " *** "), archive lines 8.
archive_of() {
  apt-cache policy "$1" 2>/dev/null | awk -v v="$2" '
    /^        / { if (cur == v && $2 ~ /:\/\//) { split($3, s, "/"); print s[1], $1; exit } next }
    /^     [^ ]/ { cur = $1; next }
    /^ \*\*\* / { cur = $2 }'
}

# The Debian mirror this machine already uses for its release (apt's own parse of the sources, both formats).
debian_mirror() {
  local codename="$1"
  apt-get indextargets --format '$(SITE)|$(RELEASE)|$(ORIGIN)' 'Created-By: Packages' 2>/dev/null \
    | awk -F'|' -v c="$codename" '$2 == c && $3 == "Debian" { print $1; exit }'
}

# Writes a deb822 source for SUITE from MIRROR and refreshes the index.
enable_suite() {
  local suite="$1" mirror="$2" file="/etc/apt/sources.list.d/testbed-$1.sources"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  say "enabling $suite from $mirror ($file)"
  {
    echo "# Written by testbed's install-packages.sh: the machine's QEMU comes from $suite."
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: $suite"
    echo "Components: main"
    if [ -e "$keyring" ]; then echo "Signed-By: $keyring"; fi
  } | "${as_root[@]}" tee "$file" >/dev/null
  "${as_root[@]}" apt-get update
}

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update

# The suite the installed QEMU came from, when apt would not pick it by itself (its archive has a priority below
# the default 500, as backports has): the rest of QEMU must then come from it too.
qemu_suite_of_installed() {
  local name version suite priority
  while read -r name version; do
    read -r suite priority < <(archive_of "$name" "$version"; echo)
    if [ -z "$suite" ]; then echo "? $name $version"; return; fi
    if [ "$priority" -lt 500 ]; then echo "$suite"; return; fi
  done < <(installed_qemu)
}

qemu_suite="$(qemu_suite_of_installed)"
if [[ $qemu_suite == "? "* ]]; then
  # An installed QEMU that no configured archive offers: look for it in the backports suite of the machine's
  # own Debian mirror.
  read -r _ name version <<<"$qemu_suite"
  # shellcheck disable=SC1091
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  mirror="$(debian_mirror "$codename")"
  if [ -z "$codename" ] || [ -z "$mirror" ]; then
    say "the installed $name $version comes from no configured suite, and no Debian mirror for '$codename' is configured"
    exit 3
  fi
  enable_suite "$codename-backports" "$mirror"
  qemu_suite="$(qemu_suite_of_installed)"
  if [[ $qemu_suite == "? "* ]]; then
    say "the installed $name $version is offered by no suite of $mirror (tried $codename-backports);"
    say "install a consistent QEMU by hand (apt-get install --allow-downgrades $name/$codename) and run this again"
    exit 3
  fi
fi
[ -n "$qemu_suite" ] && say "the installed QEMU is from $qemu_suite: installing every QEMU package from it"

# Two installs: the QEMU packages (the list's and those already installed) with their suite as apt's target
# release, so that their dependencies (seabios, ...) come from it too; then the rest from the default suites,
# so that nothing else moves to the QEMU suite.
# libvirt must be as new as QEMU: its packages come from the QEMU suite too, named PACKAGE/SUITE so that only
# they do (-t would move their dependencies, systemd among them, to that suite as well).
qemu=() rest=()
for p in "${packages[@]}"; do
  if [ -n "$qemu_suite" ] && [[ $p == qemu-* ]]; then qemu+=("$p")
  elif [ -n "$qemu_suite" ] && [[ $p == libvirt* ]]; then rest+=("$p/$qemu_suite")
  else rest+=("$p"); fi
done
if [ -n "$qemu_suite" ]; then
  while read -r name _; do
    [[ " ${qemu[*]} " == *" $name "* ]] || qemu+=("$name")
  done < <(installed_qemu)
fi

# Package scripts must not start services: openssh-server would start a system sshd and etcd-server an etcd
# (testbed runs its own, in guests and tests). policy-rc.d says no for the length of this install only.
policy=/usr/sbin/policy-rc.d
if ! $print_plan && [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod +x "$policy"
  trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi

install=(apt-get install -y --no-install-recommends)
if $print_plan; then
  [ -n "$qemu_suite" ] && echo "${install[*]} -t $qemu_suite ${qemu[*]}"
  echo "${install[*]} ${rest[*]}"
  exit 0
fi
if [ -n "$qemu_suite" ]; then "${as_root[@]}" "${install[@]}" -t "$qemu_suite" "${qemu[@]}"; fi
"${as_root[@]}" "${install[@]}" "${rest[@]}"

# Safety: a libvirt `default` network set to autostart (an older install of libvirt-daemon-config-network) would
# put a NAT bridge, dnsmasq and firewall rules on the host the first time any libvirtd starts. Testbed never uses
# it; drop its autostart link.
autostart=/etc/libvirt/qemu/networks/autostart/default.xml
if [ -e "$autostart" ] || [ -L "$autostart" ]; then
  say "removing the autostart of libvirt's default NAT network ($autostart)"
  "${as_root[@]}" rm -f "$autostart"
fi
