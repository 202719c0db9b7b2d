//! What the scheduler writes: the binding and its `Scheduled` event, or, for a pod that fits nowhere, the
//! `PodScheduled: False` condition and the `FailedScheduling` warning (the condition only when it changed;
//! the event every attempt, which the recorder counts up).

use testbed_api::objects::{Condition, Pod};

use crate::client::{now_rfc3339, ClientError};
use crate::controllers::events::EventType;
use crate::controllers::Context;
use crate::resources::Kind;

/// The component name events carry.
const COMPONENT: &str = "default-scheduler";

/// Binds `pod` to `node`; on success records `Scheduled` (the API server marks the pod `PodScheduled`).
pub async fn bind(ctx: &Context, pod: &Pod, node: &str) -> Result<(), ClientError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = &pod.metadata.name;
    ctx.client.bind(namespace, name, node).await?;
    let message = format!("Successfully assigned {namespace}/{name} to {node}");
    // In a task of its own, as client-go's event broadcaster does: the next binding need not wait for it.
    let (events, pod) = (ctx.events.clone(), pod.clone());
    tokio::spawn(
        async move { events.record(Kind::Pod, &pod, COMPONENT, EventType::Normal, "Scheduled", &message).await },
    );
    Ok(())
}

/// Marks `pod` unschedulable with `message` and records `FailedScheduling`. Failures are logged only: the
/// pod is tried again anyway.
pub async fn unschedulable(ctx: &Context, pod: &Pod, message: &str) {
    if let Some(conditions) = conditions_with(pod, message, &now_rfc3339()) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let status = serde_json::json!({ "conditions": conditions });
        if let Err(e) = ctx.client.patch_pod_status(namespace, &pod.metadata.name, &status).await {
            tracing::warn!(pod = %pod.metadata.name, error = %e, "PodScheduled condition not written");
        }
    }
    ctx.events.record(Kind::Pod, pod, COMPONENT, EventType::Warning, "FailedScheduling", message).await;
}

/// The pod's conditions with `PodScheduled: False, Unschedulable, message`; `None` when it says so already.
/// (A merge patch replaces the whole list, so the other conditions are carried along.)
pub fn conditions_with(pod: &Pod, message: &str, now: &str) -> Option<Vec<Condition>> {
    let mut conditions = pod.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let old = conditions.iter().position(|c| c.type_ == "PodScheduled");
    let since = match old.map(|i| &conditions[i]) {
        Some(c) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
            if c.message.as_deref() == Some(message) {
                return None;
            }
            c.last_transition_time.clone()
        }
        _ => None,
    };
    let new = Condition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        last_transition_time: Some(since.unwrap_or_else(|| now.to_string())),
        reason: Some("Unschedulable".into()),
        message: Some(message.to_string()),
        ..Condition::default()
    };
    match old {
        Some(i) => conditions[i] = new,
        None => conditions.push(new),
    }
    Some(conditions)
}
