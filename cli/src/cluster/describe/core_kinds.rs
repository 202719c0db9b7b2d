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
            let _ = writeln!(out, "    Ready:         {}", cs.ready);
            let _ = writeln!(out, "    Restart Count: {}", cs.restart_count);
        }
    }
    out.push_str("Conditions:\n  Type  Status\n");
    for c in status.and_then(|s| s.conditions.as_ref()).into_iter().flatten() {
        let _ = writeln!(out, "  {}  {}", c.type_, c.status);
    }
}

pub(super) fn lease(out: &mut String, lease: &Lease) {
    let spec = lease.spec.as_ref();
    field(out, "Holder", spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or_default());
    let duration = spec.and_then(|s| s.lease_duration_seconds).map(|d| format!("{d}s")).unwrap_or_default();
    field(out, "Duration", &duration);
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()).unwrap_or_default();
    field(out, "Renewed", &renewed);
}
