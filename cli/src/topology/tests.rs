//! Tests of parsing, validation positions and the checked model. The planner's tests (`crate::plan::tests`)
//! share this module's topologies and helpers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::checked::ImageRef;
use super::*;

const FILE: &str = "t.yaml";

/// Checks `src` as if it were the file `t.yaml`.
pub(crate) fn checked_of(src: &str) -> Result<CheckedTopology, TopologyError> {
    check_source(Path::new(FILE), src.as_bytes())
}

/// (line, column, field, message) of an error.
fn where_and_what(e: &TopologyError) -> (usize, usize, String, String) {
    match e {
        TopologyError::Invalid { line, column, field, message, .. } => (*line, *column, field.clone(), message.clone()),
        other => panic!("expected Invalid, got {other}"),
    }
}

pub(crate) const BASE: &str = "name: lab
nodes:
  node1: {}
  node2: {}
networks:
  underlay: {cidr: 192.168.50.0/24}
";

#[test]
fn minimal_topology_gets_the_defaults() {
    let t = checked_of(BASE).expect("valid");
    assert_eq!(t.lab, "lab");
    assert_eq!(t.source_sha256.len(), 64);
    let n1 = &t.nodes[0];
    assert_eq!((n1.name.as_str(), n1.cpus, n1.memory_mib), ("node1", 1, 512));
    assert_eq!(n1.image, ImageRef::Named("debian-12".into()));
    assert!(n1.kernel_args.is_empty());
    assert_eq!(n1.networks, vec![0]);
    assert_eq!((t.networks[0].mtu, t.networks[0].impair.is_none()), (1500, true));
    assert_eq!(t.cluster.pod_cidr.to_string(), "10.244.0.0/16");
    assert_eq!((t.cluster.node_subnet_prefix, t.cluster.backend), (24, testbed_api::Backend::Vxlan));
    assert!(t.pods.is_empty() && t.tests.is_empty());
}

/// A topology that sets every field once.
pub(crate) const FULL: &str = r#"name: full
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
    kernel_args: []
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

#[test]
fn full_topology_parses_every_field() {
    let checked = checked_of(FULL).expect("valid");
    let a = &checked.nodes[0];
    let b = &checked.nodes[1];
    assert_eq!((a.cpus, a.memory_mib, b.cpus, b.memory_mib), (2, 768, 1, 1024));
    assert_eq!(a.kernel_args, vec!["quiet"]);
    assert!(b.kernel_args.is_empty(), "an empty list overrides the defaults' arguments");
    assert!(matches!(&b.image, ImageRef::Url { sha256, .. } if sha256.starts_with("abcdef")));
    // The underlay (wan) comes first, whatever order the node lists its networks in.
    assert_eq!(a.networks, vec![1, 0]);
    assert_eq!(checked.networks[0].mtu, 9000);
    let wan = &checked.networks[1];
    assert_eq!(wan.cidr.to_string(), "192.168.61.0/26");
    assert_eq!((wan.impair.delay_ms, wan.impair.jitter_ms, wan.impair.loss_percent), (5.0, 1.0, 0.1));
    assert_eq!(wan.impair.rate_mbit, Some(100));
    assert_eq!(checked.cluster.pod_cidr.to_string(), "10.250.0.0/20");
    assert_eq!(checked.cluster.node_subnet_prefix, 26);
    assert_eq!(checked.cluster.backend, testbed_api::Backend::HostGw);
    let pod = &checked.pods[0];
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
    use super::checked::{DeclaredTest, TestKind, TestLevel, TestSource, TestTarget};
    assert_eq!(
        checked.tests,
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
}

/// Replaces `from` (which must occur in BASE) with `to`.
pub(crate) fn base_with(from: &str, to: &str) -> String {
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
        (
            "kernel args on a downloaded image",
            base_with("node1: {}", "node1: {image: {url: 'https://x.invalid/i', sha256: SHA}, kernel_args: [quiet]}")
                .replace("SHA", &"a".repeat(64)),
            3,
            122,
            "nodes.node1.kernel_args",
            "kernel_args need an image testbed builds",
        ),
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
            "volume mount of an unknown volume",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    volumes: [{{name: data, emptyDir: {{}}}}]\n    containers:\n      - name: c\n        image: busybox\n        volumeMounts: [{{name: nope, mountPath: /d}}]\n"),
            14,
            31,
            "pods[0].containers[0].volumeMounts[0].name",
            "unknown volume `nope` (volumes: data)",
        ),
        (
            "duplicate volume",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    volumes: [{{name: data, emptyDir: {{}}}}, {{name: data, emptyDir: {{}}}}]\n    containers:\n      - name: c\n        image: busybox\n        volumeMounts: [{{name: data, mountPath: /d}}]\n"),
            10,
            50,
            "pods[0].volumes[1].name",
            "duplicate volume name `data`",
        ),
        (
            "hostPath type",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    volumes: [{{name: conf, hostPath: {{path: /etc, type: Dir}}}}]\n    containers:\n      - name: c\n        image: busybox\n        volumeMounts: [{{name: conf, mountPath: /c}}]\n"),
            10,
            57,
            "pods[0].volumes[0].hostPath.type",
            "Unsupported value: \"Dir\"",
        ),
        (
            "relative mount path",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    volumes: [{{name: data, emptyDir: {{}}}}]\n    containers:\n      - name: c\n        image: busybox\n        volumeMounts: [{{name: data, mountPath: d}}]\n"),
            14,
            48,
            "pods[0].containers[0].volumeMounts[0].mountPath",
            "must be an absolute path",
        ),
        (
            "probe on a port name the container does not declare",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - name: c\n        command: [sh]\n        ports: [{{name: web, containerPort: 80}}]\n        livenessProbe:\n          httpGet: {{port: http}}\n"),
            15,
            27,
            "pods[0].containers[0].livenessProbe.httpGet.port",
            "declares no port of this name",
        ),
        (
            "probe without a handler",
            format!("{BASE}pods:\n  - name: web\n    node: node1\n    containers:\n      - name: c\n        command: [sh]\n        readinessProbe: {{periodSeconds: 1}}\n"),
            13,
            9,
            "pods[0].containers[0].readinessProbe",
            "must specify a handler type",
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
        ("control plane of 2", format!("{BASE}cluster: {{control_plane: {{nodes: [node1, node2]}}}}\n"), 7, 27, "cluster.control_plane.nodes", "give 1, or 3"),
        ("control plane unknown node", format!("{BASE}cluster: {{control_plane: {{nodes: [node9]}}}}\n"), 7, 35, "cluster.control_plane.nodes[0]", "unknown node `node9` (nodes: node1, node2)"),
        (
            "control plane node twice",
            format!("{BASE}cluster: {{control_plane: {{nodes: [node1, node2, node1]}}}}\n"),
            7,
            49,
            "cluster.control_plane.nodes[2]",
            "listed twice",
        ),
        ("control plane field", format!("{BASE}cluster: {{control_plane: {{node: [node1]}}}}\n"), 7, 27, "cluster.control_plane.node", "unknown field `node`"),
        (
            "control plane on a downloaded image",
            base_with("node1: {}", "node1: {image: {url: 'https://x.invalid/i', sha256: SHA}}").replace("SHA", &"a".repeat(64)),
            3,
            3,
            "nodes.node1",
            "has no etcd",
        ),
        (
            "grace period without a unit",
            format!("{BASE}cluster: {{control_plane: {{node_monitor_grace_period: 40}}}}\n"),
            7,
            54,
            "cluster.control_plane.node_monitor_grace_period",
            "\"40\" has no unit: write 40s",
        ),
        (
            "grace period not above the lease renew interval",
            format!("{BASE}cluster:\n  control_plane:\n    nodes: [node1]\n    node_monitor_grace_period: 10s\n"),
            10,
            32,
            "cluster.control_plane.node_monitor_grace_period",
            "10 s must be longer than the agents' Lease renew interval (10 s)",
        ),
        (
            "eviction timeout in words",
            format!("{BASE}cluster: {{control_plane: {{pod_eviction_timeout: 5 minutes}}}}\n"),
            7,
            49,
            "cluster.control_plane.pod_eviction_timeout",
            "\"5 minutes\" is not a duration (use 40s, 5m or 1m30s)",
        ),
        (
            "eviction timeout below a second",
            format!("{BASE}cluster: {{control_plane: {{pod_eviction_timeout: 1500ms}}}}\n"),
            7,
            49,
            "cluster.control_plane.pod_eviction_timeout",
            "\"1500ms\" is not a whole number of seconds",
        ),
        (
            "test level",
            format!("{BASE}pods:\n  - {{name: web, node: node1, containers: [{{name: c, command: [sh]}}]}}\ntests:\n  - {{name: a, from: 'pod:web', to: 'node:node2', kind: ping, level: fatal}}\n"),
            10,
            69,
            "tests[0].level",
            "unknown variant `fatal`, expected `error` or `warning`",
        ),
        (
            "pod namespace undeclared",
            format!("{BASE}pods:\n  - {{name: web, node: node1, namespace: team-a, containers: [{{name: c, command: [sh]}}]}}\n"),
            8,
            41,
            "pods[0].namespace",
            "namespace `team-a` is neither declared in `namespaces:` nor one every cluster has",
        ),
        (
            "pod label value",
            format!("{BASE}pods:\n  - {{name: web, node: node1, labels: {{app: -web}}, containers: [{{name: c, command: [sh]}}]}}\n"),
            8,
            44,
            "pods[0].labels.app",
            "a valid label must be an empty string or consist of alphanumeric characters",
        ),
        (
            "namespace label",
            format!("{BASE}namespaces:\n  - metadata: {{name: team-a, labels: {{team: a-}}}}\n"),
            8,
            45,
            "namespaces[0].metadata.labels.team",
            "a valid label must be an empty string",
        ),
    ]
}

#[test]
fn pods_carry_their_namespace_and_labels_and_namespaces_their_labels() {
    let src = format!(
        "{BASE}namespaces:\n  - metadata: {{name: team-a, labels: {{team: a}}}}\npods:\n  - {{name: web, node: node1, namespace: team-a, labels: {{app: web}}, containers: [{{name: c, command: [sh]}}]}}\n  - {{name: db, node: node2, containers: [{{name: c, command: [sh]}}]}}\n"
    );
    let t = checked_of(&src).expect("valid");
    assert_eq!(t.namespaces.len(), 1);
    assert_eq!(t.namespaces[0]["metadata"]["labels"]["team"], "a");
    assert_eq!(t.namespaces[0]["metadata"].get("namespace"), None, "a Namespace is cluster-scoped");
    assert_eq!(t.pods[0].spec.namespace.as_deref(), Some("team-a"));
    assert_eq!(t.pods[0].spec.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!((t.pods[1].spec.namespace.as_deref(), t.pods[1].spec.labels.len()), (None, 0));
}

/// The source from `line:column` to the end of that line.
fn text_at(src: &str, line: usize, column: usize) -> &str {
    src.lines().nth(line - 1).and_then(|l| l.get(column - 1..)).unwrap_or("<past the end>")
}

#[test]
fn bad_topologies_are_rejected_at_the_right_place() {
    let mut failures = Vec::new();
    for (case, src, line, column, field, msg) in bad_cases() {
        match checked_of(&src) {
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
    let e = checked_of(&base_with("node1: {}", "node1: {memory: 12Q}")).expect_err("invalid");
    assert_eq!(e.to_string(), "t.yaml:3:19: nodes.node1.memory: \"12Q\" is not a memory size (use 512M, 1G, 1Gi)");
}

#[test]
fn unreadable_file_is_a_read_error() {
    let e = load(Path::new("/nonexistent/topology.yaml")).expect_err("missing");
    assert!(matches!(e, TopologyError::Read { .. }));
    assert!(e.to_string().starts_with("/nonexistent/topology.yaml: cannot read"), "{e}");
}

/// The bundled topologies (`topologies/*.yaml`).
pub(crate) fn topologies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies")
}

#[test]
fn every_bundled_topology_is_valid_and_small() {
    let mut seen = 0;
    let mut labs = BTreeSet::new();
    for entry in std::fs::read_dir(topologies_dir()).expect("topologies/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let checked = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(labs.insert(checked.lab.clone()), "two bundled topologies share lab name {}", checked.lab);
        // One vCPU a node; a control-plane member may have two (docs/benchmarks.md, "A second vCPU for the
        // control-plane node").
        for n in &checked.nodes {
            let most = if checked.cluster.control_plane.contains(&n.name) { 2 } else { 1 };
            assert!(n.memory_mib <= 512 && n.cpus <= most, "{}: keep bundled labs small", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected the bundled topologies, found {seen}");
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
/// The JSON schema of topology files as committed in docs/topology.schema.json (for editors' YAML support).
fn schema_json() -> String {
    let mut schema = schemars::schema_for!(Topology);
    schema.insert("title".into(), "testbed topology".into());
    let text = serde_json::to_string_pretty(&schema).expect("schema serializes");
    text + "\n"
}
