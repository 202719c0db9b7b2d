//! A real etcd and the API server over it on loopback, for the client's tests: the same parts a lab runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed_control_plane::client::Client;
use testbed_control_plane::store::etcd::Etcd;
use testbed_control_plane::store::Store;
use testbed_control_plane::tls::Credentials;

use crate::common::{server_config, start_etcd, Killed};

pub struct ApiLab {
    // Each test file compiles this module on its own, and not every one reads or compacts etcd directly.
    #[allow(dead_code)]
    pub etcd: Etcd,
    pub creds: Credentials,
    pub server: String,
    _etcd_process: Killed,
    _dir: tempfile::TempDir,
}

impl ApiLab {
    /// etcd, then the API server in a task of the calling test's runtime; answers once both serve.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (etcd_process, etcd_url) = start_etcd(dir.path());
        let etcd = Etcd::new(std::slice::from_ref(&etcd_url), None).expect("etcd client");
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcd.list("/").await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (config, creds, port) = server_config(etcd_url);
        tokio::spawn(async move {
            if let Err(e) = testbed_control_plane::serve(config, std::future::pending()).await {
                panic!("apiserver: {e}");
            }
        });
        let lab =
            Self { etcd, creds, server: format!("https://127.0.0.1:{port}"), _etcd_process: etcd_process, _dir: dir };
        let client = lab.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.list::<testbed_api::objects::Namespace>("/api/v1/namespaces", &[]).await.is_err() {
            assert!(Instant::now() < deadline, "the API server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lab
    }

    pub fn client(&self) -> Arc<Client> {
        Arc::new(
            Client::new(std::slice::from_ref(&self.server), &self.creds.ca_pem, &self.creds.token).expect("client"),
        )
    }
}
