//! The real kernel behind the planner, over one rtnetlink connection, plus the per-pod veth work (over the
//! synchronous batching socket of `rawlink.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState as NudState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::plan::{
    Action, Fdb, Kernel, KernelState, LinkKind, LinkState, Mac, Neighbour, NeighbourState, Route, RouteState, BRIDGE,
    VXLAN_DEV,
};
use super::rawlink::{Mode, Req, RtSocket};
use super::NetError;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const BRIDGE_NF_CALL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn nl(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let step = step.into();
    move |source| NetError::Netlink { step, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Treats "already there" (EEXIST) as success: the add is idempotent.
fn exists_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Treats "already gone" (ENOENT, ESRCH, ENODEV) as success: the delete is idempotent.
fn gone_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => Ok(()),
        other => other,
    }
}

pub struct NetlinkKernel {
    pub handle: Handle,
}

impl NetlinkKernel {
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetError::Netlink { step: format!("get link {name}"), source: e }),
        }
    }

    async fn require_index(&self, name: &str) -> Result<u32, NetError> {
        self.link_index(name).await?.ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    /// All links with their IPv4 addresses, as the planner and `observe` see them.
    pub async fn links(&self) -> Result<Vec<LinkState>, NetError> {
        let msgs: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(nl("dump links"))?;
        let names: HashMap<u32, String> =
            msgs.iter().filter_map(|m| link_name(m).map(|n| (m.header.index, n.to_string()))).collect();
        let mut addrs: HashMap<u32, Vec<Ipv4Net>> = HashMap::new();
        let addr_msgs: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await.map_err(nl("dump addresses"))?;
        for m in addr_msgs {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(net) = ip.and_then(|ip| Ipv4Net::new(ip, m.header.prefix_len).ok()) {
                addrs.entry(m.header.index).or_default().push(net);
            }
        }
        Ok(msgs.iter().filter_map(|m| link_state(m, &names, &mut addrs)).collect())
    }

    pub async fn routes(&self, owned: &[Ipv4Net], names: &HashMap<u32, String>) -> Result<Vec<RouteState>, NetError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> =
            self.handle.route().get(query).execute().try_collect().await.map_err(nl("dump routes"))?;
        let mut out = Vec::new();
        for m in msgs {
            let h = &m.header;
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(h.table));
            if h.address_family != AddressFamily::Inet
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || h.kind != RouteType::Unicast
            {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            let mut src = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Ok(dst) = Ipv4Net::new(dst, h.destination_prefix_length) else { continue };
            if !owned.iter().any(|o| o.contains(&dst)) {
                continue;
            }
            let dev = oif.and_then(|i| names.get(&i).cloned()).unwrap_or_default();
            // The kernel's routes from an address carry that address as their src; the planner wants them
            // as the address implies them (flannel0's pod CIDR route), so their src is left out.
            let kernel_proto = h.protocol == RouteProtocol::Kernel;
            out.push(RouteState {
                route: Route {
                    dst,
                    gateway,
                    dev,
                    onlink: h.flags.contains(RouteFlags::Onlink),
                    src: if kernel_proto { None } else { src },
                },
                kernel_proto,
            });
        }
        Ok(out)
    }

    /// IPv4 neighbours and bridge FDB entries of one device.
    pub async fn neighbours_and_fdb(&self, dev: &str, index: u32) -> Result<(Vec<NeighbourState>, Vec<Fdb>), NetError> {
        let mut neighbours = Vec::new();
        let msgs: Vec<NeighbourMessage> =
            self.handle.neighbours().get().execute().try_collect().await.map_err(nl("dump neighbours"))?;
        for m in msgs.iter().filter(|m| m.header.ifindex == index && m.header.family == AddressFamily::Inet) {
            if let (Some(IpAddr::V4(ip)), Some(mac)) = (neigh_dst(m), neigh_mac(m)) {
                let permanent = m.header.state == NudState::Permanent;
                neighbours.push(NeighbourState { neighbour: Neighbour { ip, mac, dev: dev.into() }, permanent });
            }
        }
        let mut fdb = Vec::new();
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump bridge fdb"))?;
        for m in msgs.iter().filter(|m| m.header.ifindex == index) {
            if let (Some(IpAddr::V4(dst)), Some(mac)) = (neigh_dst(m), neigh_mac(m)) {
                fdb.push(Fdb { mac, dst, dev: dev.into() });
            }
        }
        Ok((neighbours, fdb))
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        if let Some(index) = self.link_index(name).await? {
            gone_ok(self.handle.link().del(index).execute().await).map_err(nl(format!("delete link {name}")))?;
        }
        Ok(())
    }

    /// Master cni0 and up, then hairpin: for a veth found detached or down.
    pub async fn enslave(&self, host: &str, bridge: u32) -> Result<(), NetError> {
        // Index 0 + IFLA_IFNAME: the kernel looks the link up by name, saving a round trip.
        let set = LinkUnspec::new_with_name(host).controller(bridge).up().build();
        self.handle.link().set(set).execute().await.map_err(nl(format!("set {host} master {BRIDGE} up")))?;
        self.hairpin(host).await
    }

    /// `bridge link set dev <veth> hairpin on` (IFLA_BRPORT_MODE): a pod can reach itself through a service
    /// address that the bridge sends back out the same port.
    async fn hairpin(&self, host: &str) -> Result<(), NetError> {
        let port = LinkBridgePort::new(0).name(host).hairpin(true).build();
        self.handle.link().set_port(port).execute().await.map_err(nl(format!("set {host} hairpin on")))
    }

    /// Sets a link's MTU (a pod's host veth, when a backend switch changed the pod MTU).
    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        let set = LinkUnspec::new_with_name(name).mtu(mtu).build();
        self.handle.link().set(set).execute().await.map_err(nl(format!("set {name} mtu {mtu}")))
    }

    pub async fn bridge_index(&self) -> Result<u32, NetError> {
        self.require_index(BRIDGE).await
    }

    pub async fn delete_pod_veth(&self, host: &str) -> Result<(), NetError> {
        self.delete_link(host).await
    }
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_state(
    m: &LinkMessage,
    names: &HashMap<u32, String>,
    addrs: &mut HashMap<u32, Vec<Ipv4Net>>,
) -> Option<LinkState> {
    let name = link_name(m)?.to_string();
    let mut mtu = 0;
    let mut mac = None;
    let mut master = None;
    let mut kind = LinkKind::Other(String::new());
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Address(bytes) => mac = <Mac>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Controller(i) => master = names.get(i).cloned(),
            LinkAttribute::LinkInfo(infos) => kind = link_kind(infos, names),
            _ => {}
        }
    }
    Some(LinkState {
        addrs: addrs.remove(&m.header.index).unwrap_or_default(),
        name,
        index: m.header.index,
        kind,
        mtu,
        up: m.header.flags.contains(LinkFlags::Up),
        mac,
        master,
    })
}

fn link_kind(infos: &[LinkInfo], names: &HashMap<u32, String>) -> LinkKind {
    let mut kind = LinkKind::Other(String::new());
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
            LinkInfo::Kind(InfoKind::Tun) => kind = LinkKind::Tun,
            LinkInfo::Kind(InfoKind::Veth) => kind = LinkKind::Veth,
            // The data attribute (below) fills in the details; a vxlan without it compares unequal to any spec.
            LinkInfo::Kind(InfoKind::Vxlan) if !matches!(kind, LinkKind::Vxlan { .. }) => {
                kind = LinkKind::Vxlan {
                    vni: 0,
                    port: 0,
                    local: Ipv4Addr::UNSPECIFIED,
                    dev: String::new(),
                    learning: true,
                };
            }
            LinkInfo::Kind(InfoKind::Vxlan) => {}
            LinkInfo::Kind(other) => kind = LinkKind::Other(other.to_string()),
            LinkInfo::Data(InfoData::Vxlan(data)) => {
                let (mut vni, mut port, mut local, mut dev, mut learning) =
                    (0, 0, Ipv4Addr::UNSPECIFIED, String::new(), true);
                for d in data {
                    match d {
                        InfoVxlan::Id(v) => vni = *v,
                        InfoVxlan::Port(p) => port = *p,
                        InfoVxlan::Local(ip) => local = *ip,
                        InfoVxlan::Link(i) => dev = names.get(i).cloned().unwrap_or_default(),
                        InfoVxlan::Learning(l) => learning = *l,
                        _ => {}
                    }
                }
                kind = LinkKind::Vxlan { vni, port, local, dev, learning };
            }
            _ => {}
        }
    }
    kind
}

fn neigh_dst(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        // AF_BRIDGE (FDB) messages carry the vxlan destination as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(|o| IpAddr::V4(Ipv4Addr::from(o)))
        }
        _ => None,
    })
}

fn neigh_mac(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <Mac>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

fn route_message(r: &Route, oif: u32) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .output_interface(oif);
    if let Some(gw) = r.gateway {
        b = b.gateway(gw);
    }
    if r.onlink {
        b = b.onlink();
    }
    if let Some(src) = r.src {
        b = b.pref_source(src);
    }
    b.build()
}

fn neighbour_message(family: AddressFamily, index: u32, ip: Ipv4Addr, mac: Option<&Mac>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    if let Some(mac) = mac {
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

impl Kernel for NetlinkKernel {
    async fn snapshot(&mut self, owned: &[Ipv4Net]) -> Result<KernelState, NetError> {
        let ip_forward =
            std::fs::read_to_string(IP_FORWARD).map_err(|e| NetError::io(format!("read {IP_FORWARD}"), e))?.trim()
                == "1";
        let bridge_nf_call = match std::fs::read_to_string(BRIDGE_NF_CALL) {
            Ok(v) => Some(v.trim() == "1"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(NetError::io(format!("read {BRIDGE_NF_CALL}"), e)),
        };
        let links = self.links().await?;
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let routes = self.routes(owned, &names).await?;
        let (neighbours, fdb) = match links.iter().find(|l| l.name == VXLAN_DEV) {
            Some(vx) => self.neighbours_and_fdb(VXLAN_DEV, vx.index).await?,
            None => (Vec::new(), Vec::new()),
        };
        Ok(KernelState { ip_forward, bridge_nf_call, links, routes, neighbours, fdb })
    }

    async fn execute(&mut self, action: &Action) -> Result<(), NetError> {
        let step = action.to_string();
        let h = &self.handle;
        match action {
            Action::EnableIpForward => {
                std::fs::write(IP_FORWARD, "1").map_err(|e| NetError::io(step, e))?;
            }
            Action::EnableBridgeNfCall => {
                std::fs::write(BRIDGE_NF_CALL, "1").map_err(|e| NetError::io(step, e))?;
            }
            Action::DeleteRoute(r) => {
                let oif = self.require_index(&r.dev).await?;
                gone_ok(h.route().del(route_message(r, oif)).execute().await).map_err(nl(step))?;
            }
            Action::DeleteNeighbour(n) => {
                let index = self.require_index(&n.dev).await?;
                let msg = neighbour_message(AddressFamily::Inet, index, n.ip, None);
                gone_ok(h.neighbours().del(msg).execute().await).map_err(nl(step))?;
            }
            Action::DeleteFdb(e) => {
                let index = self.require_index(&e.dev).await?;
                let mut msg = neighbour_message(AddressFamily::Bridge, index, e.dst, Some(&e.mac));
                msg.header.flags = NeighbourFlags::Own;
                gone_ok(h.neighbours().del(msg).execute().await).map_err(nl(step))?;
            }
            Action::DeleteLink(name) => self.delete_link(name).await?,
            Action::CreateLink(l) => {
                let msg = match &l.kind {
                    LinkKind::Bridge => {
                        let mut b = LinkBridge::new(&l.name).mtu(l.mtu).up();
                        if let Some(mac) = l.mac {
                            b = b.address(mac.to_vec());
                        }
                        b.build()
                    }
                    LinkKind::Vxlan { vni, port, local, dev, learning } => {
                        let dev_index = self.require_index(dev).await?;
                        let mut b = LinkVxlan::new(&l.name, *vni)
                            .dev(dev_index)
                            .port(*port)
                            .local(*local)
                            .learning(*learning)
                            .mtu(l.mtu)
                            .up();
                        if let Some(mac) = l.mac {
                            b = b.address(mac.to_vec());
                        }
                        b.build()
                    }
                    // flannel0 belongs to the udp forwarder's fd (see udp.rs); if it is missing here the
                    // forwarder could not create it.
                    LinkKind::Tun | LinkKind::Veth | LinkKind::Other(_) => {
                        return Err(NetError::NoSuchLink(format!(
                            "{} (created by its owner, not by reconcile)",
                            l.name
                        )))
                    }
                };
                h.link().add(msg).execute().await.map_err(nl(step))?;
            }
            Action::SetLink { name, mtu, mac, up } => {
                let index = self.require_index(name).await?;
                let mut b = LinkUnspec::new_with_index(index);
                if let Some(mtu) = mtu {
                    b = b.mtu(*mtu);
                }
                if let Some(mac) = mac {
                    b = b.address(mac.to_vec());
                }
                if *up {
                    b = b.up();
                }
                h.link().set(b.build()).execute().await.map_err(nl(step))?;
            }
            Action::DeleteAddress { dev, addr } => {
                let index = self.require_index(dev).await?;
                let mut msg = AddressMessage::default();
                msg.header.family = AddressFamily::Inet;
                msg.header.prefix_len = addr.prefix_len();
                msg.header.index = index;
                msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
                msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
                gone_ok(h.address().del(msg).execute().await).map_err(nl(step))?;
            }
            Action::AddAddress { dev, addr } => {
                let index = self.require_index(dev).await?;
                exists_ok(h.address().add(index, IpAddr::V4(addr.addr()), addr.prefix_len()).execute().await)
                    .map_err(nl(step))?;
            }
            Action::SetNeighbour(n) => {
                let index = self.require_index(&n.dev).await?;
                h.neighbours()
                    .add(index, IpAddr::V4(n.ip))
                    .link_layer_address(&n.mac)
                    .state(NudState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(step))?;
            }
            Action::SetFdb(e) => {
                let index = self.require_index(&e.dev).await?;
                h.neighbours()
                    .add_bridge(index, &e.mac)
                    .destination(IpAddr::V4(e.dst))
                    .flags(NeighbourFlags::Own)
                    .state(NudState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl(step))?;
            }
            Action::AddRoute(r) => {
                let oif = self.require_index(&r.dev).await?;
                // EEXIST: the kernel already made it from an address (flannel0's pod CIDR route).
                exists_ok(h.route().add(route_message(r, oif)).execute().await).map_err(nl(step))?;
            }
        }
        Ok(())
    }
}

/// Creates the host/pod veth pair over the synchronous socket `node` (node netns): the pod end is born as
/// `eth0` inside the pod's netns, the host end enslaved to cni0 (`bridge`) but still down, hairpin on, in one
/// batch. Then IPv6 is turned off on the host end before it goes up: the cluster is IPv4-only, and a veth
/// with IPv6 adds a link-local and a multicast route to the node's IPv6 FIB, which every later netdev event
/// walks (that made attaching a pod O(pods)). `Ok(false)`: a link with that name exists already.
pub fn create_pod_veth(
    node: &mut RtSocket,
    ipv6_conf: Option<&std::fs::File>,
    host: &str,
    netns: &OwnedFd,
    mtu: u32,
    bridge: u32,
) -> Result<bool, NetError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new().name("eth0").mtu(mtu).setns_by_fd(netns.as_raw_fd()).build();
    let create = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .controller(bridge)
        .build();
    let hairpin = LinkBridgePort::new(0).name(host).hairpin(true).build();
    let created = node.batch(&[
        Req::new(RouteNetlinkMessage::NewLink(create), Mode::CreateNew, format!("create veth {host}")),
        Req::new(RouteNetlinkMessage::NewLink(hairpin), Mode::Plain, format!("set {host} hairpin on")),
    ]);
    match created {
        Err(NetError::Netlink { source, .. }) if errno(&source) == Some(libc::EEXIST) => return Ok(false),
        other => other?,
    };
    if let Some(conf) = ipv6_conf {
        disable_ipv6(conf, host)?;
    }
    let up = LinkUnspec::new_with_name(host).up().build();
    node.batch(&[Req::new(RouteNetlinkMessage::SetLink(up), Mode::Plain, format!("set {host} up"))])?;
    Ok(true)
}

pub const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

/// `net.ipv6.conf.<dev>.disable_ipv6 = 1`, through `conf`, an open IPV6_CONF directory of the node netns.
fn disable_ipv6(conf: &std::fs::File, dev: &str) -> Result<(), NetError> {
    // The open directory as a path: the lookup starts there instead of at /proc/sys/net.
    let path = format!("/proc/thread-self/fd/{}/{dev}/disable_ipv6", conf.as_raw_fd());
    std::fs::write(&path, "1").map_err(|e| NetError::io(format!("write {IPV6_CONF}/{dev}/disable_ipv6"), e))
}

/// Inside the pod's netns, over a socket opened there: eth0's MTU.
pub fn set_pod_eth0_mtu(pod: &mut RtSocket, mtu: u32) -> Result<(), NetError> {
    let set = LinkUnspec::new_with_name("eth0").mtu(mtu).build();
    pod.batch(&[Req::new(RouteNetlinkMessage::SetLink(set), Mode::Plain, format!("pod: set eth0 mtu {mtu}"))])?;
    Ok(())
}

/// Inside the pod's netns, over a socket opened there: lo up; eth0 address, up; default route via the
/// bridge. Two batches (eth0's index is needed for the second). Idempotent. `NoSuchLink("eth0")` when the
/// pod has no eth0.
pub fn configure_pod_side(pod: &mut RtSocket, addr: Ipv4Net, gateway: Ipv4Addr) -> Result<(), NetError> {
    // Loopback is ifindex 1 in every network namespace (LOOPBACK_IFINDEX).
    let lo_up = LinkUnspec::new_with_index(1).up().build();
    let mut get_eth0 = LinkMessage::default();
    get_eth0.attributes.push(LinkAttribute::IfName("eth0".into()));
    let replies = match pod.batch(&[
        Req::new(RouteNetlinkMessage::SetLink(lo_up), Mode::Plain, "pod: set lo up"),
        Req::new(RouteNetlinkMessage::GetLink(get_eth0), Mode::Plain, "pod: get link eth0"),
    ]) {
        Err(NetError::Netlink { source, .. }) if errno(&source) == Some(libc::ENODEV) => {
            return Err(NetError::NoSuchLink("eth0".into()))
        }
        other => other?,
    };
    let eth0 = match replies.get(1) {
        Some(Some(RouteNetlinkMessage::NewLink(m))) => m.header.index,
        _ => return Err(NetError::NoSuchLink("eth0".into())),
    };
    let mut address = AddressMessage::default();
    address.header.family = AddressFamily::Inet;
    address.header.prefix_len = addr.prefix_len();
    address.header.index = eth0;
    address.attributes.push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
    address.attributes.push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
    // IPv4-only cluster: no IPv6 address generation on eth0 (set while it is still down), so the pod sends
    // no DAD, router solicitation or MLD multicast, which the bridge would flood to every other pod (that
    // made each new pod cost O(pods) in softirq and workqueue time).
    let mut no_v6 = LinkMessage::default();
    no_v6.header.index = eth0;
    no_v6.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])]));
    let up = LinkUnspec::new_with_index(eth0).up().build();
    let default = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(eth0).gateway(gateway).build();
    pod.batch(&[
        Req::new(RouteNetlinkMessage::SetLink(no_v6), Mode::Plain, "pod: eth0 addrgenmode none"),
        Req::new(RouteNetlinkMessage::NewAddress(address), Mode::Create, format!("pod: addr add {addr} dev eth0")),
        Req::new(RouteNetlinkMessage::SetLink(up), Mode::Plain, "pod: set eth0 up"),
        Req::new(RouteNetlinkMessage::NewRoute(default), Mode::Create, format!("pod: route add default via {gateway}")),
    ])?;
    Ok(())
}
