//! Per-lab credentials and TLS serving. kubectl (client-go) sends a bearer token only over TLS, so the
//! API is served over TLS with a certificate from the lab's own CA; the token authenticates the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// What `up` generates for a lab's control plane: a CA (its certificate goes into the kubeconfig), the API
/// server's certificate and key, the bearer token, and etcd's certificates: etcd serves its client and peer
/// ports with TLS and takes only clients that present a certificate of the lab CA, which only the control-plane
/// nodes hold (pods on the same underlay reach the ports, so a plain port would hand them the whole store).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The lab CA's certificate, PEM.
    pub ca_pem: String,
    /// The API server's certificate signed by the CA, PEM.
    pub cert_pem: String,
    /// The API server's private key, PEM.
    pub key_pem: String,
    /// The bearer token (64 hex characters).
    pub token: String,
    /// etcd's certificate (server and client use: members present it to each other on the peer port).
    pub etcd: CertKey,
    /// The API server's client certificate for etcd.
    pub etcd_client: CertKey,
}

/// A certificate signed by the lab CA and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// Why credentials could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file that holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl Credentials {
    /// New credentials for servers reached at `ips` (the control-plane nodes' underlay addresses; 127.0.0.1
    /// for the CLI's forward) and `localhost`: the API servers' and etcd members' certificates name them all.
    pub fn generate(ips: &[IpAddr]) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "testbed lab CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let apiserver = sign(&issuer, "testbed apiserver", ips, &[ExtendedKeyUsagePurpose::ServerAuth])?;
        // etcd's gRPC gateway dials its own gRPC port presenting `--cert-file`, so etcd's certificate is a
        // client certificate too.
        let both = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let etcd = sign(&issuer, "testbed etcd", ips, &both)?;
        let etcd_client = sign(&issuer, "testbed apiserver etcd client", &[], &[ExtendedKeyUsagePurpose::ClientAuth])?;
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: apiserver.cert_pem,
            key_pem: apiserver.key_pem,
            token,
            etcd,
            etcd_client,
        })
    }
}

/// A certificate for `name` signed by the CA, valid for `localhost` and `ips` and for the `usages` given.
fn sign(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    ips: &[IpAddr],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<CertKey, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A TLS client configuration trusting the certificates of `ca_pem` and nothing else (no system roots),
/// presenting `identity` (a certificate chain and its key, PEM) when given, speaking HTTP/1.1.
pub fn client_config(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Pem(format!("CA PEM: {e}")))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("no certificate in the CA PEM".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let (certs, key) = cert_and_key(cert_pem, key_pem)?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate chain and key of PEM files.
fn cert_and_key(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate in the certificate file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem(format!("key: {e}")))?;
    Ok((certs, key))
}

/// A TLS acceptor for the server's certificate chain and key (PEM).
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, TlsError> {
    let (certs, key) = cert_and_key(cert_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // kubectl speaks HTTP/2 when offered; the server is HTTP/1.1 only (watch streams are chunked lines).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Handshakes may not last longer: a client that connects and says nothing must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener whose connections come out TLS-terminated, for `axum::serve`. Handshakes run in tasks of
/// their own so that one slow client does not hold up the others' accepts.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `tcp` and hands out connections whose handshake with `acceptor` succeeded.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is gone; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
