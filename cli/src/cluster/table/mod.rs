//! `testbed get`'s tables: the columns kubectl prints for each kind (`-o wide` adds its wide columns). The
//! columns and cells are the API server's own (`testbed_control_plane::printing`, which answers kubectl's
//! Table requests), so `testbed get` and `kubectl get` print the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use testbed_control_plane::printing;

use super::kinds::{Kind, Served};

/// The header of `kind`'s table.
pub fn header(kind: Kind, wide: bool, all_namespaces: bool) -> Vec<String> {
    let mut cols = if all_namespaces && kind.namespaced() { vec!["NAMESPACE".to_string()] } else { vec![] };
    cols.extend(printing::columns(kind).iter().filter(|c| wide || c.priority == 0).map(|c| c.name.to_uppercase()));
    cols
}

/// One object's row.
pub fn row(kind: Kind, obj: &DynamicObject, wide: bool, all_namespaces: bool, now: Timestamp) -> Vec<String> {
    let mut cells = Vec::new();
    if all_namespaces && kind.namespaced() {
        cells.push(obj.metadata.namespace.clone().unwrap_or_default());
    }
    let value = serde_json::to_value(obj).unwrap_or_default();
    let all = printing::cells(kind, &value, seconds(now));
    let shown = printing::columns(kind).into_iter().zip(all).filter(|(c, _)| wide || c.priority == 0);
    cells.extend(shown.map(|(_, cell)| cell));
    cells
}

/// kubectl's `metav1.FormatLabelSelector` (`app=web,tier in (a,b)`, `<none>` for the empty selector).
pub fn format_selector(selector: Option<&LabelSelector>) -> String {
    let value = selector.map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or_default();
    printing::format_selector(&value)
}

fn seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// kubectl's short age (`45s`, `3m20s`, `17m`, `5h3m`, `20h`, `3d4h`, `12d`), from the creation time.
pub fn age(created: Option<&Time>, now: Timestamp) -> String {
    let created = created.map(|t| t.0.to_string());
    printing::age(created.as_deref(), seconds(now))
}

/// Columns padded like kubectl's tabwriter: each as wide as its widest cell, three spaces apart.
pub fn render<S: AsRef<str>>(header: &[S], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.as_ref().len()).collect();
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
    let mut out = line(header.iter().map(AsRef::as_ref).collect());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wide_and_all_namespaces_add_their_columns_to_the_servers_cells() {
        let pod: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-11-29T11:59:00Z"},
            "spec": {"nodeName": "node2", "containers": [{"name": "a"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.2",
                       "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": ""}]}
        }))
        .unwrap();
        let now: Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        assert_eq!(header(Kind::Pod, false, false), ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
        assert_eq!(row(Kind::Pod, &pod, false, false, now), ["web", "1/1", "Running", "0", "60s"]);
        assert_eq!(
            header(Kind::Pod, true, true),
            ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
        );
        assert_eq!(
            row(Kind::Pod, &pod, true, true, now),
            ["default", "web", "1/1", "Running", "0", "60s", "10.244.1.2", "node2"]
        );
        assert_eq!(header(Kind::Node, false, true)[0], "NAME", "a Node has no namespace");
    }

    #[test]
    fn columns_line_up() {
        let out = render(&["NAME", "AGE"], &[vec!["a-long-name".into(), "5s".into()]]);
        assert_eq!(out, "NAME          AGE\na-long-name   5s\n");
    }
}
