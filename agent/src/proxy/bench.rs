//! Benchmark (ignored; root, `nft` and `iptables-restore`): 10, 1,000 and 10,000 Services of 10 endpoints
//! each in a network namespace of the test thread's own, this proxy's nftables ruleset side by side with the
//! ruleset kube-proxy's iptables mode writes for the same Services. docs/benchmarks.md has the figures.
//!
//! Run: `sudo cargo test -p testbed-agent proxy::bench -- --ignored --nocapture` (`BENCH_SERVICES=10,1000`
//! for other sizes).

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed_api::{
    Protocol, ProxiedService, ProxyEndpoint, ServicePort, ServiceProxySpec, SessionAffinity, TrafficPolicy,
};

use super::nft::{Nft, NftCli};
use super::{render, ruleset};

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

    let mut spec = spec(n);
    let mut kernel = NftCli;
    let started = Instant::now();
    let ops = ruleset::diff(None, &render::render(&spec));
    kernel.apply(&ops).expect("apply everything");
    let apply_all = started.elapsed();
    let (p50, p90) = connect_latency(last, 2000);

    // One endpoint of a Service in the middle moves: the PUT's path (the Services that differ, then nft).
    let before = spec.clone();
    spec.services[(n / 2) as usize].ports[0].endpoints[3].ip = Ipv4Addr::new(10, 127, 0, 1);
    let started = Instant::now();
    let ops = super::changed_services(&before, &spec);
    let planned = started.elapsed();
    let want2 = render::render(&spec);
    kernel.apply(&ops).expect("apply the change");
    let change_nft = started.elapsed() - planned;
    assert!(kernel.read().expect("read back").is_some_and(|have| ruleset::diff(Some(&have), &want2).is_empty()));
    let started = Instant::now();
    let _ = kernel.read().expect("read back");
    let read_back = started.elapsed();
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
        "| {n} | {} | {} + {} ({} ops) | {} / {} | {} | {} | {} | {} / {} |",
        ms(apply_all),
        ms(planned),
        ms(change_nft),
        ops.len(),
        ms(p50),
        ms(p90),
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
    println!("| Services (x{ENDPOINTS} endpoints) | nft: apply all | nft: one endpoint change (diff + transaction) | nft: connect to the last Service p50 / p90 | nft: read back | iptables-restore: all | iptables-restore: one change | iptables: connect p50 / p90 |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes.split(',').map(|s| s.trim().parse::<u32>().expect("BENCH_SERVICES: numbers")) {
        std::thread::spawn(move || run(n)).join().expect("benchmark thread");
    }
}
