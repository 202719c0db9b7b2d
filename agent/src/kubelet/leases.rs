//! Subnet leases as flannel's kube subnet manager keeps them: the lease is the Node object, its
//! `spec.podCIDR` the subnet and three annotations the rest (the underlay address, the backend and, for
//! vxlan, the VTEP MAC). A node publishes its own (`annotations`); every node turns the others' into the
//! peers of its NodeSpec (`peers`). No I/O here: `subnets.rs` applies what this decides.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use testbed_api::objects::Node;
use testbed_api::{Backend, NodeSpec, PeerSpec};

pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// flannel's default, and the only VNI `flannel.1` is created with (net/plan.rs).
const VNI: u32 = 1;

/// flannel's vxlan `backend-data` document (its field names).
#[derive(Debug, Serialize, Deserialize)]
struct VxlanData {
    #[serde(rename = "VNI")]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

/// What a node publishes on its Node for the NodeSpec it runs.
pub fn annotations(spec: &NodeSpec) -> BTreeMap<String, String> {
    let data = match spec.backend {
        Backend::Vxlan => serde_json::json!({"VNI": VNI, "VtepMAC": spec.vtep_mac}).to_string(),
        // flannel's host-gw and udp backends publish no data.
        Backend::HostGw | Backend::Udp | Backend::None => "null".into(),
    };
    BTreeMap::from([
        (PUBLIC_IP.to_string(), spec.underlay.address.to_string()),
        (BACKEND_TYPE.to_string(), spec.backend.as_str().to_string()),
        (BACKEND_DATA.to_string(), data),
    ])
}

/// The part of a Node that is its subnet lease: what peers are built from, so that a status heartbeat of
/// another node is not a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetLease {
    pub pod_cidr: Option<String>,
    pub public_ip: Option<String>,
    pub backend_type: Option<String>,
    pub backend_data: Option<String>,
}

impl SubnetLease {
    pub fn of(node: &Node) -> Self {
        let a = |k: &str| node.metadata.annotations.get(k).cloned();
        Self {
            pod_cidr: node.spec.pod_cidr.clone(),
            public_ip: a(PUBLIC_IP),
            backend_type: a(BACKEND_TYPE),
            backend_data: a(BACKEND_DATA),
        }
    }
}

/// Every node's lease, by node name.
pub type Leases = BTreeMap<String, SubnetLease>;

/// The peers of `own` from the leases (by node name, so the first of two conflicting leases wins), and
/// each lease left out with the reason. The node's own lease is left out silently. Every peer taken passes
/// `validate_node` together with the earlier ones: one bad lease must not make the whole spec refused.
/// A planned peer (`own.peers`) named in `deleted`, a Node the API held and no longer does, is left out:
/// the node was removed from the lab.
pub fn peers(leases: &Leases, own: &NodeSpec, deleted: &BTreeSet<String>) -> (Vec<PeerSpec>, BTreeMap<String, String>) {
    let mut taken = Vec::new();
    let mut skipped = BTreeMap::new();
    for (name, lease) in leases.iter().filter(|(name, _)| **name != own.node_name) {
        let peer = match peer_of(name, lease, own.backend) {
            Ok(p) => p,
            Err(reason) => {
                skipped.insert(name.clone(), reason);
                continue;
            }
        };
        let mut trial = NodeSpec { peers: taken.clone(), ..own.clone() };
        trial.peers.push(peer.clone());
        match testbed_api::validate::validate_node(&trial) {
            Ok(()) => taken.push(peer),
            Err(e) => {
                skipped.insert(name.clone(), e.message);
            }
        }
    }
    // The planned peers (`own.peers`) no lease names, unless one would clash with the leases' (a subnet or
    // address a lease now holds): see subnets.rs for why they stay.
    for planned in &own.peers {
        if taken.iter().any(|p| p.name == planned.name) || deleted.contains(&planned.name) {
            continue;
        }
        let mut trial = NodeSpec { peers: taken.clone(), ..own.clone() };
        trial.peers.push(planned.clone());
        if testbed_api::validate::validate_node(&trial).is_ok() {
            taken.push(planned.clone());
        }
    }
    (taken, skipped)
}

fn peer_of(name: &str, lease: &SubnetLease, own: Backend) -> Result<PeerSpec, String> {
    let cidr = lease.pod_cidr.as_deref().ok_or("no spec.podCIDR yet")?;
    let pod_subnet: Ipv4Net = cidr.parse().map_err(|_| format!("spec.podCIDR `{cidr}` is not an IPv4 CIDR"))?;
    let ip = lease.public_ip.as_deref().ok_or(format!("no {PUBLIC_IP} annotation yet"))?;
    let underlay_ip: Ipv4Addr = ip.parse().map_err(|_| format!("{PUBLIC_IP} `{ip}` is not an IPv4 address"))?;
    let kind = lease.backend_type.as_deref().ok_or(format!("no {BACKEND_TYPE} annotation yet"))?;
    let backend: Backend = kind.parse().map_err(|e| format!("{BACKEND_TYPE}: {e}"))?;
    if backend != own {
        return Err(format!("backend {backend}, this node runs {own}"));
    }
    let vtep_mac = if backend == Backend::Vxlan {
        let data = lease.backend_data.as_deref().ok_or(format!("no {BACKEND_DATA} annotation yet"))?;
        let data: VxlanData = serde_json::from_str(data).map_err(|e| format!("{BACKEND_DATA}: {e}"))?;
        if data.vni != VNI {
            return Err(format!("VNI {}, flannel.1 is VNI {VNI}", data.vni));
        }
        data.vtep_mac
    } else {
        // Unused by these backends, but validate_node wants a unicast MAC on every peer: a locally
        // administered one from the address, as cni0's.
        let o = underlay_ip.octets();
        format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    };
    Ok(PeerSpec { name: name.to_string(), underlay_ip, pod_subnet, vtep_mac })
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_test_support::node_spec::{sample_node_spec, SampleNode};

    /// Node `i`'s lease as its agent publishes it on `backend`.
    fn lease(i: u8, backend: Backend) -> SubnetLease {
        let spec = sample_node_spec(i, 1, backend);
        let a = annotations(&spec);
        SubnetLease {
            pod_cidr: Some(spec.pod_subnet.to_string()),
            public_ip: a.get(PUBLIC_IP).cloned(),
            backend_type: a.get(BACKEND_TYPE).cloned(),
            backend_data: a.get(BACKEND_DATA).cloned(),
        }
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn leases(n: u8, backend: Backend) -> Leases {
        (1..=n).map(|i| (format!("node{i}"), lease(i, backend))).collect()
    }

    #[test]
    fn leases_give_the_plans_peers_without_the_own_node() {
        for backend in [Backend::Vxlan, Backend::HostGw, Backend::Udp] {
            let own = sample_node_spec(2, 3, backend);
            let (peers, skipped) = peers(&leases(3, backend), &own, &none());
            assert!(skipped.is_empty(), "{skipped:?}");
            let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["node1", "node3"]);
            for (p, planned) in peers.iter().zip(&own.peers) {
                assert_eq!((p.underlay_ip, p.pod_subnet), (planned.underlay_ip, planned.pod_subnet));
            }
            if backend == Backend::Vxlan {
                assert_eq!(peers, own.peers, "vxlan: the VTEP MACs too");
            }
        }
    }

    #[test]
    fn missing_or_invalid_annotations_and_other_backends_are_skipped_with_a_reason() {
        let own = sample_node_spec(1, 1, Backend::Vxlan);
        let mut all = leases(3, Backend::Vxlan);
        // Node name, what is wrong with its lease, the reason expected.
        type Case = (&'static str, fn(&mut SubnetLease), &'static str);
        let cases: [Case; 9] = [
            ("no-cidr", |l| l.pod_cidr = None, "no spec.podCIDR"),
            ("bad-cidr", |l| l.pod_cidr = Some("10.244.9.0/33".into()), "not an IPv4 CIDR"),
            ("no-ip", |l| l.public_ip = None, "no flannel.alpha.coreos.com/public-ip"),
            ("bad-ip", |l| l.public_ip = Some("fe80::1".into()), "not an IPv4 address"),
            ("no-type", |l| l.backend_type = None, "no flannel.alpha.coreos.com/backend-type"),
            ("host-gw", |l| l.backend_type = Some("host-gw".into()), "backend host-gw, this node runs vxlan"),
            ("bad-data", |l| l.backend_data = Some("{\"VNI\":1}".into()), "missing field `VtepMAC`"),
            ("vni", |l| l.backend_data = Some("{\"VNI\":4,\"VtepMAC\":\"0e:00:00:00:00:09\"}".into()), "VNI 4"),
            ("mcast", |l| l.backend_data = Some("{\"VNI\":1,\"VtepMAC\":\"01:00:00:00:00:09\"}".into()), "multicast"),
        ];
        for (i, (name, change, _)) in cases.iter().enumerate() {
            let mut l = lease(10 + i as u8, Backend::Vxlan);
            change(&mut l);
            all.insert(name.to_string(), l);
        }
        let (peers, skipped) = peers(&all, &own, &none());
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node2", "node3"]);
        for (name, _, reason) in cases {
            assert!(skipped.get(name).is_some_and(|r| r.contains(reason)), "{name}: {:?}", skipped.get(name));
        }
    }

    #[test]
    fn a_lease_conflicting_with_an_earlier_one_or_the_own_subnet_is_skipped() {
        let own = sample_node_spec(1, 1, Backend::Vxlan);
        let mut all = leases(2, Backend::Vxlan);
        let mut same_subnet = lease(5, Backend::Vxlan);
        same_subnet.pod_cidr = Some(SampleNode::numbered(2).pod_subnet);
        all.insert("node5".into(), same_subnet);
        let mut mine = lease(6, Backend::Vxlan);
        mine.pod_cidr = Some(own.pod_subnet.to_string());
        all.insert("node6".into(), mine);
        let (peers, skipped) = peers(&all, &own, &none());
        assert_eq!(peers.len(), 1);
        assert!(skipped["node5"].contains("overlaps"), "{skipped:?}");
        assert!(skipped["node6"].contains("this node's pod_subnet"), "{skipped:?}");
    }

    #[test]
    fn planned_peers_stay_unless_a_lease_names_them_or_takes_their_subnet() {
        let own = sample_node_spec(2, 3, Backend::Vxlan);
        // No lease yet: the plan's peers.
        assert_eq!(peers(&Leases::new(), &own, &none()).0, own.peers);
        // node3's lease moved its underlay address: the lease wins; node1 stays as planned.
        let mut moved = lease(3, Backend::Vxlan);
        moved.public_ip = Some("192.168.99.3".into());
        let only3: Leases = [("node3".to_string(), moved)].into();
        let (got, _) = peers(&only3, &own, &none());
        let names: Vec<&str> = got.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node3", "node1"]);
        assert_eq!(got[0].underlay_ip.to_string(), "192.168.99.3");
        // Another node now holds node1's subnet: the planned node1 gives way.
        let mut taker = lease(7, Backend::Vxlan);
        taker.pod_cidr = Some(own.peers[0].pod_subnet.to_string());
        let (got, _) = peers(&[("node7".to_string(), taker)].into(), &own, &none());
        let names: Vec<&str> = got.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["node7", "node3"]);
    }

    #[test]
    fn a_planned_peer_whose_node_the_api_deleted_goes() {
        let own = sample_node_spec(1, 3, Backend::Vxlan);
        let mut all = leases(3, Backend::Vxlan);
        all.remove("node3");
        // Not registered yet: the planned node3 stays as a floor.
        let names = |p: &[PeerSpec]| p.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&peers(&all, &own, &none()).0), ["node2", "node3"]);
        // Its Node was seen and then deleted: it left the lab.
        let deleted = BTreeSet::from(["node3".to_string()]);
        assert_eq!(names(&peers(&all, &own, &deleted).0), ["node2"]);
    }
}
