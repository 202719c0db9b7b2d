//! `testbed get`'s tables: the columns kubectl prints for each kind (`-o wide` adds its wide columns), from
//! the typed Kubernetes objects.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;

use super::kinds::{Kind, Served};

mod network_policies;
mod services;

pub use network_policies::format_selector;

/// The header of `kind`'s table.
pub fn header(kind: Kind, wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut cols = if all_namespaces && kind.namespaced() { vec!["NAMESPACE"] } else { vec![] };
    cols.extend(match kind {
        Kind::Namespace => vec!["NAME", "STATUS", "AGE"],
        Kind::Node => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        Kind::Pod => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        Kind::Lease => vec!["NAME", "HOLDER", "AGE"],
        Kind::Event => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        Kind::ReplicaSet => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        Kind::Deployment => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        Kind::Service => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        Kind::EndpointSlice => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        Kind::NetworkPolicy => vec!["NAME", "POD-SELECTOR", "AGE"],
    });
    if wide {
        cols.extend(match kind {
            Kind::Node => vec!["INTERNAL-IP", "POD-CIDR", "KERNEL-VERSION"],
            Kind::Pod => vec!["IP", "NODE"],
            Kind::ReplicaSet | Kind::Deployment => vec!["CONTAINERS", "IMAGES", "SELECTOR"],
            Kind::Service => vec!["SELECTOR"],
            Kind::Namespace | Kind::Lease | Kind::Event | Kind::EndpointSlice | Kind::NetworkPolicy => vec![],
        });
    }
    cols
}

/// One object's row; an object that does not decode as its kind shows its name and `<invalid>`.
pub fn row(kind: Kind, obj: &DynamicObject, wide: bool, all_namespaces: bool, now: Timestamp) -> Vec<String> {
    let mut cells = Vec::new();
    if all_namespaces && kind.namespaced() {
        cells.push(obj.metadata.namespace.clone().unwrap_or_default());
    }
    if kind != Kind::Event {
        cells.push(obj.metadata.name.clone().unwrap_or_default());
    }
    let age = age(obj.metadata.creation_timestamp.as_ref(), now);
    let columns = match kind {
        Kind::Namespace => obj.clone().try_parse::<Namespace>().ok().map(|ns| namespace_row(&ns, age)),
        Kind::Node => obj.clone().try_parse::<Node>().ok().map(|n| node_row(&n, age, wide)),
        Kind::Pod => obj.clone().try_parse::<Pod>().ok().map(|p| pod_row(&p, age, wide)),
        Kind::Lease => obj.clone().try_parse::<Lease>().ok().map(|l| lease_row(&l, age)),
        Kind::Event => obj.clone().try_parse::<Event>().ok().map(|e| event_row(&e, now)),
        Kind::ReplicaSet => obj.clone().try_parse::<ReplicaSet>().ok().map(|rs| replica_set_row(&rs, age, wide)),
        Kind::Deployment => obj.clone().try_parse::<Deployment>().ok().map(|d| deployment_row(&d, age, wide)),
        Kind::Service => obj.clone().try_parse().ok().map(|s| services::service_row(&s, age, wide)),
        Kind::EndpointSlice => obj.clone().try_parse().ok().map(|s| services::endpoint_slice_row(&s, age)),
        Kind::NetworkPolicy => obj.clone().try_parse().ok().map(|p| network_policies::network_policy_row(&p, age)),
    };
    cells.extend(columns.unwrap_or_else(|| vec!["<invalid>".to_string()]));
    cells
}

fn namespace_row(ns: &Namespace, age: String) -> Vec<String> {
    let phase = ns.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Active".into());
    vec![phase, age]
}

fn node_row(node: &Node, age: String, wide: bool) -> Vec<String> {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| if c.status == "True" { "Ready" } else { "NotReady" })
        .unwrap_or("Unknown");
    let roles: Vec<&str> =
        node.metadata.labels.iter().flatten().filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/")).collect();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    let info = status.and_then(|s| s.node_info.as_ref());
    let version = info.map(|i| i.kubelet_version.clone()).unwrap_or_default();
    let mut cells = vec![ready.to_string(), roles, age, or_none(version)];
    if wide {
        let ip = status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .unwrap_or_default();
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()).unwrap_or_default();
        cells.extend([or_none(ip), or_none(cidr), or_none(info.map(|i| i.kernel_version.clone()).unwrap_or_default())]);
    }
    cells
}

fn pod_row(pod: &Pod, age: String, wide: bool) -> Vec<String> {
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let ready = containers.iter().filter(|c| c.ready).count();
    let restarts: i32 = containers.iter().map(|c| c.restart_count).sum();
    let waiting = containers.iter().find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let phase = status
        .and_then(|s| s.reason.clone())
        .or(waiting)
        .or_else(|| status.and_then(|s| s.phase.clone()))
        .unwrap_or_else(|| "Pending".into());
    let phase = if pod.metadata.deletion_timestamp.is_some() { "Terminating".to_string() } else { phase };
    let mut cells = vec![format!("{ready}/{total}"), phase, restarts.to_string(), age];
    if wide {
        let ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        cells.extend([or_none(ip), or_none(node)]);
    }
    cells
}

fn lease_row(lease: &Lease, age: String) -> Vec<String> {
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    vec![holder, age]
}

fn event_row(event: &Event, now: Timestamp) -> Vec<String> {
    let seen = event.last_timestamp.as_ref().or(event.first_timestamp.as_ref());
    let object = &event.involved_object;
    let kind = object.kind.as_deref().unwrap_or_default().to_lowercase();
    vec![
        age(seen, now),
        event.type_.clone().unwrap_or_default(),
        event.reason.clone().unwrap_or_default(),
        format!("{kind}/{}", object.name.as_deref().unwrap_or_default()),
        event.message.clone().unwrap_or_default(),
    ]
}

fn replica_set_row(rs: &ReplicaSet, age: String, wide: bool) -> Vec<String> {
    let spec = rs.spec.as_ref();
    let status = rs.status.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let current = status.map_or(0, |s| s.replicas);
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let mut cells = vec![desired.to_string(), current.to_string(), ready.to_string(), age];
    if wide {
        cells.extend(template_columns(spec.and_then(|s| s.template.as_ref()), spec.map(|s| &s.selector)));
    }
    cells
}

fn deployment_row(d: &Deployment, age: String, wide: bool) -> Vec<String> {
    let spec = d.spec.as_ref();
    let status = d.status.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let count = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| status.and_then(f).unwrap_or(0);
    let ready = count(|s| s.ready_replicas);
    let mut cells = vec![
        format!("{ready}/{desired}"),
        count(|s| s.updated_replicas).to_string(),
        count(|s| s.available_replicas).to_string(),
        age,
    ];
    if wide {
        cells.extend(template_columns(spec.map(|s| &s.template), spec.map(|s| &s.selector)));
    }
    cells
}

/// `-o wide`'s CONTAINERS, IMAGES and SELECTOR of a ReplicaSet or Deployment.
fn template_columns(template: Option<&PodTemplateSpec>, selector: Option<&LabelSelector>) -> [String; 3] {
    let containers = template.and_then(|t| t.spec.as_ref()).map(|s| s.containers.as_slice()).unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers.iter().filter_map(|c| c.image.as_deref()).collect();
    let selector = selector
        .and_then(|s| s.match_labels.as_ref())
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    [or_none(names.join(",")), or_none(images.join(",")), or_none(selector)]
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// kubectl's short age (`45s`, `3m20s`, `17m`, `5h3m`, `20h`, `3d4h`, `12d`), from the creation time.
pub fn age(created: Option<&Time>, now: Timestamp) -> String {
    let Some(created) = created else { return "<unknown>".into() };
    let secs = (now.as_second() - created.0.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", m % 60),
        s if s < 2 * 86400 => format!("{h}h"),
        s if s < 8 * 86400 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// Columns padded like kubectl's tabwriter: each as wide as its widest cell, three spaces apart.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.len() + 3));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn ages_round_as_kubectl_rounds_them() {
        let at = |s: &str| Time(s.parse().unwrap());
        assert_eq!(age(Some(&at("2026-11-29T11:59:15Z")), now()), "45s");
        assert_eq!(age(Some(&at("2026-11-29T11:56:40Z")), now()), "3m20s");
        assert_eq!(age(Some(&at("2026-11-29T11:43:00Z")), now()), "17m");
        assert_eq!(age(Some(&at("2026-11-29T06:57:00Z")), now()), "5h3m");
        assert_eq!(age(Some(&at("2026-11-26T08:00:00Z")), now()), "3d4h");
        assert_eq!(age(None, now()), "<unknown>");
    }

    #[test]
    fn a_pod_row_counts_ready_containers_and_restarts() {
        let pod = object(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-11-29T11:59:00Z"},
            "spec": {"nodeName": "node2", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "image": "", "imageID": ""},
                {"name": "b", "ready": false, "restartCount": 1, "image": "", "imageID": "",
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }));
        let cells = row(Kind::Pod, &pod, true, true, now());
        assert_eq!(cells, ["default", "web", "1/2", "CrashLoopBackOff", "3", "60s", "10.244.1.2", "node2"]);
    }

    #[test]
    fn a_node_row_shows_readiness_roles_and_its_underlay_address() {
        let node = object(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
        }));
        let cells = row(Kind::Node, &node, true, false, now());
        assert_eq!(
            cells,
            ["node1", "NotReady", "control-plane", "<unknown>", "<none>", "10.0.0.1", "10.244.0.0/24", "<none>"]
        );
    }

    #[test]
    fn columns_line_up() {
        let out = render(&["NAME", "AGE"], &[vec!["a-long-name".into(), "5s".into()]]);
        assert_eq!(out, "NAME          AGE\na-long-name   5s\n");
    }
}
