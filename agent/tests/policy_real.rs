//! The NetworkPolicy enforcer on this host's kernel: the agent binary in a network namespace of the test's
//! own (`test_agent`), three pods on its cni0 bridge (namespaces of their own behind veths), each serving its
//! name on TCP 8080 and 8090 and echoing on UDP 5353 (`policy_pods`).
//! Policies are PUT as the node-local spec (the compiler from API objects is unit-tested in
//! `kubelet/policy_spec.rs`; `network_policy_follow_real.rs` drives it through the API), and every case is
//! shown with real connections between the pods: pod to pod on one bridge passes the inet forward hook
//! through br_netfilter. Needs root and `nft`; skipped without root.
//!
//! Run: `sudo cargo test -p testbed-agent --test policy_real`

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod policy_pods;
mod test_agent;

use policy_pods::{expect, serve, tcp, udp, Pod, TCP_PORTS, UDP_PORT};
use test_agent::TestAgent;
use testbed_test_support::agent_http::request as http;

const VIP: &str = "10.96.0.10";

fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node-local pod with the servers running.
fn pod(name: &'static str) -> Pod {
    let (code, body) = http(
        "POST",
        "/v1/pods",
        Some(json!({"name": name, "containers": [{"name": "c", "command": ["sleep", "1000"]}]})),
    );
    assert_eq!(code, 201, "{body}");
    let pod = Pod { name, ip: body["ip"].as_str().unwrap().into(), infra_pid: body["infra_pid"].as_u64().unwrap() };
    serve(&pod);
    pod
}

fn put(pods: Value) -> Value {
    let (code, body) = http("PUT", "/v1/network-policies", Some(json!({ "pods": pods })));
    assert_eq!(code, 200, "{body}");
    body
}

fn status() -> Value {
    let (code, body) = http("GET", "/v1/network-policies", None);
    assert_eq!(code, 200, "{body}");
    body
}

fn restricted(pod: &Pod, ingress: Option<Value>, egress: Option<Value>) -> Value {
    let mut p = json!({"namespace": "default", "name": pod.name, "ip": pod.ip});
    if let Some(i) = ingress {
        p["ingress"] = i;
    }
    if let Some(e) = egress {
        p["egress"] = e;
    }
    p
}

fn host(pod: &Pod) -> Value {
    json!({"cidr": format!("{}/32", pod.ip)})
}

#[test]
fn policies_allow_exactly_what_they_say_between_real_pods() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("netpol", &[]);
    agent.apply_node();
    // br_netfilter's switch is per network namespace: bridged IPv4 must reach the inet hooks in this one.
    let call_iptables = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .expect("br_netfilter is not loaded on this host (modprobe br_netfilter)");
    assert_eq!(call_iptables.trim(), "1", "bridge-nf-call-iptables in the test's namespace");
    let (db, web, other) = (pod("db"), pod("web"), pod("other"));
    let [p1, p2] = TCP_PORTS;

    expect("no policy: every pod reaches every other", &[(&web, &db, p1, true), (&other, &db, p2, true)]);

    put(json!([restricted(&db, Some(json!([])), None)]));
    expect(
        "default-deny ingress on db; db's own connections get their replies (established)",
        &[(&web, &db, p1, false), (&other, &db, p2, false), (&db, &web, p1, true), (&web, &other, p1, true)],
    );
    assert!(!udp(&web, &db.ip), "UDP to db is denied too");

    put(json!([restricted(
        &db,
        Some(json!([{"peers": [host(&web)], "ports": [{"protocol": "TCP", "port": p1}]}])),
        None
    )]));
    expect(
        "db allows web on 8080 only (an update on running pods)",
        &[(&web, &db, p1, true), (&web, &db, p2, false), (&other, &db, p1, false)],
    );

    let block = json!({"cidr": "10.244.0.0/16", "except": [format!("{}/32", other.ip)]});
    put(json!([restricted(&db, Some(json!([{"peers": [block]}])), None)]));
    expect(
        "ipBlock 10.244.0.0/16 except other",
        &[(&web, &db, p1, true), (&web, &db, p2, true), (&other, &db, p1, false)],
    );

    let ranged = json!([{"ports": [{"protocol": "TCP", "port": 8070, "end_port": 8085}, {"protocol": "UDP", "port": UDP_PORT}]}]);
    put(json!([restricted(&db, Some(ranged), None)]));
    expect("port range 8070-8085 (endPort)", &[(&web, &db, p1, true), (&web, &db, p2, false)]);
    assert!(udp(&web, &db.ip), "UDP 5353 allowed");

    let union = json!([{"peers": [host(&web)], "ports": [{"protocol": "TCP", "port": p1}]},
                       {"peers": [host(&other)], "ports": [{"protocol": "TCP", "port": p2}]}]);
    put(json!([restricted(&db, Some(union), None)]));
    expect(
        "union of two rules",
        &[(&web, &db, p1, true), (&web, &db, p2, false), (&other, &db, p2, true), (&other, &db, p1, false)],
    );
    assert!(!udp(&web, &db.ip), "UDP not in either rule");

    put(json!([restricted(&web, None, Some(json!([{"peers": [host(&other)]}])))]));
    expect(
        "web's egress to other only; db (open again) still reaches web, whose replies pass",
        &[(&web, &other, p1, true), (&web, &db, p1, false), (&db, &web, p1, true)],
    );
    assert_eq!(status()["drift_repairs"], 0, "the kernel's listing is a stable fingerprint: nothing to repair");
}

#[test]
fn policies_see_the_pod_behind_a_service() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("netpol-svc", &[]);
    agent.apply_node();
    // As proxy_real: a route for the Service range out of another NIC, so the ClusterIP is routable.
    sh(&["ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc1"]);
    sh(&["ip", "link", "set", "svc0", "up"]);
    sh(&["ip", "link", "set", "svc1", "up"]);
    sh(&["ip", "route", "add", "10.96.0.0/12", "dev", "svc0"]);
    let (db, web, other) = (pod("db"), pod("web"), pod("other"));
    let eps = json!([{"ip": db.ip, "port": TCP_PORTS[0], "local": true}]);
    let (code, body) = http(
        "PUT",
        "/v1/services",
        Some(json!({"services": [{"namespace": "default", "name": "db",
        "cluster_ip": VIP, "ports": [{"protocol": "TCP", "port": 80, "endpoints": eps}]}]})),
    );
    assert_eq!(code, 200, "{body}");
    put(json!([restricted(&db, Some(json!([{"peers": [host(&web)]}])), None)]));
    let vip = Pod { name: "db's ClusterIP", ip: VIP.into(), infra_pid: 0 };
    expect(
        "through the ClusterIP, db's ingress judges the real destination",
        &[(&web, &vip, 80, true), (&other, &vip, 80, false)],
    );
}

#[test]
fn reapplying_changes_nothing_bad_input_changes_nothing_and_drift_is_repaired() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("netpol-drift", &[]);
    agent.apply_node();
    let (db, web) = (pod("db"), pod("web"));
    let spec = json!([restricted(&db, Some(json!([])), None)]);
    put(spec.clone());
    let before = status()["transactions"].as_u64().unwrap();
    assert_eq!(put(spec.clone())["changes"], json!([]), "the same spec twice");
    assert_eq!(status()["transactions"].as_u64().unwrap(), before, "no nft transaction for the same spec");
    assert_eq!(status()["ingress_pods"], json!([db.ip]), "read back from the kernel");

    let table = status()["table"].clone();
    let bad = json!([{"namespace": "default", "name": "db", "ip": db.ip,
        "ingress": [{"peers": [{"cidr": "10.244.0.0/24", "except": ["10.245.0.0/25"]}]}]}]);
    let (code, body) = http("PUT", "/v1/network-policies", Some(json!({ "pods": bad })));
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["field"], "pods[0].ingress[0].peers[0].except[0]", "{body}");
    assert_eq!(status()["table"], table, "a refused spec leaves the kernel as it was");

    for (what, cmd) in [
        ("flushed table", vec!["nft", "flush", "table", "inet", "testbed-policy"]),
        ("deleted table", vec!["nft", "delete", "table", "inet", "testbed-policy"]),
        ("deleted rule", vec!["nft", "flush", "chain", "inet", "testbed-policy", "forward"]),
    ] {
        sh(&cmd);
        assert!(tcp(&web, &db.ip, TCP_PORTS[0]), "{what}: open until repaired");
        let started = Instant::now();
        while tcp(&web, &db.ip, TCP_PORTS[0]) {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}: not repaired within 10 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("{what}: repaired after {:?}", started.elapsed());
    }
    assert!(status()["drift_repairs"].as_u64().unwrap() >= 3, "{}", status());
}

/// A benchmark, not a check (run with `--ignored --nocapture`): the time of a PUT that rewrites the table for
/// N restricted pods (each with a 20-peer ingress rule on two ports and an egress rule), of the same PUT
/// again (a read back and no transaction), and of a GET.
#[test]
#[ignore]
fn policy_apply_cost() {
    testbed_test_support::require_root!();
    let _agent = TestAgent::start("netpol-bench", &[]);
    for n in [10usize, 100, 1000] {
        let pods: Vec<Value> = (0..n)
            .map(|i| {
                let peers: Vec<Value> =
                    (0..20).map(|j| json!({"cidr": format!("10.245.{}.{}/32", (i + j) % 250, j + 1)})).collect();
                json!({"namespace": "default", "name": format!("pod-{i}"),
                       "ip": format!("10.244.{}.{}", i / 250, i % 250 + 2),
                       "ingress": [{"peers": peers, "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 53}]}],
                       "egress": [{"peers": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]})
            })
            .collect();
        let timed = |f: &dyn Fn()| {
            let started = Instant::now();
            f();
            started.elapsed()
        };
        let write = timed(&|| {
            put(json!(pods));
        });
        let again = timed(&|| {
            assert_eq!(put(json!(pods))["changes"], json!([]));
        });
        let read = timed(&|| {
            status();
        });
        println!("{n} restricted pods: PUT (rewrite) {write:?}, same PUT again {again:?}, GET {read:?}");
    }
}
