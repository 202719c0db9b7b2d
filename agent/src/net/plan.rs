//! The reconcile planner: desired kernel objects (from a NodeSpec) against the objects the kernel reports,
//! giving an ordered list of actions. Pure, so the ordering and idempotency rules are unit-tested with a fake
//! kernel; `netlink.rs` executes the actions for real.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use testbed_api::{Backend, NodeSpec};

use super::NetError;

pub const BRIDGE: &str = "cni0";
pub const VXLAN_DEV: &str = "flannel.1";
pub const TUN_DEV: &str = "flannel0";
/// flannel's vxlan settings (VNI 1 on the Linux default port 8472).
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// flannel's udp backend port.
pub const UDP_PORT: u16 = 8285;

pub type Mac = [u8; 6];

pub fn parse_mac(s: &str) -> Result<Mac, NetError> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::InvalidInput(format!("`{s}` is not a MAC address")));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte =
            u8::from_str_radix(part, 16).map_err(|_| NetError::InvalidInput(format!("`{s}` is not a MAC address")))?;
    }
    Ok(mac)
}

/// `0a:58:` followed by the IPv4 address: locally administered, unicast, unique per node subnet.
pub fn gateway_mac(ip: Ipv4Addr) -> Mac {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

pub fn fmt_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Link types the agent creates (or, for veths, observes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    /// `dev` is the underlay interface by name (resolved from its index when observed).
    Vxlan {
        vni: u32,
        port: u16,
        local: Ipv4Addr,
        dev: String,
        learning: bool,
    },
    Tun,
    Veth,
    Other(String),
}

/// A link as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    pub mac: Option<Mac>,
    /// The exact set of IPv4 addresses.
    pub addrs: Vec<Ipv4Net>,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub kind: LinkKind,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<Mac>,
    pub master: Option<String>,
    pub addrs: Vec<Ipv4Net>,
}

/// An IPv4 route in the main table, identified the way `ip route` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    pub onlink: bool,
    /// The source address connections routed by it start from (`src`), when not the device's own.
    pub src: Option<Ipv4Addr>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        write!(f, " dev {}", self.dev)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState {
    pub route: Route,
    /// Created by the kernel from an address (`proto kernel`): never deleted by the planner.
    pub kernel_proto: bool,
}

/// ARP entry on the vxlan device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub dev: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourState {
    pub neighbour: Neighbour,
    pub permanent: bool,
}

/// Forwarding entry of the vxlan device: inner MAC -> outer (underlay) destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub mac: Mac,
    pub dst: Ipv4Addr,
    pub dev: String,
}

/// What the kernel has, restricted to what the agent manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub ip_forward: bool,
    /// `net.bridge.bridge-nf-call-iptables`; None when br_netfilter is not loaded (the guest's init loads it;
    /// the agent loads no modules).
    pub bridge_nf_call: Option<bool>,
    pub links: Vec<LinkState>,
    /// Main-table IPv4 routes whose destination lies inside the pod CIDR.
    pub routes: Vec<RouteState>,
    /// Neighbours on `flannel.1`.
    pub neighbours: Vec<NeighbourState>,
    /// FDB entries on `flannel.1` that carry a destination.
    pub fdb: Vec<Fdb>,
}

impl KernelState {
    pub fn link(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// Objects of one peer, created in flannel's order: neighbour, FDB, route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerObjects {
    pub neighbour: Option<Neighbour>,
    pub fdb: Option<Fdb>,
    pub route: Option<Route>,
}

/// Everything the kernel must hold for one NodeSpec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub links: Vec<LinkSpec>,
    /// Managed link names that must not exist (the other backends' devices).
    pub absent_links: Vec<&'static str>,
    /// Routes that exist for every spec of this backend (udp: the pod CIDR on flannel0).
    pub routes: Vec<Route>,
    pub peers: Vec<PeerObjects>,
}

impl Desired {
    pub fn from_spec(spec: &NodeSpec) -> Result<Desired, NetError> {
        let subnet = spec.pod_subnet;
        let net0 = subnet.network();
        let gateway = Ipv4Addr::from(u32::from(net0) + 1);
        let under = &spec.underlay;
        let mut links = vec![LinkSpec {
            name: BRIDGE.into(),
            kind: LinkKind::Bridge,
            mtu: spec.backend.pod_mtu(under.mtu),
            // A bridge without an address of its own takes the lowest MAC of its ports, so it changed whenever
            // a pod came or went and long-lived pods kept a stale gateway entry until it re-resolved (seconds
            // of loss). A fixed MAC from the gateway IP (0a:58 + IPv4, as the CNI plugins derive theirs) stays.
            mac: Some(gateway_mac(gateway)),
            addrs: vec![net(gateway, subnet.prefix_len())?],
        }];
        let mut routes = Vec::new();
        let mut peers = Vec::new();
        let absent_links = match spec.backend {
            Backend::Vxlan => {
                links.push(LinkSpec {
                    name: VXLAN_DEV.into(),
                    kind: LinkKind::Vxlan {
                        vni: VXLAN_VNI,
                        port: VXLAN_PORT,
                        local: under.address,
                        dev: under.interface.clone(),
                        learning: false,
                    },
                    mtu: spec.backend.pod_mtu(under.mtu),
                    mac: Some(parse_mac(&spec.vtep_mac)?),
                    addrs: vec![net(net0, 32)?],
                });
                for p in &spec.peers {
                    let peer0 = p.pod_subnet.network();
                    let mac = parse_mac(&p.vtep_mac)?;
                    peers.push(PeerObjects {
                        neighbour: Some(Neighbour { ip: peer0, mac, dev: VXLAN_DEV.into() }),
                        fdb: Some(Fdb { mac, dst: p.underlay_ip, dev: VXLAN_DEV.into() }),
                        route: Some(Route {
                            dst: p.pod_subnet.trunc(),
                            gateway: Some(peer0),
                            dev: VXLAN_DEV.into(),
                            onlink: true,
                            src: None,
                        }),
                    });
                }
                vec![TUN_DEV]
            }
            Backend::HostGw => {
                for p in &spec.peers {
                    peers.push(PeerObjects {
                        neighbour: None,
                        fdb: None,
                        route: Some(Route {
                            dst: p.pod_subnet.trunc(),
                            gateway: Some(p.underlay_ip),
                            dev: under.interface.clone(),
                            onlink: false,
                            src: None,
                        }),
                    });
                }
                vec![VXLAN_DEV, TUN_DEV]
            }
            Backend::Udp => {
                // flannel puts the node subnet's .0 with the cluster prefix on flannel0; the pod CIDR route
                // follows from it (the userspace forwarder picks the peer by destination address).
                links.push(LinkSpec {
                    name: TUN_DEV.into(),
                    kind: LinkKind::Tun,
                    mtu: spec.backend.pod_mtu(under.mtu),
                    mac: None,
                    addrs: vec![net(net0, spec.pod_cidr.prefix_len())?],
                });
                routes.push(Route {
                    dst: spec.pod_cidr.trunc(),
                    gateway: None,
                    dev: TUN_DEV.into(),
                    onlink: false,
                    src: None,
                });
                vec![VXLAN_DEV]
            }
            Backend::None => vec![VXLAN_DEV, TUN_DEV],
        };
        if let Some(services) = spec.service_cidr {
            // The node's own connect() to a ClusterIP needs a route before its first packet reaches the
            // proxy's DNAT in nat output, and the nodes have no default route to lean on as kube-proxy's do.
            // Out of the underlay NIC, as a default route would be: not out of cni0, where a pod's packet to
            // a Service without endpoints would be routed back out of the NIC it came in by, and the ICMP
            // redirect the kernel then sends spends the per-host ICMP budget the reject's answer needs. From
            // cni0's address: every backend routes this node's pod subnet back here (an underlay source would
            // get a remote endpoint's reply outside the overlay). After DNAT the kernel routes again.
            routes.push(Route {
                dst: services.trunc(),
                gateway: None,
                dev: under.interface.clone(),
                onlink: false,
                src: Some(gateway),
            });
        }
        Ok(Desired { links, absent_links, routes, peers })
    }

    fn wanted_routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(self.peers.iter().filter_map(|p| p.route.as_ref()))
    }
}

fn net(ip: Ipv4Addr, prefix: u8) -> Result<Ipv4Net, NetError> {
    Ipv4Net::new(ip, prefix).map_err(|e| NetError::InvalidInput(format!("{ip}/{prefix}: {e}")))
}

/// One kernel change. `Display` gives the change line reported to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    EnableIpForward,
    /// Bridged IPv4 frames through the inet hooks: without it, the NetworkPolicy table never sees traffic
    /// between two pods of this node, and a pod reaching its own node's pod through a Service gets replies
    /// it does not expect.
    EnableBridgeNfCall,
    DeleteRoute(Route),
    DeleteNeighbour(Neighbour),
    DeleteFdb(Fdb),
    DeleteLink(String),
    /// Creates the link with MTU and MAC, up; addresses follow as `AddAddress`.
    CreateLink(LinkSpec),
    SetLink {
        name: String,
        mtu: Option<u32>,
        mac: Option<Mac>,
        up: bool,
    },
    DeleteAddress {
        dev: String,
        addr: Ipv4Net,
    },
    AddAddress {
        dev: String,
        addr: Ipv4Net,
    },
    /// Add or replace (flannel's `NeighSet`).
    SetNeighbour(Neighbour),
    SetFdb(Fdb),
    AddRoute(Route),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::EnableIpForward => f.write_str("sysctl net.ipv4.ip_forward=1"),
            Action::EnableBridgeNfCall => f.write_str("sysctl net.bridge.bridge-nf-call-iptables=1"),
            Action::DeleteRoute(r) => write!(f, "route del {r}"),
            Action::DeleteNeighbour(n) => write!(f, "neigh del {} dev {}", n.ip, n.dev),
            Action::DeleteFdb(e) => write!(f, "fdb del {} dst {} dev {}", fmt_mac(&e.mac), e.dst, e.dev),
            Action::DeleteLink(name) => write!(f, "link del {name}"),
            Action::CreateLink(l) => {
                write!(f, "link add {} type {}", l.name, kind_name(&l.kind))?;
                if let LinkKind::Vxlan { vni, port, local, dev, .. } = &l.kind {
                    write!(f, " id {vni} dstport {port} local {local} dev {dev} nolearning")?;
                }
                if let Some(mac) = &l.mac {
                    write!(f, " address {}", fmt_mac(mac))?;
                }
                write!(f, " mtu {} up", l.mtu)
            }
            Action::SetLink { name, mtu, mac, up } => {
                write!(f, "link set {name}")?;
                if let Some(mtu) = mtu {
                    write!(f, " mtu {mtu}")?;
                }
                if let Some(mac) = mac {
                    write!(f, " address {}", fmt_mac(mac))?;
                }
                if *up {
                    f.write_str(" up")?;
                }
                Ok(())
            }
            Action::DeleteAddress { dev, addr } => write!(f, "addr del {addr} dev {dev}"),
            Action::AddAddress { dev, addr } => write!(f, "addr add {addr} dev {dev}"),
            Action::SetNeighbour(n) => {
                write!(f, "neigh replace {} lladdr {} dev {} nud permanent", n.ip, fmt_mac(&n.mac), n.dev)
            }
            Action::SetFdb(e) => {
                write!(f, "fdb replace {} dst {} dev {} self permanent", fmt_mac(&e.mac), e.dst, e.dev)
            }
            Action::AddRoute(r) => write!(f, "route add {r}"),
        }
    }
}

pub fn kind_name(kind: &LinkKind) -> &str {
    match kind {
        LinkKind::Bridge => "bridge",
        LinkKind::Vxlan { .. } => "vxlan",
        LinkKind::Tun => "tun",
        LinkKind::Veth => "veth",
        LinkKind::Other(k) => k,
    }
}

/// The ordered actions that take `observed` to `desired`: removals first (so a backend switch never has two
/// backends' routes at once), then links and addresses, then per-peer objects in flannel's order.
pub fn plan(desired: &Desired, observed: &KernelState) -> Vec<Action> {
    let mut actions = Vec::new();
    if !observed.ip_forward {
        actions.push(Action::EnableIpForward);
    }
    if observed.bridge_nf_call == Some(false) {
        actions.push(Action::EnableBridgeNfCall);
    }

    // Links that will be (re)created or deleted: whatever the kernel holds on them now goes with them.
    let mut gone: BTreeSet<&str> = BTreeSet::new();
    for name in &desired.absent_links {
        if observed.link(name).is_some() {
            gone.insert(name);
        }
    }
    let mut recreate: Vec<&LinkSpec> = Vec::new();
    for spec in &desired.links {
        match observed.link(&spec.name) {
            Some(have) if have.kind == spec.kind => {}
            Some(_) => {
                gone.insert(&spec.name);
                recreate.push(spec);
            }
            None => recreate.push(spec),
        }
    }

    let wanted_routes: Vec<&Route> = desired.wanted_routes().collect();
    for have in &observed.routes {
        if !have.kernel_proto && !gone.contains(have.route.dev.as_str()) && !wanted_routes.contains(&&have.route) {
            actions.push(Action::DeleteRoute(have.route.clone()));
        }
    }
    let wanted_neigh: Vec<&Neighbour> = desired.peers.iter().filter_map(|p| p.neighbour.as_ref()).collect();
    for have in &observed.neighbours {
        let n = &have.neighbour;
        // Only permanent entries are ours; a wrong MAC for a wanted IP is fixed by the replace below.
        if have.permanent && !gone.contains(n.dev.as_str()) && !wanted_neigh.iter().any(|w| w.ip == n.ip) {
            actions.push(Action::DeleteNeighbour(n.clone()));
        }
    }
    let wanted_fdb: Vec<&Fdb> = desired.peers.iter().filter_map(|p| p.fdb.as_ref()).collect();
    for have in &observed.fdb {
        if !gone.contains(have.dev.as_str()) && !wanted_fdb.contains(&have) {
            actions.push(Action::DeleteFdb(have.clone()));
        }
    }
    for name in &gone {
        actions.push(Action::DeleteLink((*name).to_string()));
    }

    for spec in &desired.links {
        if recreate.iter().any(|r| r.name == spec.name) {
            actions.push(Action::CreateLink(spec.clone()));
            for addr in &spec.addrs {
                actions.push(Action::AddAddress { dev: spec.name.clone(), addr: *addr });
            }
            continue;
        }
        let Some(have) = observed.link(&spec.name) else { continue };
        let mtu = (have.mtu != spec.mtu).then_some(spec.mtu);
        let mac = spec.mac.filter(|m| have.mac.as_ref() != Some(m));
        if mtu.is_some() || mac.is_some() || !have.up {
            actions.push(Action::SetLink { name: spec.name.clone(), mtu, mac, up: !have.up });
        }
        for addr in &have.addrs {
            if !spec.addrs.contains(addr) {
                actions.push(Action::DeleteAddress { dev: spec.name.clone(), addr: *addr });
            }
        }
        for addr in &spec.addrs {
            if !have.addrs.contains(addr) {
                actions.push(Action::AddAddress { dev: spec.name.clone(), addr: *addr });
            }
        }
    }

    let fresh = |dev: &str| gone.contains(dev) || recreate.iter().any(|r| r.name == dev);
    // A route from cni0's address goes when the address does (cni0 recreated).
    let route_present = |r: &Route| {
        let gone_with_a_link = fresh(&r.dev) || (r.src.is_some() && fresh(BRIDGE));
        !gone_with_a_link && observed.routes.iter().any(|h| &h.route == r)
    };
    for r in &desired.routes {
        if !route_present(r) {
            actions.push(Action::AddRoute(r.clone()));
        }
    }
    for peer in &desired.peers {
        if let Some(n) = &peer.neighbour {
            let ok = !fresh(&n.dev) && observed.neighbours.iter().any(|h| h.permanent && &h.neighbour == n);
            if !ok {
                actions.push(Action::SetNeighbour(n.clone()));
            }
        }
        if let Some(e) = &peer.fdb {
            if fresh(&e.dev) || !observed.fdb.contains(e) {
                actions.push(Action::SetFdb(e.clone()));
            }
        }
        if let Some(r) = &peer.route {
            if !route_present(r) {
                actions.push(Action::AddRoute(r.clone()));
            }
        }
    }
    actions
}

/// The address ranges whose routes the agent owns: the pod network, and the Services' range when the spec
/// has one. Routes elsewhere are never read, so never deleted.
pub fn owned_ranges(spec: &NodeSpec) -> Vec<Ipv4Net> {
    std::iter::once(spec.pod_cidr).chain(spec.service_cidr).collect()
}

/// The kernel as the reconcile loop needs it; netlink in production, an in-memory model in unit tests.
pub trait Kernel {
    /// `owned` bounds the routes reported (routes to destinations inside one of them).
    async fn snapshot(&mut self, owned: &[Ipv4Net]) -> Result<KernelState, NetError>;
    async fn execute(&mut self, action: &Action) -> Result<(), NetError>;
}

/// Read the kernel, plan, execute in order. Returns the change lines (empty when nothing differed).
pub async fn converge<K: Kernel>(kernel: &mut K, spec: &NodeSpec) -> Result<Vec<String>, NetError> {
    let desired = Desired::from_spec(spec)?;
    let observed = kernel.snapshot(&owned_ranges(spec)).await?;
    let actions = plan(&desired, &observed);
    let mut lines = Vec::with_capacity(actions.len());
    for action in &actions {
        kernel.execute(action).await?;
        lines.push(action.to_string());
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_api::{PeerSpec, UnderlaySpec};

    /// In-memory kernel: applies actions with the kernel's side effects that matter to the planner
    /// (deleting a link drops its routes, neighbours and FDB entries; an address on flannel0 makes a
    /// `proto kernel` route).
    #[derive(Default)]
    struct FakeKernel {
        state: KernelState,
        next_index: u32,
        executed: Vec<Action>,
    }

    impl FakeKernel {
        fn drop_link_objects(&mut self, name: &str) {
            self.state.routes.retain(|r| r.route.dev != name);
            self.state.neighbours.retain(|n| n.neighbour.dev != name);
            self.state.fdb.retain(|f| f.dev != name);
        }
    }

    impl Kernel for FakeKernel {
        async fn snapshot(&mut self, owned: &[Ipv4Net]) -> Result<KernelState, NetError> {
            let mut s = self.state.clone();
            s.routes.retain(|r| owned.iter().any(|o| o.contains(&r.route.dst)));
            Ok(s)
        }

        async fn execute(&mut self, action: &Action) -> Result<(), NetError> {
            self.executed.push(action.clone());
            let s = &mut self.state;
            match action.clone() {
                Action::EnableIpForward => s.ip_forward = true,
                Action::EnableBridgeNfCall => s.bridge_nf_call = Some(true),
                Action::DeleteRoute(r) => s.routes.retain(|h| h.route != r),
                Action::DeleteNeighbour(n) => s.neighbours.retain(|h| h.neighbour.ip != n.ip),
                Action::DeleteFdb(e) => s.fdb.retain(|h| *h != e),
                Action::DeleteLink(name) => {
                    s.links.retain(|l| l.name != name);
                    self.drop_link_objects(&name);
                }
                Action::CreateLink(l) => {
                    self.next_index += 1;
                    s.links.push(LinkState {
                        name: l.name,
                        index: self.next_index,
                        kind: l.kind,
                        mtu: l.mtu,
                        up: true,
                        mac: l.mac,
                        master: None,
                        addrs: vec![],
                    });
                }
                Action::SetLink { name, mtu, mac, .. } => {
                    let l = s.links.iter_mut().find(|l| l.name == name).expect("link");
                    l.up = true;
                    l.mtu = mtu.unwrap_or(l.mtu);
                    l.mac = mac.or(l.mac);
                }
                Action::DeleteAddress { dev, addr } => {
                    s.links.iter_mut().find(|l| l.name == dev).expect("link").addrs.retain(|a| *a != addr)
                }
                Action::AddAddress { dev, addr } => {
                    s.links.iter_mut().find(|l| l.name == dev).expect("link").addrs.push(addr);
                    if addr.prefix_len() < 32 {
                        let route = Route { dst: addr.trunc(), gateway: None, dev, onlink: false, src: None };
                        s.routes.push(RouteState { route, kernel_proto: true });
                    }
                }
                Action::SetNeighbour(n) => {
                    s.neighbours.retain(|h| h.neighbour.ip != n.ip);
                    s.neighbours.push(NeighbourState { neighbour: n, permanent: true });
                }
                Action::SetFdb(e) => {
                    s.fdb.retain(|h| h.mac != e.mac);
                    s.fdb.push(e);
                }
                Action::AddRoute(r) => {
                    if !s.routes.iter().any(|h| h.route.dst == r.dst) {
                        s.routes.push(RouteState { route: r, kernel_proto: false });
                    }
                }
            }
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    fn spec(backend: Backend, peers: usize) -> NodeSpec {
        NodeSpec {
            node_name: "a".into(),
            underlay: UnderlaySpec {
                interface: "eth1".into(),
                address: "192.168.50.1".parse().unwrap(),
                prefix_len: 24,
                mtu: 1500,
            },
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.1.0/24".parse().unwrap(),
            backend,
            vtep_mac: "02:00:00:00:00:01".into(),
            peers: (0..peers)
                .map(|i| PeerSpec {
                    name: format!("n{i}"),
                    underlay_ip: Ipv4Addr::new(192, 168, 50, 10 + i as u8),
                    pod_subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, 10 + i as u8, 0), 24).unwrap(),
                    vtep_mac: format!("02:00:00:00:01:{i:02x}"),
                })
                .collect(),
            service_cidr: None,
        }
    }

    fn lines(k: &mut FakeKernel, s: &NodeSpec) -> Vec<String> {
        block_on(converge(k, s)).expect("converge")
    }

    #[test]
    fn bridged_traffic_is_sent_through_the_hooks_again_when_turned_off_and_left_alone_without_the_module() {
        let mut k = FakeKernel::default();
        lines(&mut k, &spec(Backend::Vxlan, 2));
        k.state.bridge_nf_call = Some(false);
        assert_eq!(lines(&mut k, &spec(Backend::Vxlan, 2)), ["sysctl net.bridge.bridge-nf-call-iptables=1"]);
        assert!(lines(&mut k, &spec(Backend::Vxlan, 2)).is_empty());
        k.state.bridge_nf_call = None;
        assert!(lines(&mut k, &spec(Backend::Vxlan, 2)).is_empty());
    }

    #[test]
    fn vxlan_from_scratch_follows_flannels_order_and_is_idempotent() {
        let mut k = FakeKernel::default();
        let out = lines(&mut k, &spec(Backend::Vxlan, 2));
        assert_eq!(
            out,
            vec![
                "sysctl net.ipv4.ip_forward=1",
                "link add cni0 type bridge address 0a:58:0a:f4:01:01 mtu 1450 up",
                "addr add 10.244.1.1/24 dev cni0",
                "link add flannel.1 type vxlan id 1 dstport 8472 local 192.168.50.1 dev eth1 nolearning address 02:00:00:00:00:01 mtu 1450 up",
                "addr add 10.244.1.0/32 dev flannel.1",
                "neigh replace 10.244.10.0 lladdr 02:00:00:00:01:00 dev flannel.1 nud permanent",
                "fdb replace 02:00:00:00:01:00 dst 192.168.50.10 dev flannel.1 self permanent",
                "route add 10.244.10.0/24 via 10.244.10.0 dev flannel.1 onlink",
                "neigh replace 10.244.11.0 lladdr 02:00:00:00:01:01 dev flannel.1 nud permanent",
                "fdb replace 02:00:00:00:01:01 dst 192.168.50.11 dev flannel.1 self permanent",
                "route add 10.244.11.0/24 via 10.244.11.0 dev flannel.1 onlink",
            ]
        );
        assert!(lines(&mut k, &spec(Backend::Vxlan, 2)).is_empty());
    }

    #[test]
    fn the_service_range_is_routed_out_of_the_underlay_from_cni0s_address_and_kept() {
        let mut k = FakeKernel::default();
        let s = NodeSpec { service_cidr: Some("10.96.0.0/12".parse().unwrap()), ..spec(Backend::None, 0) };
        let route = "route add 10.96.0.0/12 dev eth1 src 10.244.1.1";
        assert_eq!(lines(&mut k, &s).last().map(String::as_str), Some(route));
        assert!(lines(&mut k, &s).is_empty());
        k.state.routes.retain(|r| r.route.dst.to_string() != "10.96.0.0/12");
        assert_eq!(lines(&mut k, &s), [route], "a deleted route is put back");
        // A route of someone else's in the range is the agent's to replace; a spec without one leaves it.
        let theirs = k.state.routes.iter_mut().find(|r| r.route.dst.to_string() == "10.96.0.0/12").expect("route");
        theirs.route.dev = BRIDGE.into();
        assert_eq!(lines(&mut k, &s), ["route del 10.96.0.0/12 dev cni0 src 10.244.1.1", route]);
        assert!(lines(&mut k, &spec(Backend::None, 0)).is_empty());
    }

    #[test]
    fn drift_is_repaired_with_only_the_missing_objects() {
        let mut k = FakeKernel::default();
        let s = spec(Backend::Vxlan, 2);
        lines(&mut k, &s);
        k.state.fdb.retain(|f| f.dst != Ipv4Addr::new(192, 168, 50, 11));
        k.state.neighbours.retain(|n| n.neighbour.ip != Ipv4Addr::new(10, 244, 10, 0));
        k.state.links.iter_mut().for_each(|l| l.up = l.name != BRIDGE);
        assert_eq!(
            lines(&mut k, &s),
            vec![
                "link set cni0 up",
                "neigh replace 10.244.10.0 lladdr 02:00:00:00:01:00 dev flannel.1 nud permanent",
                "fdb replace 02:00:00:00:01:01 dst 192.168.50.11 dev flannel.1 self permanent",
            ]
        );
        assert!(lines(&mut k, &s).is_empty());
    }

    #[test]
    fn removed_peer_loses_route_neighbour_and_fdb() {
        let mut k = FakeKernel::default();
        lines(&mut k, &spec(Backend::Vxlan, 2));
        let out = lines(&mut k, &spec(Backend::Vxlan, 1));
        assert_eq!(
            out,
            vec![
                "route del 10.244.11.0/24 via 10.244.11.0 dev flannel.1 onlink",
                "neigh del 10.244.11.0 dev flannel.1",
                "fdb del 02:00:00:00:01:01 dst 192.168.50.11 dev flannel.1",
            ]
        );
    }

    #[test]
    fn switching_vxlan_to_host_gw_deletes_the_device_and_keeps_the_bridge() {
        let mut k = FakeKernel::default();
        lines(&mut k, &spec(Backend::Vxlan, 1));
        let out = lines(&mut k, &spec(Backend::HostGw, 1));
        assert_eq!(
            out,
            vec!["link del flannel.1", "link set cni0 mtu 1500", "route add 10.244.10.0/24 via 192.168.50.10 dev eth1"]
        );
        assert!(k.state.link(VXLAN_DEV).is_none());
        assert!(k.state.neighbours.is_empty() && k.state.fdb.is_empty());
        assert!(lines(&mut k, &spec(Backend::HostGw, 1)).is_empty());
        // host-gw routes are plain routes on the underlay: switching away deletes them one by one.
        let out = lines(&mut k, &spec(Backend::None, 1));
        assert_eq!(out, vec!["route del 10.244.10.0/24 via 192.168.50.10 dev eth1"]);
    }

    #[test]
    fn udp_configures_the_tun_and_relies_on_its_connected_route() {
        let mut k = FakeKernel::default();
        // The forwarder creates flannel0 (a TUN belongs to the fd that made it); the planner configures it.
        k.state.links.push(LinkState {
            name: TUN_DEV.into(),
            index: 99,
            kind: LinkKind::Tun,
            mtu: 1500,
            up: false,
            mac: None,
            master: None,
            addrs: vec![],
        });
        let out = lines(&mut k, &spec(Backend::Udp, 1));
        assert_eq!(
            out,
            vec![
                "sysctl net.ipv4.ip_forward=1",
                "link add cni0 type bridge address 0a:58:0a:f4:01:01 mtu 1472 up",
                "addr add 10.244.1.1/24 dev cni0",
                "link set flannel0 mtu 1472 up",
                "addr add 10.244.1.0/16 dev flannel0",
                "route add 10.244.0.0/16 dev flannel0",
            ]
        );
        assert!(lines(&mut k, &spec(Backend::Udp, 1)).is_empty());
    }

    #[test]
    fn wrong_vxlan_parameters_recreate_the_device_and_its_peer_state() {
        let mut k = FakeKernel::default();
        lines(&mut k, &spec(Backend::Vxlan, 1));
        let mut moved = spec(Backend::Vxlan, 1);
        moved.underlay.address = "192.168.50.2".parse().unwrap();
        let out = lines(&mut k, &moved);
        assert_eq!(out[0], "link del flannel.1");
        assert!(out[1].starts_with("link add flannel.1 type vxlan id 1 dstport 8472 local 192.168.50.2"));
        assert_eq!(out.len(), 6, "{out:#?}");
        assert!(lines(&mut k, &moved).is_empty());
    }

    #[test]
    fn foreign_neighbours_that_are_not_permanent_are_left_alone() {
        let mut k = FakeKernel::default();
        let s = spec(Backend::Vxlan, 1);
        lines(&mut k, &s);
        k.state.neighbours.push(NeighbourState {
            neighbour: Neighbour { ip: "10.244.99.0".parse().unwrap(), mac: [2, 0, 0, 0, 0, 9], dev: VXLAN_DEV.into() },
            permanent: false,
        });
        assert!(lines(&mut k, &s).is_empty());
    }

    #[test]
    fn bad_mac_is_invalid_input() {
        let mut s = spec(Backend::Vxlan, 1);
        s.peers[0].vtep_mac = "zz".into();
        assert!(matches!(Desired::from_spec(&s), Err(NetError::InvalidInput(_))));
    }
}
