//! End to end for the lab's control plane on real QEMU VMs with the real kubectl: `up` of the default topology
//! gives a kubeconfig that plain `kubectl` uses (through the API forwarder on the host's loopback) to list,
//! create and watch; killing the forwarder cuts kubectl off and `up` brings it back; `down` leaves no
//! forwarder and no lab directory. With three members, etcd answers nothing to a client without a lab
//! certificate (plain HTTP or TLS without one, from a node on the underlay), the API server the forwarder uses
//! keeps taking writes when its own node's etcd member stops (it moves to the other members), and with two
//! members stopped it does not (the write really needs etcd's quorum). Needs root, QEMU and kubectl:
//! skipped without them, except under CI (`CI=true`), where that is a failure.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testbed_test_support::host::can_run_vms;
use testbed_test_support::kubectl::Kubectl;
use testbed_test_support::lab::{show, topology_copy, LabGuard};

fn testbed(state_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_testbed"));
    c.env("TESTBED_STATE_DIR", state_dir);
    c
}

/// Root, QEMU and kubectl; under CI a missing kubectl fails instead of skipping.
fn can_run() -> bool {
    if !can_run_vms() {
        return false;
    }
    let kubectl = Command::new("sh").args(["-c", "command -v kubectl"]).output().is_ok_and(|o| o.status.success());
    if !kubectl {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but kubectl is missing (tests/packages.txt)");
        eprintln!("skipped: needs kubectl");
    }
    kubectl
}

/// kubectl with the lab's kubeconfig; its discovery cache in the test's directory, not the user's.
fn kubectl_of(kubeconfig: &Path) -> Kubectl {
    let tmp = kubeconfig.ancestors().nth(3).expect("<tmp>/state/<lab>/kubeconfig");
    Kubectl::new(kubeconfig, &tmp.join("kube-cache"))
}

fn kubectl_command(kubeconfig: &Path) -> Command {
    kubectl_of(kubeconfig).command()
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    kubectl_of(kubeconfig).run(args, stdin)
}

/// PIDs of every `testbed forward-api --lab <lab>` process on the host.
fn forwarders(lab: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&&b"forward-api"[..]) && args.windows(2).any(|w| w[0] == b"--lab" && w[1] == lab.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn up(state_dir: &Path, topo: &Path) -> PathBuf {
    let started = Instant::now();
    let out = testbed(state_dir).arg("up").arg(topo).output().expect("run up");
    assert!(out.status.success(), "{}", show("up", &out));
    eprintln!("up: {:.1} s", started.elapsed().as_secs_f64());
    let path = testbed(state_dir).args(["kubeconfig"]).output().expect("kubeconfig");
    assert!(path.status.success(), "{}", show("kubeconfig", &path));
    PathBuf::from(String::from_utf8_lossy(&path.stdout).trim())
}

const OBJECTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: cp-e2e}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: first, namespace: cp-e2e}
spec: {holderIdentity: node1, leaseDurationSeconds: 40}
";

#[test]
fn default_lab_serves_kubectl_and_down_leaves_nothing() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "cpl-e2e";
    let topo = topology_copy(tmp.path(), "default.yaml", lab);
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };
    let kubeconfig = up(&state_dir, &topo);
    assert_eq!(kubeconfig, state_dir.join(lab).join("kubeconfig"));

    let ns = kubectl(&kubeconfig, &["get", "namespaces"], None);
    assert!(
        ns.status.success() && String::from_utf8_lossy(&ns.stdout).contains("kube-system"),
        "{}",
        show("get ns", &ns)
    );
    let created = kubectl(&kubeconfig, &["create", "-f", "-"], Some(OBJECTS));
    assert!(created.status.success(), "{}", show("create -f", &created));

    // A watch started now sees a Lease created after it.
    let mut watch = kubectl_command(&kubeconfig)
        .args(["get", "leases", "-n", "cp-e2e", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let lines = BufReader::new(watch.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || lines.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).as_deref(), Ok("lease.coordination.k8s.io/first"));
    let second = OBJECTS.split("---\n").nth(1).expect("lease").replace("first", "second");
    let created = kubectl(&kubeconfig, &["create", "-f", "-"], Some(&second));
    assert!(created.status.success(), "{}", show("create second", &created));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).as_deref(), Ok("lease.coordination.k8s.io/second"));
    let _ = watch.kill();
    let _ = watch.wait();

    // Control: without the forwarder kubectl cannot reach the API; `up` of the running lab starts it again.
    let before = forwarders(lab);
    assert_eq!(before.len(), 1, "one forwarder: {before:?}");
    let _ = Command::new("kill").arg(before[0].to_string()).status();
    std::thread::sleep(Duration::from_millis(500));
    let cut = kubectl(&kubeconfig, &["get", "namespaces"], None);
    assert!(!cut.status.success(), "kubectl reached the API without the forwarder: {}", show("get ns", &cut));
    let kubeconfig = up(&state_dir, &topo);
    let back = kubectl(&kubeconfig, &["get", "lease", "first", "-n", "cp-e2e", "-o", "name"], None);
    assert!(back.status.success(), "{}", show("get lease after up", &back));

    let down = testbed(&state_dir).args(["down", "--lab", lab]).output().expect("down");
    assert!(down.status.success(), "{}", show("down", &down));
    assert!(forwarders(lab).is_empty(), "forwarder left running: {:?}", forwarders(lab));
    assert!(!state_dir.join(lab).exists(), "lab directory remains");
}

/// Stops node `node`'s etcd member for good (until `up`).
fn stop_etcd(state_dir: &Path, lab: &str, node: &str) {
    // Without its .cmd file testbed-service leaves the service stopped.
    // etcd may take seconds to exit under load: wait up to 15 s for it.
    let cmd = "mv /etc/testbed/etcd.cmd /etc/testbed/etcd.cmd.off && kill $(cat /run/testbed-etcd.pid) && \
               i=0; while pgrep -x etcd >/dev/null; do [ $i -lt 30 ] || exit 1; i=$((i+1)); sleep 0.5; done";
    let out = testbed(state_dir).args(["exec", "--lab", lab, node, "--", cmd]).output().expect("exec");
    assert!(out.status.success(), "{}", show(&format!("stop etcd on {node}"), &out));
}

#[test]
fn three_members_take_writes_with_one_etcd_member_down() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "cpl-e2e3";
    let topo = topology_copy(tmp.path(), "control-plane-3.yaml", lab);
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };
    let kubeconfig = up(&state_dir, &topo);
    let created = kubectl(&kubeconfig, &["create", "-f", "-"], Some(OBJECTS));
    assert!(created.status.success(), "{}", show("create -f", &created));

    // From node2 (on the underlay, like a pod): its etcd member's client port, without a client certificate.
    let probe = r#"url=$(sed -n 's/.*--listen-client-urls https:\/\/\([^ ]*\).*/\1/p' /etc/testbed/etcd.cmd)
        body='{"key":"Lw==","range_end":"AA=="}'
        echo "url=$url"
        echo "plain: $(printf 'POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n%s' "$body" | busybox nc -w 5 "${url%:*}" "${url#*:}")"
        busybox wget -q -O- --no-check-certificate --post-data "$body" "https://$url/v3/kv/range" 2>&1
        echo "tls-rc=$?""#;
    let out = testbed(&state_dir).args(["exec", "--lab", lab, "node2", "--", probe]).output().expect("exec");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("etcd probe from node2:\n{text}");
    // The port was there (found in etcd's command, not refused) and took no request without a certificate.
    let reached = text.contains(":2379\n") && !text.contains("refused");
    assert!(reached && text.contains("plain: ") && text.contains("tls-rc=1"), "{}", show("probe etcd", &out));
    assert!(!text.contains("\"header\""), "etcd answered a client without a certificate: {}", show("probe", &out));

    let stop_etcd = |node: &str| stop_etcd(&state_dir, lab, node);
    // node1's: the forwarder's first member, whose API server must now use node2's and node3's.
    stop_etcd("node1");
    let lease = |name: &str| OBJECTS.split("---\n").nth(1).expect("lease").replace("first", name);
    let written = kubectl(&kubeconfig, &["create", "-f", "-"], Some(&lease("while-node1-down")));
    assert!(written.status.success(), "{}", show("write with node1's etcd down", &written));
    let read = kubectl(&kubeconfig, &["get", "lease", "while-node1-down", "-n", "cp-e2e", "-o", "name"], None);
    assert!(read.status.success(), "{}", show("read back", &read));

    // Control: with two of three members down there is no quorum, and the same write must fail.
    stop_etcd("node2");
    let refused = kubectl(&kubeconfig, &["create", "-f", "-"], Some(&lease("without-quorum")));
    assert!(!refused.status.success(), "a write went through without etcd's quorum: {}", show("create", &refused));
}

/// The node-death test's lab: `control-plane-3.yaml` with node lifecycle times short enough for a test.
const GRACE_SECS: u64 = 12;
const EVICTION_SECS: u64 = 10;
/// The controller manager's leader Lease (`controllers::leader::Timing`): held 15 s, tried every 2 s.
const LEADER_LEASE_SECS: u64 = 15;
const LEADER_RETRY_SECS: u64 = 2;
/// How often the node lifecycle controller looks at the nodes (`NodeLifecycleConfig::period`).
const MONITOR_PERIOD_SECS: u64 = 5;
/// Slack for a loaded TCG host: the forwarder's ~10 s failover when the dead node was its member, slow
/// guests, kubectl's own start (at load 7-10 on 2 cores a takeover was seen 31 s after the kill).
const MARGIN_SECS: u64 = 30;
const NAMESPACE: &str = "nd-e2e";
const SLEEPERS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: nd-e2e}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleeper, namespace: nd-e2e}
spec:
  replicas: 3
  selector: {matchLabels: {app: sleeper}}
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: sleep, command: [sleep, '100000']}
";

/// kubectl's stdout once it succeeds, tried again until `limit` has passed since `since`. None when it never
/// succeeded. Each call may take over 10 s: with the first control-plane member dead, the forwarder tries it
/// for 10 s (`CONNECT_DEADLINE`) on every new connection before the next member, so a shorter request
/// timeout would never get through.
fn kubectl_until(kubeconfig: &Path, args: &[&str], since: Instant, limit: Duration) -> Option<String> {
    loop {
        let out = kubectl_command(kubeconfig).arg("--request-timeout=20s").args(args).output().expect("run kubectl");
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if since.elapsed() > limit {
            eprintln!("{}", show(&format!("kubectl {}", args.join(" ")), &out));
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls `probe` until it returns Some or `limit` has passed since `since`; returns its value and the seconds
/// since `since`, or None at the limit.
fn poll<T>(since: Instant, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<(T, f64)> {
    loop {
        if let Some(v) = probe() {
            return Some((v, since.elapsed().as_secs_f64()));
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The Deployment's pods as (name, node), and its available replicas.
fn sleepers(kubeconfig: &Path, since: Instant, limit: Duration) -> Option<(Vec<(String, String)>, i64)> {
    let pods =
        kubectl_until(kubeconfig, &["get", "pods", "-n", NAMESPACE, "-l", "app=sleeper", "-o", "json"], since, limit)?;
    let pods: serde_json::Value = serde_json::from_str(&pods).ok()?;
    let placed = pods["items"]
        .as_array()?
        .iter()
        .map(|p| {
            let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (field(&p["metadata"]["name"]), field(&p["spec"]["nodeName"]))
        })
        .collect();
    let deploy =
        kubectl_until(kubeconfig, &["get", "deployment", "sleeper", "-n", NAMESPACE, "-o", "json"], since, limit)?;
    let deploy: serde_json::Value = serde_json::from_str(&deploy).ok()?;
    Some((placed, deploy["status"]["availableReplicas"].as_i64().unwrap_or(0)))
}

/// The status of node `node`'s Ready condition as kubectl reads it (`True`; `Unknown` once the node
/// lifecycle controller has given up on it). kubectl's `get node` table has no STATUS column here: the API
/// server serves no server-side Tables, so kubectl prints names and ages only.
fn node_ready(kubeconfig: &Path, node: &str, since: Instant, limit: Duration) -> Option<String> {
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    kubectl_until(kubeconfig, &["get", "node", node, "-o", ready], since, limit).map(|s| s.trim().to_string())
}

/// What node `node`'s kernel and agent show of the node pod `node_pod`: how many processes carry its name
/// (its infra process and containers) and whether the agent lists it.
fn pod_on_node(state_dir: &Path, lab: &str, node: &str, node_pod: &str) -> (usize, bool) {
    // A bracketed first character: the pattern does not match grep's own command line.
    let pattern = format!("[{}]{}", &node_pod[..1], &node_pod[1..]);
    let script = format!(
        "echo processes=$(grep -l -e '{pattern}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)\n\
         echo agent=$(busybox wget -q -O- http://127.0.0.1:7070/v1/pods)"
    );
    let out = testbed(state_dir).args(["exec", "--lab", lab, node, "--", &script]).output().expect("exec");
    assert!(out.status.success(), "{}", show(&format!("pods on {node}"), &out));
    let text = String::from_utf8_lossy(&out.stdout);
    let processes = text
        .lines()
        .find_map(|l| l.strip_prefix("processes="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", show("count processes", &out)));
    let agent = text.lines().find_map(|l| l.strip_prefix("agent=")).unwrap_or_default();
    assert!(agent.starts_with('['), "the agent's pod list: {}", show("list pods", &out));
    (processes, agent.contains(node_pod))
}

/// The PID of node `node`'s QEMU from the lab's state.json, checked to be that QEMU before anyone kills it.
fn qemu_pid(state_dir: &Path, lab: &str, node: &str) -> u32 {
    let path = state_dir.join(lab).join("state.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("state.json")).expect("state.json is JSON");
    let pid = state["nodes"][node]["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("the node's pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the node's QEMU runs");
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let vm = format!("tb-{lab}-{node},");
    assert!(
        args.first().is_some_and(|a| a.contains("qemu-system")) && args.iter().any(|a| a.starts_with(&vm)),
        "pid {pid} is not {node}'s QEMU: {args:?}"
    );
    pid
}

/// A control-plane member dies with the controller manager's leader on it: another member takes the leader
/// Lease, the dead node turns NotReady after the grace period, its pod is evicted after the eviction
/// timeout and replaced on a live node, and `up` boots the node again, Ready and without the evicted pod.
#[test]
#[ignore = "not yet reliable: 3 of 6 runs passed (2 failed at the handover before the forwarder's 2 s member \
            timeout, 1 at the replacement, cause unknown); run with --ignored until it is"]
fn a_dead_leaders_node_is_noticed_and_its_pods_replaced() {
    if !can_run() {
        return;
    }
    let test_started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "nd-e2e";
    let topo = topology_copy(tmp.path(), "control-plane-3.yaml", lab);
    let text = std::fs::read_to_string(&topo).expect("topology");
    let members = "    nodes: [node1, node2, node3]\n";
    assert!(text.contains(members), "{text}");
    let knobs = format!("    node_monitor_grace_period: {GRACE_SECS}s\n    pod_eviction_timeout: {EVICTION_SECS}s\n");
    std::fs::write(&topo, text.replace(members, &format!("{members}{knobs}"))).expect("write topology");
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };
    let kubeconfig = up(&state_dir, &topo);
    let created = kubectl(&kubeconfig, &["create", "-f", "-"], Some(SLEEPERS));
    assert!(created.status.success(), "{}", show("create -f", &created));

    // Three available, one per node (the scheduler spreads a ReplicaSet's pods).
    let start = Instant::now();
    let spread = poll(start, Duration::from_secs(120), || {
        let (pods, available) = sleepers(&kubeconfig, start, Duration::from_secs(120))?;
        let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|(_, n)| n.as_str()).collect();
        (available == 3 && pods.len() == 3 && nodes.len() == 3).then_some(pods)
    });
    let (pods, seconds) = spread.expect("3 sleepers available, one per node");
    eprintln!("3 sleepers available on 3 nodes {seconds:.1} s after the create: {pods:?}");

    let holder = |since: Instant, limit: Duration| {
        let args = [
            "get",
            "lease",
            "testbed-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ];
        kubectl_until(&kubeconfig, &args, since, limit).map(|h| h.trim().to_string())
    };
    let leader = holder(Instant::now(), Duration::from_secs(30)).expect("the leader Lease");
    assert!(["node1", "node2", "node3"].contains(&leader.as_str()), "leader `{leader}`");
    let victim_pod = pods.iter().find(|(_, n)| *n == leader).map(|(p, _)| p.clone()).expect("a pod on the leader");
    let node_pod = testbed_api::objects::node_pod_name(NAMESPACE, &victim_pod);
    // Control: the check that later finds the pod gone finds it now, in the kernel and in the agent.
    let (processes, listed) = pod_on_node(&state_dir, lab, &leader, &node_pod);
    assert!(
        processes >= 1 && listed,
        "{victim_pod} ({node_pod}) not seen on {leader}: {processes} processes, listed {listed}"
    );

    let pid = qemu_pid(&state_dir, lab, &leader);
    let killed = Instant::now();
    let out = Command::new("kill").args(["-KILL", &pid.to_string()]).output().expect("kill");
    assert!(out.status.success(), "{}", show("kill", &out));
    eprintln!("killed {leader}'s QEMU (pid {pid}), the controller manager's leader, with {victim_pod} on it");

    // (a) Another member takes the leader Lease once it has gone unrenewed for its duration.
    let limit_a = LEADER_LEASE_SECS + LEADER_RETRY_SECS + MARGIN_SECS;
    let handover = poll(killed, Duration::from_secs(limit_a), || {
        holder(killed, Duration::from_secs(limit_a)).filter(|h| !h.is_empty() && *h != leader)
    });
    let (new_leader, handover_s) = handover.unwrap_or_else(|| panic!("(a) no other leader within {limit_a} s"));
    eprintln!("(a) leader handover: {new_leader} holds the Lease {handover_s:.1} s after the kill (limit {limit_a} s)");

    // (b) The new leader's node lifecycle controller times the dead node's Lease from when it starts.
    let limit_b = limit_a + GRACE_SECS + MONITOR_PERIOD_SECS;
    let not_ready = poll(killed, Duration::from_secs(limit_b), || {
        node_ready(&kubeconfig, &leader, killed, Duration::from_secs(limit_b)).filter(|s| s != "True")
    });
    let (status, not_ready_s) = not_ready.unwrap_or_else(|| {
        let now = node_ready(&kubeconfig, &leader, killed, Duration::from_secs(limit_b + 30));
        panic!("(b) {leader} still Ready {limit_b} s after the kill (Ready condition now {now:?})")
    });
    eprintln!(
        "(b) {leader} NotReady (Ready {status}) {not_ready_s:.1} s after the kill (grace {GRACE_SECS} s, limit {limit_b} s)"
    );
    assert!(not_ready_s >= GRACE_SECS as f64, "(b) NotReady before the grace period: {not_ready_s:.1} s");

    // (c) Evicted after the timeout; the ReplicaSet's new pod runs on a live node.
    let limit_c = limit_b + EVICTION_SECS + MONITOR_PERIOD_SECS + MARGIN_SECS;
    let replaced = poll(killed, Duration::from_secs(limit_c), || {
        let (pods, available) = sleepers(&kubeconfig, killed, Duration::from_secs(limit_c))?;
        let moved = pods.len() == 3 && pods.iter().all(|(p, n)| *p != victim_pod && *n != leader && !n.is_empty());
        (available == 3 && moved).then_some(pods)
    });
    let (pods, replaced_s) = replaced.unwrap_or_else(|| {
        let now = sleepers(&kubeconfig, killed, Duration::from_secs(limit_c + 30));
        // Each pod's phase and Ready: a replacement that exists but never became available shows here.
        let states = "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} \
                      {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
        let args = ["get", "pods", "-n", NAMESPACE, "-o", states];
        let states = kubectl_until(&kubeconfig, &args, killed, Duration::from_secs(limit_c + 60));
        panic!("(c) {victim_pod} not replaced on a live node within {limit_c} s: pods and available now {now:?}\n{states:?}")
    });
    eprintln!(
        "(c) back to 3 available {replaced_s:.1} s after the kill (grace {GRACE_SECS} s + eviction {EVICTION_SECS} s, \
         limit {limit_c} s): {pods:?}"
    );
    assert!(
        replaced_s >= (GRACE_SECS + EVICTION_SECS) as f64,
        "(c) evicted before grace + eviction: {replaced_s:.1} s"
    );

    // (d) `up` boots the dead node again (and reuses the others); the evicted pod does not come back to it.
    let rebooted = Instant::now();
    let kubeconfig = up(&state_dir, &topo);
    let ready = node_ready(&kubeconfig, &leader, rebooted, Duration::from_secs(60));
    assert_eq!(ready.as_deref(), Some("True"), "(d) {leader}'s Ready after up");
    let (processes, listed) = pod_on_node(&state_dir, lab, &leader, &node_pod);
    eprintln!(
        "(d) {leader} Ready again {:.1} s after `up` began; {node_pod}: {processes} processes, listed {listed}",
        rebooted.elapsed().as_secs_f64()
    );
    assert!(processes == 0 && !listed, "(d) the evicted {victim_pod} is back on {leader}");
    let after = sleepers(&kubeconfig, rebooted, Duration::from_secs(30)).expect("sleepers after up");
    assert!(after.1 == 3 && after.0.iter().all(|(p, _)| *p != victim_pod), "(d) the Deployment after up: {after:?}");
    // The rebooted node's etcd member is back in the cluster: with another member stopped, writes need it
    // for the quorum of two.
    let other = ["node1", "node2", "node3"].into_iter().find(|n| *n != leader).expect("another member");
    stop_etcd(&state_dir, lab, other);
    let lease = OBJECTS.split("---\n").nth(1).expect("lease").replace("cp-e2e", NAMESPACE);
    let wrote = Instant::now();
    let written = poll(wrote, Duration::from_secs(60), || {
        // A create that went through after kubectl stopped waiting is found on the next try.
        let out = kubectl(&kubeconfig, &["create", "-f", "-"], Some(&lease));
        (out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists")).then_some(())
    });
    let (_, write_s) =
        written.unwrap_or_else(|| panic!("(d) no write with {other}'s etcd down: {leader}'s member is not back"));
    eprintln!("(d) a write with {other}'s etcd stopped went through {write_s:.1} s later: {leader}'s member is back");
    eprintln!("node-death test: {:.1} s in all", test_started.elapsed().as_secs_f64());
}
