//! Fixtures for the lab and provider tests.

use crate::plan::{ClusterPlan, ImageRef, Impairment, NetworkPlan, NicPlan, NodePlan, Plan};

/// A two-node lab `t` on one underlay network with a 5 ms delay.
pub fn test_plan() -> Plan {
    let nic = |node: usize| NicPlan {
        network: "underlay".into(),
        guest_interface: "eth1".into(),
        tap: format!("tb-t-n{node}"),
        mac: format!("52:54:00:00:00:0{node}"),
        ip: format!("192.168.50.{}", 10 + node).parse().unwrap(),
        prefix_len: 24,
        mtu: 1500,
    };
    let node = |i: usize| NodePlan {
        name: format!("node{i}"),
        index: i - 1,
        cpus: 1,
        memory_mib: 512,
        image: ImageRef::Named("debian-12".into()),
        kernel_args: vec![],
        ssh_port: 22000 + i as u16,
        nics: vec![nic(i)],
        pod_subnet: format!("10.244.{i}.0/24").parse().unwrap(),
        vtep_mac: format!("02:00:00:00:00:0{i}"),
    };
    Plan {
        version: 1,
        lab: "t".into(),
        topology_hash: "x".into(),
        netns: "tb-t".into(),
        networks: vec![NetworkPlan {
            name: "underlay".into(),
            bridge: "tb-t-br0".into(),
            cidr: "192.168.50.0/24".parse().unwrap(),
            mtu: 1500,
            impair: Impairment { delay_ms: 5.0, ..Default::default() },
        }],
        nodes: vec![node(1), node(2)],
        cluster: ClusterPlan {
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            node_subnet_prefix: 24,
            backend: testbed_api::Backend::Vxlan,
            control_plane: vec!["node1".into()],
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            node_lifecycle: Default::default(),
        },
        pods: vec![],
        tests: vec![],
        namespaces: vec![],
        deployments: vec![],
        services: vec![],
        network_policies: vec![],
    }
}
