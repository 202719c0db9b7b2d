//! Tests of parsing, validation positions and planning.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::plan::{ImageRef, Plan};

const FILE: &str = "t.yaml";

fn plan_of(src: &str) -> Result<Plan, TopologyError> {
    let path = Path::new(FILE);
    let t = parse(path, src.as_bytes())?;
    crate::plan::build(&t, src.as_bytes(), path)
}

/// (line, column, field, message) of an error.
fn where_and_what(e: &TopologyError) -> (usize, usize, String, String) {
    match e {
        TopologyError::Invalid { line, column, field, message, .. } => (*line, *column, field.clone(), message.clone()),
        other => panic!("expected Invalid, got {other}"),
    }
}

const BASE: &str = "name: lab
nodes:
  node1: {}
  node2: {}
networks:
  underlay: {cidr: 192.168.50.0/24}
";

#[test]
fn minimal_topology_plans_with_defaults() {
    let plan = plan_of(BASE).expect("valid");
    assert_eq!(plan.version, 2);
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
    // The plan feeds the agent: the NodeSpec it makes passes the agent's own validation.
    for n in &plan.nodes {
        let spec = plan.node_spec(n, plan.cluster.backend);
        testbed_api::validate::validate_node(&spec).expect("node spec valid");
        assert_eq!(spec.peers.len(), 1);
    }
}

#[test]
fn full_topology_parses_every_field() {
    let src = r#"name: full
defaults:
  cpus: 2
  memory: 1G
  image: debian-12
  kernel_args: [quiet]
nodes:
  a: {memory: 768Mi, networks: [lan, wan]}
  b:
    cpus: 1
    image: {url: "https://example.invalid/x.qcow2", sha256: "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"}
    kernel_args: [console=ttyS0, loglevel=3]
networks:
  lan: {cidr: 192.168.60.0/24, mtu: 9000}
  wan: {cidr: 192.168.61.0/26, impair: {delay: 5ms, jitter: 1ms, loss: 0.1%, rate: 100mbit}}
cluster: {pod_cidr: 10.250.0.0/20, node_subnet_prefix: 26, backend: host-gw, underlay: wan}
pods:
  - name: web
    node: b
    restart_policy: OnFailure
    share_process_namespace: true
    containers:
      - name: srv
        command: [iperf3, -s]
        env: {B: "2", A: "1"}
        resources:
          requests: {cpu: 0.25, memory: 32Mi}
          limits: {cpu: 1, memory: 128M}
        pids_limit: 64
tests:
  - {name: a reaches web, from: "node:a", to: "pod:web", kind: http, port: 5201, retry: {attempts: 4, wait: 500ms}}
  - name: web isolated
    from: pod:web
    to: ip:203.0.113.9
    kind: tcp
    port: 443
    expect: fail
    level: warning
    stop_on_error: true
    backends: [vxlan, host-gw]
  - {name: b pings a, from: "node:b", to: "node:a", kind: ping, retry: {}}
"#;
    let plan = plan_of(src).expect("valid");
    let a = &plan.nodes[0];
    let b = &plan.nodes[1];
    assert_eq!((a.cpus, a.memory_mib, b.cpus, b.memory_mib), (2, 768, 1, 1024));
    assert_eq!(a.kernel_args, vec!["quiet"]);
    assert_eq!(b.kernel_args, vec!["console=ttyS0", "loglevel=3"]);
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
    let pod = &plan.pods[0];
    assert_eq!(pod.node, "b");
    assert_eq!(pod.spec.restart_policy, testbed_api::RestartPolicy::OnFailure);
    assert!(pod.spec.share_process_namespace);
    let c = &pod.spec.containers[0];
    assert_eq!(c.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(c.resources.requests.cpu_millis, Some(250));
    assert_eq!(c.resources.requests.memory_bytes, Some(32 << 20));
    assert_eq!(c.resources.limits.cpu_millis, Some(1000));
    assert_eq!(c.resources.limits.memory_bytes, Some(128_000_000));
    assert_eq!(c.pids_limit, Some(64));
    use crate::plan::{DeclaredTest, TestKind, TestLevel, TestSource, TestTarget};
    assert_eq!(
        plan.tests,
        vec![
            DeclaredTest {
                name: "a reaches web".into(),
                from: TestSource::Node("a".into()),
                to: TestTarget::Pod("web".into()),
                kind: TestKind::Http,
                port: Some(5201),
                expect_pass: true,
                attempts: 4,
                wait_ms: 500,
                level: TestLevel::Error,
                stop_on_error: false,
                backends: vec![],
            },
            DeclaredTest {
                name: "web isolated".into(),
                from: TestSource::Pod("web".into()),
                to: TestTarget::Ip("203.0.113.9".parse().expect("ip")),
                kind: TestKind::Tcp,
                port: Some(443),
                expect_pass: false,
                attempts: 1,
                wait_ms: 1000,
                level: TestLevel::Warning,
                stop_on_error: true,
                backends: vec![testbed_api::Backend::Vxlan, testbed_api::Backend::HostGw],
            },
            DeclaredTest {
                name: "b pings a".into(),
                from: TestSource::Node("b".into()),
                to: TestTarget::Node("a".into()),
                kind: TestKind::Ping,
                port: None,
                expect_pass: true,
                attempts: 3,
                wait_ms: 1000,
                level: TestLevel::Error,
                stop_on_error: false,
                backends: vec![],
            },
        ]
    );
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

/// Replaces `from` (which must occur in BASE) with `to`.
fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

/// Bad topologies: (case, source, expected line, column, field, message substring).
fn bad_cases() -> Vec<(&'static str, String, usize, usize, &'static str, &'static str)> {
    vec![
        ("yaml syntax", "name: lab\nnodes: {node1: {}\nnetworks: {}\n".into(), 3, 1, "nodes", "did not find expected ',' or '}'"),
        ("unknown top field", format!("{BASE}colour: red\n"), 7, 1, "colour", "unknown field `colour`"),
        ("unknown node field", base_with("node1: {}", "node1: {memroy: 1G}"), 3, 11, "nodes.node1.memroy", "unknown field `memroy`"),
        ("wrong type", base_with("node1: {}", "node1: {cpus: many}"), 3, 17, "nodes.node1.cpus", "invalid type: string \"many\""),
        ("missing nodes", "name: lab\nnetworks:\n  u: {cidr: 192.168.50.0/24}\n".into(), 1, 1, "", "missing field `nodes`"),
        ("duplicate node", base_with("node2: {}", "node1: {}"), 4, 3, "nodes.node1", "duplicate"),
        ("duplicate field", format!("{BASE}name: again\n"), 7, 1, "name", "duplicate key `name` (first defined at line 1)"),
        ("bad lab name", base_with("name: lab", "name: My_Lab"), 1, 7, "name", "is not a lab name"),
        ("lab name too long", base_with("name: lab", "name: abcdefghijklmnopqrstuvwxyz"), 1, 7, "name", "at most 24"),
        ("bad node name", base_with("node2: {}", "Node2: {}"), 4, 3, "nodes.Node2", "is not a node name"),
        ("no nodes", base_with("nodes:\n  node1: {}\n  node2: {}\n", "nodes: {}\n"), 2, 1, "nodes", "at least one node"),
        ("memory format", base_with("node1: {}", "node1: {memory: 12Q}"), 3, 19, "nodes.node1.memory", "\"12Q\" is not a memory size"),
        (
            "memory format in defaults",
            format!("{BASE}defaults: {{memory: lots}}\n"),
            7,
            20,
            "defaults.memory",
            "is not a memory size",
        ),
        ("memory too small", base_with("node1: {}", "node1: {memory: 64M}"), 3, 19, "nodes.node1.memory", "outside 128M"),
        ("cpus zero", base_with("node1: {}", "node1: {cpus: 0}"), 3, 17, "nodes.node1.cpus", "outside 1..=64"),
        ("bad image name", base_with("node1: {}", "node1: {image: Debian 12}"), 3, 18, "nodes.node1.image", "is not an image name"),
        ("bad image sha", base_with("node1: {}", "node1: {image: {url: 'https://x.invalid/i', sha256: abc}}"), 3, 55, "nodes.node1.image.sha256", "64 hex"),
        ("image wrong shape", base_with("node1: {}", "node1: {image: [x]}"), 3, 11, "nodes.node1.image", "expected an image name"),
        ("kernel arg with space", base_with("node1: {}", "node1: {kernel_args: ['a b']}"), 3, 25, "nodes.node1.kernel_args[0]", "without spaces"),
        ("unknown node network", base_with("node1: {}", "node1: {networks: [lan]}"), 3, 22, "nodes.node1.networks[0]", "unknown network `lan`"),
        (
            "node off the underlay",
            format!("{BASE}  lan: {{cidr: 192.168.51.0/24}}\n").replacen("node1: {}", "node1: {networks: [lan]}", 1),
            3,
            11,
            "nodes.node1.networks",
            "cluster underlay `underlay`",
        ),
        ("bad cidr", base_with("192.168.50.0/24", "192.168.50.0/33"), 6, 20, "networks.underlay.cidr", "is not an IPv4 CIDR"),
        ("host bits", base_with("192.168.50.0/24", "192.168.50.1/24"), 6, 20, "networks.underlay.cidr", "did you mean 192.168.50.0/24"),
        ("management overlap", base_with("192.168.50.0/24", "10.0.0.0/16"), 6, 20, "networks.underlay.cidr", "management"),
        (
            "overlapping networks",
            format!("{BASE}  lan: {{cidr: 192.168.50.128/25}}\n"),
            7,
            15,
            "networks.lan.cidr",
            "overlaps network `underlay`",
        ),
        ("underlay too small", base_with("192.168.50.0/24", "192.168.50.0/29"), 6, 20, "networks.underlay.cidr", "2 nodes need a /28 or larger"),
        (
            "underlay too small for node 5",
            base_with("192.168.50.0/24", "192.168.50.0/28").replacen("node2: {}", "node2: {}\n  node3: {}\n  node4: {}\n  node5: {}", 1),
            9,
            20,
            "networks.underlay.cidr",
            "too small for node `node5` (node 4 gets host address 15; node i gets 11 + i, so 5 nodes need a /27 or larger)",
        ),
        ("mtu range", base_with("{cidr: 192.168.50.0/24}", "{cidr: 192.168.50.0/24, mtu: 9001}"), 6, 42, "networks.underlay.mtu", "576..=9000"),
        ("bad network name", base_with("underlay:", "Under_lay:"), 6, 3, "networks.Under_lay", "is not a network name"),
        (
            "network name too long",
            base_with("underlay:", "underlay-network-1:"),
            6,
            3,
            "networks.underlay-network-1",
            "at most 15",
        ),
        ("no networks", base_with("  underlay: {cidr: 192.168.50.0/24}\n", "  {}\n").replace("networks:\n  {}", "networks: {}"), 5, 1, "networks", "at least one network"),
        (
            "delay format",
            base_with("{cidr: 192.168.50.0/24}", "{cidr: 192.168.50.0/24, impair: {delay: 5}}"),
            6,
            53,
            "networks.underlay.impair.delay",
            "is not a duration",
        ),
        (
            "loss format",
            base_with("{cidr: 192.168.50.0/24}", "{cidr: 192.168.50.0/24, impair: {loss: half}}"),
            6,
            52,
            "networks.underlay.impair.loss",
            "is not a percentage",
        ),
        (
            "rate format",
            base_with("{cidr: 192.168.50.0/24}", "{cidr: 192.168.50.0/24, impair: {rate: fast}}"),
            6,
            52,
            "networks.underlay.impair.rate",
            "is not a rate",
        ),
        (
            "jitter without delay",
            base_with("{cidr: 192.168.50.0/24}", "{cidr: 192.168.50.0/24, impair: {jitter: 1ms}}"),
            6,
            54,
            "networks.underlay.impair.jitter",
            "needs a delay",
        ),
        (
            "unknown impair field",
            base_with("{cidr: 192.168.50.0/24}", "{cidr: 192.168.50.0/24, impair: {latency: 1ms}}"),
            6,
            46,
            "networks.underlay.impair.latency",
            "unknown field `latency`",
        ),
        ("pod cidr overlaps underlay", format!("{BASE}cluster: {{pod_cidr: 192.168.0.0/16}}\n"), 7, 21, "cluster.pod_cidr", "overlaps network `underlay`"),
        (
            "pod cidr too small for three",
            format!("{BASE}cluster: {{pod_cidr: 10.244.0.0/24, node_subnet_prefix: 25}}\n").replacen("node2: {}", "node2: {}\n  node3: {}", 1),
            8,
            21,
            "cluster.pod_cidr",
            "only 2 node subnets of /25 but there are 3 nodes",
        ),
        ("subnet prefix not longer", format!("{BASE}cluster: {{node_subnet_prefix: 16}}\n"), 7, 31, "cluster.node_subnet_prefix", "longer than the pod CIDR's /16"),
        ("subnet prefix too long", format!("{BASE}cluster: {{node_subnet_prefix: 30}}\n"), 7, 31, "cluster.node_subnet_prefix", "at most 29"),
        ("unknown backend", format!("{BASE}cluster: {{backend: geneve}}\n"), 7, 20, "cluster.backend", "unknown variant `geneve`"),
        ("unknown underlay", format!("{BASE}cluster: {{underlay: wan}}\n"), 7, 21, "cluster.underlay", "unknown network `wan`"),
        (
            "pod on unknown node",
            format!("{BASE}pods:\n  - name: web\n    node: node9\n    containers: [{{name: c, command: [sh]}}]\n"),
            9,
            11,
            "pods[0].node",
            "unknown node `node9`",
        ),
        (
            "duplicate pod",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\n  - {{name: web, node: node2, containers: [{{name: c, command: [sh]}}]}}\n"),
            9,
            12,
            "pods[1].name",
            "duplicate pod name `web`",
        ),
        (
            "bad pod name",
            format!("{BASE}pods:\n  - {{name: Web, node: node1, containers: [{{name: c, command: [sh]}}]}}\n"),
            8,
            12,
            "pods[0].name",
            "not a DNS label",
        ),
        (
            "pod without containers",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: []}}\n"),
            8,
            30,
            "pods[0].containers",
            "at least one container",
        ),
        (
            "duplicate container",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - {{name: c, command: [sh]}}\n      - {{name: c, command: [sh]}}\n"),
            12,
            16,
            "pods[0].containers[1].name",
            "duplicate container name",
        ),
        (
            "empty command",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - {{name: c, command: []}}\n"),
            11,
            19,
            "pods[0].containers[0].command",
            "must name a program",
        ),
        (
            "cpu quantity",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - name: c\n        command: [sh]\n        resources: {{limits: {{cpu: 1core}}}}\n"),
            13,
            35,
            "pods[0].containers[0].resources.limits.cpu",
            "is not a CPU quantity",
        ),
        (
            "memory quantity",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - name: c\n        command: [sh]\n        resources: {{requests: {{memory: 12Q}}}}\n"),
            13,
            40,
            "pods[0].containers[0].resources.requests.memory",
            "is not a memory quantity",
        ),
        (
            "request above limit",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - name: c\n        command: [sh]\n        resources:\n          requests: {{cpu: 600m}}\n          limits: {{cpu: 500m}}\n"),
            14,
            27,
            "pods[0].containers[0].resources.requests.cpu",
            "exceeds limit",
        ),
        (
            "unknown restart policy",
            format!("{BASE}pods:\n  - {{name: web, node: node1, restart_policy: Sometimes, containers: [{{name: c, command: [sh]}}]}}\n"),
            8,
            46,
            "pods[0].restart_policy",
            "unknown variant `Sometimes`",
        ),
        (
            "pids limit zero",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh], pids_limit: 0}}]}}\n"),
            8,
            80,
            "pods[0].containers[0].pids_limit",
            "greater than 0",
        ),
        ("two documents", format!("{BASE}---\nname: other\n"), 7, 1, "", "exactly one YAML document"),
        (
            "tests not a list",
            format!("{BASE}tests: {{name: a}}\n"),
            7,
            8,
            "tests",
            "invalid type: map, expected a sequence",
        ),
        (
            "unknown test kind",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'node:node1', to: 'pod:web', kind: http}}\n  - {{name: b, from: 'node:node1', to: 'pod:web', kind: udp}}\n"),
            11,
            56,
            "tests[1].kind",
            "unknown variant `udp`, expected one of `ping`, `tcp`, `http`",
        ),
        (
            "unknown test field",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'node:node1', to: 'pod:web', kinds: ping}}\n"),
            10,
            50,
            "tests[0].kinds",
            "unknown field `kinds`",
        ),
        (
            "test from an unknown pod",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - name: a\n    from: pod:tb-c-a1\n    to: node:node2\n    kind: ping\n"),
            11,
            11,
            "tests[0].from",
            "unknown pod `tb-c-a1` (pods: web)",
        ),
        (
            "test to an unknown node",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node3', kind: ping}}\n"),
            10,
            36,
            "tests[0].to",
            "unknown node `node3` (nodes: node1, node2)",
        ),
        (
            "test to a pod without pods",
            format!("{BASE}tests:\n  - {{name: a, from: 'node:node1', to: 'pod:web', kind: ping}}\n"),
            8,
            39,
            "tests[0].to",
            "unknown pod `web` (the topology declares no pods)",
        ),
        (
            "test target syntax",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'ip:10.0.0.300', kind: ping}}\n"),
            10,
            36,
            "tests[0].to",
            "is not pod:<name>, node:<name> or ip:<IPv4 address>",
        ),
        (
            "tcp test without port",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: tcp}}\n"),
            10,
            5,
            "tests[0].port",
            "needs a port",
        ),
        (
            "ping test with port",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping, port: 22}}\n"),
            10,
            68,
            "tests[0].port",
            "ping takes no port",
        ),
        (
            "duplicate test name",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping}}\n  - {{name: a, from: 'pod:web', to: 'node:node1', kind: ping}}\n"),
            11,
            12,
            "tests[1].name",
            "duplicate test name `a` (also tests[0])",
        ),
        (
            "test retry wait",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping, retry: {{attempts: 2, wait: 3h}}}}\n"),
            10,
            89,
            "tests[0].retry.wait",
            "\"3h\" is not a duration",
        ),
        (
            "test retry attempts",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping, retry: {{attempts: 0}}}}\n"),
            10,
            80,
            "tests[0].retry.attempts",
            "0 is outside 1..=100",
        ),
        (
            "test backend",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping, backends: [vxlan, geneve]}}\n"),
            10,
            80,
            "tests[0].backends[1]",
            "unknown variant `geneve`",
        ),
        (
            "test level",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping, level: fatal}}\n"),
            10,
            69,
            "tests[0].level",
            "unknown variant `fatal`, expected `error` or `warning`",
        ),
    ]
}

/// The source from `line:column` to the end of that line.
fn text_at(src: &str, line: usize, column: usize) -> &str {
    src.lines().nth(line - 1).and_then(|l| l.get(column - 1..)).unwrap_or("<past the end>")
}

#[test]
fn bad_topologies_are_rejected_at_the_right_place() {
    let mut failures = Vec::new();
    for (case, src, line, column, field, msg) in bad_cases() {
        match plan_of(&src) {
            Ok(_) => failures.push(format!("{case}: accepted\n{src}")),
            Err(e) => {
                let got = where_and_what(&e);
                if (got.0, got.1) != (line, column) || got.2 != field || !got.3.contains(msg) {
                    failures.push(format!(
                        "{case}: expected {line}:{column} `{field}` ~ {msg:?}\n   got {}:{} `{}` {:?} at {:?}",
                        got.0,
                        got.1,
                        got.2,
                        got.3,
                        text_at(&src, got.0, got.1)
                    ));
                }
                let shown = e.to_string();
                assert!(shown.starts_with(&format!("{FILE}:{}:{}: ", got.0, got.1)), "{shown}");
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), bad_cases().len(), failures.join("\n"));
}

#[test]
fn error_display_names_file_line_column_and_field() {
    let e = plan_of(&base_with("node1: {}", "node1: {memory: 12Q}")).expect_err("invalid");
    assert_eq!(e.to_string(), "t.yaml:3:19: nodes.node1.memory: \"12Q\" is not a memory size (use 512M, 1G, 1Gi)");
}

#[test]
fn unreadable_file_is_a_read_error() {
    let e = load_plan(Path::new("/nonexistent/topology.yaml")).expect_err("missing");
    assert!(matches!(e, TopologyError::Read { .. }));
    assert!(e.to_string().starts_with("/nonexistent/topology.yaml: cannot read"), "{e}");
}

fn topologies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies")
}

#[test]
fn every_bundled_topology_validates_and_plans() {
    let mut seen = 0;
    let mut labs = BTreeSet::new();
    for entry in std::fs::read_dir(topologies_dir()).expect("topologies/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let plan = load_plan(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(labs.insert(plan.lab.clone()), "two bundled topologies share lab name {}", plan.lab);
        for n in &plan.nodes {
            assert!(n.memory_mib <= 512 && n.cpus == 1, "{}: keep bundled labs small", path.display());
            testbed_api::validate::validate_node(&plan.node_spec(n, plan.cluster.backend)).expect("node spec");
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected the bundled topologies, found {seen}");
    let default = load_plan(&topologies_dir().join("default.yaml")).expect("default");
    assert_eq!(default.nodes.len(), 2);
    assert_eq!(default.networks[0].cidr.to_string(), "192.168.50.0/24");
    let gw = load_plan(&topologies_dir().join("three-node-host-gw.yaml")).expect("host-gw");
    assert_eq!((gw.nodes.len(), gw.cluster.backend), (3, testbed_api::Backend::HostGw));
}

#[test]
fn json_schema_file_is_current() {
    let generated = schema_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/topology.schema.json");
    if std::env::var_os("TESTBED_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/topology.schema.json is stale: run `TESTBED_BLESS=1 cargo test -p testbed json_schema_file_is_current`"
    );
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

/// The JSON schema of topology files as committed in docs/topology.schema.json (for editors' YAML support).
fn schema_json() -> String {
    let mut schema = schemars::schema_for!(Topology);
    schema.insert("title".into(), "testbed topology".into());
    let text = serde_json::to_string_pretty(&schema).expect("schema serializes");
    text + "\n"
}

#[test]
fn plan_is_pinned_across_versions() {
    // Golden values: a change here moves every existing lab's names, MACs and ports, so it must be deliberate
    // (and bump PLAN_VERSION).
    let plan = load_plan(&topologies_dir().join("default.yaml")).expect("default");
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
