//! The service proxy on this host's kernel: the agent binary in a network namespace of the test's own (see
//! `test_agent`), its pods as endpoints, each running a tiny TCP server (a thread of this test inside the
//! pod's namespace) that answers its pod's name. Clients are the node itself (nftables' output hook) and
//! pods (prerouting from cni0). Needs root and the `nft` binary; skipped without root.
//!
//! Run: `sudo cargo test -p testbed-agent --test proxy_real`

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod test_agent;

use test_agent::TestAgent;
use testbed_api::UnderlaySpec;
use testbed_test_support::agent_http::request as http;
use testbed_test_support::node_spec::loopback_node_spec;

const VIP: &str = "10.96.0.10";
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// cni0's address in `loopback_node_spec`: the source of the node's connections to a ClusterIP.
const CNI0_IP: &str = "10.244.1.1";
const SERVER_PORT: u16 = 8080;

fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent with a NodeSpec whose underlay is a veth standing for the node's NIC (a kernel may have no
/// dummy driver) and which names the Service range: the agent routes it, out of that NIC from cni0's
/// address, so that a ClusterIP is routable for the node's own connections (they need a route to reach the
/// output hook at all).
fn start(test: &str) -> TestAgent {
    let agent = TestAgent::start(test, &[]);
    sh(&["ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc1"]);
    sh(&["ip", "link", "set", "svc0", "up"]);
    sh(&["ip", "link", "set", "svc1", "up"]);
    sh(&["ip", "addr", "add", "192.168.99.1/24", "dev", "svc0"]);
    let mut spec = loopback_node_spec();
    spec.underlay =
        UnderlaySpec { interface: "svc0".into(), address: [192, 168, 99, 1].into(), prefix_len: 24, mtu: 1500 };
    spec.service_cidr = Some(SERVICE_CIDR.parse().unwrap());
    let (code, body) = http("PUT", "/v1/node", Some(serde_json::to_value(spec).unwrap()));
    assert_eq!(code, 200, "{body}");
    agent
}

struct Pod {
    name: String,
    ip: String,
    infra_pid: u64,
}

/// A pod whose namespace serves its name on SERVER_PORT: the answer tells the client which endpoint it got.
fn pod_with_server(name: &str) -> Pod {
    let (code, body) = http(
        "POST",
        "/v1/pods",
        Some(json!({"name": name, "containers": [{"name": "c", "command": ["sleep", "1000"]}]})),
    );
    assert_eq!(code, 201, "{body}");
    let pod = Pod {
        name: name.into(),
        ip: body["ip"].as_str().unwrap().into(),
        infra_pid: body["infra_pid"].as_u64().unwrap(),
    };
    let (reply, pid) = (pod.name.clone(), pod.infra_pid);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(pid);
        let listener = TcpListener::bind(("0.0.0.0", SERVER_PORT)).unwrap();
        ready_tx.send(()).unwrap();
        for conn in listener.incoming().flatten() {
            let _ = (&conn).write_all(
                format!("{reply} {}", conn.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default()).as_bytes(),
            );
        }
    });
    ready_rx.recv().unwrap();
    pod
}

fn enter_netns(pid: u64) {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// One connection: the answering pod's name and the client address it saw.
fn ask(to: &str) -> std::io::Result<(String, String)> {
    let addr: SocketAddr = to.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (pod, peer) = answer.split_once(' ').unwrap_or((&answer, ""));
    Ok((pod.to_string(), peer.to_string()))
}

/// `ask` from inside a pod's namespace (its packets then arrive at the node's prerouting hook from cni0).
fn ask_from(pod: &Pod, to: &str) -> std::io::Result<(String, String)> {
    let (pid, to) = (pod.infra_pid, to.to_string());
    std::thread::spawn(move || {
        enter_netns(pid);
        ask(&to)
    })
    .join()
    .unwrap()
}

fn service(endpoints: &[&Pod], affinity: Option<u32>) -> Value {
    let eps: Vec<Value> = endpoints.iter().map(|p| json!({"ip": p.ip, "port": SERVER_PORT, "local": true})).collect();
    let mut s = json!({"namespace": "default", "name": "web", "cluster_ip": VIP,
        "ports": [{"protocol": "TCP", "port": 80, "endpoints": eps}]});
    if let Some(t) = affinity {
        s["session_affinity"] = json!({"type": "ClientIP", "timeout_seconds": t});
    }
    s
}

fn put(services: Vec<Value>) -> Value {
    let (code, body) = http("PUT", "/v1/services", Some(json!({ "services": services })));
    assert_eq!(code, 200, "{body}");
    body
}

fn status() -> Value {
    let (code, body) = http("GET", "/v1/services", None);
    assert_eq!(code, 200, "{body}");
    body
}

/// Which pods answered `n` connections to the Service.
fn tally(n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (pod, _) = ask(&format!("{VIP}:80")).unwrap_or_else(|e| panic!("connect to {VIP}:80: {e}"));
        *seen.entry(pod).or_default() += 1;
    }
    seen
}

#[test]
fn a_cluster_ip_balances_over_its_endpoints_and_follows_their_changes() {
    testbed_test_support::require_root!();
    let _agent = start("svc-balance");
    let (a, b) = (pod_with_server("a"), pod_with_server("b"));
    put(vec![service(&[&a, &b], None)]);
    let seen = tally(60);
    println!("60 connections to {VIP}:80 over a and b: {seen:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a", "b"], "both endpoints answer: {seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "random balance, not a fixed pick: {seen:?}");
    // A pod's connection, through prerouting.
    assert!(matches!(ask_from(&a, &format!("{VIP}:80")), Ok((p, _)) if p == "a" || p == "b"));

    put(vec![service(&[&b], None)]);
    let seen = tally(30);
    println!("after removing a: {seen:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b"], "a removed endpoint receives nothing: {seen:?}");
    let endpoints = &status()["destinations"][0]["endpoints"];
    assert_eq!(endpoints, &json!([format!("{}:{SERVER_PORT}", b.ip)]), "read back from the kernel");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    testbed_test_support::require_root!();
    let _agent = start("svc-affinity");
    let (a, b) = (pod_with_server("a"), pod_with_server("b"));
    put(vec![service(&[&a, &b], Some(60))]);
    let seen = tally(30);
    println!("30 connections with ClientIP affinity: {seen:?}");
    assert_eq!(seen.len(), 1, "one client, one endpoint: {seen:?}");
    assert_eq!(status()["destinations"][0]["session_affinity"], true);
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    testbed_test_support::require_root!();
    let _agent = start("svc-reject");
    let a = pod_with_server("a");
    put(vec![service(&[], None)]);
    for (who, result) in [("node", None), ("pod", Some(&a))] {
        let started = Instant::now();
        let outcome = match result {
            None => ask(&format!("{VIP}:80")),
            Some(pod) => ask_from(pod, &format!("{VIP}:80")),
        };
        let took = started.elapsed();
        println!("{who} -> {VIP}:80 without endpoints: {outcome:?} after {took:?}");
        let err = outcome.expect_err("nothing may answer");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{who}: {err}");
        assert!(took < Duration::from_secs(1), "{who}: refused at once, not after a timeout ({took:?})");
    }
    assert_eq!(status()["destinations"][0]["map"], "no-endpoint-services");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    testbed_test_support::require_root!();
    let _agent = start("svc-hairpin");
    let a = pod_with_server("a");
    put(vec![service(&[&a], None)]);
    let (pod, peer) = ask_from(&a, &format!("{VIP}:80")).expect("hairpin connection");
    println!("a -> {VIP}:80 answered by {pod}, which saw the client as {peer}");
    assert_eq!(pod, "a");
    assert_ne!(peer, a.ip, "masqueraded: the pod cannot answer itself from its own address");
}

#[test]
fn reapplying_changes_nothing_and_drift_is_repaired() {
    testbed_test_support::require_root!();
    let _agent = start("svc-drift");
    let a = pod_with_server("a");
    let spec = vec![service(&[&a], None)];
    put(spec.clone());
    let before = status()["transactions"].as_u64().unwrap();
    let again = put(spec.clone());
    assert_eq!(again["changes"], json!([]), "{again}");
    assert_eq!(status()["transactions"].as_u64().unwrap(), before, "the same PUT runs no nft transaction");

    // Bad input: 400 naming the field, the kernel as it was.
    let mut bad = service(&[&a], None);
    bad["ports"][0]["endpoints"][0]["port"] = json!(0);
    let mut other = service(&[], None);
    other["name"] = json!("other");
    other["cluster_ip"] = json!("10.96.0.11");
    let (code, body) = http("PUT", "/v1/services", Some(json!({"services": [other, bad]})));
    assert_eq!((code, body["field"].as_str()), (400, Some("services[1].ports[0].endpoints[0].port")), "{body}");
    assert_eq!(ask(&format!("{VIP}:80")).unwrap().0, "a", "a refused PUT changed nothing");

    let delete_endpoint: &[&str] = &["delete", "element", "ip", "testbed-proxy", &endpoint_map(), "{ 0 }"];
    for (what, cmd) in [
        ("a hand-deleted DNAT rule", None),
        ("a hand-deleted endpoint", Some(delete_endpoint)),
        ("a flushed table", Some(&["flush", "table", "ip", "testbed-proxy"][..])),
        ("a deleted table", Some(&["delete", "table", "ip", "testbed-proxy"][..])),
    ] {
        let started = Instant::now();
        match cmd {
            Some(args) => drop(sh(&[&["nft"][..], args].concat())),
            None => delete_dnat_rule(),
        }
        assert!(ask(&format!("{VIP}:80")).is_err(), "{what}: the Service is broken");
        while ask(&format!("{VIP}:80")).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what} not repaired within 10 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("{what}: repaired {:?} after the break", started.elapsed());
    }
    assert_eq!(status()["drift_repairs"], 4);
}

#[test]
fn the_node_reaches_a_cluster_ip_by_the_agents_route_which_it_keeps() {
    testbed_test_support::require_root!();
    let _agent = start("svc-node-route");
    let a = pod_with_server("a");
    put(vec![service(&[&a], None)]);
    let route = sh(&["ip", "route", "show", SERVICE_CIDR]);
    println!("the agent's route: {route}");
    assert!(route.contains("dev svc0") && route.contains(&format!("src {CNI0_IP}")), "{route}");
    let (code, node) = http("GET", "/v1/node", None);
    assert_eq!(code, 200, "{node}");
    let owned = node["network"]["routes"].as_array().cloned().unwrap_or_default();
    let line = format!("{SERVICE_CIDR} dev svc0 src {CNI0_IP}");
    assert!(owned.iter().any(|r| r == &json!(line)), "GET /v1/node lists {line}: {owned:?}");
    let (pod, peer) = ask(&format!("{VIP}:80")).expect("node -> ClusterIP");
    println!("node -> {VIP}:80 answered by {pod}, which saw the client as {peer}");
    assert_eq!((pod.as_str(), peer.as_str()), ("a", CNI0_IP), "from cni0's address, which pods route back here");

    // The fault: without the route the node's connect fails before any packet; the agent puts it back.
    sh(&["ip", "route", "del", SERVICE_CIDR]);
    let started = Instant::now();
    let err = ask(&format!("{VIP}:80")).expect_err("no route, no connection");
    println!("route deleted: node -> {VIP}:80 fails with {err}");
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENETUNREACH), "{err}");
    while ask(&format!("{VIP}:80")).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the route was not put back within 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("route put back and node -> {VIP}:80 answered {:?} after the delete", started.elapsed());
}

/// The Service's endpoint map (index -> address . port), by its name in the listing.
fn endpoint_map() -> String {
    let listing = sh(&["nft", "list", "table", "ip", "testbed-proxy"]);
    let line = listing.lines().map(str::trim).find(|l| l.starts_with("map endpoints-"));
    line.and_then(|l| l.strip_prefix("map ")?.split(" {").next()).expect("an endpoint map").to_string()
}

fn delete_dnat_rule() {
    let listing = sh(&["nft", "-a", "list", "table", "ip", "testbed-proxy"]);
    let mut chain = "";
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ") {
            chain = name.split(" {").next().unwrap();
        }
        if line.contains(" dnat ") {
            let handle = line.rsplit("# handle ").next().unwrap();
            sh(&["nft", "delete", "rule", "ip", "testbed-proxy", chain, "handle", handle]);
            return;
        }
    }
    panic!("no DNAT rule in {listing}");
}
