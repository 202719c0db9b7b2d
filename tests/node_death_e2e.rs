//! End to end for a node that dies on real QEMU VMs with the real kubectl: three control-plane members, the
//! controller manager's leader on a chosen node (node1 by default: the forwarder's first member, the hardest
//! case; `TESTBED_ND_LEADER=node2|node3` for the others); its QEMU killed; another member takes over,
//! the node turns NotReady, its pod is evicted and replaced, and `up` boots it again without the pod; its
//! etcd member serves the quorum again, etcd takes no client without the lab's certificate, the API server
//! moves to the other members when its own node's stops, and two members down refuse writes. Needs
//! root, QEMU and kubectl: skipped without them, except under CI (`CI=true`), where that is a failure.

use std::path::Path;
use std::time::{Duration, Instant};

use testbed_test_support::host::can_run_vms;
use testbed_test_support::lab::{topology_copy, LabGuard};
use testbed_test_support::vm_lab::{poll, VmLab};

/// Root, QEMU and kubectl; under CI a missing kubectl fails instead of skipping.
fn can_run() -> bool {
    if !can_run_vms() {
        return false;
    }
    let kubectl =
        std::process::Command::new("sh").args(["-c", "command -v kubectl"]).output().is_ok_and(|o| o.status.success());
    if !kubectl {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but kubectl is missing (tests/packages.txt)");
        eprintln!("skipped: needs kubectl");
    }
    kubectl
}

/// The lab's node lifecycle times, short enough for a test. The grace period spans two of the kubelet's 10 s
/// Lease renewals (Kubernetes' 40 s spans four): with 12 s one renewal 2 s late on a loaded TCG host turns a
/// live node NotReady, and 10 s later its pods are evicted; at load 10-17 runs saw a sleeper without a node
/// and one being deleted from a live node before anything was killed.
const GRACE_SECS: u64 = 20;
const EVICTION_SECS: u64 = 10;
/// The controller manager's leader Lease (`controllers::leader::Timing`): held 15 s, tried every 2 s.
const LEADER_LEASE_SECS: u64 = 15;
const LEADER_RETRY_SECS: u64 = 2;
/// How often the node lifecycle controller looks at the nodes (`NodeLifecycleConfig::period`).
const MONITOR_PERIOD_SECS: u64 = 5;
/// Slack for a loaded TCG host: slow guests, kubectl's own start, the forwarder's 2 s on a dead member.
const MARGIN_SECS: u64 = 30;
/// How long a new Deployment's pods may take to be available on a busy host (TCG guests at load 10+ took
/// over 120 s once; the chain after it is what the test times).
const SETTLE: Duration = Duration::from_secs(240);
const NAMESPACE: &str = "nd-e2e";
const MEMBERS: [&str; 3] = ["node1", "node2", "node3"];
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

/// `control-plane-3.yaml` as lab `lab` with the short node lifecycle times.
fn topology(dir: &Path, lab: &str) -> std::path::PathBuf {
    let topo = topology_copy(dir, "control-plane-3.yaml", lab);
    let text = std::fs::read_to_string(&topo).expect("topology");
    let members = "    nodes: [node1, node2, node3]\n";
    assert!(text.contains(members), "{text}");
    let knobs = format!("    node_monitor_grace_period: {GRACE_SECS}s\n    pod_eviction_timeout: {EVICTION_SECS}s\n");
    std::fs::write(&topo, text.replace(members, &format!("{members}{knobs}"))).expect("write topology");
    topo
}

/// The Deployment's pods as (name, node), and its available replicas.
fn sleepers(lab: &VmLab, since: Instant, limit: Duration) -> Option<(Vec<(String, String)>, i64)> {
    let pods = lab.kubectl_until(&["get", "pods", "-n", NAMESPACE, "-l", "app=sleeper", "-o", "json"], since, limit)?;
    let pods: serde_json::Value = serde_json::from_str(&pods).ok()?;
    let placed = pods["items"]
        .as_array()?
        .iter()
        .map(|p| {
            let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (field(&p["metadata"]["name"]), field(&p["spec"]["nodeName"]))
        })
        .collect();
    let deploy = lab.kubectl_until(&["get", "deployment", "sleeper", "-n", NAMESPACE, "-o", "json"], since, limit)?;
    let deploy: serde_json::Value = serde_json::from_str(&deploy).ok()?;
    Some((placed, deploy["status"]["availableReplicas"].as_i64().unwrap_or(0)))
}

/// Each pod's name, node, phase and Ready, for a failure message.
fn pod_states(lab: &VmLab, since: Instant, limit: Duration) -> Option<String> {
    let states = "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} \
                  {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
    lab.kubectl_until(&["get", "pods", "-n", NAMESPACE, "-o", states], since, limit)
}

/// Every event (a node's NodeNotReady is in `default`), oldest first, for a failure message (a pod that was never created, or deleted).
fn events(lab: &VmLab, since: Instant) -> Option<String> {
    let lines = "jsonpath={range .items[*]}{.lastTimestamp} {.involvedObject.kind}/{.involvedObject.name} \
                 {.reason}: {.message}{\"\\n\"}{end}";
    let args = ["get", "events", "-A", "--sort-by=.lastTimestamp", "-o", lines];
    lab.kubectl_until(&args, since, since.elapsed() + Duration::from_secs(30))
}

/// The holder of the controller manager's leader Lease.
fn holder(lab: &VmLab, since: Instant, limit: Duration) -> Option<String> {
    let args =
        ["get", "lease", "testbed-controller-manager", "-n", "kube-system", "-o", "jsonpath={.spec.holderIdentity}"];
    lab.kubectl_until(&args, since, limit).map(|h| h.trim().to_string())
}

/// Makes `node` the controller manager's leader: the other members' managers stop (SIGINT, on which a
/// leader releases its Lease) until `node` holds it, then start again as candidates.
fn make_leader(lab: &VmLab, node: &str) {
    let started = Instant::now();
    let limit = Duration::from_secs(LEADER_LEASE_SECS + LEADER_RETRY_SECS + MARGIN_SECS);
    if holder(lab, started, limit).as_deref() == Some(node) {
        return;
    }
    let others: Vec<&str> = MEMBERS.into_iter().filter(|n| *n != node).collect();
    for other in &others {
        lab.stop_service(other, "controller-manager", "INT");
    }
    let took = poll(started, limit, || holder(lab, started, limit).filter(|h| h == node));
    let (_, seconds) = took.unwrap_or_else(|| panic!("{node} did not take the leader Lease within {limit:?}"));
    for other in &others {
        lab.start_service(other, "controller-manager");
    }
    eprintln!("{node} leads ({seconds:.1} s to move the leader Lease)");
}

/// A control-plane member dies with the controller manager's leader on it: another member takes the leader
/// Lease, the dead node turns NotReady after the grace period, its pod is evicted after the eviction
/// timeout and replaced on a live node, and `up` boots the node again, Ready and without the evicted pod.
#[test]
fn a_dead_leaders_node_is_noticed_and_its_pods_replaced() {
    if !can_run() {
        return;
    }
    let leader = std::env::var("TESTBED_ND_LEADER").unwrap_or_else(|_| "node1".into());
    assert!(MEMBERS.contains(&leader.as_str()), "TESTBED_ND_LEADER=`{leader}`: one of {MEMBERS:?}");
    let test_started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let lab = VmLab {
        binary: env!("CARGO_BIN_EXE_testbed").into(),
        state_dir: tmp.path().join("state"),
        lab: "nd-e2e".into(),
    };
    let topo = topology(tmp.path(), &lab.lab);
    let _guard = LabGuard { binary: lab.binary.clone(), state_dir: lab.state_dir.clone(), lab: lab.lab.clone() };
    lab.up(&topo);
    let kubectl = lab.kubectl();
    kubectl.ok(&["create", "-f", "-"], Some(SLEEPERS));

    // Three available, one per node (the scheduler spreads a ReplicaSet's pods).
    let start = Instant::now();
    let spread = poll(start, SETTLE, || {
        let (pods, available) = sleepers(&lab, start, SETTLE)?;
        let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|(_, n)| n.as_str()).collect();
        (available == 3 && pods.len() == 3 && nodes.len() == 3 && !nodes.contains("")).then_some(pods)
    });
    let (pods, seconds) = spread.unwrap_or_else(|| {
        let (states, events) = (pod_states(&lab, start, SETTLE * 2), events(&lab, start));
        panic!("3 sleepers not available one per node in {SETTLE:?}:\n{states:?}\n{events:?}")
    });
    eprintln!("3 sleepers available on 3 nodes {seconds:.1} s after the create: {pods:?}");
    make_leader(&lab, &leader);

    let victim_pod = pods.iter().find(|(_, n)| *n == leader).map(|(p, _)| p.clone()).expect("a pod on the leader");
    let node_pod = testbed_api::objects::node_pod_name(NAMESPACE, &victim_pod);
    let ran = lab.agent_pods(&leader).into_iter().find(|p| p["name"] == node_pod.as_str());
    let ran = ran.unwrap_or_else(|| panic!("{victim_pod} ({node_pod}) not listed by {leader}'s agent"));
    let (veth, cgroup) = (ran["host_veth"].as_str().unwrap_or_default(), ran["cgroup"].as_str().unwrap_or_default());
    // Control: the check that later finds the pod gone finds it now, in the kernel and in the agent.
    let trace = lab.pod_trace(&leader, &node_pod, veth, cgroup);
    assert!(trace.processes >= 1 && trace.listed && trace.veth && trace.cgroup, "{node_pod} on {leader}: {trace:?}");

    let killed = Instant::now();
    lab.signal_node(&leader, "KILL");
    eprintln!("killed {leader}'s QEMU, the controller manager's leader, with {victim_pod} on it");

    // (a) Another member takes the leader Lease once it has gone unrenewed for its duration.
    let limit_a = LEADER_LEASE_SECS + LEADER_RETRY_SECS + MARGIN_SECS;
    let handover = poll(killed, Duration::from_secs(limit_a), || {
        holder(&lab, killed, Duration::from_secs(limit_a)).filter(|h| !h.is_empty() && *h != leader)
    });
    let (new_leader, handover_s) = handover.unwrap_or_else(|| panic!("(a) no other leader within {limit_a} s"));
    eprintln!("(a) leader handover: {new_leader} holds the Lease {handover_s:.1} s after the kill (limit {limit_a} s)");

    // (b) The new leader's node lifecycle controller times the dead node's Lease from when it starts.
    let limit_b = limit_a + GRACE_SECS + MONITOR_PERIOD_SECS;
    let not_ready = poll(killed, Duration::from_secs(limit_b), || {
        lab.node_ready(&leader, killed, Duration::from_secs(limit_b)).filter(|s| s != "True")
    });
    let (status, not_ready_s) = not_ready.unwrap_or_else(|| {
        let now = lab.node_ready(&leader, killed, Duration::from_secs(limit_b + 30));
        panic!("(b) {leader} still Ready {limit_b} s after the kill (Ready condition now {now:?})")
    });
    eprintln!(
        "(b) {leader} NotReady (Ready {status}) {not_ready_s:.1} s after the kill (grace {GRACE_SECS} s, limit {limit_b} s)"
    );
    assert!(not_ready_s >= GRACE_SECS as f64, "(b) NotReady before the grace period: {not_ready_s:.1} s");

    // (c) Evicted after the timeout; the ReplicaSet's new pod runs on a live node.
    let limit_c = limit_b + EVICTION_SECS + MONITOR_PERIOD_SECS + MARGIN_SECS;
    let replaced = poll(killed, Duration::from_secs(limit_c), || {
        let (pods, available) = sleepers(&lab, killed, Duration::from_secs(limit_c))?;
        let moved = pods.len() == 3 && pods.iter().all(|(p, n)| *p != victim_pod && *n != leader && !n.is_empty());
        (available == 3 && moved).then_some(pods)
    });
    let (pods, replaced_s) = replaced.unwrap_or_else(|| {
        let now = sleepers(&lab, killed, Duration::from_secs(limit_c + 30));
        let states = pod_states(&lab, killed, Duration::from_secs(limit_c + 60));
        let events = events(&lab, killed);
        panic!(
            "(c) {victim_pod} not replaced on a live node within {limit_c} s: pods and available now {now:?}\n\
             {states:?}\n{events:?}"
        )
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
    lab.up(&topo);
    let ready = lab.node_ready(&leader, rebooted, Duration::from_secs(60));
    assert_eq!(ready.as_deref(), Some("True"), "(d) {leader}'s Ready after up");
    let trace = lab.pod_trace(&leader, &node_pod, veth, cgroup);
    eprintln!(
        "(d) {leader} Ready again {:.1} s after `up` began; {node_pod}: {trace:?}",
        rebooted.elapsed().as_secs_f64()
    );
    assert!(trace.is_gone(), "(d) the evicted {victim_pod} is back on {leader}: {trace:?}");
    let after = sleepers(&lab, rebooted, Duration::from_secs(30)).expect("sleepers after up");
    assert!(after.1 == 3 && after.0.iter().all(|(p, _)| *p != victim_pod), "(d) the Deployment after up: {after:?}");
    // The rebooted node's etcd member is back in the cluster: with another member stopped, writes need it
    // for the quorum of two. KILL, not TERM: a member given TERM may first hand its leadership over, which
    // took longer than the 15 s the stop waits on a loaded TCG host; a killed member is as down.
    let other = MEMBERS.into_iter().find(|n| *n != leader).expect("another member");
    lab.stop_service(other, "etcd", "KILL");
    let lease = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: first, namespace: {NAMESPACE}}}\n\
         spec: {{holderIdentity: node1, leaseDurationSeconds: 40}}\n"
    );
    let wrote = Instant::now();
    let written = poll(wrote, Duration::from_secs(60), || {
        // A create that went through after kubectl stopped waiting is found on the next try.
        let out = kubectl.run(&["create", "-f", "-"], Some(&lease));
        (out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists")).then_some(())
    });
    let (_, write_s) =
        written.unwrap_or_else(|| panic!("(d) no write with {other}'s etcd down: {leader}'s member is not back"));
    eprintln!("(d) a write with {other}'s etcd stopped went through {write_s:.1} s later: {leader}'s member is back");

    // (e) etcd's client port answers no client without the lab's certificate (probed from the third member,
    // on the underlay, as a pod would).
    let third = MEMBERS.into_iter().find(|n| *n != leader && *n != other).expect("a third member");
    let text = lab.exec(third, ETCD_PROBE);
    eprintln!("(e) etcd probe from {third}:\n{text}");
    // The port was there (found in etcd's command, not refused) and took no request without a certificate.
    let reached = text.contains(":2379\n") && !text.contains("refused");
    assert!(reached && text.contains("plain: ") && text.contains("tls-rc=1"), "(e) probe of etcd: {text}");
    assert!(!text.contains("\"header\""), "(e) etcd answered a client without a certificate: {text}");

    // (f) The API server the forwarder uses first (node1's) keeps taking writes when its own node's etcd member
    // stops: it moves to the other members. `other`'s member runs again first.
    lab.start_service(other, "etcd");
    lab.stop_service("node1", "etcd", "KILL");
    let moved = Instant::now();
    let moved_lease = lease.replace("name: first", "name: while-node1-down");
    let written = poll(moved, Duration::from_secs(60), || {
        let out = kubectl.run(&["create", "-f", "-"], Some(&moved_lease));
        (out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists")).then_some(())
    });
    let (_, moved_s) = written.unwrap_or_else(|| panic!("(f) no write with node1's etcd member stopped"));
    eprintln!("(f) a write with node1's etcd stopped went through {moved_s:.1} s later");

    // (g) Control of (d) and (f): with two of the three members down there is no quorum, and a write fails.
    let second = MEMBERS.into_iter().find(|n| *n != "node1").expect("a second member");
    lab.stop_service(second, "etcd", "KILL");
    let refused = kubectl.run(&["create", "-f", "-"], Some(&lease.replace("name: first", "name: without-quorum")));
    assert!(!refused.status.success(), "(g) a write went through with two of three etcd members down: {refused:?}");
    eprintln!("(g) with node1's and {second}'s etcd stopped, a write was refused");
    eprintln!("node-death test: {:.1} s in all", test_started.elapsed().as_secs_f64());
}

/// From a node, on the underlay: its etcd member's client port, plain and with TLS but no client certificate.
const ETCD_PROBE: &str = r#"url=$(sed -n 's/.*--listen-client-urls https:\/\/\([^ ]*\).*/\1/p' /etc/testbed/etcd.cmd)
body='{"key":"Lw==","range_end":"AA=="}'
echo "url=$url"
echo "plain: $(printf 'POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n%s' "$body" | busybox nc -w 5 "${url%:*}" "${url#*:}")"
busybox wget -q -O- --no-check-certificate --post-data "$body" "https://$url/v3/kv/range" 2>&1
echo "tls-rc=$?""#;

/// The frozen-node test's lab: `default.yaml` (node1 the control plane, node2 a worker) with the short node
/// lifecycle times, and its Deployment of two `sleep` pods, one per node.
fn frozen_topology(dir: &Path, lab: &str) -> std::path::PathBuf {
    let topo = topology_copy(dir, "default.yaml", lab);
    let text = std::fs::read_to_string(&topo).expect("topology");
    let backend = "  backend: vxlan\n";
    assert!(text.contains(backend), "{text}");
    let knobs = format!(
        "  control_plane:\n    nodes: [node1]\n    node_monitor_grace_period: {GRACE_SECS}s\n    \
         pod_eviction_timeout: {EVICTION_SECS}s\n"
    );
    std::fs::write(&topo, text.replace(backend, &format!("{backend}{knobs}"))).expect("write topology");
    topo
}

/// How long a node that was away may take, once resumed, to be Ready again and rid of the pods the API no
/// longer binds to it: its next Lease renewal and a fresh list (a few seconds), with room for a loaded host.
const RETURN_LIMIT_SECS: u64 = 30;

/// A worker frozen (SIGSTOP on its QEMU) misses its Lease, turns NotReady, and its pod is evicted and
/// replaced on the other node; resumed (SIGCONT) with that pod still running, its agent removes the pod
/// from its kernel (processes, veth, cgroup) and its own list, the replacement stays, the node is Ready
/// again, and no node runs a pod the API does not bind to it.
#[test]
fn a_frozen_node_returns_and_drops_its_evicted_pods() {
    if !can_run() {
        return;
    }
    let test_started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let lab = VmLab {
        binary: env!("CARGO_BIN_EXE_testbed").into(),
        state_dir: tmp.path().join("state"),
        lab: "nr-e2e".into(),
    };
    let topo = frozen_topology(tmp.path(), &lab.lab);
    let _guard = LabGuard { binary: lab.binary.clone(), state_dir: lab.state_dir.clone(), lab: lab.lab.clone() };
    lab.up(&topo);
    let sleepers_2 = SLEEPERS.replace("replicas: 3", "replicas: 2");
    lab.kubectl().ok(&["create", "-f", "-"], Some(&sleepers_2));
    let start = Instant::now();
    let spread = poll(start, SETTLE, || {
        let (pods, available) = sleepers(&lab, start, SETTLE)?;
        let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|(_, n)| n.as_str()).collect();
        (available == 2 && pods.len() == 2 && nodes.len() == 2 && !nodes.contains("")).then_some(pods)
    });
    let (pods, seconds) = spread.unwrap_or_else(|| {
        let (states, events) = (pod_states(&lab, start, SETTLE * 2), events(&lab, start));
        panic!("2 sleepers not available one per node in {SETTLE:?}:\n{states:?}\n{events:?}")
    });
    eprintln!("2 sleepers available on 2 nodes {seconds:.1} s after the create: {pods:?}");

    let frozen = "node2";
    let victim_pod = pods.iter().find(|(_, n)| n == frozen).map(|(p, _)| p.clone()).expect("a pod on node2");
    let node_pod = testbed_api::objects::node_pod_name(NAMESPACE, &victim_pod);
    let ran = lab.agent_pods(frozen).into_iter().find(|p| p["name"] == node_pod.as_str());
    let ran = ran.unwrap_or_else(|| panic!("{victim_pod} ({node_pod}) not listed by {frozen}'s agent"));
    let (veth, cgroup) = (ran["host_veth"].as_str().unwrap_or_default(), ran["cgroup"].as_str().unwrap_or_default());
    // Control: the check that later finds the pod gone finds it now.
    let trace = lab.pod_trace(frozen, &node_pod, veth, cgroup);
    assert!(trace.processes >= 1 && trace.listed && trace.veth && trace.cgroup, "{node_pod} on {frozen}: {trace:?}");

    let stopped = Instant::now();
    lab.signal_node(frozen, "STOP");
    eprintln!("froze {frozen}'s QEMU (SIGSTOP) with {victim_pod} on it");
    let limit_b = GRACE_SECS + MONITOR_PERIOD_SECS + MARGIN_SECS;
    let not_ready = poll(stopped, Duration::from_secs(limit_b), || {
        lab.node_ready(frozen, stopped, Duration::from_secs(limit_b)).filter(|s| s != "True")
    });
    let (_, not_ready_s) = not_ready.unwrap_or_else(|| panic!("{frozen} still Ready {limit_b} s after the freeze"));
    eprintln!("(a) {frozen} NotReady {not_ready_s:.1} s after the freeze (grace {GRACE_SECS} s)");
    // The grace period runs from the last renewal the controller saw, up to one renewal period before the
    // freeze (unlike the node-death test, whose new leader starts timing after its takeover).
    let earliest = GRACE_SECS - testbed_api::NODE_LEASE_RENEW_SECS;
    assert!(
        not_ready_s >= earliest as f64,
        "(a) NotReady before grace - one renewal ({earliest} s): {not_ready_s:.1} s"
    );

    let limit_c = limit_b + EVICTION_SECS + MONITOR_PERIOD_SECS + MARGIN_SECS;
    let replaced = poll(stopped, Duration::from_secs(limit_c), || {
        let (pods, available) = sleepers(&lab, stopped, Duration::from_secs(limit_c))?;
        let moved = pods.len() == 2 && pods.iter().all(|(p, n)| *p != victim_pod && n == "node1");
        (available == 2 && moved).then_some(pods)
    });
    let (replacements, replaced_s) = replaced.unwrap_or_else(|| {
        let (states, events) = (pod_states(&lab, stopped, Duration::from_secs(limit_c + 30)), events(&lab, stopped));
        panic!("(b) {victim_pod} not replaced on node1 within {limit_c} s:\n{states:?}\n{events:?}")
    });
    eprintln!("(b) back to 2 available on node1 {replaced_s:.1} s after the freeze: {replacements:?}");
    assert!(
        replaced_s >= (earliest + EVICTION_SECS) as f64,
        "(b) evicted before {earliest} + eviction: {replaced_s:.1} s"
    );

    let resumed = Instant::now();
    lab.signal_node(frozen, "CONT");
    eprintln!("resumed {frozen}'s QEMU (SIGCONT) {:.1} s after the freeze", stopped.elapsed().as_secs_f64());
    let limit = Duration::from_secs(RETURN_LIMIT_SECS);
    let ready = poll(resumed, limit, || lab.node_ready(frozen, resumed, limit).filter(|s| s == "True"));
    let (_, ready_s) = ready.unwrap_or_else(|| panic!("(c) {frozen} not Ready within {limit:?} of the resume"));
    eprintln!("(c) {frozen} Ready again {ready_s:.1} s after the resume");
    let mut last = None;
    let gone = poll(resumed, limit, || {
        let trace = lab.pod_trace(frozen, &node_pod, veth, cgroup);
        let gone = trace.is_gone();
        last = Some(trace);
        gone.then_some(())
    });
    let (_, gone_s) = gone.unwrap_or_else(|| {
        let log = lab.agent_log(frozen, "control plane", 6);
        panic!("(d) the evicted {victim_pod} still on {frozen} {limit:?} after the resume: {last:?}\n{log}")
    });
    eprintln!("(d) {node_pod} gone from {frozen}'s kernel and agent {gone_s:.1} s after the resume");
    eprintln!("{frozen}'s kubelet sessions:\n{}", lab.agent_log(frozen, "control plane", 6));

    // The replacements stay, and the nodes run exactly the pods the API binds to them.
    let (pods, available) = sleepers(&lab, resumed, Duration::from_secs(60)).expect("sleepers after the resume");
    assert!(
        available == 2 && pods == replacements,
        "(e) the Deployment after the resume: {pods:?}, {available} available"
    );
    let bound: std::collections::BTreeSet<String> =
        pods.iter().map(|(p, _)| testbed_api::objects::node_pod_name(NAMESPACE, p)).collect();
    // Node pod names are `<namespace>-<name>-<hash>` (`node_pod_name`).
    let prefix = format!("{NAMESPACE}-sleeper-");
    for node in ["node1", frozen] {
        let running: std::collections::BTreeSet<String> = lab
            .agent_pods(node)
            .iter()
            .filter_map(|p| p["name"].as_str().filter(|n| n.starts_with(&prefix)).map(str::to_string))
            .collect();
        let wanted: std::collections::BTreeSet<String> = pods
            .iter()
            .filter(|(_, n)| n == node)
            .map(|(p, _)| testbed_api::objects::node_pod_name(NAMESPACE, p))
            .collect();
        assert_eq!(running, wanted, "(e) {node} runs sleepers other than the API binds to it (all bound: {bound:?})");
    }
    eprintln!(
        "(e) the replacements stay, on node1 only; frozen-node test: {:.1} s in all",
        test_started.elapsed().as_secs_f64()
    );
}
