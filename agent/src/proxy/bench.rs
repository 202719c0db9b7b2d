//! Benchmark (ignored; root, `nft` and `iptables-restore`): 10, 1,000 and 10,000 Services of 10 endpoints
//! each in a network namespace of the test thread's own, the proxy (netlink batches) side by side with the
//! ruleset kube-proxy's iptables mode writes for the same Services. docs/benchmarks.md has the figures.
//!
//! Run: `sudo nice -n 19 cargo test --release -p testbed-agent proxy::bench -- --ignored --nocapture`
//! (`BENCH_SERVICES=10,1000` for other sizes).

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed_api::{
    Protocol, ProxiedService, ProxyEndpoint, ServicePort, ServiceProxySpec, SessionAffinity, TrafficPolicy,
};

use super::kernel::NftNetlink;
use super::nft::{list_table, Nft};
use super::ruleset::Op;
use super::{render, ruleset, Proxy};

const ENDPOINTS: u32 = 10;
const PORT: u16 = 8080;
/// The last Service's endpoints are addresses of the namespace's own, so that its connections are answered.
const LOCAL_ENDPOINT_BASE: u32 = u32::from_be_bytes([10, 255, 0, 1]);

fn sh(cmd: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("{cmd:?} stdin: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes([10, 96, 0, 0]) + i)
}

fn endpoint_ip(n: u32, i: u32, j: u32) -> Ipv4Addr {
    if i == n - 1 {
        return Ipv4Addr::from(LOCAL_ENDPOINT_BASE + j);
    }
    Ipv4Addr::from(u32::from_be_bytes([10, 128, 0, 0]) + i * ENDPOINTS + j)
}

fn spec(n: u32) -> ServiceProxySpec {
    let services = (0..n)
        .map(|i| ProxiedService {
            namespace: "bench".into(),
            name: format!("svc{i}"),
            cluster_ip: cluster_ip(i),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: (0..ENDPOINTS)
                    .map(|j| ProxyEndpoint { ip: endpoint_ip(n, i, j), port: PORT, local: true, ready: true })
                    .collect(),
            }],
            session_affinity: SessionAffinity::None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
        })
        .collect();
    ServiceProxySpec { services }
}

/// kube-proxy's iptables mode for the same Services: KUBE-SERVICES walks one rule per Service, each
/// KUBE-SVC chain picks with `statistic --probability 1/(n-k)`, each KUBE-SEP chain DNATs.
fn iptables_restore(spec: &ServiceProxySpec) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A OUTPUT -j KUBE-SERVICES\n-A PREROUTING -j KUBE-SERVICES\n");
    for (i, s) in spec.services.iter().enumerate() {
        let eps = &s.ports[0].endpoints;
        chains += &format!(":KUBE-SVC-{i} - [0:0]\n");
        rules += &format!("-A KUBE-SERVICES -d {}/32 -p tcp --dport 80 -j KUBE-SVC-{i}\n", s.cluster_ip);
        for (k, e) in eps.iter().enumerate() {
            chains += &format!(":KUBE-SEP-{i}-{k} - [0:0]\n");
            let left = eps.len() - k;
            let pick = if left > 1 {
                format!("-m statistic --mode random --probability {:.5} ", 1.0 / left as f64)
            } else {
                String::new()
            };
            rules += &format!("-A KUBE-SVC-{i} {pick}-j KUBE-SEP-{i}-{k}\n");
            rules += &format!("-A KUBE-SEP-{i}-{k} -s {}/32 -j MARK --set-xmark 0x4000/0x4000\n", e.ip);
            rules += &format!("-A KUBE-SEP-{i}-{k} -p tcp -j DNAT --to-destination {}:{}\n", e.ip, e.port);
        }
    }
    chains + &rules + "COMMIT\n"
}

/// Median and 90th percentile of `count` fresh connections' connect() to `to` (each a first packet).
fn connect_latency(to: (Ipv4Addr, u16), count: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..count)
        .map(|_| {
            let started = Instant::now();
            let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)).expect("connect to the Service");
            let took = started.elapsed();
            drop(s);
            took
        })
        .collect();
    times.sort();
    (times[count / 2], times[count * 9 / 10])
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One size in a fresh namespace (the calling thread's: run it on a thread of its own).
fn run(n: u32) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    sh(&["ip", "link", "set", "lo", "up"], None);
    // The Service range routed out of a NIC, as a node's default route does.
    sh(&["ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc1"], None);
    sh(&["ip", "link", "set", "svc0", "up"], None);
    sh(&["ip", "link", "set", "svc1", "up"], None);
    sh(&["ip", "route", "add", "10.96.0.0/12", "dev", "svc0"], None);
    for j in 0..ENDPOINTS {
        sh(&["ip", "addr", "add", &format!("{}/32", Ipv4Addr::from(LOCAL_ENDPOINT_BASE + j)), "dev", "lo"], None);
    }
    let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
    std::thread::spawn(move || listener.incoming().for_each(drop));
    let last = (cluster_ip(n - 1), 80);

    // The agent's own paths: a PUT of everything, a PUT that moves one endpoint, the reconcile.
    let mut spec = spec(n);
    let proxy = Proxy::new(Box::new(NftNetlink::new().expect("netlink socket")));
    let started = Instant::now();
    proxy.apply(spec.clone()).expect("apply everything");
    let apply_all = started.elapsed();
    let (p50, p90) = connect_latency(last, 2000);

    // One endpoint of a Service in the middle moves, 21 times back and forth (the first change after the
    // whole table's commit also waits for the kernel's deferred release of that batch); the plan alone is
    // timed again to split the PUT.
    let (mid, moved) = ((n / 2) as usize, [Ipv4Addr::new(10, 127, 0, 1), Ipv4Addr::new(10, 127, 0, 2)]);
    let mut changes = Vec::new();
    let mut before = spec.clone();
    let mut lines = Vec::new();
    for i in 0..21 {
        before = spec.clone();
        spec.services[mid].ports[0].endpoints[3].ip = moved[i % 2];
        // The agent gets the spec owned (deserialized from the PUT): the copy is not its time.
        let put = spec.clone();
        let started = Instant::now();
        lines = proxy.apply(put).expect("apply the change");
        changes.push(started.elapsed());
    }
    let started = Instant::now();
    testbed_api::validate_services(&spec).expect("valid");
    let validated_spec = started.elapsed();
    let started = Instant::now();
    let ops = super::changed_services(&before, &spec);
    let planned = started.elapsed();
    assert_eq!(lines.len(), ops.len(), "the PUT ran the planned ops");
    // One endpoint of another Service goes away and comes back, 10 times each: the number of endpoints
    // changes, so the rule's modulus does (the one endpoint change that rewrites a rule, and so makes the
    // kernel validate the table).
    let other = (mid + 1) % n as usize;
    let mut removals = Vec::new();
    for _ in 0..10 {
        let gone = spec.services[other].ports[0].endpoints.pop().expect("an endpoint");
        let put = spec.clone();
        let started = Instant::now();
        proxy.apply(put).expect("apply the removal");
        removals.push(started.elapsed());
        spec.services[other].ports[0].endpoints.push(gone);
        proxy.apply(spec.clone()).expect("put it back");
    }
    let (change_first, change) = (changes[0], median(&mut changes));
    let removed = median(&mut removals);

    // Nothing changed since the agent's commit: the reconcile only asks for the generation.
    let started = Instant::now();
    assert_eq!(proxy.reconcile().expect("drift check"), Vec::<String>::new());
    let drift_check = started.elapsed();
    // Someone else's commit (another table) moves the generation: the reconcile reads back and diffs.
    sh(&["nft", "add", "table", "ip", "someone-else"], None);
    let started = Instant::now();
    assert_eq!(proxy.reconcile().expect("read back"), Vec::<String>::new(), "nothing of ours drifted");
    let read_back = started.elapsed();
    assert!(list_table()
        .expect("read back")
        .is_some_and(|have| ruleset::diff(Some(&have), &render::render(&spec)).is_empty()));
    // Where the change's time goes: the same size of batch (the change undone), the kernel's part alone.
    let mut kernel = NftNetlink::new().expect("netlink socket");
    let undo = super::changed_services(&spec, &before);
    let generation = kernel.generation().expect("generation");
    let started = Instant::now();
    kernel.apply(&undo, Some(generation)).expect("undo the change");
    let commit = started.elapsed();
    // And within the kernel's part: a batch with nothing for the kernel to validate (one map element
    // deleted) against the same element added back, whose goto makes the kernel validate the table's whole
    // jump graph from every base chain at commit.
    let key = format!("{} . tcp . 80", cluster_ip(n / 2));
    let element = (key.clone(), render::render(&before).maps[render::SERVICE_IPS].elements[&key].clone());
    let started = Instant::now();
    kernel.apply(&[Op::DeleteElements { map: render::SERVICE_IPS.into(), keys: vec![key] }], None).expect("delete");
    let unvalidated = started.elapsed();
    let started = Instant::now();
    kernel.apply(&[Op::AddElements { map: render::SERVICE_IPS.into(), elements: vec![element] }], None).expect("add");
    let validated = started.elapsed();
    sh(&["nft", "delete", "table", "ip", ruleset::TABLE], None);

    // iptables: kube-proxy's full sync is one iptables-restore of the whole nat table, at start and per change.
    let rules = iptables_restore(&spec);
    let started = Instant::now();
    sh(&["iptables-restore"], Some(&rules));
    let ipt_all = started.elapsed();
    let (ipt_p50, ipt_p90) = connect_latency(last, 2000);
    spec.services[(n / 2) as usize].ports[0].endpoints[3].ip = Ipv4Addr::new(10, 127, 0, 2);
    let rules = iptables_restore(&spec);
    let started = Instant::now();
    sh(&["iptables-restore"], Some(&rules));
    let ipt_change = started.elapsed();

    println!(
        "| {n} | {} | {} (first {}; validation {}, plan {}, commit {}, {} ops) | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} / {} |",
        ms(apply_all),
        ms(change),
        ms(change_first),
        ms(validated_spec),
        ms(planned),
        ms(commit),
        ops.len(),
        ms(removed),
        ms(unvalidated),
        ms(validated),
        ms(p50),
        ms(p90),
        ms(drift_check),
        ms(read_back),
        ms(ipt_all),
        ms(ipt_change),
        ms(ipt_p50),
        ms(ipt_p90),
    );
}

#[test]
#[ignore = "benchmark: root, nft and iptables-restore; run with --ignored --nocapture"]
fn bench_service_proxy() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let sizes = std::env::var("BENCH_SERVICES").unwrap_or_else(|_| "10,1000,10000".into());
    println!("| Services (x{ENDPOINTS} endpoints) | PUT all | PUT one endpoint change: median of 21 | PUT one endpoint removed: median of 10 | one-op batch: element delete / element add (validated) | connect to the last Service p50 / p90 | reconcile: drift check | reconcile: read back after a foreign commit | iptables-restore: all | iptables-restore: one change | iptables: connect p50 / p90 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes.split(',').map(|s| s.trim().parse::<u32>().expect("BENCH_SERVICES: numbers")) {
        std::thread::spawn(move || run(n)).join().expect("benchmark thread");
    }
}
