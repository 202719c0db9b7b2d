//! The plan as tables for people (`testbed plan FILE` without `-o json`).

use std::fmt::Write;

use super::{DeclaredTest, ImageRef, Impairment, Plan, TestKind, TestLevel, TestSource, TestTarget};

/// The plan as tables for people (`testbed plan FILE`).
pub fn render_text(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lab {}  netns {}  plan v{}  topology sha256 {}",
        plan.lab, plan.netns, plan.version, plan.topology_hash
    );
    let _ = writeln!(
        s,
        "cluster: pod_cidr {}  node subnets /{}  backend {}",
        plan.cluster.pod_cidr, plan.cluster.node_subnet_prefix, plan.cluster.backend
    );
    let members = plan.control_plane_members();
    let _ = writeln!(
        s,
        "control plane: {} (etcd: {} member{}; API server {})",
        members.iter().map(|(n, _)| n.name.as_str()).collect::<Vec<_>>().join(", "),
        members.len(),
        if members.len() == 1 { "" } else { "s" },
        plan.api_servers().join(", ")
    );
    let lifecycle = &plan.cluster.node_lifecycle;
    let _ = writeln!(
        s,
        "node lifecycle: NotReady after {} s without a Lease renewal, pods evicted after {} s NotReady",
        lifecycle.node_monitor_grace_period_seconds, lifecycle.pod_eviction_timeout_seconds
    );
    let _ = writeln!(s, "\nnetworks:");
    let _ = writeln!(s, "  {:<16} {:<14} {:<18} {:>5}  impairment", "NAME", "BRIDGE", "CIDR", "MTU");
    for n in &plan.networks {
        let _ = writeln!(
            s,
            "  {:<16} {:<14} {:<18} {:>5}  {}",
            n.name,
            n.bridge,
            n.cidr.to_string(),
            n.mtu,
            impairment_text(&n.impair)
        );
    }
    let _ = writeln!(s, "\nnodes:");
    let _ = writeln!(
        s,
        "  {:<3} {:<16} {:>4} {:>7} {:>6}  {:<18} {:<17} IMAGE",
        "#", "NAME", "CPUS", "MEMORY", "SSH", "POD SUBNET", "VTEP MAC"
    );
    for n in &plan.nodes {
        let image = match &n.image {
            ImageRef::Named(name) => name.clone(),
            ImageRef::Url { url, .. } => url.clone(),
        };
        let _ = writeln!(
            s,
            "  {:<3} {:<16} {:>4} {:>6}M {:>6}  {:<18} {:<17} {}",
            n.index,
            n.name,
            n.cpus,
            n.memory_mib,
            n.ssh_port,
            n.pod_subnet.to_string(),
            n.vtep_mac,
            image
        );
    }
    let _ = writeln!(s, "\nnics:");
    let _ = writeln!(
        s,
        "  {:<16} {:<6} {:<16} {:<14} {:<17} {:<18} {:>5}",
        "NODE", "GUEST", "NETWORK", "TAP", "MAC", "ADDRESS", "MTU"
    );
    for n in &plan.nodes {
        for nic in &n.nics {
            let _ = writeln!(
                s,
                "  {:<16} {:<6} {:<16} {:<14} {:<17} {:<18} {:>5}",
                n.name,
                nic.guest_interface,
                nic.network,
                nic.tap,
                nic.mac,
                format!("{}/{}", nic.ip, nic.prefix_len),
                nic.mtu
            );
        }
    }
    if !plan.pods.is_empty() {
        let _ = writeln!(s, "\npods:");
        for p in &plan.pods {
            let names: Vec<String> = p
                .spec
                .containers
                .iter()
                .map(|c| match p.images.get(&c.name) {
                    Some(image) => format!("{} (image {image})", c.name),
                    None => c.name.clone(),
                })
                .collect();
            let labels: Vec<String> = p.spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                s,
                "  {:<20} on {:<16} containers: {}{}{}{}",
                p.spec.name,
                p.node,
                names.join(", "),
                p.spec.namespace.as_deref().map(|ns| format!("  namespace: {ns}")).unwrap_or_default(),
                if labels.is_empty() { String::new() } else { format!("  labels: {}", labels.join(",")) },
                if p.spec.host_network { "  (host network)" } else { "" }
            );
        }
    }
    if !plan.namespaces.is_empty() {
        let _ = writeln!(
            s,
            "
namespaces:"
        );
        for ns in &plan.namespaces {
            let labels: Vec<String> = ns["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            let name = ns["metadata"]["name"].as_str().unwrap_or_default();
            let _ =
                writeln!(s, "  {name:<20} labels: {}", if labels.is_empty() { "-".into() } else { labels.join(",") });
        }
    }
    if !plan.services.is_empty() {
        let _ = writeln!(s, "\nservices:");
        for svc in &plan.services {
            let _ = writeln!(s, "  {}", service_line(svc));
        }
    }
    if !plan.tests.is_empty() {
        let _ = writeln!(s, "\ntests:");
        for t in &plan.tests {
            let _ = writeln!(s, "  {:<32} {}", t.name, test_text(t));
        }
    }
    s
}

/// `node:node2 -> pod:web http :8080, 5 attempts, warning, only vxlan, host-gw`.
fn test_text(t: &DeclaredTest) -> String {
    let from = match &t.from {
        TestSource::Pod(p) => format!("pod:{p}"),
        TestSource::Node(n) => format!("node:{n}"),
    };
    let to = match &t.to {
        TestTarget::Pod(p) => format!("pod:{p}"),
        TestTarget::Node(n) => format!("node:{n}"),
        TestTarget::Ip(ip) => format!("ip:{ip}"),
    };
    let kind = match t.kind {
        TestKind::Ping => "ping",
        TestKind::Tcp => "tcp",
        TestKind::Http => "http",
    };
    let mut s = format!("{from} -> {to} {kind}");
    if let Some(p) = t.port {
        s += &format!(" :{p}");
    }
    if !t.expect_pass {
        s += ", must fail";
    }
    if t.attempts > 1 {
        s += &format!(", {} attempts {}ms apart", t.attempts, t.wait_ms);
    }
    if t.level == TestLevel::Warning {
        s += ", warning";
    }
    if t.stop_on_error {
        s += ", stop on error";
    }
    if !t.backends.is_empty() {
        let b: Vec<&str> = t.backends.iter().map(|b| b.as_str()).collect();
        s += &format!(", only {}", b.join(", "));
    }
    s
}

fn impairment_text(i: &Impairment) -> String {
    if i.is_none() {
        return "none".into();
    }
    let mut parts = Vec::new();
    if i.delay_ms > 0.0 {
        parts.push(format!("delay {}ms", i.delay_ms));
    }
    if i.jitter_ms > 0.0 {
        parts.push(format!("jitter {}ms", i.jitter_ms));
    }
    if i.loss_percent > 0.0 {
        parts.push(format!("loss {}%", i.loss_percent));
    }
    if let Some(r) = i.rate_mbit {
        parts.push(format!("rate {r}mbit"));
    }
    parts.join(", ")
}

/// `NAMESPACE/NAME  TYPE  CLUSTER-IP  PORT:NODEPORT/PROTOCOL,...` of a planned Service.
fn service_line(svc: &serde_json::Value) -> String {
    let spec = &svc["spec"];
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    format!(
        "{:<28} {:<10} {:<16} {}",
        format!(
            "{}/{}",
            svc["metadata"]["namespace"].as_str().unwrap_or("default"),
            svc["metadata"]["name"].as_str().unwrap_or("")
        ),
        spec["type"].as_str().unwrap_or("ClusterIP"),
        spec["clusterIP"].as_str().unwrap_or(""),
        ports.join(",")
    )
}
