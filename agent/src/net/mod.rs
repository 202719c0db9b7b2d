//! Node networking: the `cni0` bridge, pod IPAM and veths, and flannel's backends (vxlan, host-gw, udp, none).
//! The agent converges the kernel to a `NodeSpec` by reading it back over netlink and applying the difference
//! (`plan.rs`), so applying the same spec twice changes nothing and deleted objects come back.
//!
//! All kernel work runs on one dedicated thread with a current-thread tokio runtime and a single rtnetlink
//! connection (`Worker`): requests are serialised, which is what the reconcile needs anyway, and the thread
//! can live in another network namespace (tests run two "nodes" in one process that way). Pod attachment,
//! the per-pod hot path, uses synchronous batching sockets instead (`rawlink.rs`): one in the node's netns,
//! and one per pod opened inside the pod's netns by the worker itself (a netlink socket stays bound to the
//! namespace it was made in), so attaching a pod costs four netlink round trips and no thread.

pub(crate) mod ethtool;
mod ipam;
pub(crate) mod netlink;
mod plan;
pub(crate) mod rawlink;
mod udp;

#[cfg(test)]
mod kernel_tests;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use testbed_api::{Backend, NodeSpec, ObservedNetwork};
use tokio::sync::{mpsc, oneshot};

use ipam::Ipam;
use netlink::NetlinkKernel;
use plan::{fmt_mac, kind_name, LinkKind, BRIDGE, TUN_DEV, VXLAN_DEV};
use rawlink::RtSocket;
use udp::UdpForwarder;

/// The underlay NIC feature the udp backend turns on (`ethtool -k` name of NETIF_F_GSO_UDP_L4).
const UDP_SEGMENTATION: &str = "tx-udp-segmentation";

/// Errors of the networking module. `InvalidInput` is the caller's fault (maps to 4xx); the rest are node faults.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("networking is not ready: {0}")]
    NotReady(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("network interface {0} does not exist")]
    NoSuchLink(String),
    /// Callers name the pod.
    #[error("its infra process {0} is gone")]
    InfraGone(u32),
    #[error("pod IP allocation: {0}")]
    Ipam(String),
    #[error("{step}: {source}")]
    Io { step: String, source: std::io::Error },
    #[error("netlink: {step}: {source}")]
    Netlink { step: String, source: rtnetlink::Error },
    #[error("pod network repair failed: {0}")]
    Repair(String),
    #[error("the network worker thread is gone")]
    WorkerGone,
}

impl NetError {
    fn io(step: String, source: std::io::Error) -> NetError {
        NetError::Io { step, source }
    }
}

/// Where a pod was plugged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttachment {
    pub ip: Ipv4Addr,
    pub host_veth: String,
}

type Reply<T> = oneshot::Sender<Result<T, NetError>>;

enum Request {
    Apply(Box<NodeSpec>, Reply<Vec<String>>),
    Observe(Reply<ObservedNetwork>),
    Attach(String, u32, Reply<PodAttachment>),
    Detach(String, Reply<()>),
    Repair(Vec<(String, u32)>, Reply<Vec<String>>),
}

/// Tells whether `pid` is still the infra process of `pod`. `repair_pods` asks it after a pod's netns was opened
/// through /proc/<pid>, so a PID that a stranger reused after our infra died is never wired up as the pod.
pub type InfraCheck = fn(pid: u32, pod: &str) -> bool;

/// Handle to the node's network state. Send + Sync; share it in an Arc.
pub struct Network {
    /// `None` only while dropping (closing the channel stops the worker).
    tx: Option<mpsc::UnboundedSender<Request>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Network {
    /// `lease_dir`: where the IPAM keeps its leases.
    pub async fn new(lease_dir: &Path, infra_check: InfraCheck) -> Result<Network, NetError> {
        Network::start(lease_dir, None, infra_check).await
    }

    /// Like `new`, with all node-side kernel work inside the network namespace at `netns` (e.g.
    /// `/run/netns/x`); the tests emulate nodes this way.
    pub async fn start(lease_dir: &Path, netns: Option<PathBuf>, infra_check: InfraCheck) -> Result<Network, NetError> {
        let ipam = Ipam::open(lease_dir)?;
        let ns_fd = match &netns {
            Some(path) => Some(OwnedFd::from(
                std::fs::File::open(path).map_err(|e| NetError::io(format!("open {}", path.display()), e))?,
            )),
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("net-worker".into())
            .spawn(move || Worker::run(ns_fd, ipam, infra_check, rx, ready_tx))
            .map_err(|e| NetError::io("spawn net-worker thread".into(), e))?;
        ready_rx.await.map_err(|_| NetError::WorkerGone)??;
        Ok(Network { tx: Some(tx), worker: Mutex::new(Some(thread)) })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(NetError::WorkerGone)?;
        tx.send(make(reply)).map_err(|_| NetError::WorkerGone)?;
        rx.await.map_err(|_| NetError::WorkerGone)?
    }

    /// Converge cni0, ip_forward, the backend's devices and per-peer state to `spec`; remove other backends'
    /// state. One line per change; empty when the kernel already matched.
    pub async fn apply(&self, spec: &NodeSpec) -> Result<Vec<String>, NetError> {
        testbed_api::validate::validate_node(spec).map_err(|e| NetError::InvalidInput(e.to_string()))?;
        self.call(|r| Request::Apply(Box::new(spec.clone()), r)).await
    }

    pub async fn observe(&self) -> Result<ObservedNetwork, NetError> {
        self.call(Request::Observe).await
    }

    /// Idempotent: same pod -> same IP; veth `veth<hash>` in cni0 with hairpin on, `eth0` in the pod.
    /// `infra_pid` must be the caller's own child, not yet reaped, so that it cannot have been reused. (It is
    /// not checked with `InfraCheck` here: right after a vfork+exec, /proc/<pid>/cmdline is briefly empty.)
    pub async fn attach_pod(&self, pod: &str, infra_pid: u32) -> Result<PodAttachment, NetError> {
        self.call(|r| Request::Attach(pod.to_string(), infra_pid, r)).await
    }

    /// Removes the host veth (its peer goes with it) and releases the IP. Idempotent.
    pub async fn detach_pod(&self, pod: &str) -> Result<(), NetError> {
        self.call(|r| Request::Detach(pod.to_string(), r)).await
    }

    /// Re-creates missing host veths (and re-enslaves detached ones); lines describe repairs.
    pub async fn repair_pods(&self, pods: &[(String, u32)]) -> Result<Vec<String>, NetError> {
        self.call(|r| Request::Repair(pods.to_vec(), r)).await
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Closing the channel ends the worker, which stops the udp forwarder (and so removes flannel0).
        self.tx.take();
        let worker = self.worker.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

/// Host veth name of a pod: `veth` + 8 hex digits of SHA-256(pod), stable across agent restarts.
pub fn host_veth_name(pod: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(pod.as_bytes());
    format!("veth{}", hex::encode(&digest[..4]))
}

struct Worker {
    kernel: NetlinkKernel,
    /// Synchronous batching socket in the node netns for the pod hot path.
    node_sock: RtSocket,
    /// The worker thread's (node) netns, to return to after opening a socket inside a pod's.
    home_ns: OwnedFd,
    /// /proc/sys/net/ipv6/conf of the node netns (None: no IPv6 in this kernel). Per-device files are opened
    /// relative to it: a lookup from /proc/sys/net walks a dentry chain with one entry per network
    /// namespace (every pod has one), which made each open O(pods).
    ipv6_conf: Option<std::fs::File>,
    /// cni0's ifindex; forgotten on every apply (which may recreate cni0) and when a create with it fails.
    bridge: Option<u32>,
    ipam: Ipam,
    infra_check: InfraCheck,
    spec: Option<NodeSpec>,
    udp: Option<UdpForwarder>,
}

impl Worker {
    fn run(
        netns: Option<OwnedFd>,
        ipam: Ipam,
        infra_check: InfraCheck,
        rx: mpsc::UnboundedReceiver<Request>,
        ready: oneshot::Sender<Result<(), NetError>>,
    ) {
        type Setup = (tokio::runtime::Runtime, NetlinkKernel, RtSocket, OwnedFd, Option<std::fs::File>);
        let setup = || -> Result<Setup, NetError> {
            if let Some(fd) = &netns {
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::io("setns into the node netns".into(), e.into()))?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| NetError::io("net-worker runtime".into(), e))?;
            let _guard = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| NetError::io("netlink socket".into(), e))?;
            rt.spawn(conn);
            let node_sock = RtSocket::new().map_err(|e| NetError::io("netlink socket".into(), e))?;
            let home = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(|e| NetError::io("open /proc/thread-self/ns/net".into(), e))?;
            let ipv6_conf = match std::fs::File::open(netlink::IPV6_CONF) {
                Ok(dir) => Some(dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(NetError::io(format!("open {}", netlink::IPV6_CONF), e)),
            };
            Ok((rt, NetlinkKernel { handle }, node_sock, OwnedFd::from(home), ipv6_conf))
        };
        let (rt, kernel, node_sock, home_ns, ipv6_conf) = match setup() {
            Ok(ok) => ok,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut worker =
            Worker { kernel, node_sock, home_ns, ipv6_conf, bridge: None, ipam, infra_check, spec: None, udp: None };
        rt.block_on(worker.serve(rx));
    }

    async fn serve(&mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(req) = rx.recv().await {
            match req {
                Request::Apply(spec, r) => drop(r.send(self.apply(*spec).await)),
                Request::Observe(r) => drop(r.send(self.observe().await)),
                Request::Attach(pod, pid, r) => drop(r.send(self.attach(&pod, pid, false).await)),
                Request::Detach(pod, r) => drop(r.send(self.detach(&pod).await)),
                Request::Repair(pods, r) => drop(r.send(self.repair(&pods).await)),
            }
        }
    }

    async fn apply(&mut self, spec: NodeSpec) -> Result<Vec<String>, NetError> {
        // Input the planner refuses is refused before anything changes, so the node stays as it was.
        plan::Desired::from_spec(&spec)?;
        // From here the spec is the target even if a step fails, as the runtime keeps it too: pods attach to
        // the subnet being converged to, and the next periodic apply retries the failed step.
        self.spec = Some(spec.clone());
        if self.kernel.link_index(&spec.underlay.interface).await?.is_none() {
            return Err(NetError::NoSuchLink(format!("{} (underlay.interface)", spec.underlay.interface)));
        }
        self.bridge = None;
        let mut changes = self.converge_udp(&spec).await?;
        changes.extend(plan::converge(&mut self.kernel, &spec).await?);
        Ok(changes)
    }

    /// The udp backend's userspace half. Runs before the kernel reconcile: the forwarder owns flannel0, so
    /// it must exist (udp) or be gone (other backends) before the planner looks at links.
    async fn converge_udp(&mut self, spec: &NodeSpec) -> Result<Vec<String>, NetError> {
        let mut changes = Vec::new();
        if spec.backend != Backend::Udp {
            if self.udp.take().is_some() {
                changes.push(format!("udp forwarder stopped ({TUN_DEV} removed)"));
            }
            return Ok(changes);
        }
        let peers: udp::PeerTable = spec.peers.iter().map(|p| (p.pod_subnet.trunc(), p.underlay_ip)).collect();
        let healthy = match &self.udp {
            Some(f) => {
                f.is_alive() && f.local == spec.underlay.address && self.kernel.link_index(TUN_DEV).await?.is_some()
            }
            None => false,
        };
        if healthy {
            if self.udp.as_ref().is_some_and(|f| f.set_peers(peers)) {
                changes.push(format!("udp forwarder peers updated ({} peers)", spec.peers.len()));
            }
            return Ok(changes);
        }
        // Drop the old forwarder first: its fd holds the flannel0 name.
        self.udp = None;
        self.udp = Some(UdpForwarder::start(spec.underlay.address, peers)?);
        changes.push(format!(
            "udp forwarder started: {TUN_DEV} <-> {}:{} ({} peers)",
            spec.underlay.address,
            plan::UDP_PORT,
            spec.peers.len()
        ));
        // The forwarder sends each TCP GSO packet as one UDP GSO send of ~45 datagrams. With UDP segmentation
        // offload on the underlay NIC (virtio-net on guest kernels >= 6.2 over a tap that takes it) the send
        // reaches the hypervisor whole instead of being cut into datagrams in the guest, which decides the
        // backend's throughput under TCG (docs/benchmarks.md, "udp backend"). Kernels leave it off by default;
        // without it the forwarder works as before.
        let dev = &spec.underlay.interface;
        match ethtool::set(dev, UDP_SEGMENTATION, true) {
            Ok(ethtool::FeatureChange::Changed) => changes.push(format!("ethtool {dev} {UDP_SEGMENTATION} on")),
            Ok(_) => {}
            Err(e) => tracing::warn!("udp backend: cannot turn on {UDP_SEGMENTATION} on {dev}: {e}"),
        }
        Ok(changes)
    }

    async fn observe(&mut self) -> Result<ObservedNetwork, NetError> {
        let links = self.kernel.links().await?;
        let managed = |name: &str| name == BRIDGE || name == VXLAN_DEV || name == TUN_DEV || name.starts_with("veth");
        let names = links.iter().map(|l| (l.index, l.name.clone())).collect();
        // Without a spec, report routes into the whole private 10/8 range pods normally live in.
        let owned = self
            .spec
            .as_ref()
            .map(plan::owned_ranges)
            .unwrap_or_else(|| vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default()]);
        let routes = self.kernel.routes(&owned, &names).await?;
        let (neighbours, fdb) = match links.iter().find(|l| l.name == VXLAN_DEV) {
            Some(vx) => self.kernel.neighbours_and_fdb(VXLAN_DEV, vx.index).await?,
            None => (Vec::new(), Vec::new()),
        };
        Ok(ObservedNetwork {
            links: links
                .iter()
                .filter(|l| managed(&l.name))
                .map(|l| {
                    let mut line =
                        format!("{} {} mtu {} {}", l.name, if l.up { "UP" } else { "DOWN" }, l.mtu, kind_name(&l.kind));
                    if let LinkKind::Vxlan { vni, port, local, dev, learning } = &l.kind {
                        line += &format!(" id {vni} dstport {port} local {local} dev {dev}");
                        if !learning {
                            line += " nolearning";
                        }
                    }
                    if let Some(m) = &l.master {
                        line += &format!(" master {m}");
                    }
                    if let Some(mac) = &l.mac {
                        line += &format!(" {}", fmt_mac(mac));
                    }
                    for a in &l.addrs {
                        line += &format!(" {a}");
                    }
                    line
                })
                .collect(),
            routes: routes.iter().map(|r| r.route.to_string()).collect(),
            neighbours: neighbours
                .iter()
                .map(|n| {
                    let nud = if n.permanent { " PERMANENT" } else { "" };
                    format!("{} lladdr {} dev {}{nud}", n.neighbour.ip, fmt_mac(&n.neighbour.mac), n.neighbour.dev)
                })
                .collect(),
            fdb: fdb.iter().map(|e| format!("{} dst {} dev {}", fmt_mac(&e.mac), e.dst, e.dev)).collect(),
        })
    }

    fn spec(&self) -> Result<&NodeSpec, NetError> {
        self.spec.as_ref().ok_or_else(|| NetError::NotReady("no NodeSpec applied yet (PUT /v1/node first)".into()))
    }

    /// The pod's network namespace through its infra process. Opened before the check, so that the fd is the
    /// namespace of the process that `infra_check` then vouches for, even if the PID is reused right after.
    fn open_pod_netns(&self, pod: &str, infra_pid: u32, check: bool) -> Result<OwnedFd, NetError> {
        let ns_path = format!("/proc/{infra_pid}/ns/net");
        let netns = OwnedFd::from(
            std::fs::File::open(&ns_path).map_err(|e| NetError::io(format!("pod {pod}: open {ns_path}"), e))?,
        );
        if check && !(self.infra_check)(infra_pid, pod) {
            return Err(NetError::InfraGone(infra_pid));
        }
        Ok(netns)
    }

    /// `check`: ask `infra_check` whether `infra_pid` is still the pod's infra (PIDs from records).
    async fn attach(&mut self, pod: &str, infra_pid: u32, check: bool) -> Result<PodAttachment, NetError> {
        let spec = self.spec()?;
        let subnet = spec.pod_subnet.trunc();
        let mtu = spec.backend.pod_mtu(spec.underlay.mtu);
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let netns = self.open_pod_netns(pod, infra_pid, check)?;
        let ip = self.ipam.allocate(pod, subnet)?;
        let host_veth = host_veth_name(pod);
        let addr = Ipv4Net::new(ip, subnet.prefix_len()).map_err(|e| NetError::Ipam(e.to_string()))?;
        let with_pod = |e: NetError| match e {
            NetError::Netlink { step, source } => NetError::Netlink { step: format!("pod {pod}: {step}"), source },
            other => other,
        };
        let mut pod_sock = RtSocket::open_in(netns.as_fd(), self.home_ns.as_fd())?;
        if !self.create_veth(&host_veth, &netns, mtu).await.map_err(with_pod)? {
            // The host veth exists: an earlier attach of this pod (agent restart, repair).
            let bridge = self.kernel.bridge_index().await?;
            self.kernel.enslave(&host_veth, bridge).await?;
            match netlink::configure_pod_side(&mut pod_sock, addr, gateway) {
                Ok(()) => return Ok(PodAttachment { ip, host_veth }),
                // The veth's peer lives in another netns (an earlier infra process of a pod with this
                // name): replace the pair.
                Err(NetError::NoSuchLink(_)) => self.kernel.delete_pod_veth(&host_veth).await?,
                Err(e) => return Err(with_pod(e)),
            }
            if !self.create_veth(&host_veth, &netns, mtu).await.map_err(with_pod)? {
                return Err(with_pod(NetError::Repair(format!("{host_veth} exists again right after its deletion"))));
            }
        }
        netlink::configure_pod_side(&mut pod_sock, addr, gateway).map_err(with_pod)?;
        Ok(PodAttachment { ip, host_veth })
    }

    /// The veth pair into cni0 (see `netlink::create_pod_veth`); false if the host end exists. Retries once
    /// with a fresh cni0 index when the cached one may be stale.
    async fn create_veth(&mut self, host_veth: &str, netns: &OwnedFd, mtu: u32) -> Result<bool, NetError> {
        if let Some(bridge) = self.bridge {
            match netlink::create_pod_veth(&mut self.node_sock, self.ipv6_conf.as_ref(), host_veth, netns, mtu, bridge)
            {
                Ok(created) => return Ok(created),
                Err(e) => {
                    tracing::debug!("create {host_veth} with cached {BRIDGE} index {bridge}: {e}; looking it up again");
                    self.bridge = None;
                    // A half-made pair (e.g. hairpin refused) must not turn the retry into "exists".
                    self.kernel.delete_pod_veth(host_veth).await?;
                }
            }
        }
        let bridge = self.kernel.bridge_index().await?;
        self.bridge = Some(bridge);
        netlink::create_pod_veth(&mut self.node_sock, self.ipv6_conf.as_ref(), host_veth, netns, mtu, bridge)
    }

    async fn detach(&mut self, pod: &str) -> Result<(), NetError> {
        self.kernel.delete_pod_veth(&host_veth_name(pod)).await?;
        self.ipam.release(pod)?;
        Ok(())
    }

    async fn repair(&mut self, pods: &[(String, u32)]) -> Result<Vec<String>, NetError> {
        let mtu = self.spec().map(|s| s.backend.pod_mtu(s.underlay.mtu))?;
        let links = self.kernel.links().await?;
        let mut lines = Vec::new();
        let mut failed = Vec::new();
        // One broken pod (e.g. its infra process just died) must not keep the others unrepaired.
        for (pod, pid) in pods {
            let name = host_veth_name(pod);
            let repaired = match links.iter().find(|l| l.name == name) {
                None => self
                    .attach(pod, *pid, true)
                    .await
                    .map(|a| Some(format!("pod {pod}: recreated {} ({})", a.host_veth, a.ip))),
                Some(l) if l.mtu != mtu => self.set_pod_mtu(pod, *pid, &name, l.mtu, mtu).await.map(Some),
                Some(l) if l.master.as_deref() != Some(BRIDGE) || !l.up => {
                    let result = match self.kernel.bridge_index().await {
                        Ok(bridge) => self.kernel.enslave(&name, bridge).await,
                        Err(e) => Err(e),
                    };
                    result.map(|()| Some(format!("pod {pod}: {name} re-attached to {BRIDGE} and up")))
                }
                Some(_) => Ok(None),
            };
            match repaired {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => {}
                Err(e) => failed.push(format!("pod {pod}: {e}")),
            }
        }
        if !failed.is_empty() {
            for line in &lines {
                tracing::info!("{line}");
            }
            return Err(NetError::Repair(failed.join("; ")));
        }
        Ok(lines)
    }

    /// A backend switch changes the pod MTU; the veths of pods made before it keep the old one, which
    /// black-holes a pod's full-size packets when the new MTU is smaller. Both ends follow: the pod's eth0 first
    /// when the MTU shrinks (the pod never sends what its host end would drop), last when it grows.
    async fn set_pod_mtu(
        &mut self,
        pod: &str,
        pid: u32,
        host_veth: &str,
        from: u32,
        to: u32,
    ) -> Result<String, NetError> {
        let netns = self.open_pod_netns(pod, pid, true)?;
        let mut pod_sock = RtSocket::open_in(netns.as_fd(), self.home_ns.as_fd())?;
        if to < from {
            netlink::set_pod_eth0_mtu(&mut pod_sock, to)?;
            self.kernel.set_mtu(host_veth, to).await?;
        } else {
            self.kernel.set_mtu(host_veth, to).await?;
            netlink::set_pod_eth0_mtu(&mut pod_sock, to)?;
        }
        Ok(format!("pod {pod}: MTU {from} -> {to} (eth0 and {host_veth})"))
    }
}
