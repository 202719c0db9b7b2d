//! etcd as a lab runs it, on loopback: both ports HTTPS with client-certificate authentication against the
//! lab CA. The store client with the lab's etcd client certificate reads, writes and watches; plain HTTP, TLS
//! without a certificate and a certificate of another CA get nothing. The API server over it, given a member
//! list whose first entry refuses connections, serves from the next one.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use testbed_api::objects::{Namespace, ObjectMeta};
use testbed_control_plane::client::Client;
use testbed_control_plane::store::etcd::Etcd;
use testbed_control_plane::store::{Event, Store};
use testbed_control_plane::tls::{client_config, CertKey, Credentials};
use testbed_test_support::etcd::{start_etcd_tls, EtcdTlsFiles};

use common::{free_port, Killed};

/// A TLS etcd with fresh lab credentials for 127.0.0.1; its URL.
fn tls_etcd(dir: &Path) -> (Killed, String, Credentials) {
    let creds = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca, cert, key) = (
        write("ca.pem", &creds.ca_pem),
        write("etcd.pem", &creds.etcd.cert_pem),
        write("etcd-key.pem", &creds.etcd.key_pem),
    );
    let (process, url) = start_etcd_tls(dir, &EtcdTlsFiles { ca: &ca, cert: &cert, key: &key });
    (process, url, creds)
}

/// A store client trusting `ca` and presenting `identity`.
fn store(url: &str, ca: &str, identity: Option<&CertKey>) -> Etcd {
    let identity = identity.map(|i| (i.cert_pem.as_bytes(), i.key_pem.as_bytes()));
    Etcd::new(&[url.to_string()], Some(client_config(ca.as_bytes(), identity).unwrap())).unwrap()
}

async fn wait_for(etcd: &Etcd, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = etcd.list("/").await {
        let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "etcd did not come up: {e}\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tls_etcd_answers_the_lab_client_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, url, creds) = tls_etcd(dir.path());
    let etcd = store(&url, &creds.ca_pem, Some(&creds.etcd_client));
    wait_for(&etcd, dir.path()).await;
    let revision = etcd.create("/registry/secret", b"s3cret".to_vec()).await.unwrap();
    assert_eq!(etcd.get("/registry/secret").await.unwrap().unwrap().value, b"s3cret");
    let mut watch = etcd.watch("/registry/", revision).await.unwrap();
    etcd.update("/registry/secret", b"again".to_vec(), revision).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(&events[..], [Event::Put(kv)] if kv.value == b"again"), "{events:?}");

    // Plain HTTP to the client port: the TLS server answers 400 and nothing of the store.
    let plain = Etcd::new(&[url.replace("https://", "http://")], None).unwrap();
    let refused = plain.get("/registry/secret").await;
    assert!(refused.is_err(), "plain HTTP read etcd: {refused:?}");
    // TLS without a client certificate, and with one of another CA (etcd trusting the lab CA only).
    let anonymous = store(&url, &creds.ca_pem, None).get("/registry/secret").await;
    assert!(anonymous.is_err(), "TLS without a client certificate read etcd: {anonymous:?}");
    let other = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).unwrap();
    let foreign = store(&url, &creds.ca_pem, Some(&other.etcd_client)).get("/registry/secret").await;
    assert!(foreign.is_err(), "a certificate of another CA read etcd: {foreign:?}");
}

#[tokio::test]
async fn apiserver_over_tls_etcd_moves_past_a_member_that_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, url, creds) = tls_etcd(dir.path());
    wait_for(&store(&url, &creds.ca_pem, Some(&creds.etcd_client)), dir.path()).await;
    // Nothing listens on `down`: the connection is refused, as on a node whose etcd stopped.
    let down = format!("https://127.0.0.1:{}", free_port());
    let port = free_port();
    let config = testbed_control_plane::Config {
        listen: (Ipv4Addr::LOCALHOST, port).into(),
        etcd: vec![down, url],
        etcd_tls: Some(testbed_control_plane::EtcdTls {
            ca_pem: creds.ca_pem.clone().into_bytes(),
            cert_pem: creds.etcd_client.cert_pem.clone().into_bytes(),
            key_pem: creds.etcd_client.key_pem.clone().into_bytes(),
        }),
        token: creds.token.clone(),
        cert_pem: creds.cert_pem.clone().into_bytes(),
        key_pem: creds.key_pem.clone().into_bytes(),
        service_cidr: testbed_control_plane::apiserver::DEFAULT_SERVICE_CIDR.parse().expect("cidr"),
    };
    let server = tokio::spawn(testbed_control_plane::serve(config, std::future::pending()));
    let client = Client::new(&[format!("https://127.0.0.1:{port}")], &creds.ca_pem, &creds.token).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = client.list::<Namespace>("/api/v1/namespaces", &[]).await {
        assert!(!server.is_finished(), "the API server ended: {:?}", server.await);
        assert!(Instant::now() < deadline, "the API server did not serve: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ns = Namespace {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        metadata: ObjectMeta { name: "over-tls".into(), ..Default::default() },
        ..Default::default()
    };
    client.create("/api/v1/namespaces", &ns).await.unwrap();
    let read: Namespace = client.get("/api/v1/namespaces/over-tls").await.unwrap();
    assert_eq!(read.metadata.name, "over-tls");
}
