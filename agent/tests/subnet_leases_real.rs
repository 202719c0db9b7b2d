//! Subnet leases with the real parts (`kubelet_lab`: etcd, the API server and the agent in the test's own
//! network namespace, on a veth `ul0` there as the underlay): a Node created through the API as a "virtual peer"
//! becomes the route, neighbour and FDB entry of the node's vxlan backend, a changed public-ip moves the
//! FDB entry, a deleted Node takes them away; a lease wins over the CLI's plan for its node, planned peers
//! no lease names stay, and a planned peer whose Node was seen and then deleted goes. Skipped unless root.
//! `subnet_lease_to_kernel_latency` (ignored: a benchmark) times Node change -> kernel entry.

#![allow(clippy::unwrap_used)]

// Shared with kubelet_real.rs, which uses the parts this file does not.
#[allow(dead_code)]
mod kubelet_lab;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed_api::objects::{Node, NodeSpec as ApiNodeSpec, ObjectMeta};
use testbed_api::{Backend, NodeSpec, PeerSpec, UnderlaySpec};
use testbed_control_plane::client::{paths, Client};
use testbed_test_support::agent_http::request as http;

use kubelet_lab::{wait_for, Cluster, API_PORT, NODE};

const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
const UNDERLAY: &[&[&str]] = &[
    // A veth pair: this kernel has no dummy driver (kernel_tests.rs uses veths too).
    &["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"],
    &["addr", "add", "192.168.77.1/24", "dev", "ul0"],
    &["link", "set", "ul0p", "up"],
    &["link", "set", "ul0", "up"],
];

/// n1 on vxlan over `ul0`, with one peer the CLI planned (`cli-peer`, 10.244.5.0/24).
fn vxlan_spec() -> NodeSpec {
    NodeSpec {
        node_name: NODE.into(),
        underlay: UnderlaySpec {
            interface: "ul0".into(),
            address: "192.168.77.1".parse().unwrap(),
            prefix_len: 24,
            mtu: 1500,
        },
        pod_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_subnet: "10.244.1.0/24".parse().unwrap(),
        backend: Backend::Vxlan,
        vtep_mac: "02:00:00:00:00:01".into(),
        peers: vec![PeerSpec {
            name: "cli-peer".into(),
            underlay_ip: "192.168.77.5".parse().unwrap(),
            pod_subnet: "10.244.5.0/24".parse().unwrap(),
            vtep_mac: "0e:00:00:00:00:05".into(),
        }],
        service_cidr: None,
    }
}

/// A Node as another node's agent would register it.
fn lease_node(name: &str, cidr: &str, ip: &str, backend: &str, mac: &str) -> Node {
    let data = if backend == "vxlan" { json!({"VNI": 1, "VtepMAC": mac}).to_string() } else { "null".into() };
    let annotations = BTreeMap::from([
        (PUBLIC_IP.to_string(), ip.to_string()),
        (BACKEND_TYPE.to_string(), backend.to_string()),
        (BACKEND_DATA.to_string(), data),
    ]);
    Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: ObjectMeta { name: name.into(), annotations, ..Default::default() },
        spec: ApiNodeSpec { pod_cidr: Some(cidr.into()), pod_cidrs: vec![cidr.into()], unschedulable: false },
        status: None,
    }
}

/// `ip`/`bridge` output in the test's (and the agent's) network namespace.
fn kernel(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn route(cidr: &str) -> String {
    kernel("ip", &["route", "show", cidr])
}

fn neighbours() -> String {
    kernel("ip", &["neigh", "show", "dev", "flannel.1"])
}

fn fdb() -> String {
    kernel("bridge", &["fdb", "show", "dev", "flannel.1"])
}

fn set_public_ip(c: &Cluster, api: &Client, node: &str, ip: &str) {
    let patch = json!({"metadata": {"annotations": {PUBLIC_IP: ip}}});
    c.rt.block_on(api.merge_patch::<Node>(&paths::node(node), &patch)).unwrap();
}

/// Waits for the kernel state `done` looks for; a timeout shows that state and the agent's log.
fn wait_kernel(c: &Cluster, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            let state = [kernel("ip", &["route"]), neighbours(), fdb()].join("\n");
            panic!("{what}: not within 30 s\nkernel:\n{state}\nagent log:\n{}", c.agent_log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn node_leases_become_vxlan_peers_in_the_kernel() {
    testbed_test_support::require_root!();
    let c = Cluster::start_with("sub-lease", &vxlan_spec(), UNDERLAY);
    let api = c.client(API_PORT);
    let log = || c.agent_log();

    // The node publishes its lease; the CLI's planned peer stays while no lease names it.
    wait_for("n1's lease annotations", 30, || {
        c.rt.block_on(api.get::<Node>(&paths::node(NODE))).is_ok_and(|n| {
            let a = &n.metadata.annotations;
            a.get(PUBLIC_IP).map(String::as_str) == Some("192.168.77.1")
                && a.get(BACKEND_TYPE).map(String::as_str) == Some("vxlan")
                && a.get(BACKEND_DATA).is_some_and(|d| d.contains("02:00:00:00:00:01"))
        })
    });
    assert!(route("10.244.5.0/24").contains("flannel.1"), "{}", route("10.244.5.0/24"));

    // A lease for the planned peer with another underlay address overrides the plan's entry.
    let moved = lease_node("cli-peer", "10.244.5.0/24", "192.168.77.55", "vxlan", "0e:00:00:00:00:05");
    c.rt.block_on(api.create(&paths::nodes(), &moved)).unwrap();
    wait_kernel(&c, "the planned peer's FDB entry moved to its lease's address", || {
        fdb().contains("0e:00:00:00:00:05 dst 192.168.77.55 ")
    });

    // A virtual peer appears through the API.
    let virt = lease_node("virt", "10.244.9.0/24", "192.168.77.9", "vxlan", "0e:00:00:00:00:09");
    c.rt.block_on(api.create(&paths::nodes(), &virt)).unwrap();
    wait_kernel(&c, "route, neighbour and FDB entry of virt", || {
        let r = route("10.244.9.0/24");
        r.contains("via 10.244.9.0 dev flannel.1 ")
            && r.contains(" onlink")
            && neighbours().contains("10.244.9.0 lladdr 0e:00:00:00:00:09 PERMANENT")
            && fdb().contains("0e:00:00:00:00:09 dst 192.168.77.9 ")
    });

    // Its underlay address changes: the FDB entry follows.
    set_public_ip(&c, &api, "virt", "192.168.77.19");
    wait_kernel(&c, "the FDB entry moved to the new address", || {
        let f = fdb();
        f.contains("0e:00:00:00:00:09 dst 192.168.77.19 ") && !f.contains("dst 192.168.77.9 ")
    });

    // A node of another backend is left out, with the reason in the log.
    let other = lease_node("other", "10.244.7.0/24", "192.168.77.7", "host-gw", "");
    c.rt.block_on(api.create(&paths::nodes(), &other)).unwrap();
    wait_for("the other backend's lease logged as ignored", 30, || {
        log().contains("backend host-gw, this node runs vxlan")
    });
    assert!(route("10.244.7.0/24").is_empty(), "{}", route("10.244.7.0/24"));

    // The CLI sends its full spec again: the leases still win over the plan for the nodes they name.
    let (code, body) = http("PUT", "/v1/node", Some(serde_json::to_value(vxlan_spec()).unwrap()));
    assert_eq!(code, 200, "{body}");
    assert!(fdb().contains("0e:00:00:00:00:05 dst 192.168.77.55 "), "the lease's address stays:\n{}", fdb());
    assert!(route("10.244.9.0/24").contains("flannel.1"), "{}", route("10.244.9.0/24"));

    // The planned peer's Node, seen before, is deleted: the node left the lab (`up` without it tells no other
    // node), so the planned entry goes too.
    c.rt.block_on(api.delete(&paths::node("cli-peer"))).unwrap();
    wait_kernel(&c, "the removed planned peer's route and FDB entry gone", || {
        route("10.244.5.0/24").is_empty() && !fdb().contains("0e:00:00:00:00:05")
    });

    // The Node is deleted: its entries go.
    c.rt.block_on(api.delete(&paths::node("virt"))).unwrap();
    wait_kernel(&c, "virt's route, neighbour and FDB entry removed", || {
        route("10.244.9.0/24").is_empty()
            && !neighbours().contains("10.244.9.0")
            && !fdb().contains("0e:00:00:00:00:09")
    });

    // Leaving the API: the CLI's spec is applied whole again.
    assert_eq!(http("DELETE", "/v1/control-plane", None).0, 204);
    let (code, body) = http("PUT", "/v1/node", Some(serde_json::to_value(vxlan_spec()).unwrap()));
    assert_eq!(code, 200, "{body}");
    assert!(route("10.244.5.0/24").contains("flannel.1"), "{}", route("10.244.5.0/24"));
}

/// `cargo test --release -p testbed-agent --test subnet_leases_real -- --ignored --nocapture latency`, as
/// root: `TESTBED_LEASE_CHANGES` (50) Nodes created one by one, each timed from its create request to its
/// route in the kernel, and then its public-ip changed, timed to the FDB entry with the new address.
#[test]
#[ignore = "benchmark"]
fn subnet_lease_to_kernel_latency() {
    testbed_test_support::require_root!();
    let n: u8 = std::env::var("TESTBED_LEASE_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let c = Cluster::start_with("sub-bench", &vxlan_spec(), UNDERLAY);
    let api = c.client(API_PORT);
    wait_for("n1 following the API", 30, || c.rt.block_on(api.get::<Node>(&paths::node(NODE))).is_ok());
    let timed = |done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(t0.elapsed() < Duration::from_secs(30), "not within 30 s\n{}", c.agent_log());
            std::thread::sleep(Duration::from_millis(1));
        }
        t0.elapsed()
    };
    let (mut added, mut moved) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (name, cidr, mac) =
            (format!("b{i}"), format!("10.244.{}.0/24", 100 + i), format!("0e:00:00:00:01:{i:02x}"));
        let t0 = Instant::now();
        let node = lease_node(&name, &cidr, &format!("192.168.77.{}", 100 + i), "vxlan", &mac);
        c.rt.block_on(api.create(&paths::nodes(), &node)).unwrap();
        added.push(t0.elapsed() + timed(&|| route(&cidr).contains("flannel.1")));
        let (new_ip, t0) = (format!("192.168.77.{}", 200 - i), Instant::now());
        set_public_ip(&c, &api, &name, &new_ip);
        moved.push(t0.elapsed() + timed(&|| fdb().contains(&format!("{mac} dst {new_ip} "))));
    }
    for (what, mut l) in [("Node created -> route", added), ("public-ip changed -> FDB entry", moved)] {
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1].as_secs_f64() * 1e3;
        eprintln!("{what}, {n} changes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms", pct(0.5), pct(0.99), pct(1.0));
    }
}
