//! Events, as Kubernetes' event recorder writes them: one `v1 Event` per (object, reason, message), in the
//! object's namespace, counted up when it repeats instead of piling up copies. Recording never fails the
//! caller: an event that cannot be written is logged and dropped, as client-go does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use testbed_api::objects::{Event, EventSource, ObjectMeta, ObjectReference};

use crate::client::{now_rfc3339, paths, Client, Object};
use crate::resources::Kind;

/// `Normal` or `Warning`, as `kubectl describe` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something went as it should.
    Normal,
    /// Something went wrong (`FailedScheduling`).
    Warning,
}

/// Writes Events; cheap to clone (one shared cache of the events written).
#[derive(Clone)]
pub struct EventRecorder {
    client: Arc<Client>,
    instance: String,
    /// The events written, for repeats.
    written: Arc<Mutex<HashMap<EventKey, (String, i32)>>>,
}

/// (namespace, object uid, reason, message): what makes a repeat; mapped to the Event's name and count.
type EventKey = (String, String, String, String);

impl EventRecorder {
    /// A recorder reporting as `instance` (the control-plane member or node).
    pub fn new(client: Arc<Client>, instance: &str) -> Self {
        Self { client, instance: instance.to_string(), written: Arc::default() }
    }

    /// Records that `component` (`deployment-controller`) did `reason` to `object` of `kind`.
    pub async fn record<T: Object>(
        &self,
        kind: Kind,
        object: &T,
        component: &str,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let meta = object.metadata();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = meta.uid.clone().unwrap_or_default();
        let key = (namespace.clone(), uid.clone(), reason.to_string(), message.to_string());
        let now = now_rfc3339();
        let repeat = self.written.lock().map(|w| w.get(&key).cloned()).unwrap_or_default();
        let result = match repeat {
            Some((name, count)) => {
                let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
                let path = paths::object(Kind::Event, &namespace, &name);
                self.client.merge_patch::<Event>(&path, &patch).await.map(|_| (name, count + 1))
            }
            None => {
                let mut event = self.event(kind, meta, component, type_, &now);
                event.metadata.namespace = Some(namespace.clone());
                event.reason = Some(reason.to_string());
                event.message = Some(message.to_string());
                let path = paths::collection(Kind::Event, Some(&namespace));
                self.client.create(&path, &event).await.map(|e| (e.metadata.name, 1))
            }
        };
        match result {
            Ok(written) => {
                if let Ok(mut w) = self.written.lock() {
                    w.insert(key, written);
                }
            }
            Err(e) => tracing::warn!(reason, message, error = %e, "event not recorded"),
        }
    }

    /// A new Event about `meta`, without its namespace, reason and message.
    fn event(&self, kind: Kind, meta: &ObjectMeta, component: &str, type_: EventType, now: &str) -> Event {
        let res = crate::resources::RESOURCES.iter().find(|r| r.kind == kind);
        // Unique per occurrence, as client-go names them: `<object>.<hex nanoseconds>`.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Event {
            api_version: "v1".into(),
            kind: "Event".into(),
            metadata: ObjectMeta { name: format!("{}.{nanos:x}", meta.name), ..ObjectMeta::default() },
            involved_object: ObjectReference {
                api_version: res.map(|r| r.api_version()),
                kind: res.map(|r| r.kind_name.to_string()),
                namespace: meta.namespace.clone(),
                name: Some(meta.name.clone()),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                field_path: None,
            },
            reason: None,
            message: None,
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            source: Some(EventSource { component: Some(component.to_string()), host: None }),
            count: Some(1),
            first_timestamp: Some(now.to_string()),
            last_timestamp: Some(now.to_string()),
            reporting_component: Some(component.to_string()),
            reporting_instance: Some(self.instance.clone()),
        }
    }
}
