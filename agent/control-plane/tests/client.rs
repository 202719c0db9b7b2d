//! The agents' API client against the real thing: a real etcd (Debian's `etcd-server`) on loopback and the
//! API server over it, through HTTPS with the lab CA and token, as a node agent reaches it in a lab.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use testbed_api::objects::{Container, Node, ObjectMeta, Pod, PodSpec};
use testbed_control_plane::client::{list_watch, paths, Change, Client, ClientError, WatchEvent};
use testbed_control_plane::tls::Credentials;

use apiserver_lab::ApiLab;

fn pod(name: &str, node: &str) -> Pod {
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta { name: name.into(), namespace: Some("default".into()), ..Default::default() },
        spec: PodSpec {
            containers: vec![Container {
                name: "c".into(),
                command: vec!["sleep".into(), "9".into()],
                ..Default::default()
            }],
            node_name: Some(node.into()),
            ..Default::default()
        },
        status: None,
    }
}

#[tokio::test]
async fn verbs_and_status_subresources() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    let created = api.create(&paths::pods(Some("default")), &pod("web", "n1")).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    let got: Pod = api.get(&paths::pod("default", "web")).await.unwrap();
    assert_eq!(got.spec, created.spec);
    assert!(api.create(&paths::pods(Some("default")), &pod("web", "n1")).await.unwrap_err().is_conflict());

    // An update carrying the version read goes in; the same version again is stale: 409.
    let mut update = got.clone();
    update.metadata.labels = BTreeMap::from([("app".into(), "web".into())]);
    let updated = api.update(&paths::pod("default", "web"), &update).await.unwrap();
    assert_ne!(updated.metadata.resource_version.as_deref(), Some(rv1.as_str()));
    let stale = api.update(&paths::pod("default", "web"), &update).await.unwrap_err();
    assert!(stale.is_conflict(), "{stale}");

    let patched: Pod = api
        .merge_patch(&paths::pod("default", "web"), &json!({"metadata": {"labels": {"tier": "front"}}}))
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.len(), 2);

    // pods/status changes the status only.
    let status = json!({"phase": "Running", "podIP": "10.244.0.5", "hostIP": "10.0.0.11",
        "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]});
    let written = api.patch_pod_status("default", "web", &status).await.unwrap();
    let st = written.status.unwrap();
    assert_eq!((st.pod_ip.as_deref(), st.container_statuses.len()), (Some("10.244.0.5"), 1));
    assert_eq!(written.metadata.labels.len(), 2);

    // nodes/status: an update with the node's version, then a merge patch.
    let node = Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: ObjectMeta { name: "n1".into(), ..Default::default() },
        ..Default::default()
    };
    let mut node = api.create(&paths::nodes(), &node).await.unwrap();
    node.status = Some(testbed_api::objects::NodeStatus {
        capacity: BTreeMap::from([("cpu".into(), "2".into())]),
        ..Default::default()
    });
    let node = api.update_node_status(&node).await.unwrap();
    assert_eq!(node.status.unwrap().capacity["cpu"], "2");
    let node = api.patch_node_status("n1", &json!({"allocatable": {"cpu": "2"}})).await.unwrap();
    assert_eq!(node.status.unwrap().allocatable["cpu"], "2");

    // A bound pod's DELETE is graceful: it stays, terminating, until deleted with grace 0 on its uid.
    api.delete(&paths::pod("default", "web")).await.unwrap();
    let terminating: Pod = api.get(&paths::pod("default", "web")).await.unwrap();
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    let uid = terminating.metadata.uid.clone().unwrap();
    assert!(api.force_delete_pod("default", "web", "another-uid").await.unwrap_err().is_conflict());
    api.force_delete_pod("default", "web", &uid).await.unwrap();
    assert!(api.get::<Pod>(&paths::pod("default", "web")).await.unwrap_err().is_not_found());
}

/// `up` starts etcd and the API server at once: an API server that finds etcd not answering yet waits for it
/// (as kube-apiserver does) instead of exiting, and serves as soon as etcd answers.
#[tokio::test]
async fn an_api_server_started_before_etcd_serves_once_etcd_answers() {
    let dir = tempfile::tempdir().unwrap();
    let etcd_port = common::free_port();
    let (config, creds, port) = common::server_config(format!("http://127.0.0.1:{etcd_port}"));
    let server = tokio::spawn(testbed_control_plane::serve(config, std::future::pending()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!server.is_finished(), "the API server gave up while etcd was not there: {:?}", server.await);
    let (_etcd, _) = common::start_etcd_on(dir.path(), etcd_port);
    let api = Client::new(&[format!("https://127.0.0.1:{port}")], &creds.ca_pem, &creds.token).unwrap();
    let since = std::time::Instant::now();
    while let Err(e) = api.list::<Node>(&paths::nodes(), &[]).await {
        let log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
        assert!(since.elapsed() < Duration::from_secs(20), "no API 20 s after etcd started: {e}\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("API answered {:?} after etcd was started", since.elapsed());
}

#[tokio::test]
async fn trusts_only_the_lab_ca_and_sends_the_token() {
    let lab = ApiLab::start().await;
    let other = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let servers = [lab.server.clone()];
    let wrong_ca = Client::new(&servers, &other.ca_pem, &lab.creds.token).unwrap();
    let err = wrong_ca.list::<Pod>(&paths::pods(None), &[]).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable(ref m) if m.contains("certificate")), "{err}");
    let wrong_token = Client::new(&servers, &lab.creds.ca_pem, &other.token).unwrap();
    assert_eq!(wrong_token.list::<Pod>(&paths::pods(None), &[]).await.unwrap_err().code(), Some(401));
    // A server that refuses connections is skipped for the next one.
    let dead = format!("https://127.0.0.1:{}", common::free_port());
    let failover = Client::new(&[dead, lab.server.clone()], &lab.creds.ca_pem, &lab.creds.token).unwrap();
    failover.list::<Pod>(&paths::pods(None), &[]).await.unwrap();
    assert_eq!(failover.server(), lab.server);
}

async fn next<T: std::fmt::Debug>(s: &mut (impl futures::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("an event within 10 s").expect("open")
}

#[tokio::test]
async fn node_selector_watch_and_relist_after_compaction() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    let selector = [("fieldSelector", "spec.nodeName=n1")];
    let pods = paths::pods(None);
    let mut changes = list_watch::<Pod>(api.clone(), &pods, &selector);
    assert_eq!(next(&mut changes).await.unwrap(), Change::Listed(vec![]));

    // Only pods bound to n1 come through.
    api.create(&paths::pods(Some("default")), &pod("other", "n2")).await.unwrap();
    api.create(&paths::pods(Some("default")), &pod("mine", "n1")).await.unwrap();
    match next(&mut changes).await.unwrap() {
        Change::Event(WatchEvent::Added(p)) => assert_eq!(p.metadata.name, "mine"),
        other => panic!("expected mine ADDED, got {other:?}"),
    }
    let listed = api.list::<Pod>(&pods, &selector).await.unwrap();
    assert_eq!(listed.items.iter().map(|p| p.metadata.name.as_str()).collect::<Vec<_>>(), ["mine"]);
    // Deleted gracefully: MODIFIED with the deletion timestamp, then DELETED once finished at grace 0.
    api.delete(&paths::pod("default", "mine")).await.unwrap();
    let uid = match next(&mut changes).await.unwrap() {
        Change::Event(WatchEvent::Modified(p)) if p.metadata.deletion_timestamp.is_some() => p.metadata.uid.unwrap(),
        other => panic!("expected mine MODIFIED with a deletionTimestamp, got {other:?}"),
    };
    api.force_delete_pod("default", "mine", &uid).await.unwrap();
    match next(&mut changes).await.unwrap() {
        Change::Event(WatchEvent::Deleted(p)) => assert_eq!(p.metadata.name, "mine"),
        other => panic!("expected mine DELETED, got {other:?}"),
    }

    // A watch from a compacted revision is 410; list_watch lists again and sees what changed meanwhile.
    let old = listed.resource_version.clone();
    let mut relisting = list_watch::<Pod>(api.clone(), &pods, &selector);
    assert!(matches!(next(&mut relisting).await.unwrap(), Change::Listed(ref l) if l.is_empty()));
    api.create(&paths::pods(Some("default")), &pod("later", "n1")).await.unwrap();
    // One more revision, so that compacting at the newest cuts the one right after the list.
    api.create(&paths::pods(Some("default")), &pod("elsewhere", "n2")).await.unwrap();
    let now = api.list::<Pod>(&pods, &[]).await.unwrap().resource_version.parse().unwrap();
    lab.etcd.compact(now).await.unwrap();
    let expired = api.watch::<Pod>(&pods, &selector, &old).await.err().expect("410");
    assert!(expired.is_expired(), "{expired}");
    // `relisting` opens its watch when polled, from its list's revision, which is compacted now.
    match next(&mut relisting).await.unwrap() {
        Change::Listed(l) => assert_eq!(l.iter().map(|p| p.metadata.name.as_str()).collect::<Vec<_>>(), ["later"]),
        other => panic!("expected a new list holding `later`, got {other:?}"),
    }
}
