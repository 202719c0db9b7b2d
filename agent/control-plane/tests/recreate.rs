//! A Recreate rollout against etcd and the API server: every old pod is gone before the first new one is
//! made, and the new version then comes up all at once.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
// Each test file compiles this module on its own, and this one uses only part of it.
#[allow(dead_code)]
mod controllers_lab;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use testbed_api::objects::{Pod, ReplicaSet};
use testbed_control_plane::client::{list_watch, paths, Change, WatchEvent};
use testbed_control_plane::resources::Kind;

use controllers_lab::{deployment, image, Cluster};

#[tokio::test]
async fn old_pods_are_gone_before_new_ones_start() {
    let c = Cluster::start().await;
    let mut d = deployment("web", 3, 1, 0);
    d.spec.strategy =
        Some(testbed_api::objects::DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None });
    let d = c.create(&d).await;
    c.wait_rolled_out("web", 3, Duration::from_secs(20)).await;

    // Every pod change, in etcd's order: were v1 and v2 pods ever there at once?
    let mixed = Arc::new(Mutex::new(false));
    let seen = mixed.clone();
    let api = c.api.clone();
    tokio::spawn(async move {
        let mut pods: HashMap<String, String> = HashMap::new();
        let mut changes = list_watch::<Pod>(api, &paths::pods(Some("default")), &[]);
        while let Some(Ok(change)) = changes.next().await {
            match change {
                Change::Listed(list) => {
                    pods = list.iter().map(|p| (p.metadata.name.clone(), image(p).to_string())).collect()
                }
                Change::Event(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                    pods.insert(p.metadata.name.clone(), image(&p).to_string());
                }
                Change::Event(WatchEvent::Deleted(p)) => {
                    pods.remove(&p.metadata.name);
                }
            }
            let v1 = pods.values().any(|i| i == "v1");
            let v2 = pods.values().any(|i| i == "v2");
            if v1 && v2 {
                *seen.lock().unwrap() = true;
            }
        }
    });
    // And in the ReplicaSets' order: the new one is made only once the old one's status shows no pods.
    let early = Arc::new(Mutex::new(None));
    let seen = early.clone();
    let api = c.api.clone();
    let old = c.replicasets().await.remove(0).metadata.name;
    tokio::spawn(async move {
        let mut old_pods = 3;
        let path = paths::collection(Kind::ReplicaSet, Some("default"));
        let mut changes = list_watch::<ReplicaSet>(api, &path, &[]);
        while let Some(Ok(change)) = changes.next().await {
            let Change::Event(WatchEvent::Added(rs) | WatchEvent::Modified(rs)) = change else { continue };
            if rs.metadata.name == old {
                old_pods = rs.status.map_or(0, |s| s.replicas);
            } else if seen.lock().unwrap().is_none() {
                *seen.lock().unwrap() = Some(old_pods);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.patch("web", controllers_lab::image_patch(&d, "v2")).await;
    c.wait_rolled_out("web", 3, Duration::from_secs(20)).await;
    assert!(c.pods().await.iter().all(|p| image(p) == "v2"));
    assert!(!*mixed.lock().unwrap(), "old and new pods ran at once");
    assert_eq!(*early.lock().unwrap(), Some(0), "the old ReplicaSet's pods when the new one appeared");
}
