#!/bin/sh
# Cost of one container start and of what stays resident per running container, for crun and runc driven by
# the same runtime-spec bundle (a busybox-static rootfs, new PID/mount/IPC/UTS/net namespaces), next to the
# kernel work of the agent's own launcher (`unshare --pid --fork --mount --mount-proc`, no new rootfs).
# Run as root: sh tests/bench/oci_runtime.sh [N]. Prints one line per figure.
set -eu
N=${1:-50}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for c in sh true sleep; do ln -s busybox "$work/rootfs/bin/$c"; done
cd "$work"
crun spec
# No terminal, no cgroup resources: the agent keeps its own cgroups (it joins the leaf before the runtime).
python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["linux"].pop("resources", None)
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open("config.json", "w"))
c["process"]["args"] = ["/bin/sleep", "600"]
json.dump(c, open("sleep.json", "w"))
PY
ms_per_run() { # label, command...
  label=$1; shift
  start=$(date +%s%N)
  i=0
  while [ $i -lt "$N" ]; do "$@" >/dev/null; i=$((i + 1)); done
  end=$(date +%s%N)
  echo "$label start+exit of /bin/true: $(( (end - start) / N / 1000 )) us/container (N=$N)"
}
# crun refuses a hybrid cgroup layout (v1 controllers + a cgroup2 at /sys/fs/cgroup/unified) even with no
# cgroup work to do; guests are pure cgroup2. On a hybrid host, run it where that mount is hidden.
crun_run() { crun --cgroup-manager=disabled run --bundle "$work" "$@"; }
if [ -d /sys/fs/cgroup/unified ] && mountpoint -q /sys/fs/cgroup/unified; then
  crun_run() { unshare -m sh -c 'mount --make-rprivate / && umount /sys/fs/cgroup/unified && exec "$@"' sh \
    crun --cgroup-manager=disabled run --bundle "$work" "$@"; }
  echo "note: hybrid cgroups, crun runs in a mount namespace without /sys/fs/cgroup/unified"
fi
ms_per_run "unshare (launcher's kernel work)" unshare --pid --fork --mount --mount-proc /bin/true
ms_per_run "crun run" crun_run tb-bench-crun
ms_per_run "runc run" runc run --bundle "$work" tb-bench-runc
# Resident cost while a container runs: the runtime process that stays (foreground run), by PSS.
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cp sleep.json config.json
crun_run tb-bench-crun-sleep & sleep 1
cpid=$(pgrep -n -f 'crun --cgroup-manager=disabled run --bundle')
echo "crun run (foreground) resident: RSS $(rss "$cpid") KiB, PSS $(pss "$cpid") KiB"
runc run --bundle "$work" tb-bench-runc-sleep & sleep 1
rpid=$(pgrep -n -f "runc run --bundle $work")
echo "runc run (foreground) resident: RSS $(rss "$rpid") KiB, PSS $(pss "$rpid") KiB"
kill -KILL "$cpid" "$rpid" 2>/dev/null || true
wait 2>/dev/null || true; sleep 0.2
# What a killed foreground runtime leaves behind (does its container die with it?).
left=$(pgrep -f '^/bin/sleep 600$' || true)
echo "containers left running after their foreground runtime was SIGKILLed: ${left:-none}"
if [ -n "$left" ]; then kill -KILL $left; fi
crun delete -f tb-bench-crun-sleep 2>/dev/null || true
runc delete -f tb-bench-runc-sleep 2>/dev/null || true
