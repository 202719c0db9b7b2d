//! Sample NodeSpecs. `sample_node_spec` lays nodes out as the bundled topologies do (node<i> at 192.168.50.1<i>
//! on eth1, pod subnets 10.244.<i-1>.0/24 of 10.244.0.0/16); `loopback_node_spec` is a node whose underlay is
//! `lo`, for an agent run on the test host itself.

use std::net::Ipv4Addr;

use testbed_api::{Backend, NodeSpec, PeerSpec, UnderlaySpec};

/// The cluster CIDR every sample node's pod subnet is carved from.
pub const POD_CIDR: &str = "10.244.0.0/16";

/// Node `i` (from 1) of a sample lab: name, underlay IP, pod subnet and VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleNode {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_subnet: String,
    pub vtep_mac: String,
}

impl SampleNode {
    /// Node `i` (1..=99): `node<i>`, 192.168.50.<10+i>, 10.244.<i-1>.0/24, 0e:00:00:00:00:<i in hex>.
    pub fn numbered(i: u8) -> SampleNode {
        assert!((1..=99).contains(&i), "sample node {i}: numbered from 1 to 99");
        SampleNode {
            name: format!("node{i}"),
            underlay_ip: Ipv4Addr::new(192, 168, 50, 10 + i),
            pod_subnet: format!("10.244.{}.0/24", i - 1),
            vtep_mac: format!("0e:00:00:00:00:{i:02x}"),
        }
    }

    /// This node as a peer in another node's spec.
    pub fn peer(&self) -> PeerSpec {
        PeerSpec {
            name: self.name.clone(),
            underlay_ip: self.underlay_ip,
            pod_subnet: self.pod_subnet.parse().expect("sample pod subnet"),
            vtep_mac: self.vtep_mac.clone(),
        }
    }
}

/// The NodeSpec of node `me` in a sample lab of `nodes` nodes (every other node is a peer), on `backend`.
pub fn sample_node_spec(me: u8, nodes: u8, backend: Backend) -> NodeSpec {
    let node = SampleNode::numbered(me);
    NodeSpec {
        node_name: node.name.clone(),
        underlay: UnderlaySpec { interface: "eth1".into(), address: node.underlay_ip, prefix_len: 24, mtu: 1500 },
        pod_cidr: POD_CIDR.parse().expect("sample pod CIDR"),
        pod_subnet: node.pod_subnet.parse().expect("sample pod subnet"),
        backend,
        vtep_mac: node.vtep_mac,
        peers: (1..=nodes).filter(|i| *i != me).map(|i| SampleNode::numbered(i).peer()).collect(),
        service_cidr: None,
    }
}

/// A single node `n1` on `lo` (127.0.0.1/8) with backend none and pod subnet 10.244.1.0/24: an agent on the
/// test host itself needs no other interface and routes to no peer.
pub fn loopback_node_spec() -> NodeSpec {
    NodeSpec {
        node_name: "n1".into(),
        underlay: UnderlaySpec { interface: "lo".into(), address: Ipv4Addr::LOCALHOST, prefix_len: 8, mtu: 1500 },
        pod_cidr: POD_CIDR.parse().expect("sample pod CIDR"),
        pod_subnet: "10.244.1.0/24".parse().expect("sample pod subnet"),
        backend: Backend::None,
        vtep_mac: "02:00:00:00:00:01".into(),
        peers: Vec::new(),
        service_cidr: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_nodes_peer_with_every_other_node() {
        let spec = sample_node_spec(2, 3, Backend::Vxlan);
        assert_eq!(spec.node_name, "node2");
        assert_eq!(spec.underlay.address, Ipv4Addr::new(192, 168, 50, 12));
        assert_eq!(spec.pod_subnet.to_string(), "10.244.1.0/24");
        let peers: Vec<&str> = spec.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["node1", "node3"]);
        assert_eq!(spec.peers[1].vtep_mac, "0e:00:00:00:00:03");
    }

    #[test]
    fn samples_are_valid_node_specs() {
        for spec in
            [sample_node_spec(1, 2, Backend::Vxlan), sample_node_spec(1, 1, Backend::HostGw), loopback_node_spec()]
        {
            testbed_api::validate::validate_node(&spec).unwrap_or_else(|e| panic!("{spec:?}: {e:?}"));
        }
    }

    /// The agent's runtime tests send this spec as JSON: it must stay the document they used to write by hand.
    #[test]
    fn loopback_spec_serializes_to_the_agent_tests_document() {
        let want = serde_json::json!({
            "node_name": "n1",
            "underlay": {"interface": "lo", "address": "127.0.0.1", "prefix_len": 8, "mtu": 1500},
            "pod_cidr": "10.244.0.0/16", "pod_subnet": "10.244.1.0/24",
            "backend": "none", "vtep_mac": "02:00:00:00:00:01", "peers": []
        });
        assert_eq!(serde_json::to_value(loopback_node_spec()).expect("serialize"), want);
    }
}
