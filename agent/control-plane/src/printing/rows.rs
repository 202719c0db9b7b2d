//! Each kind's cells after NAME, as Kubernetes' printers compute them.

use serde_json::Value;

use super::{age, or, or_none, text};

fn array<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// `a=1,b=2` of a string map at `pointer`.
fn pairs(obj: &Value, pointer: &str) -> String {
    let map = obj.pointer(pointer).and_then(Value::as_object);
    let pairs: Vec<String> =
        map.into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    pairs.join(",")
}

pub(super) fn node(obj: &Value, age: String) -> Vec<String> {
    let ready = array(obj, "/status/conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" })
        .unwrap_or("Unknown");
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let roles: Vec<&str> =
        labels.into_iter().flatten().filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/")).collect();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    let ip = array(obj, "/status/addresses").iter().find(|a| a["type"] == "InternalIP");
    vec![
        ready.to_string(),
        roles,
        age,
        or_none(text(obj, "/status/nodeInfo/kubeletVersion")),
        or_none(ip.map(|a| text(a, "/address")).unwrap_or_default()),
        or_none(text(obj, "/spec/podCIDR")),
        or_none(text(obj, "/status/nodeInfo/kernelVersion")),
    ]
}

pub(super) fn pod(obj: &Value, age: String) -> Vec<String> {
    let total = array(obj, "/spec/containers").len();
    let containers = array(obj, "/status/containerStatuses");
    let ready = containers.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = containers.iter().map(|c| int(c, "/restartCount")).sum();
    let waiting = containers.iter().map(|c| text(c, "/state/waiting/reason")).find(|r| !r.is_empty());
    let status = [Some(text(obj, "/status/reason")), waiting, Some(text(obj, "/status/phase"))]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "Pending".into());
    let status = if obj.pointer("/metadata/deletionTimestamp").is_some() { "Terminating".into() } else { status };
    vec![
        format!("{ready}/{total}"),
        status,
        restarts.to_string(),
        age,
        or_none(text(obj, "/status/podIP")),
        or_none(text(obj, "/spec/nodeName")),
    ]
}

pub(super) fn event(obj: &Value, now: f64) -> Vec<String> {
    let seen = [text(obj, "/lastTimestamp"), text(obj, "/firstTimestamp")].into_iter().find(|t| !t.is_empty());
    let kind = text(obj, "/involvedObject/kind").to_lowercase();
    vec![
        age(seen.as_deref(), now),
        text(obj, "/type"),
        text(obj, "/reason"),
        format!("{kind}/{}", text(obj, "/involvedObject/name")),
        text(obj, "/message"),
    ]
}

pub(super) fn replica_set(obj: &Value, age: String) -> Vec<String> {
    let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let mut cells = vec![
        desired.to_string(),
        int(obj, "/status/replicas").to_string(),
        int(obj, "/status/readyReplicas").to_string(),
        age,
    ];
    cells.extend(template(obj));
    cells
}

pub(super) fn deployment(obj: &Value, age: String) -> Vec<String> {
    let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let mut cells = vec![
        format!("{}/{desired}", int(obj, "/status/readyReplicas")),
        int(obj, "/status/updatedReplicas").to_string(),
        int(obj, "/status/availableReplicas").to_string(),
        age,
    ];
    cells.extend(template(obj));
    cells
}

/// CONTAINERS, IMAGES and SELECTOR of a ReplicaSet's or Deployment's template.
fn template(obj: &Value) -> [String; 3] {
    let containers = array(obj, "/spec/template/spec/containers");
    let names: Vec<String> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<String> = containers.iter().map(|c| text(c, "/image")).filter(|i| !i.is_empty()).collect();
    [or_none(names.join(",")), or_none(images.join(",")), or_none(pairs(obj, "/spec/selector/matchLabels"))]
}

pub(super) fn service(obj: &Value, age: String) -> Vec<String> {
    let ports: Vec<String> = array(obj, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = or(text(p, "/protocol"), "TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{}:{node_port}/{protocol}", int(p, "/port")),
                None => format!("{}/{protocol}", int(p, "/port")),
            }
        })
        .collect();
    vec![
        or(text(obj, "/spec/type"), "ClusterIP"),
        or_none(text(obj, "/spec/clusterIP")),
        "<none>".into(),
        or_none(ports.join(",")),
        age,
        or_none(pairs(obj, "/spec/selector")),
    ]
}

/// ADDRESSTYPE, PORTS, ENDPOINTS (the first three addresses, then how many more), AGE.
pub(super) fn endpoint_slice(obj: &Value, age: String) -> Vec<String> {
    let ports: Vec<String> = array(obj, "/ports")
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_i64))
        .map(|p| p.to_string())
        .collect();
    let addresses: Vec<&str> = array(obj, "/endpoints")
        .iter()
        .flat_map(|e| e.get("addresses").and_then(Value::as_array).into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let mut endpoints = addresses.iter().take(3).copied().collect::<Vec<_>>().join(",");
    if addresses.len() > 3 {
        endpoints += &format!(" + {} more...", addresses.len() - 3);
    }
    vec![text(obj, "/addressType"), or(ports.join(","), "<unset>"), or(endpoints, "<unset>"), age]
}
