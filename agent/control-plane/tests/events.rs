//! The Event recorder against the real API server: one Event per (object, reason, message), counted up on
//! repeats, in the object's namespace, naming the object and who reported it.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;

use testbed_api::objects::{Event, ObjectMeta, Pod};
use testbed_control_plane::client::paths;
use testbed_control_plane::controllers::events::EventType;
use testbed_control_plane::controllers::EventRecorder;
use testbed_control_plane::resources::Kind;

#[tokio::test]
async fn repeats_count_up_on_one_event() {
    let lab = apiserver_lab::ApiLab::start().await;
    let api = lab.client();
    let recorder = EventRecorder::new(api.clone(), "cp1");
    let meta = ObjectMeta {
        name: "web-1".into(),
        namespace: Some("default".into()),
        uid: Some("u1".into()),
        ..Default::default()
    };
    let pod = Pod { metadata: meta, ..Default::default() };
    recorder.record(Kind::Pod, &pod, "test-controller", EventType::Normal, "Pulled", "Pulled image v1").await;
    recorder.record(Kind::Pod, &pod, "test-controller", EventType::Normal, "Pulled", "Pulled image v1").await;
    recorder.record(Kind::Pod, &pod, "test-controller", EventType::Warning, "Failed", "Failed to pull v2").await;
    let mut events: Vec<Event> = api.list(&paths::collection(Kind::Event, Some("default")), &[]).await.unwrap().items;
    events.sort_by_key(|e| e.reason.clone());
    assert_eq!(events.len(), 2, "{events:?}");
    let (failed, pulled) = (&events[0], &events[1]);
    assert_eq!((pulled.count, pulled.type_.as_deref()), (Some(2), Some("Normal")));
    assert_eq!((failed.count, failed.type_.as_deref()), (Some(1), Some("Warning")));
    let obj = &pulled.involved_object;
    assert_eq!(
        (obj.kind.as_deref(), obj.name.as_deref(), obj.uid.as_deref()),
        (Some("Pod"), Some("web-1"), Some("u1"))
    );
    assert_eq!(obj.api_version.as_deref(), Some("v1"));
    assert_eq!(
        (pulled.reporting_component.as_deref(), pulled.reporting_instance.as_deref()),
        (Some("test-controller"), Some("cp1"))
    );
    assert!(pulled.metadata.name.starts_with("web-1."), "{}", pulled.metadata.name);
}
