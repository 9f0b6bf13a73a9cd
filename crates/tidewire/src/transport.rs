//! Transports: plain TCP or rustls TLS behind one type, and the TLS connector.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Plain or TLS transport, as returned by [`connect`](crate::connect).
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream<S> {
    /// `ws://`
    Plain(S),
    /// `wss://`
    #[cfg(feature = "tls")]
    Rustls(Box<tokio_rustls::client::TlsStream<S>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => $e,
            #[cfg(feature = "tls")]
            MaybeTlsStream::Rustls($s) => $e,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Rustls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A rustls client configuration trusting the webpki roots.
#[cfg(feature = "tls")]
pub fn default_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    std::sync::Arc::new(client_config_with_roots(roots))
}

/// A rustls client configuration trusting exactly `roots` (for a private CA in tests).
#[cfg(feature = "tls")]
pub fn client_config_with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
}

/// Reads PEM certificates (a CA bundle) into a root store.
#[cfg(feature = "tls")]
pub fn root_store_from_pem(pem: &[u8]) -> io::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots
            .add(cert?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(roots)
}

/// A rustls server configuration from PEM certificate chain and private key.
#[cfg(feature = "tls")]
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> io::Result<std::sync::Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no private key in PEM"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(std::sync::Arc::new(config))
}

/// Runs the TLS handshake of a `wss://` connection to `url` over `io`.
#[cfg(feature = "tls")]
pub(crate) async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    url: &crate::WsUrl,
    config: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> crate::Result<MaybeTlsStream<S>> {
    use crate::error::{Error, Kind};
    let config = config.unwrap_or_else(default_client_config);
    let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|_| {
        Error::new(Kind::Url(format!(
            "{}: not a valid TLS server name",
            url.host
        )))
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls =
        connector
            .connect(name, io)
            .await
            .map_err(|e| match not_tls(&e, &url.authority()) {
                Some(why) => Error::new(Kind::NotTls(why, e)),
                None => Error::new(Kind::Tls(e)),
            })?;
    Ok(MaybeTlsStream::Rustls(Box::new(tls)))
}

/// When a failed TLS handshake shows that the server does not speak TLS at all: what it
/// did instead. rustls reports a plain-text answer (`HTTP/1.1 400 ...`: 'H' is no TLS
/// record type) as "received corrupt message of type InvalidContentType", which tells a
/// person nothing.
#[cfg(feature = "tls")]
fn not_tls(e: &io::Error, server: &str) -> Option<String> {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => Some(
            format!("the server at {server} does not seem to speak TLS (try ws://)"),
        ),
        _ if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ) =>
        {
            Some(format!(
                "the server at {server} closed the connection during the handshake; \
                 it may not speak TLS (try ws://)"
            ))
        }
        _ => None,
    }
}
