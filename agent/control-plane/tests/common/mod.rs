//! What the real-etcd tests share: etcd on loopback, an API server's configuration over it, and processes
//! killed by PID.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use testbed_control_plane::store::etcd::Etcd;
use testbed_control_plane::store::Store;
use testbed_control_plane::tls::Credentials;

// Each test file compiles this module on its own, and not every one names every item.
#[allow(unused_imports)]
pub use testbed_test_support::etcd::{free_port, start_etcd, start_etcd_on, Killed};

/// Waits (up to 20 s) until etcd answers a list; the panic shows etcd's log from `dir`.
// Each test file compiles this module on its own, and not every one starts its own API server.
#[allow(dead_code)]
pub fn wait_for_etcd(rt: &tokio::runtime::Runtime, etcd: &Etcd, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(etcd.list("/")).is_err() {
        let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "etcd did not come up: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An API server's configuration over `etcd_url` on a free loopback port, with fresh credentials for
/// 127.0.0.1 (the CA and token a client needs), and the port.
// Each test file compiles this module on its own, and not every one starts its own API server.
#[allow(dead_code)]
pub fn server_config(etcd_url: String) -> (testbed_control_plane::Config, Credentials, u16) {
    let creds = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("credentials");
    let port = free_port();
    let config = testbed_control_plane::Config {
        listen: (Ipv4Addr::LOCALHOST, port).into(),
        etcd: vec![etcd_url],
        etcd_tls: None,
        service_cidr: testbed_control_plane::apiserver::DEFAULT_SERVICE_CIDR.parse().expect("cidr"),
        token: creds.token.clone(),
        cert_pem: creds.cert_pem.clone().into_bytes(),
        key_pem: creds.key_pem.clone().into_bytes(),
    };
    (config, creds, port)
}
