//! The reference rounds of `testbed-agent bench`: what the CNI `bridge` + `host-local` plugins cost for the
//! same pods, on equal terms with the agent (the headline) and as shipped (a variant).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::{pod_spec, remove_root, round, run_cmd, BenchArgs, Round};

/// How the reference makes each pod's netns and treats IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ReferenceMode {
    /// The same work as the agent: netns made in-process, IPv6 off on both veth ends.
    EqualTerms,
    /// As a CNI test harness runs it: `ip netns add`, the kernel's IPv6 defaults.
    AsShipped,
}

#[derive(Debug, serde::Serialize)]
pub(super) struct ReferenceRound {
    pub(super) mode: ReferenceMode,
    pub(super) netns: Round,
    pub(super) cni_add: Round,
    pub(super) cgroups: Round,
}

/// A named netns made the way containerd makes one: a thread enters a new network namespace and bind-mounts
/// it on /run/netns/NAME (no process started). With `ipv6_off`, IPv6 is disabled in it before any interface
/// arrives, as the agent's pods have it (no link-local address, no DAD).
fn netns_in_process(name: &str, ipv6_off: bool) -> Result<()> {
    let path = format!("/run/netns/{name}");
    std::fs::File::create(&path).with_context(|| format!("create {path}"))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            if ipv6_off {
                // /proc/sys/net resolves to the opening thread's netns: this new one.
                for conf in ["all", "default"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")
                        .with_context(|| format!("disable IPv6 ({conf}) in {name}"))?;
                }
            }
            mount(Some("/proc/thread-self/ns/net"), path.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("bind-mount the netns on {path}"))
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("netns thread panicked")))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// Netns + CNI bridge ADD + pod cgroups per pod (each timed on its own), then removal.
pub(super) fn reference(args: &BenchArgs, tmp: &Path, n: usize, mode: ReferenceMode) -> Result<ReferenceRound> {
    let plugin = args.cni_path.join("bridge");
    if !plugin.exists() {
        bail!("{} not found (apt-get install containernetworking-plugins)", plugin.display());
    }
    let netconf = serde_json::json!({
        "cniVersion": "0.4.0", "name": "tbbench", "type": "bridge", "bridge": "cnibench0",
        "isGateway": true, "ipMasq": false, "hairpinMode": true,
        "ipam": {"type": "host-local", "subnet": "10.88.0.0/20", "dataDir": tmp.join("cni-ipam"),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })
    .to_string();
    let names: Vec<String> = (0..n).map(|i| format!("tbref-{i}")).collect();
    let cgroup_root = format!("tbbench-ref-{}", std::process::id());
    let cgroups = crate::cgroups::detect(&cgroup_root)?;
    cgroups.init()?;
    let infra_limits = crate::cgroups::CgroupLimits { cpu_shares: 2, ..Default::default() };
    // The host ends of the bridge plugin's veths are born in this (the benchmark's) namespace: under equal
    // terms they get no IPv6 either, as the agent's host veths have none.
    let default_v6 = "/proc/sys/net/ipv6/conf/default/disable_ipv6";
    let v6_before = std::fs::read_to_string(default_v6).ok();
    if mode == ReferenceMode::EqualTerms && v6_before.is_some() {
        std::fs::write(default_v6, "1").context("disable IPv6 for the reference's host veths")?;
    }
    let result = (|| -> Result<(Round, Round, Round)> {
        let mut each_cg = Vec::with_capacity(n);
        let t0 = Instant::now();
        for (i, name) in names.iter().enumerate() {
            let t = Instant::now();
            cgroups.create(&format!("pod-{name}"), &crate::qos::pod_limits(&pod_spec(i)), true)?;
            cgroups.create(&format!("pod-{name}/_infra"), &infra_limits, false)?;
            each_cg.push(t.elapsed());
        }
        let cgroup_round = round(n, t0.elapsed(), each_cg);
        let mut each_ns = Vec::with_capacity(n);
        let t0 = Instant::now();
        for name in &names {
            let t = Instant::now();
            match mode {
                ReferenceMode::EqualTerms => netns_in_process(name, true)?,
                ReferenceMode::AsShipped => run_cmd(Command::new("ip").args(["netns", "add", name]))?,
            }
            each_ns.push(t.elapsed());
        }
        let netns = round(n, t0.elapsed(), each_ns);
        let mut each = Vec::with_capacity(n);
        let t0 = Instant::now();
        for name in &names {
            let t = Instant::now();
            let mut child = Command::new(&plugin)
                .env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", name)
                .env("CNI_NETNS", format!("/run/netns/{name}"))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", &args.cni_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("run {}", plugin.display()))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(netconf.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("CNI bridge ADD {name}: {}", String::from_utf8_lossy(&out.stdout));
            }
            each.push(t.elapsed());
        }
        Ok((netns, round(n, t0.elapsed(), each), cgroup_round))
    })();
    if let Some(before) = v6_before {
        let _ = std::fs::write(default_v6, before.trim());
    }
    for name in &names {
        let _ = cgroups.remove(&format!("pod-{name}/_infra"));
        let _ = cgroups.remove(&format!("pod-{name}"));
    }
    remove_root(&cgroup_root);
    for name in &names {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
    }
    let _ = Command::new("ip").args(["link", "del", "cnibench0"]).stderr(Stdio::null()).status();
    let _ = std::fs::remove_dir_all(tmp.join("cni-ipam"));
    result.map(|(netns, cni_add, cgroups)| ReferenceRound { mode, netns, cni_add, cgroups })
}
