//! The compiler on Kubernetes-style tables: a small cluster (three namespaces, four pods on two nodes) and,
//! per case, the policies and what node1's pods end up with.

use serde_json::{json, Value};

use super::*;

/// default: db (node1, app=db, port pg 5432) and web (node2, app=web); team-a (team=a): client (node2,
/// app=web); team-b (team=b): other (node1, app=other, port http 8080/TCP and dns 53/UDP).
fn cluster() -> (Vec<Pod>, Vec<Namespace>) {
    let pod = |ns: &str, name: &str, node: &str, app: &str, ip: &str, ports: Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["sleep", "1d"], "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip}
        }))
        .unwrap()
    };
    let pods = vec![
        pod("default", "db", "node1", "db", "10.244.1.2", json!([{"name": "pg", "containerPort": 5432}])),
        pod("default", "web", "node2", "web", "10.244.2.3", json!([])),
        pod("team-a", "client", "node2", "web", "10.244.2.4", json!([])),
        pod(
            "team-b",
            "other",
            "node1",
            "other",
            "10.244.1.5",
            json!([{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
        ),
    ];
    let ns = |name: &str, labels: Value| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };
    (pods, vec![ns("default", json!({})), ns("team-a", json!({"team": "a"})), ns("team-b", json!({"team": "b"}))])
}

fn policy(ns: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec})).unwrap()
}

fn peer(cidr: &str) -> PolicyPeer {
    PolicyPeer { cidr: cidr.parse().unwrap(), except: vec![] }
}

fn tcp(port: u16) -> PolicyPort {
    PolicyPort { protocol: PolicyProtocol::Tcp, port: Some(port), end_port: None }
}

fn rule(peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>) -> PolicyRule {
    PolicyRule { peers, ports }
}

/// A pod's rules: (ingress, egress), None for open.
type Rules = (Option<Vec<PolicyRule>>, Option<Vec<PolicyRule>>);
/// What a case expects of node1's pods: (name, ingress, egress); pods not listed are open both ways.
type Expected = Vec<(&'static str, Option<Vec<PolicyRule>>, Option<Vec<PolicyRule>>)>;

#[test]
fn policies_compile_to_each_pods_rules() {
    let cases: Vec<(&str, Vec<NetworkPolicy>, Expected)> = vec![
        ("no policy: every pod open", vec![], vec![]),
        (
            "default-deny ingress in default: db denies everything in, team-b's pod is untouched",
            vec![policy("default", json!({"podSelector": {}}))],
            vec![("db", Some(vec![]), None)],
        ),
        (
            "allow only from selected pods of the policy's namespace",
            vec![policy(
                "default",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
            )],
            vec![("db", Some(vec![rule(vec![peer("10.244.2.3/32")], vec![])]), None)],
        ),
        (
            "namespaceSelector: every pod of the picked namespaces",
            vec![policy(
                "default",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}]}),
            )],
            vec![("db", Some(vec![rule(vec![peer("10.244.2.4/32"), peer("10.244.1.5/32")], vec![])]), None)],
        ),
        (
            "the namespace's own name label selects it",
            vec![policy(
                "default",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}}]}]}),
            )],
            vec![("db", Some(vec![rule(vec![peer("10.244.1.5/32")], vec![])]), None)],
        ),
        (
            "podSelector and namespaceSelector in one peer: pods matching both",
            vec![policy(
                "default",
                json!({"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}]}]}),
            )],
            vec![("db", Some(vec![rule(vec![peer("10.244.2.3/32"), peer("10.244.2.4/32")], vec![])]), None)],
        ),
        (
            "a peer that picks no pod allows nothing (not everything)",
            vec![policy(
                "default",
                json!({"podSelector": {},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "nobody"}}}]}]}),
            )],
            vec![("db", Some(vec![]), None)],
        ),
        (
            "egress deny: Egress restricted, ingress open",
            vec![policy("team-b", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
            vec![("other", None, Some(vec![]))],
        ),
        (
            "ipBlock with except, egress",
            vec![policy(
                "team-b",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}]}),
            )],
            vec![(
                "other",
                None,
                Some(vec![rule(
                    vec![PolicyPeer {
                        cidr: "192.168.0.0/16".parse().unwrap(),
                        except: vec!["192.168.1.0/24".parse().unwrap()],
                    }],
                    vec![],
                )]),
            )],
        ),
        (
            "ingress named port: the target's own container port; endPort kept",
            vec![policy(
                "default",
                json!({"podSelector": {},
                "ingress": [{"ports": [{"port": "pg"}, {"port": 6000, "endPort": 6010}]}]}),
            )],
            vec![(
                "db",
                Some(vec![rule(
                    vec![],
                    vec![
                        tcp(5432),
                        PolicyPort { protocol: PolicyProtocol::Tcp, port: Some(6000), end_port: Some(6010) },
                    ],
                )]),
                None,
            )],
        ),
        (
            "ingress named port the target lacks: the rule allows nothing",
            vec![policy("default", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))],
            vec![("db", Some(vec![]), None)],
        ),
        (
            "egress named port: per destination pod that has it, with its protocol",
            vec![policy(
                "default",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}, {"port": "http"}]}]}),
            )],
            vec![(
                "db",
                None,
                Some(vec![rule(
                    vec![peer("10.244.1.5/32")],
                    vec![PolicyPort { protocol: PolicyProtocol::Udp, port: Some(53), end_port: None }, tcp(8080)],
                )]),
            )],
        ),
        (
            "union of two policies selecting the same pod",
            vec![
                policy(
                    "default",
                    json!({"podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "pg"}]}]}),
                ),
                policy(
                    "default",
                    json!({"podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
                ),
            ],
            vec![(
                "db",
                Some(vec![rule(vec![peer("10.244.2.3/32")], vec![tcp(5432)]), rule(vec![peer("10.0.0.0/8")], vec![])]),
                None,
            )],
        ),
        (
            "a policy of another namespace does not select the pod",
            vec![policy("team-a", json!({"podSelector": {}}))],
            vec![],
        ),
    ];
    let (pods, namespaces) = cluster();
    for (name, policies, expected) in cases {
        let spec = build(&policies, &pods, &namespaces, "node1");
        let got: Vec<(String, Rules)> = spec.pods.into_iter().map(|p| (p.name, (p.ingress, p.egress))).collect();
        let want: Vec<_> = expected.into_iter().map(|(n, i, e)| (n.to_string(), (i, e))).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn pods_without_an_ip_or_finished_are_neither_policed_nor_peers() {
    let (mut pods, namespaces) = cluster();
    pods[1].status.as_mut().unwrap().pod_ip = None; // web: no IP yet
    pods[2].status.as_mut().unwrap().phase = Some(PodPhase::Succeeded); // client: finished
    let allow_web = policy(
        "default",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}]}]}),
    );
    let spec = build(&[allow_web], &pods, &namespaces, "node1");
    assert_eq!(spec.pods.len(), 1);
    assert_eq!(spec.pods[0].ingress, Some(vec![]), "no web pod has an address: nothing is allowed in");
}
