//! Control-plane benchmark (docs/benchmarks.md): create latency of 1000 pods through the API (HTTPS, one
//! keep-alive connection, one request at a time) against a real etcd on loopback, then the memory of etcd
//! and of the process holding the API server. Ignored by default; run with
//! `cargo test --release -p testbed-control-plane --test bench -- --ignored --nocapture`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use testbed_control_plane::store::etcd::Etcd;
use testbed_control_plane::store::Store;

const PODS: usize = 1000;

/// `Rss` and `Pss` in kB from /proc/PID/smaps_rollup.
fn memory(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn create_latency_and_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_process, etcd_url) = common::start_etcd(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let etcd = Etcd::new(std::slice::from_ref(&etcd_url), None).expect("etcd client");
    common::wait_for_etcd(&rt, &etcd, dir.path());
    let (config, creds, port) = common::server_config(etcd_url);
    rt.spawn(testbed_control_plane::serve(config, std::future::pending()));
    let mut latencies = rt.block_on(async {
        // A TLS client trusting the lab CA, as kubectl with the generated kubeconfig.
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS");
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("http1");
        tokio::spawn(conn);
        let mut latencies = Vec::with_capacity(PODS);
        for i in 0..PODS {
            let body = format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p{i}","labels":{{"app":"bench"}}}},"spec":{{"containers":[{{"name":"srv","image":"busybox","command":["sleep","3600"]}}]}}}}"#
            );
            let req = hyper::Request::post("/api/v1/namespaces/default/pods")
                .header("host", "localhost")
                .header("authorization", format!("Bearer {}", creds.token))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            let t = Instant::now();
            send.ready().await.expect("connection ready");
            let resp = send.send_request(req).await.expect("create");
            let status = resp.status();
            let _ = resp.into_body().collect().await.expect("body");
            latencies.push(t.elapsed());
            assert_eq!(status, 201, "create p{i}");
        }
        latencies
    });
    let (pods, _) = rt.block_on(etcd.list("/registry/pods/")).expect("list");
    assert_eq!(pods.len(), PODS);
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let (etcd_rss, etcd_pss) = memory(&etcd_process.0.id().to_string());
    let (self_rss, self_pss) = memory("self");
    println!("create {PODS} pods: p50 {:?} p99 {:?} max {:?}", pct(50), pct(99), latencies[latencies.len() - 1]);
    println!("etcd holding {PODS} pods: RSS {etcd_rss} kB, PSS {etcd_pss} kB");
    println!("API server process (server + this benchmark's client): RSS {self_rss} kB, PSS {self_pss} kB");
    drop(etcd_process);
}
