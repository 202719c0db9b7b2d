//! The sections of the core kinds: a node's addresses, capacity and conditions; a pod's containers and
//! conditions; a lease's holder.

use std::fmt::Write;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};

use super::field;

pub(super) fn node(out: &mut String, node: &Node) {
    field(out, "PodCIDR", node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).unwrap_or_default());
    let Some(status) = &node.status else { return };
    for address in status.addresses.iter().flatten() {
        field(out, &format!("  {}", address.type_), &address.address);
    }
    let quantities = |q: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { q.iter().flatten().map(|(k, v)| format!("{k}: {}", v.0)).collect::<Vec<_>>().join(", ") };
    field(out, "Capacity", &quantities(&status.capacity));
    field(out, "Allocatable", &quantities(&status.allocatable));
    if let Some(info) = &status.node_info {
        field(out, "Kernel Version", &info.kernel_version);
        field(out, "OS Image", &info.os_image);
        field(out, "Agent Version", &info.kubelet_version);
    }
    out.push_str("Conditions:\n  Type    Status  LastHeartbeatTime  Reason  Message\n");
    for c in status.conditions.iter().flatten() {
        let heartbeat = c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let reason = c.reason.as_deref().unwrap_or_default();
        let message = c.message.as_deref().unwrap_or_default();
        let _ = writeln!(out, "  {}  {}  {heartbeat}  {reason}  {message}", c.type_, c.status);
    }
}

pub(super) fn pod(out: &mut String, pod: &Pod) {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    field(out, "Node", spec.and_then(|s| s.node_name.as_deref()).unwrap_or_default());
    field(out, "Status", status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending"));
    field(out, "IP", status.and_then(|s| s.pod_ip.as_deref()).unwrap_or_default());
    out.push_str("Containers:\n");
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        let _ = writeln!(out, "  {}:", c.name);
        let command: Vec<String> = c.command.iter().chain(c.args.iter()).flatten().cloned().collect();
        let _ = writeln!(out, "    Command:       {}", command.join(" "));
        let found =
            status.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| cs.iter().find(|s| s.name == c.name));
        if let Some(cs) = found {
            let state = cs.state.as_ref().map_or("Unknown".to_string(), |s| {
                if s.running.is_some() {
                    "Running".into()
                } else if let Some(t) = &s.terminated {
                    format!("Terminated (exit code {})", t.exit_code)
                } else {
                    format!("Waiting ({})", s.waiting.as_ref().and_then(|w| w.reason.clone()).unwrap_or_default())
                }
            });
            let _ = writeln!(out, "    State:         {state}");
            if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                let reason = t.reason.as_deref().unwrap_or_default();
                let _ = writeln!(out, "    Last State:    Terminated ({reason}, exit code {})", t.exit_code);
            }
            let _ = writeln!(out, "    Ready:         {}", cs.ready);
            let _ = writeln!(out, "    Restart Count: {}", cs.restart_count);
        }
        for (kind, probe) in
            [("Liveness", &c.liveness_probe), ("Readiness", &c.readiness_probe), ("Startup", &c.startup_probe)]
        {
            if let Some(p) = probe {
                let _ = writeln!(out, "    {:<15}{}", format!("{kind}:"), describe_probe(p));
            }
        }
    }
    out.push_str("Conditions:\n  Type  Status\n");
    for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        let _ = writeln!(out, "  {}  {}", c.type_, c.status);
    }
}

/// A probe as `kubectl describe` prints it: the handler, then its numbers with Kubernetes' defaults.
fn describe_probe(p: &k8s_openapi::api::core::v1::Probe) -> String {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = |p: &IntOrString| match p {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    let handler = if let Some(e) = &p.exec {
        format!("exec {:?}", e.command.clone().unwrap_or_default())
    } else if let Some(h) = &p.http_get {
        format!("http-get http://:{}{}", port(&h.port), h.path.as_deref().unwrap_or("/"))
    } else if let Some(t) = &p.tcp_socket {
        format!("tcp-socket :{}", port(&t.port))
    } else {
        "unknown".into()
    };
    format!(
        "{handler} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds.unwrap_or(0),
        p.timeout_seconds.unwrap_or(1),
        p.period_seconds.unwrap_or(10),
        p.success_threshold.unwrap_or(1),
        p.failure_threshold.unwrap_or(3)
    )
}

pub(super) fn lease(out: &mut String, lease: &Lease) {
    let spec = lease.spec.as_ref();
    field(out, "Holder", spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or_default());
    let duration = spec.and_then(|s| s.lease_duration_seconds).map(|d| format!("{d}s")).unwrap_or_default();
    field(out, "Duration", &duration);
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
    field(out, "Renewed", &renewed);
}
