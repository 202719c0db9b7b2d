//! Connections for hyper-util's pooled client: TLS with the configuration given, to `https://` URLs only (the
//! API servers; etcd in a lab, with a client certificate), or plain TCP to `http://` URLs only (etcd on
//! loopback in the tests). A connector never mixes them, so a token or a store meant for TLS never goes out
//! in the clear because of a URL's scheme. No hyper-rustls in the tree, and both servers are spoken to in HTTP/1.1, so this is
//! the whole connector.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection that takes longer is a server that is down (a VM that stopped answering drops SYNs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub(crate) struct Connector {
    /// None: plain TCP to `http://` URLs.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    /// A connector that speaks TLS with `tls` to `https://` URLs, or without it plain TCP to `http://` ones.
    pub(crate) fn new(tls: Option<rustls::ClientConfig>) -> Self {
        Self { tls: tls.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c))) }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, std::io::Error>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let tls = match (uri.scheme_str(), tls) {
                (Some("https"), Some(tls)) => Some(tls),
                (Some("http"), None) => None,
                (_, Some(_)) => return Err(invalid(format!("{uri}: a TLS connection needs an https:// URL"))),
                (_, None) => return Err(invalid(format!("{uri}: a plain connection needs an http:// URL"))),
            };
            let host = uri.host().ok_or_else(|| invalid(format!("no host in {uri}")))?;
            // An IPv6 literal comes bracketed in a URI, not in a socket address or a server name.
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {uri}")))??;
            // Requests are small and answered one at a time: no Nagle delay on them.
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else { return Ok(Conn::Plain(TokioIo::new(tcp))) };
            let name = ServerName::try_from(host).map_err(|e| invalid(e.to_string()))?;
            Ok(Conn::Tls(Box::new(TokioIo::new(tls.connect(name, tcp).await?))))
        })
    }
}

/// One connection, in hyper's I/O traits.
pub(crate) enum Conn {
    Plain(TokioIo<TcpStream>),
    // Boxed: a TLS stream is 1 KiB, a TCP one 40 bytes.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An error with its causes: hyper's own text says only "client error (Connect)".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
