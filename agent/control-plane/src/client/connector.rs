//! HTTPS connections for hyper-util's pooled client: TCP, then TLS that trusts only the lab's CA. No
//! hyper-rustls in the tree, and the API server is HTTP/1.1 only, so this is the whole connector.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::ClientError;

/// A connection that takes longer is a server that is down (a VM that stopped answering drops SYNs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub(super) struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
}

impl TlsConnector {
    /// A connector trusting the certificates of `ca_pem` and nothing else (no system roots).
    pub(super) fn new(ca_pem: &str) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Tls(format!("CA PEM: {e}")))?;
            roots.add(cert).map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls("no certificate in the CA PEM".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TlsConn, std::io::Error>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsConn;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| invalid(format!("no host in {uri}")))?;
            // An IPv6 literal comes bracketed in a URI, not in a socket address or a server name.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {uri}")))??;
            // Requests are small and answered one at a time: no Nagle delay on them.
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(|e| invalid(e.to_string()))?;
            Ok(TlsConn(TokioIo::new(tls.connect(name, tcp).await?)))
        })
    }
}

/// One TLS connection, in hyper's I/O traits.
pub(super) struct TlsConn(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
