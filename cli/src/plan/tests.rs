//! Tests of planning: addresses, names, ports and subnets assigned from checked topologies (the topologies
//! and helpers come from the topology tests).

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::topology::tests::{base_with, topologies_dir, BASE, FULL};

fn plan_of(src: &str) -> Result<Plan, TopologyError> {
    topology::check_source(Path::new("t.yaml"), src.as_bytes()).map(|checked| build(&checked))
}

#[test]
fn minimal_topology_plans_with_defaults() {
    let plan = plan_of(BASE).expect("valid");
    assert_eq!(plan.version, 3);
    assert_eq!(plan.lab, "lab");
    assert_eq!(plan.netns, "tb-lab");
    assert_eq!(plan.nodes.len(), 2);
    let n1 = &plan.nodes[0];
    assert_eq!((n1.name.as_str(), n1.index, n1.cpus, n1.memory_mib), ("node1", 0, 1, 512));
    assert_eq!(n1.image, ImageRef::Named("debian-12".into()));
    assert_eq!(n1.nics[0].ip.to_string(), "192.168.50.11");
    assert_eq!(plan.nodes[1].nics[0].ip.to_string(), "192.168.50.12");
    assert_eq!(n1.nics[0].guest_interface, "eth1");
    assert_eq!(n1.pod_subnet.to_string(), "10.244.0.0/24");
    assert_eq!(plan.nodes[1].pod_subnet.to_string(), "10.244.1.0/24");
    assert_eq!(plan.cluster.backend, testbed_api::Backend::Vxlan);
    assert_eq!(plan.nodes[1].ssh_port, n1.ssh_port + 1);
    assert_eq!(plan.topology_hash.len(), 64);
    // The control plane defaults to the first node; its API server listens on that node's underlay address.
    assert_eq!(plan.cluster.control_plane, ["node1"]);
    assert_eq!(plan.api_servers(), ["https://192.168.50.11:6443"]);
    // The plan feeds the agent: the NodeSpec it makes passes the agent's own validation.
    for n in &plan.nodes {
        let spec = plan.node_spec(n, plan.cluster.backend);
        testbed_api::validate::validate_node(&spec).expect("node spec valid");
        assert_eq!(spec.peers.len(), 1);
    }
}

#[test]
fn full_topology_plans_every_field() {
    let plan = plan_of(FULL).expect("valid");
    let a = &plan.nodes[0];
    let b = &plan.nodes[1];
    assert_eq!((a.cpus, a.memory_mib, b.cpus, b.memory_mib), (2, 768, 1, 1024));
    assert!(matches!(&b.image, ImageRef::Url { sha256, .. } if sha256.starts_with("abcdef")));
    // The underlay (wan) is always the first NIC, whatever order the node lists its networks in.
    let nets: Vec<_> = a.nics.iter().map(|n| (n.network.as_str(), n.guest_interface.as_str(), n.mtu)).collect();
    assert_eq!(nets, vec![("wan", "eth1", 1500), ("lan", "eth2", 9000)]);
    assert_eq!(a.nics[0].ip.to_string(), "192.168.61.11");
    assert_eq!(a.nics[0].prefix_len, 26);
    let wan = &plan.networks[1];
    assert_eq!((wan.impair.delay_ms, wan.impair.jitter_ms, wan.impair.loss_percent), (5.0, 1.0, 0.1));
    assert_eq!(wan.impair.rate_mbit, Some(100));
    assert_eq!(plan.cluster.node_subnet_prefix, 26);
    assert_eq!(b.pod_subnet.to_string(), "10.250.0.64/26");
    assert_eq!(plan.cluster.backend, testbed_api::Backend::HostGw);
    assert_eq!(plan.pods[0].node, "b");
    assert_eq!(plan.pods[0].spec.containers[0].pids_limit, Some(64));
    assert_eq!(plan.tests.len(), 3);
    // plan.json carries the tests, and files written before they were planned still load.
    let json = serde_json::to_value(&plan).expect("serializes");
    assert_eq!(json["tests"][1]["to"], serde_json::json!({"ip": "203.0.113.9"}));
    assert_eq!(serde_json::from_value::<Plan>(json.clone()).expect("round trip"), plan);
    let mut old = json;
    old.as_object_mut().expect("object").remove("tests");
    assert!(serde_json::from_value::<Plan>(old).expect("old plan.json").tests.is_empty());
}

#[test]
fn declared_tests_do_not_change_the_lab() {
    let with = plan_of(&format!("{BASE}tests:\n  - {{name: p, from: 'node:node1', to: 'node:node2', kind: ping}}\n"))
        .expect("valid");
    let without = plan_of(&format!("{BASE}tests:\n")).expect("an empty tests: is none");
    assert_eq!((with.tests.len(), without.tests.len()), (1, 0));
    assert!(with.same_lab(&without));
    let other = plan_of(&base_with("node2: {}", "node2: {cpus: 2}")).expect("valid");
    assert!(!other.same_lab(&without));
}

#[test]
fn every_bundled_topology_plans_node_specs_the_agent_accepts() {
    for entry in std::fs::read_dir(topologies_dir()).expect("topologies/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let plan = load(&path).unwrap_or_else(|e| panic!("{e}"));
        for n in &plan.nodes {
            testbed_api::validate::validate_node(&plan.node_spec(n, plan.cluster.backend)).expect("node spec");
        }
    }
    let default = load(&topologies_dir().join("default.yaml")).expect("default");
    assert_eq!(default.nodes.len(), 2);
    assert_eq!(default.networks[0].cidr.to_string(), "192.168.50.0/24");
    let gw = load(&topologies_dir().join("three-node-host-gw.yaml")).expect("host-gw");
    assert_eq!((gw.nodes.len(), gw.cluster.backend), (3, testbed_api::Backend::HostGw));
}

/// A topology with `nodes` nodes on `nets` networks, `underlay` carrying the overlay; node i is also on
/// network j when bit j of `masks[i]` is set (and on every network when all bits are).
struct Gen<'a> {
    lab: &'a str,
    nodes: usize,
    nets: usize,
    underlay: usize,
    masks: &'a [u8],
    pod_cidr: &'a str,
    prefix: u8,
    backend: &'a str,
}

fn generated(g: &Gen<'_>) -> String {
    let Gen { lab, nodes, nets, underlay, masks, pod_cidr, prefix, backend } = *g;
    let mut s = format!("name: {lab}\nnodes:\n");
    for (i, mask) in masks.iter().enumerate().take(nodes) {
        if *mask == u8::MAX {
            s += &format!("  n{i}: {{}}\n");
        } else {
            let on: Vec<String> =
                (0..nets).filter(|&j| j == underlay || mask & (1 << j) != 0).map(|j| format!("net{j}")).collect();
            s += &format!("  n{i}: {{networks: [{}]}}\n", on.join(", "));
        }
    }
    s += "networks:\n";
    for j in 0..nets {
        s += &format!("  net{j}: {{cidr: 192.168.{}.0/24}}\n", 100 + j);
    }
    s += &format!("cluster: {{pod_cidr: {pod_cidr}, node_subnet_prefix: {prefix}, backend: {backend}, underlay: net{underlay}}}\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn plans_are_unique_bounded_and_stable(
        lab in "[a-z][a-z0-9-]{0,22}[a-z0-9]",
        nodes in 1usize..=32,
        nets in 1usize..=8,
        cidr_prefix in 8u8..=20,
        extra in 1u8..=9,
        backend in prop::sample::select(vec!["vxlan", "host-gw", "udp", "none"]),
        underlay_pick in 0usize..8,
        masks in prop::collection::vec(prop_oneof![Just(u8::MAX), any::<u8>()], 32),
    ) {
        let prefix = (cidr_prefix + extra).min(29);
        let pod_cidr = format!("44.0.0.0/{cidr_prefix}");
        let underlay = underlay_pick % nets;
        let src = generated(&Gen { lab: &lab, nodes, nets, underlay, masks: &masks, pod_cidr: &pod_cidr, prefix, backend });
        let result = plan_of(&src);
        let fits = (1u64 << (prefix - cidr_prefix)) >= nodes as u64;
        prop_assert_eq!(result.is_ok(), fits, "{:?}", result.as_ref().err().map(ToString::to_string));
        let Ok(plan) = result else { return Ok(()) };

        // Stable: the same bytes give the same plan.
        prop_assert_eq!(&plan, &plan_of(&src).expect("again"));

        let mut ips = BTreeSet::new();
        let mut macs = BTreeSet::new();
        let mut taps = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut subnets = Vec::new();
        for b in &plan.networks {
            prop_assert!(b.bridge.len() <= 15, "{}", b.bridge);
            prop_assert!(taps.insert(b.bridge.clone()));
        }
        for n in &plan.nodes {
            prop_assert!(ports.insert(n.ssh_port));
            prop_assert!((10000..32768).contains(&n.ssh_port), "{} not below the ephemeral range", n.ssh_port);
            prop_assert!(macs.insert(n.vtep_mac.clone()));
            prop_assert!(plan.cluster.pod_cidr.contains(&n.pod_subnet));
            prop_assert_eq!(n.pod_subnet.prefix_len(), prefix);
            for net in &plan.networks {
                prop_assert!(!net.cidr.contains(&n.pod_subnet.network()) && !n.pod_subnet.contains(&net.cidr.network()));
            }
            let mask = masks[n.index];
            let expected = if mask == u8::MAX { nets } else { (0..nets).filter(|&j| j == underlay || mask & (1 << j) != 0).count() };
            prop_assert_eq!(n.nics.len(), expected);
            prop_assert_eq!(&n.nics[0].network, &format!("net{underlay}"), "the underlay NIC comes first");
            prop_assert_eq!(&n.nics[0].guest_interface, "eth1");
            for nic in &n.nics {
                prop_assert!(ips.insert(nic.ip));
                prop_assert!(macs.insert(nic.mac.clone()));
                prop_assert!(nic.tap.len() <= 15, "{}", nic.tap);
                prop_assert!(taps.insert(nic.tap.clone()));
                let net = plan.networks.iter().find(|x| x.name == nic.network).expect("network");
                prop_assert!(net.cidr.contains(&nic.ip) && nic.ip != net.cidr.network() && nic.ip != net.cidr.broadcast());
                let first = u8::from_str_radix(&nic.mac[..2], 16).expect("hex");
                prop_assert_eq!(first & 0b11, 0b10, "locally administered unicast");
            }
            subnets.push(n.pod_subnet);
        }
        for (i, a) in subnets.iter().enumerate() {
            for b in &subnets[i + 1..] {
                prop_assert!(!a.contains(&b.network()) && !b.contains(&a.network()), "{} overlaps {}", a, b);
            }
        }
    }
}
#[test]
fn plan_is_pinned_across_versions() {
    // Golden values: a change here moves every existing lab's names, MACs and ports, so it must be deliberate
    // (and bump PLAN_VERSION).
    let plan = load(&topologies_dir().join("default.yaml")).expect("default");
    assert_eq!(plan.networks[0].bridge, "tb37a8ee-br0");
    let n = &plan.nodes[1];
    assert_eq!(n.ssh_port, 17969);
    assert_eq!(n.nics[0].tap, "tb37a8ee-n1e1");
    assert_eq!(n.nics[0].mac, "52:54:c1:ce:00:01");
    assert_eq!(n.vtep_mac, "52:54:c1:ce:ff:01");
    assert_eq!(n.nics[0].ip.to_string(), "192.168.50.12");
    assert_eq!(n.pod_subnet.to_string(), "10.244.1.0/24");
}

#[test]
fn appending_a_node_changes_nothing_for_the_others() {
    let before = plan_of(BASE).expect("valid");
    let after = plan_of(&base_with("node2: {}", "node2: {}\n  node3: {}")).expect("valid");
    assert_eq!(before.nodes[..], after.nodes[..2]);
    assert_ne!(before.topology_hash, after.topology_hash);
}

#[test]
fn nodes_on_some_networks_keep_their_index_based_addresses() {
    let src =
        format!("{BASE}  lan: {{cidr: 192.168.51.0/24}}\n").replacen("node1: {}", "node1: {networks: [underlay]}", 1);
    let plan = plan_of(&src).expect("valid");
    assert_eq!(plan.nodes[0].nics.len(), 1);
    let n2: Vec<_> = plan.nodes[1].nics.iter().map(|n| (n.guest_interface.as_str(), n.ip.to_string())).collect();
    assert_eq!(n2, vec![("eth1", "192.168.50.12".to_string()), ("eth2", "192.168.51.12".to_string())]);
}

#[test]
fn three_control_plane_members_keep_their_order() {
    let src = base_with("  node2: {}\n", "  node2: {}\n  node3: {}\n")
        + "cluster: {control_plane: {nodes: [node3, node1, node2]}}\n";
    let plan = plan_of(&src).expect("valid");
    assert_eq!(plan.cluster.control_plane, ["node3", "node1", "node2"]);
    let ips: Vec<String> = plan.control_plane_members().iter().map(|(_, ip)| ip.to_string()).collect();
    assert_eq!(ips, ["192.168.50.13", "192.168.50.11", "192.168.50.12"]);
    assert!(render_text(&plan).contains("control plane: node3, node1, node2 (etcd: 3 members;"));
}

#[test]
fn node_lifecycle_times_default_to_kubernetes_and_reach_the_plan() {
    let defaults = plan_of(BASE).expect("valid").cluster.node_lifecycle;
    assert_eq!((defaults.node_monitor_grace_period_seconds, defaults.pod_eviction_timeout_seconds), (40, 300));
    // Without `nodes:` the control plane stays on the first node.
    let src =
        format!("{BASE}cluster: {{control_plane: {{node_monitor_grace_period: 1m30s, pod_eviction_timeout: 0s}}}}\n");
    let plan = plan_of(&src).expect("valid");
    assert_eq!(plan.cluster.control_plane, ["node1"]);
    let lifecycle = plan.cluster.node_lifecycle;
    assert_eq!((lifecycle.node_monitor_grace_period_seconds, lifecycle.pod_eviction_timeout_seconds), (90, 0));
    assert!(render_text(&plan).contains("NotReady after 90 s without a Lease renewal, pods evicted after 0 s"));
}

#[test]
fn the_plan_shows_a_containers_image() {
    let src = format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, image: busybox}}, {{name: d, command: [sh]}}]}}\n");
    let plan = plan_of(&src).expect("valid");
    assert!(render_text(&plan).contains("containers: c (image busybox), d"), "{}", render_text(&plan));
    let json = serde_json::to_value(&plan.pods[0]).unwrap();
    assert_eq!(json["images"]["c"], serde_json::json!({"built": "busybox"}));
}
