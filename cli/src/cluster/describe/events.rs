//! The Events of a described object, as kubectl lists them under `Events:`; and an Event's own fields.

use std::fmt::Write;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::Client;

use super::super::table::{age, render};
use super::super::ClusterError;
use super::field;

/// The Events about the object with `uid`, oldest first. Listed from the object's namespace (every
/// namespace for a cluster-scoped object, as kubectl does) and matched by uid, so an object deleted and
/// made again under the same name does not show its predecessor's.
pub(super) async fn of(client: &Client, namespace: Option<&str>, uid: &str) -> Result<Vec<Event>, ClusterError> {
    let api: Api<Event> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let params = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
    let list = api.list(&params).await.map_err(|e| ClusterError::from_kube("list events", e))?;
    let mut events: Vec<Event> =
        list.items.into_iter().filter(|e| e.involved_object.uid.as_deref() == Some(uid)).collect();
    events.sort_by_key(|e| last_seen(e).map(|t| t.0));
    Ok(events)
}

fn last_seen(e: &Event) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    e.last_timestamp.as_ref().or(e.first_timestamp.as_ref())
}

/// kubectl's `Events:` table (`<none>` when empty); a repeated event's age reads `50s (x3 over 2m)`.
pub(super) fn section(out: &mut String, events: &[Event], now: Timestamp) {
    if events.is_empty() {
        field(out, "Events", "");
        return;
    }
    out.push_str("Events:\n");
    let header = ["Type", "Reason", "Age", "From", "Message"];
    let mut rows = vec![header.iter().map(|h| "-".repeat(h.len())).collect::<Vec<_>>()];
    for e in events {
        let mut seen = age(last_seen(e), now);
        if let (Some(count), Some(first)) = (e.count.filter(|c| *c > 1), e.first_timestamp.as_ref()) {
            seen = format!("{seen} (x{count} over {})", age(Some(first), now));
        }
        let from = e.source.as_ref().and_then(|s| s.component.clone()).or_else(|| e.reporting_component.clone());
        rows.push(vec![
            e.type_.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            seen,
            from.unwrap_or_default(),
            e.message.clone().unwrap_or_default(),
        ]);
    }
    for line in render(&header, &rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// `describe event/NAME`: what it is about and what happened.
pub(super) fn event(out: &mut String, e: &Event) {
    let about = &e.involved_object;
    let object = format!("{}/{}", about.kind.as_deref().unwrap_or_default(), about.name.as_deref().unwrap_or_default());
    field(out, "Involved Object", &object);
    field(out, "Type", e.type_.as_deref().unwrap_or_default());
    field(out, "Reason", e.reason.as_deref().unwrap_or_default());
    field(out, "Message", e.message.as_deref().unwrap_or_default());
    field(out, "Count", &e.count.map(|c| c.to_string()).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_events_table_reads_as_kubectl_prints_it() {
        let e: Event = serde_json::from_value(json!({
            "metadata": {"name": "web.1"}, "involvedObject": {"kind": "Deployment", "name": "web"},
            "type": "Normal", "reason": "ScalingReplicaSet", "message": "Scaled up replica set web-abc12 from 0 to 3",
            "source": {"component": "deployment-controller"}, "count": 3,
            "firstTimestamp": "2026-11-29T11:58:00Z", "lastTimestamp": "2026-11-29T11:59:10Z"
        }))
        .unwrap();
        let mut out = String::new();
        section(&mut out, &[e], "2026-11-29T12:00:00Z".parse().unwrap());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Events:");
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["Type", "Reason", "Age", "From", "Message"]);
        assert!(lines[3].contains("50s (x3 over 2m0s)") && lines[3].contains("deployment-controller"), "{out}");
        assert!(lines[3].ends_with("Scaled up replica set web-abc12 from 0 to 3"), "{out}");
        let mut none = String::new();
        section(&mut none, &[], "2026-11-29T12:00:00Z".parse().unwrap());
        assert_eq!(none.trim_end(), "Events:            <none>");
    }
}
