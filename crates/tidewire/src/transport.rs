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
    /// A stream of a shared HTTP/2 connection (RFC 8441): `wss://` by ALPN `h2`, or
    /// `ws://` in clear with [`Http2::Only`](crate::Http2).
    #[cfg(feature = "http2")]
    Http2(Box<crate::http2::H2Stream>),
    /// A stream of a shared QUIC connection (RFC 9220): `wss://` with
    /// [`ClientBuilder::http3`](crate::ClientBuilder::http3).
    #[cfg(feature = "http3")]
    Http3(Box<crate::http3::H3Stream>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => $e,
            #[cfg(feature = "tls")]
            MaybeTlsStream::Rustls($s) => $e,
            #[cfg(feature = "http2")]
            MaybeTlsStream::Http2($s) => $e,
            #[cfg(feature = "http3")]
            MaybeTlsStream::Http3($s) => $e,
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
            #[cfg(feature = "http2")]
            MaybeTlsStream::Http2(_) => false,
            #[cfg(feature = "http3")]
            MaybeTlsStream::Http3(_) => false,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The ALPN protocols to offer (a client) or accept (a server), most preferred first:
/// `h2` then `http/1.1` with HTTP/2, `http/1.1` alone without.
pub fn alpn_protocols(http2: bool) -> Vec<Vec<u8>> {
    let mut protocols = Vec::with_capacity(2);
    if http2 {
        protocols.push(b"h2".to_vec());
    }
    protocols.push(b"http/1.1".to_vec());
    protocols
}

/// The rustls client configuration of `wss://` by default: trusting the webpki roots
/// (Mozilla's list, built in) and the platform's store ([`native_root_store`]: a company's
/// own CA installed on the machine). Made once per process.
#[cfg(feature = "tls")]
pub fn default_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = native_root_store();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            std::sync::Arc::new(client_config_with_roots(roots))
        })
        .clone()
}

/// A rustls client configuration trusting only the webpki roots (not the platform's
/// store).
#[cfg(feature = "tls")]
pub fn webpki_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    std::sync::Arc::new(client_config_with_roots(roots))
}

/// The platform's trusted roots (on Linux the distribution's bundle, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set; macOS's and Windows' stores). Certificates it cannot read are
/// skipped (logged at debug); none at all gives an empty store.
#[cfg(feature = "tls")]
pub fn native_root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!("platform trust store: {e}");
    }
    let (added, skipped) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, skipped, "platform trust store read");
    roots
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
    let tls = connector.connect(name, io).await.map_err(|e| {
        if let Some(why) = not_tls(&e, &url.authority()) {
            return Error::new(Kind::NotTls(why, e));
        }
        match bad_certificate(&e, &url.host) {
            Some(why) => Error::new(Kind::Certificate(why, e)),
            None => Error::new(Kind::Tls(e)),
        }
    })?;
    Ok(MaybeTlsStream::Rustls(Box::new(tls)))
}

/// Why the server's certificate was refused, for people: expired (and when), not yet
/// valid, not for this host (and which names it has), or from an authority not trusted
/// here (self-signed or a private CA), with what to do.
#[cfg(feature = "tls")]
fn bad_certificate(e: &io::Error, host: &str) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(c) = inner else {
        return None;
    };
    Some(certificate_refused(c, host))
}

/// [`bad_certificate`] from the text QUIC keeps of a TLS alert ("invalid peer
/// certificate: UnknownIssuer"): the common cases, by name.
#[cfg(feature = "http3")]
pub(crate) fn bad_certificate_text(reason: &str, host: &str) -> Option<String> {
    use rustls::CertificateError as C;
    let detail = reason.strip_prefix("invalid peer certificate: ")?;
    let c = match detail.split([' ', '(', '{']).next()? {
        "UnknownIssuer" => C::UnknownIssuer,
        "Expired" | "ExpiredContext" => C::Expired,
        "NotValidYet" | "NotValidYetContext" => C::NotValidYet,
        "NotValidForName" | "NotValidForNameContext" => C::NotValidForName,
        "Revoked" => C::Revoked,
        _ => return Some(format!("the certificate of {host} was refused: {detail}")),
    };
    Some(certificate_refused(&c, host))
}

#[cfg(feature = "tls")]
fn certificate_refused(c: &rustls::CertificateError, host: &str) -> String {
    use rustls::CertificateError as C;
    let when = |t: &rustls::pki_types::UnixTime| {
        let secs = t.as_secs();
        let days = secs / 86_400;
        // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    };
    match c {
        C::Expired => format!("the certificate of {host} has expired"),
        C::ExpiredContext { time, not_after } => format!(
            "the certificate of {host} expired on {} (it is {} here)",
            when(not_after),
            when(time)
        ),
        C::NotValidYet => format!("the certificate of {host} is not valid yet"),
        C::NotValidYetContext { time, not_before } => format!(
            "the certificate of {host} is not valid before {} (it is {} here)",
            when(not_before),
            when(time)
        ),
        C::NotValidForName => format!("the certificate is not for {host}"),
        C::NotValidForNameContext { presented, .. } => format!(
            "the certificate is not for {host}: it names {}",
            presented.join(", ")
        ),
        C::UnknownIssuer => format!(
            "the certificate of {host} is not signed by an authority trusted here \
             (self-signed, or a private CA: trust its root with ClientBuilder::tls_config, \
             `tidewire connect --ca-file`, or the platform's store)"
        ),
        C::Revoked => format!("the certificate of {host} is revoked"),
        other => format!("the certificate of {host} was refused: {other:?}"),
    }
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
