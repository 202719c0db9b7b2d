//! `testbed-agent bench`: what one pod costs on this kernel. Four measurements, all inside a private network
//! and mount namespace of the benchmark process (nothing reaches the host's network or its /run/netns):
//!
//! 1. testbed sandboxes: `Agent::create_sandbox` per pod (pod + infra cgroups, infra process with new
//!    net/UTS/IPC/PID namespaces, veth into cni0, address, default route), N = 100 and 1000.
//! 2. the reference: per pod a network namespace and one call of the CNI `bridge` plugin with `host-local` IPAM
//!    (Debian containernetworking-plugins) that also installs the pod's default route, as the agent does;
//!    bridge and IPAM store private; plus the same pod + infra cgroups the agent makes (same code). Two ways:
//!    - equal terms (the headline): the netns made in-process (a thread unshares and bind-mounts it, as
//!      containerd does: no fork), and IPv6 off on both veth ends, as the agent has it;
//!    - as shipped (a variant): `ip netns add` (a fork+exec per pod) and the kernel's IPv6 defaults.
//! 3. the floor: only the network kernel work every implementation must do per pod (a fresh netns held by an
//!    fd, no process; the agent's own netlink batches for the veth pair into cni0 and the pod side), to show
//!    how much of a pod's cost is left to any runtime code at all.
//! 4. full pods through the HTTP API of a `testbed-agent serve` child (one `sleep` container each), and that
//!    agent's VmRSS with 100 pods.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use testbed_api::{Backend, ContainerSpec, NodeSpec, PodSpec, RestartPolicy, UnderlaySpec};

use crate::pod::{Agent, Config};

mod footprint;
mod reference;

use footprint::{footprint, Footprint};
use reference::{reference, ReferenceMode, ReferenceRound};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Pod counts to measure (each round starts from an empty node).
    #[arg(long = "pods", default_values_t = [100usize, 1000])]
    pub pods: Vec<usize>,
    /// Run the reference CNI plugins for rounds up to this many pods (0 = skip the reference).
    #[arg(long, default_value_t = 100)]
    pub reference_max: usize,
    /// Directory of the reference CNI plugins.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_path: PathBuf,
    /// Pods created through the HTTP API for the RSS figure (0 = skip).
    #[arg(long, default_value_t = 100)]
    pub api_pods: usize,
    /// Diagnostic: turn IPv6 off for new interfaces of the benchmark's node namespace (testbed and reference
    /// alike), to see what the per-veth IPv6 routes cost.
    #[arg(long)]
    pub no_ipv6: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Moves the (still single-threaded) benchmark into new network and mount namespaces, with `lo` up and a
/// private tmpfs on /run/netns, so everything it creates disappears with it.
pub fn isolate() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNET|CLONE_NEWNS)")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("make mounts private")?;
    std::fs::create_dir_all("/run/netns").context("create /run/netns")?;
    mount(Some("tmpfs"), "/run/netns", Some("tmpfs"), MsFlags::empty(), Some("mode=755"))
        .context("private tmpfs on /run/netns")?;
    run_cmd(Command::new("ip").args(["link", "set", "lo", "up"]))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn node_spec() -> NodeSpec {
    #[allow(clippy::unwrap_used)] // constant, valid literals
    NodeSpec {
        node_name: "bench".into(),
        underlay: UnderlaySpec { interface: "lo".into(), address: [127, 0, 0, 1].into(), prefix_len: 8, mtu: 1500 },
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_subnet: "10.244.0.0/20".parse().unwrap(),
        backend: Backend::None,
        vtep_mac: "02:00:00:00:00:01".into(),
        peers: vec![],
        service_cidr: None,
    }
}

fn pod_spec(i: usize) -> PodSpec {
    PodSpec {
        name: format!("bench-{i}"),
        containers: vec![ContainerSpec {
            name: "c".into(),
            command: vec!["sleep".into(), "100000".into()],
            env: Default::default(),
            resources: Default::default(),
            pids_limit: None,
            args: vec![],
            image: None,
            volume_mounts: vec![],
            security_context: None,
            probes: Default::default(),
        }],
        restart_policy: RestartPolicy::Always,
        share_process_namespace: false,
        host_network: false,
        ..Default::default()
    }
}

#[derive(Debug, serde::Serialize)]
struct Round {
    pods: usize,
    total_ms: f64,
    per_pod_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn round(pods: usize, total: Duration, mut each: Vec<Duration>) -> Round {
    each.sort();
    let pick = |q: f64| each.get(((each.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| ms(*d));
    Round {
        pods,
        total_ms: ms(total),
        per_pod_ms: ms(total) / pods.max(1) as f64,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    kernel: String,
    cgroup_version: String,
    testbed_sandbox: Vec<Round>,
    testbed_teardown: Vec<Round>,
    reference: Vec<ReferenceRound>,
    kernel_floor: Vec<Round>,
    api_full_pod: Option<Round>,
    agent_rss_kib_idle: Option<u64>,
    agent_rss_kib_with_pods: Option<u64>,
    footprint_with_pods: Option<Footprint>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.no_ipv6 {
        // /proc/sys/net is the namespace of the writer: this is the benchmark's own namespace.
        std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").context("disable IPv6 by default")?;
    }
    let tmp = std::env::temp_dir().join(format!("testbed-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    // Both IPAM stores (the agent's and host-local's) on one private tmpfs, as the agent's default /run is:
    // the comparison is of the code, not of the disk. It goes away with the benchmark's mount namespace.
    if let Err(e) = mount(Some("tmpfs"), &tmp, Some("tmpfs"), MsFlags::empty(), Some("mode=700")) {
        let _ = std::fs::remove_dir(&tmp);
        return Err(e).with_context(|| format!("private tmpfs on {}", tmp.display()));
    }
    let result = bench_all(&args, &tmp).await;
    let _ = nix::mount::umount(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    let report = result?;
    println!("{}", render(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn bench_all(args: &BenchArgs, tmp: &Path) -> Result<Report> {
    let cgroup_name = format!("tbbench-{}", std::process::id());
    let cgroups = crate::cgroups::detect(&cgroup_name)?;
    let mut report = Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        cgroup_version: cgroups.version().into(),
        ..Default::default()
    };
    // The agent leaves its cgroup root in place on purpose; the benchmark removes it whatever happened.
    let rounds = sandbox_rounds(args, tmp, cgroups, &mut report).await;
    remove_root(&cgroup_name);
    rounds?;
    if args.api_pods > 0 {
        api_round(args.api_pods, tmp, &mut report)?;
    }
    Ok(report)
}

/// The testbed, floor and reference rounds for each pod count.
async fn sandbox_rounds(
    args: &BenchArgs,
    tmp: &Path,
    cgroups: Box<dyn crate::cgroups::Cgroups>,
    report: &mut Report,
) -> Result<()> {
    let cfg = Config {
        state_dir: tmp.join("agent"),
        lease_dir: tmp.join("agent").join("ipam"),
        exe: PathBuf::from("/proc/self/exe"),
        kill_grace: Duration::ZERO,
    };
    let agent = Agent::new(cfg, cgroups).await.context("agent runtime")?;
    agent.apply_node(node_spec()).await.context("apply the bench NodeSpec")?;

    let baseline = live_netns().unwrap_or(0);
    for &n in &args.pods {
        let specs: Vec<PodSpec> = (0..n).map(pod_spec).collect();
        let mut sandboxes = Vec::with_capacity(n);
        let mut each = Vec::with_capacity(n);
        let t0 = Instant::now();
        for spec in &specs {
            let t = Instant::now();
            let sb = agent.create_sandbox(spec).await.with_context(|| format!("sandbox of {}", spec.name));
            each.push(t.elapsed());
            match sb {
                Ok(sb) => sandboxes.push(sb),
                Err(e) => {
                    let _ = destroy(&agent, &specs, &sandboxes).await;
                    return Err(e);
                }
            }
        }
        let r = round(n, t0.elapsed(), each);
        eprintln!("testbed sandbox x{n}: {:.3} ms/pod", r.per_pod_ms);
        report.testbed_sandbox.push(r);
        let teardown = destroy(&agent, &specs, &sandboxes).await;
        eprintln!("testbed teardown x{n}: {:.3} ms/pod", teardown.per_pod_ms);
        report.testbed_teardown.push(teardown);
        settle(baseline).await;

        let floor = kernel_floor(n)?;
        eprintln!("kernel floor x{n}: {:.3} ms/pod", floor.per_pod_ms);
        report.kernel_floor.push(floor);
        settle(baseline).await;

        if n <= args.reference_max {
            for mode in [ReferenceMode::EqualTerms, ReferenceMode::AsShipped] {
                let r = reference(args, tmp, n, mode)?;
                eprintln!(
                    "reference x{n} ({mode:?}): netns {:.3} ms/pod, CNI bridge ADD {:.3} ms/pod, cgroups {:.3} ms/pod",
                    r.netns.per_pod_ms, r.cni_add.per_pod_ms, r.cgroups.per_pod_ms
                );
                report.reference.push(r);
                settle(baseline).await;
            }
        }
    }
    Ok(())
}

/// Network namespaces the kernel still holds (active `net_namespace` slab objects): destroyed namespaces are
/// cleaned up asynchronously, and a round must not pay for the previous round's cleanup.
fn live_netns() -> Option<u64> {
    let slab = std::fs::read_to_string("/proc/slabinfo").ok()?;
    slab.lines().find(|l| l.starts_with("net_namespace ")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Waits until the kernel has freed the namespaces of the last round, or has freed none for 10 s (it frees
/// them in batches, so a shorter pause is not the end; a few can linger for minutes without costing anything),
/// at most 2 minutes.
async fn settle(baseline: u64) {
    let t0 = Instant::now();
    let (mut last, mut since) = (None, Instant::now());
    while t0.elapsed() < Duration::from_secs(120) {
        let Some(n) = live_netns() else { break };
        if n <= baseline + 8 {
            break;
        }
        if last != Some(n) {
            (last, since) = (Some(n), Instant::now());
        } else if since.elapsed() >= Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("settled in {:.1} s", t0.elapsed().as_secs_f64());
}

/// Removes the benchmark's cgroup root (the agent leaves its root in place on purpose).
fn remove_root(name: &str) {
    for dir in ["/sys/fs/cgroup".to_string(), "/sys/fs/cgroup/cpu".into(), "/sys/fs/cgroup/pids".into()] {
        let _ = std::fs::remove_dir(Path::new(&dir).join(name));
    }
    if let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") {
        for line in own.lines() {
            let mut it = line.splitn(3, ':');
            if let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) {
                for c in ctrls.split(',').filter(|c| !c.is_empty()) {
                    let _ = std::fs::remove_dir(
                        Path::new("/sys/fs/cgroup").join(c).join(path.trim_start_matches('/')).join(name),
                    );
                }
            }
        }
    }
}

/// Removes the sandboxes one by one, timed.
async fn destroy(agent: &Agent, specs: &[PodSpec], sandboxes: &[crate::pod::Sandbox]) -> Round {
    let mut each = Vec::with_capacity(sandboxes.len());
    let t0 = Instant::now();
    for (spec, sb) in specs.iter().zip(sandboxes) {
        let t = Instant::now();
        agent.destroy_sandbox(spec, sb).await;
        each.push(t.elapsed());
    }
    round(sandboxes.len(), t0.elapsed(), each)
}

/// Per pod: unshare(CLONE_NEWNET) on a thread of its own (the new netns is kept by an fd), then the agent's
/// `create_pod_veth` and `configure_pod_side` batches. No process, no UTS/IPC/PID namespace, no cgroup, no
/// IPAM: what is left of a pod when everything but the network kernel work is taken away.
fn kernel_floor(n: usize) -> Result<Round> {
    use crate::net::{netlink, rawlink::RtSocket};
    use std::os::fd::{AsFd, OwnedFd};

    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Round> {
                let open_ns = || -> Result<OwnedFd> {
                    Ok(std::fs::File::open("/proc/thread-self/ns/net").context("open own netns")?.into())
                };
                let home = open_ns()?;
                let bridge = nix::net::if_::if_nametoindex("cni0").context("cni0 ifindex")?;
                let ipv6_conf = std::fs::File::open(netlink::IPV6_CONF).ok();
                let mut node = RtSocket::new().context("netlink socket")?;
                // The bench node's own pod subnet and gateway, as the agent's round used them.
                let subnet = node_spec().pod_subnet;
                let gateway = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1);
                let mut hosts = Vec::with_capacity(n);
                let mut namespaces = Vec::with_capacity(n);
                let mut each = Vec::with_capacity(n);
                let t0 = Instant::now();
                let made = (0..n).try_for_each(|i| -> Result<()> {
                    let t = Instant::now();
                    unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
                    let ns = open_ns();
                    nix::sched::setns(&home, CloneFlags::CLONE_NEWNET).context("setns back")?;
                    let ns = ns?;
                    let host = format!("vfloor{i}");
                    netlink::create_pod_veth(&mut node, ipv6_conf.as_ref(), &host, &ns, 1500, bridge)?;
                    hosts.push(host);
                    let mut pod = RtSocket::open_in(ns.as_fd(), home.as_fd())?;
                    let ip = std::net::Ipv4Addr::from(u32::from(gateway) + 1 + i as u32);
                    netlink::configure_pod_side(&mut pod, ipnet::Ipv4Net::new(ip, subnet.prefix_len())?, gateway)?;
                    namespaces.push(ns);
                    each.push(t.elapsed());
                    Ok(())
                });
                let r = round(n, t0.elapsed(), each);
                for host in &hosts {
                    let _ = Command::new("ip").args(["link", "del", host]).stderr(Stdio::null()).status();
                }
                made.map(|()| r)
            })
            .join()
            .unwrap_or_else(|_| bail!("kernel floor thread panicked"))
    })
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Minimal HTTP/1.1 client for the agent child (Connection: close).
fn http(method: &str, path: &str, body: &str) -> Result<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", testbed_api::AGENT_PORT))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code >= 400 {
        bail!("{method} {path}: {resp}");
    }
    Ok(code)
}

/// Full pods (sandbox + one container) through a `serve` child, and its RSS.
fn api_round(n: usize, tmp: &Path, report: &mut Report) -> Result<()> {
    let state = tmp.join("serve");
    let cgroup_name = format!("tbbench-serve-{}", std::process::id());
    let mut child = Command::new("/proc/self/exe")
        .args(["serve", "--kill-grace-secs", "0", "--cgroup-name", &cgroup_name, "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("start testbed-agent serve")?;
    let pid = child.id();
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while http("GET", "/healthz", "").is_err() {
            if Instant::now() > deadline {
                bail!("agent child did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        http("PUT", "/v1/node", &serde_json::to_string(&node_spec())?)?;
        report.agent_rss_kib_idle = vm_rss_kib(pid);
        let mut each = Vec::with_capacity(n);
        let t0 = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            http("POST", "/v1/pods", &serde_json::to_string(&pod_spec(i))?)?;
            each.push(t.elapsed());
        }
        let r = round(n, t0.elapsed(), each);
        eprintln!("full pod via API x{n}: {:.3} ms/pod", r.per_pod_ms);
        report.api_full_pod = Some(r);
        std::thread::sleep(Duration::from_secs(1));
        report.agent_rss_kib_with_pods = vm_rss_kib(pid);
        report.footprint_with_pods = Some(footprint(pid));
        for i in 0..n {
            http("DELETE", &format!("/v1/pods/bench-{i}"), "")?;
        }
        Ok(())
    })();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT);
    let _ = child.wait();
    remove_root(&cgroup_name);
    result
}

fn render(r: &Report) -> String {
    let mut out = format!("kernel {}, cgroup {}\n", r.kernel, r.cgroup_version);
    out += "pods   testbed sandbox ms/pod (p50/p99)   reference: netns + CNI bridge ADD + cgroups ms/pod   speed-up\n";
    for t in &r.testbed_sandbox {
        for refr in r.reference.iter().filter(|x| x.cni_add.pods == t.pods) {
            let all = refr.netns.per_pod_ms + refr.cni_add.per_pod_ms + refr.cgroups.per_pod_ms;
            let label = match refr.mode {
                ReferenceMode::EqualTerms => "equal terms (headline): in-process netns, IPv6 off both sides",
                ReferenceMode::AsShipped => "variant, as shipped: ip netns add, IPv6 on",
            };
            out += &format!(
                "{:<6} {:>8.3} ({:.3}/{:.3})   {:.3} + {:.3} + {:.3} = {:.3}   {:.1}x the same work ({:.1}x the CNI ADD \
                 alone); {label}\n",
                t.pods,
                t.per_pod_ms,
                t.p50_ms,
                t.p99_ms,
                refr.netns.per_pod_ms,
                refr.cni_add.per_pod_ms,
                refr.cgroups.per_pod_ms,
                all,
                all / t.per_pod_ms,
                refr.cni_add.per_pod_ms / t.per_pod_ms
            );
        }
        if !r.reference.iter().any(|x| x.cni_add.pods == t.pods) {
            out += &format!(
                "{:<6} {:>8.3} ({:.3}/{:.3})   no reference round\n",
                t.pods, t.per_pod_ms, t.p50_ms, t.p99_ms
            );
        }
    }
    for f in &r.kernel_floor {
        out +=
            &format!("{:<6} kernel floor (netns + veth + pod side, nothing else): {:.3} ms/pod", f.pods, f.per_pod_ms);
        match r.reference.iter().find(|x| x.mode == ReferenceMode::EqualTerms && x.cni_add.pods == f.pods) {
            Some(x) => {
                let c = &x.cni_add;
                out += &format!(
                    "; CNI ADD / floor = {:.1}x, the most any agent could reach\n",
                    c.per_pod_ms / f.per_pod_ms
                )
            }
            None => out += "\n",
        }
    }
    for t in &r.testbed_teardown {
        out += &format!(
            "{:<6} teardown (kill infra, veth, lease, cgroups): {:.3} ms/pod (p50 {:.3})\n",
            t.pods, t.per_pod_ms, t.p50_ms
        );
    }
    if let (Some(a), Some(b)) = (r.testbed_sandbox.first(), r.testbed_sandbox.last()) {
        if a.pods != b.pods {
            out += &format!("per-pod cost {} vs {} pods: {:.2}x\n", b.pods, a.pods, b.per_pod_ms / a.per_pod_ms);
        }
    }
    if let Some(api) = &r.api_full_pod {
        out += &format!(
            "full pod through the API (sandbox + 1 container): {:.3} ms/pod (x{})\n",
            api.per_pod_ms, api.pods
        );
    }
    if let (Some(idle), Some(full)) = (r.agent_rss_kib_idle, r.agent_rss_kib_with_pods) {
        out += &format!(
            "agent VmRSS: {idle} KiB idle, {full} KiB with {} pods\n",
            r.api_full_pod.as_ref().map_or(0, |a| a.pods)
        );
    }
    if let Some(f) = &r.footprint_with_pods {
        out += &format!(
            "kept by the agent (PSS): {} KiB = serve {} + {} launchers {} + {} reapers {} + {} infra {}; workload \
             not counted: {} processes {} KiB\n",
            f.kept_kib(),
            f.agent_pss_kib,
            f.launchers,
            f.launchers_pss_kib,
            f.reapers,
            f.reapers_pss_kib,
            f.infra,
            f.infra_pss_kib,
            f.workload,
            f.workload_pss_kib
        );
    }
    out
}
