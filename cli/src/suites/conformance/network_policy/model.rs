//! The group's model, as Kubernetes' netpol e2e tests build theirs (test/e2e/network/netpol/model.go): pods
//! `a` and `b` in namespaces `x` and `y`, each serving two ports, `a` on the first node and `b` on the
//! second, so that half of the pairs cross nodes (all on the first node where pod traffic cannot cross). A
//! probe round connects every pod to every other pod on both ports at once and gives the matrix of what
//! connected, which a case compares with its expected one (their "truth table").

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Client;

use super::super::super::api::api_err;
use super::super::super::cluster::{Cluster, NodeInfo};
use super::super::super::harness::{evidence, pexec, TestPod};
use super::super::super::poll::until;
use super::super::super::probe::{self, HTTP_PORT};
use super::super::super::runner::CheckError;
use super::super::control_plane::{is_ready, labelled_namespace, pinned};

/// The model's namespaces: API name and the value of their `ns` label.
pub(super) const NAMESPACES: [(&str, &str); 2] = [("tb-netpol-x", "x"), ("tb-netpol-y", "y")];
/// The model's pods in each namespace (their `pod` label).
const PODS: [&str; 2] = ["a", "b"];
/// The second port every pod serves (its name followed by `-alt`).
pub(super) const ALT_PORT: u16 = 8081;
/// The UDP port every pod answers on (a datagram back with its name followed by `-udp`).
pub(super) const UDP_PORT: u16 = 8082;
pub(super) const PORTS: [u16; 3] = [HTTP_PORT, ALT_PORT, UDP_PORT];
/// A port's protocol in the model.
pub(super) fn protocol(port: u16) -> &'static str {
    if port == UDP_PORT {
        "UDP"
    } else {
        "TCP"
    }
}
/// The name each pod gives its container port `port`, as Kubernetes' model does (`serve-80-tcp`): what
/// named-port policies refer to.
pub(super) fn port_name(port: u16) -> String {
    format!("serve-{port}-{}", protocol(port).to_ascii_lowercase())
}
const PODS_DEADLINE: Duration = Duration::from_secs(180);
/// A blocked connection is a dropped SYN: busybox nc gives up after this. A blocked UDP probe is a datagram
/// without an answer: socat waits this long for one.
const CONNECT_SECS: u32 = 2;

/// A model pod: `x/a` and so on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Peer {
    pub(super) ns: &'static str,
    pub(super) pod: &'static str,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

pub(super) fn peer(ns: &'static str, pod: &'static str) -> Peer {
    Peer { ns, pod }
}

/// Every pod of the model.
pub(super) fn peers() -> Vec<Peer> {
    NAMESPACES.iter().flat_map(|(_, ns)| PODS.iter().map(|p| peer(ns, p))).collect()
}

/// Whether `from` connected to `to` on a port: one entry per ordered pair of distinct pods and port. A pod
/// to itself is left out: Kubernetes' API leaves it unspecified, and implementations differ.
pub(super) type Matrix = BTreeMap<(Peer, Peer, u16), bool>;

/// The matrix where `allowed` says, for every pair and port.
pub(super) fn matrix(allowed: impl Fn(&Peer, &Peer, u16) -> bool) -> Matrix {
    let all = peers();
    let mut m = Matrix::new();
    for from in &all {
        for to in all.iter().filter(|t| *t != from) {
            for port in PORTS {
                m.insert((from.clone(), to.clone(), port), allowed(from, to, port));
            }
        }
    }
    m
}

/// The model as it runs: each pod's address and where it runs.
pub(super) struct Model {
    pub(super) client: Client,
    pub(super) pods: BTreeMap<Peer, TestPod>,
}

fn namespace_of(label: &str) -> &'static str {
    NAMESPACES.iter().find(|(_, l)| *l == label).map(|(n, _)| *n).unwrap_or("tb-netpol-x")
}

pub(super) fn api_namespace(p: &Peer) -> &'static str {
    namespace_of(p.ns)
}

fn model_pod(p: &Peer, node: &str) -> Pod {
    let name = format!("{}-{}", p.ns, p.pod);
    let alt = format!(
        "d=/tmp/tb-netpol-alt-{name}; mkdir -p $d && echo {name}-alt > $d/index.html && exec busybox httpd -f -p {ALT_PORT} -h $d"
    );
    let udp = udp_server(UDP_PORT, &format!("echo {name}-udp"));
    let serving = |port: u16| {
        Some(vec![ContainerPort {
            container_port: port.into(),
            name: Some(port_name(port)),
            protocol: Some(protocol(port).into()),
            ..Default::default()
        }])
    };
    let containers = vec![
        Container {
            name: "web".into(),
            command: Some(probe::web_command(&name)),
            ports: serving(HTTP_PORT),
            ..Default::default()
        },
        Container { name: "alt".into(), command: Some(probe::sh(alt)), ports: serving(ALT_PORT), ..Default::default() },
        Container { name: "udp".into(), command: Some(probe::sh(udp)), ports: serving(UDP_PORT), ..Default::default() },
    ];
    let labels = BTreeMap::from([("pod".to_string(), p.pod.to_string())]);
    let metadata = ObjectMeta {
        name: Some(p.pod.into()),
        namespace: Some(api_namespace(p).into()),
        labels: Some(labels),
        ..Default::default()
    };
    pinned(metadata, node, containers)
}

/// Makes the namespaces (labelled) and pods, and waits until every pod serves.
/// `cross`: whether pod traffic crosses nodes here; where it does not (one node, backend none) every pod runs
/// on the first node.
pub(super) async fn setup<C: Cluster>(
    c: &C,
    client: &Client,
    nodes: &[NodeInfo],
    cross: bool,
) -> Result<Model, CheckError> {
    remove_all(client).await?;
    let first = nodes.first().ok_or_else(|| CheckError::Infra("the plan has no nodes".into()))?;
    let second = nodes.get(1).filter(|_| cross).unwrap_or(first);
    for (name, label) in NAMESPACES {
        labelled_namespace(client, name, &[("ns", label)]).await?;
    }
    let placed: Vec<(Peer, &NodeInfo)> =
        peers().into_iter().map(|p| if p.pod == "a" { (p, first) } else { (p, second) }).collect();
    for (p, node) in &placed {
        let pods: Api<Pod> = Api::namespaced(client.clone(), api_namespace(p));
        pods.create(&PostParams::default(), &model_pod(p, &node.name)).await.map_err(api_err("create pod"))?;
    }
    // Every container serving before the first probe round: an address alone comes before the containers run.
    until("the model's pods are Ready", PODS_DEADLINE, || async {
        let mut ready = 0;
        for (ns, _) in NAMESPACES {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let list = pods.list(&ListParams::default()).await.map_err(api_err("list pods"))?;
            ready += list.items.iter().filter(|p| is_ready(p)).count();
        }
        Ok((ready == placed.len()).then_some(()))
    })
    .await?;
    let mut pods = BTreeMap::new();
    for (p, node) in &placed {
        let node_pod = testbed_api::objects::node_pod_name(api_namespace(p), p.pod);
        let status = until(&format!("pod {p} running with an address"), PODS_DEADLINE, || async {
            Ok(c.get_pod(&node.name, &node_pod).await.ok().filter(|s| s.ip.is_some()))
        })
        .await?;
        let ip = status.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        pods.insert(p.clone(), TestPod { name: node_pod, node: node.name.clone(), ip, status });
    }
    Ok(Model { client: client.clone(), pods })
}

/// The script one pod runs: a connection to every other pod on each port, all at once, each line
/// `<peer> <port> <exit> <answered>`. Answered means the server replied with its own name; the exit (of
/// `timeout` around nc) tells a blocked connection (1: refused or timed out, 124) from a broken probe. A UDP
/// probe is one datagram: no answer within the timeout (socat's exit 0 with nothing read) is written as
/// exit 1, an ICMP port unreachable is socat's own exit 1, a missing socat 127.
fn probe_script(model: &Model, from: &Peer) -> String {
    let mut s = String::new();
    for (to, pod) in model.pods.iter().filter(|(to, _)| *to != from) {
        for port in PORTS {
            s += &probe_command(to, pod.ip, port);
            s += " & ";
        }
    }
    s.push_str("wait");
    s
}

/// A datagram in, `reply`'s output back to its sender (a forked socat per datagram). `-t`: the forked socat
/// waits this long for the reply once the datagram is delivered (socat's default of 0.5 s cut off replies from
/// pods on loaded TCG nodes, where the fork and exec of the reply take longer).
fn udp_server(port: u16, reply: &str) -> String {
    format!("exec socat -t {CONNECT_SECS} UDP4-RECVFROM:{port},fork SYSTEM:'{reply}'")
}

/// One probe of `probe_script`, a subshell printing its line.
fn probe_command(to: &Peer, ip: Ipv4Addr, port: u16) -> String {
    let name = format!("{}-{}", to.ns, to.pod);
    let t = CONNECT_SECS + 1;
    match protocol(port) {
        "UDP" => udp_probe(to, ip, port),
        _ => format!(
            "(o=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout {t} busybox nc -w {CONNECT_SECS} {ip} {port} 2>/dev/null); \
             rc=$?; case \"$o\" in *{name}*) echo '{to} {port} 0 1';; *) echo \"{to} {port} $rc 0\";; esac)"
        ),
    }
}

/// A UDP probe: one datagram, then up to `-t` for an answer (socat's default of 0.5 s called slow answers
/// blocked); `readbytes` makes the first datagram the socket's end, so the probe ends as soon as the answer is
/// in (the server's name is all it looks for).
fn udp_probe(to: &Peer, ip: Ipv4Addr, port: u16) -> String {
    let name = format!("{}-{}", to.ns, to.pod);
    format!(
        "(o=$(echo probe | timeout {t} socat -t {CONNECT_SECS} -T {CONNECT_SECS} - UDP4:{ip}:{port},readbytes={n} 2>/dev/null); \
         rc=$?; case \"$o\" in *{name}*) echo '{to} {port} 0 1';; '') [ $rc = 0 ] && rc=1; echo \"{to} {port} $rc 0\";; \
         *) echo '{to} {port} 0 0';; esac)",
        t = CONNECT_SECS + 1,
        n = name.len(),
    )
}

/// One probe's line: whether it connected, or why the probe itself is broken.
fn probe_line(line: &str) -> Option<(Peer, u16, Result<bool, String>)> {
    let mut parts = line.split_whitespace();
    let (to, port, exit, answered) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let to = peers().into_iter().find(|p| p.to_string() == to)?;
    let port = port.parse::<u16>().ok()?;
    let outcome = match (answered, exit) {
        ("1", _) => Ok(true),
        // nc: refused, unreachable or its connect timed out; 124: `timeout` ended it.
        (_, "1" | "124") => Ok(false),
        (_, "0") => Err("answered, but not with the server's name".to_string()),
        (_, other) => Err(format!("the probe exited {other} (a missing tool is 127)")),
    };
    Some((to, port, outcome))
}

/// One probe round from every pod at once.
pub(super) async fn probe_round<C: Cluster>(c: &C, model: &Model) -> Result<Matrix, CheckError> {
    let rounds = model.pods.iter().map(|(from, pod)| async move {
        let script = probe_script(model, from);
        let r = pexec(c, pod, Some("web"), &script, 20).await?;
        Ok::<_, CheckError>((from.clone(), script, r))
    });
    let mut observed = Matrix::new();
    for result in futures::future::join_all(rounds).await {
        let (from, script, r) = result?;
        for (to, port, outcome) in r.stdout.lines().filter_map(probe_line) {
            let connected = outcome.map_err(|why| {
                CheckError::Infra(format!("probe {from} -> {to}:{port}: {why}\n{}", evidence(&script, &r)))
            })?;
            observed.insert((from.clone(), to, port), connected);
        }
        if observed.keys().filter(|(f, _, _)| *f == from).count() != (peers().len() - 1) * PORTS.len() {
            return Err(CheckError::Infra(format!(
                "the probes from {from} did not all answer\n{}",
                evidence(&script, &r)
            )));
        }
    }
    Ok(observed)
}

/// Probes until the matrix is `expected` (policies take effect on every node within a few seconds), or
/// fails with both matrices once `within` has passed.
pub(super) async fn expect<C: Cluster>(
    c: &C,
    model: &Model,
    expected: &Matrix,
    within: Duration,
) -> Result<String, CheckError> {
    let started = std::time::Instant::now();
    loop {
        let observed = probe_round(c, model).await?;
        if &observed == expected {
            let blocked = expected.values().filter(|ok| !**ok).count();
            return Ok(format!(
                "{} of {} connections blocked as expected after {:.1} s",
                blocked,
                expected.len(),
                started.elapsed().as_secs_f64()
            ));
        }
        if started.elapsed() > within {
            return Err(CheckError::Fail(format!(
                "the reachability matrix is not the expected one after {} s ('.' connects, 'X' blocked, \
                 '!' where observed differs from expected)\n{}",
                within.as_secs(),
                render(expected, &observed)
            )));
        }
    }
}

/// Kubernetes' truth-table layout: a row per client, a column per server, one table per port and protocol; expected on
/// the left, observed on the right with `!` where it differs.
pub(super) fn render(expected: &Matrix, observed: &Matrix) -> String {
    let all = peers();
    let header: String = all.iter().map(|to| format!("{:>4}", to.to_string())).collect();
    let mut s = String::new();
    for port in PORTS {
        let title = format!("port {port}/{}:", protocol(port));
        let _ = writeln!(s, "{title} expected{}observed", " ".repeat((header.len() + 7).saturating_sub(title.len())));
        let _ = writeln!(s, "    {header}   |{header}");
        for from in &all {
            let row = |cell: &dyn Fn(&(Peer, Peer, u16)) -> &'static str| -> String {
                all.iter().map(|to| format!("{:>4}", cell(&(from.clone(), to.clone(), port)))).collect()
            };
            let shown = |table: &Matrix, key: &(Peer, Peer, u16)| match table.get(key) {
                None => "-",
                Some(true) => ".",
                Some(false) => "X",
            };
            let left = row(&|key| shown(expected, key));
            let right = row(&|key| if expected.get(key) != observed.get(key) { "!" } else { shown(observed, key) });
            let _ = writeln!(s, "{:>4}{left}   |{right}", from.to_string());
        }
    }
    s
}

/// Deletes the model's policies and pods, and waits until the pods are gone.
pub(super) async fn remove_all(client: &Client) -> Result<(), CheckError> {
    super::cases::delete_policies(client).await?;
    let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    for (ns, _) in NAMESPACES {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for p in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            let _ = pods.delete(p.metadata.name.as_deref().unwrap_or_default(), &now).await;
        }
    }
    until("the model's pods are gone", PODS_DEADLINE, || async {
        let mut left = 0;
        for (ns, _) in NAMESPACES {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            left += pods.list(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0);
        }
        Ok((left == 0).then_some(()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_has_every_ordered_pair_of_distinct_pods_on_every_port() {
        let m = matrix(|_, to, _| to.ns != "x");
        assert_eq!(m.len(), 4 * 3 * 3);
        assert!(!m.keys().any(|(from, to, _)| from == to));
        assert_eq!(m.values().filter(|ok| !**ok).count(), 18);
        assert_eq!((port_name(ALT_PORT), port_name(UDP_PORT)), ("serve-8081-tcp".into(), "serve-8082-udp".into()));
    }

    /// The UDP probe and server with the real socat on loopback: a reply that takes a second (a loaded TCG
    /// node) is an answer, and the probe ends on it rather than on its timeout; a port that never answers is
    /// blocked.
    #[test]
    fn a_real_udp_probe_waits_for_a_slow_answer_and_ends_on_it() {
        let free_port = || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let port = free_port();
        let server = udp_server(port, "sleep 1; echo y-a-udp");
        let mut server = std::process::Command::new("sh").args(["-c", &server]).spawn().expect("socat on the PATH");
        std::thread::sleep(Duration::from_millis(300));
        let probe = |port: u16| {
            let started = std::time::Instant::now();
            let cmd = udp_probe(&peer("y", "a"), Ipv4Addr::LOCALHOST, port);
            let out = std::process::Command::new("sh").args(["-c", &cmd]).output().expect("sh");
            let line = String::from_utf8(out.stdout).expect("utf-8");
            (probe_line(line.trim()).map(|l| l.2), started.elapsed())
        };
        let (answered, took) = probe(port);
        // A silent peer: a bound socket that reads nothing.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (silence, _) = probe(silent.local_addr().expect("addr").port());
        let _ = server.kill();
        let _ = server.wait();
        assert_eq!(answered, Some(Ok(true)), "a reply after 1 s is an answer");
        assert!(took < Duration::from_millis(2500), "the probe ended {took:?} after it began, not on the answer");
        assert_eq!(silence, Some(Ok(false)), "no answer: blocked");
    }

    /// The UDP probe's shell with a stand-in socat on the PATH: an answer, silence, a refusal, no socat.
    #[test]
    fn a_udp_probe_tells_an_answer_from_silence_and_a_missing_tool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |socat: Option<&str>| {
            let bin = dir.path().join("bin");
            let _ = std::fs::remove_dir_all(&bin);
            std::fs::create_dir(&bin).expect("bin");
            for tool in ["timeout", "cat", "sh"] {
                let path = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
                let path = String::from_utf8(path.expect("command -v").stdout).expect("utf-8");
                std::os::unix::fs::symlink(path.trim(), bin.join(tool)).expect("link");
            }
            if let Some(body) = socat {
                let script = bin.join("socat");
                std::fs::write(&script, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).expect("socat");
                std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
            }
            let cmd = probe_command(&peer("y", "a"), Ipv4Addr::new(10, 244, 1, 5), UDP_PORT);
            let out = std::process::Command::new(bin.join("sh")).args(["-c", &cmd]).env("PATH", &bin).output();
            let line = String::from_utf8(out.expect("sh").stdout).expect("utf-8");
            probe_line(line.trim()).map(|l| l.2)
        };
        assert_eq!(run(Some("echo y-a-udp")), Some(Ok(true)), "answered with the server's name");
        assert_eq!(run(Some("exit 0")), Some(Ok(false)), "no answer within the timeout: blocked");
        assert_eq!(run(Some("exit 1")), Some(Ok(false)), "ICMP port unreachable: blocked");
        assert!(run(Some("echo someone-else")).is_some_and(|r| r.is_err()), "a wrong answer is an error");
        assert!(run(None).is_some_and(|r| r.is_err_and(|e| e.contains("127"))), "no socat is an error");
    }

    #[test]
    fn a_probe_is_blocked_only_by_the_network_and_a_broken_one_is_named() {
        assert_eq!(probe_line("x/b 8080 0 1"), Some((peer("x", "b"), 8080, Ok(true))));
        assert_eq!(probe_line("y/a 8081 1 0"), Some((peer("y", "a"), 8081, Ok(false))));
        assert_eq!(probe_line("y/a 8081 124 0").map(|l| l.2), Some(Ok(false)));
        assert!(probe_line("y/b 8080 127 0").is_some_and(|l| l.2.is_err_and(|e| e.contains("127"))));
        assert!(probe_line("y/b 8080 0 0").is_some_and(|l| l.2.is_err()));
        assert_eq!(probe_line("nc: timed out"), None);
    }

    #[test]
    fn the_truth_table_marks_where_observed_differs() {
        let expected = matrix(|_, to, _| to.ns != "x");
        let mut observed = expected.clone();
        observed.insert((peer("y", "a"), peer("x", "a"), HTTP_PORT), true);
        let table = render(&expected, &observed);
        let row = table.lines().find(|l| l.trim_start().starts_with("y/a")).expect("a y/a row");
        assert_eq!(row, " y/a   X   X   -   .   |   !   X   -   .", "{table}");
        assert_eq!(table.matches('!').count(), 1, "{table}");
        assert!(table.contains("port 8082/UDP: expected         observed"), "{table}");
    }
}
