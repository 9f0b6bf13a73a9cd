//! A small HTTP/1.1 client for what the hub asks of other services: the keys behind a JWKS
//! URL, the application backend's calls and hooks. Bounded in time and in the size of the
//! answer; `https://` trusts the webpki roots. [`send`] uses one connection per request
//! (`Connection: close`: a JWKS is fetched rarely); [`Pool::send`] keeps connections
//! alive for the next call (the backend is called per subscribe, publication or event).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

/// A request to send.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    pub(crate) method: http::Method,
    pub(crate) url: &'a str,
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub(crate) body: Option<Bytes>,
    /// For the whole exchange, connection included.
    pub(crate) timeout: Duration,
    /// The largest body taken.
    pub(crate) max_body: usize,
}

impl<'a> Request<'a> {
    /// `GET url`.
    pub(crate) fn get(url: &'a str, timeout: Duration, max_body: usize) -> Self {
        Request {
            method: http::Method::GET,
            url,
            headers: Vec::new(),
            body: None,
            timeout,
            max_body,
        }
    }
}

/// Sends `req`; what went wrong, for people, otherwise (the URL is named by the caller).
pub(crate) async fn send(req: Request<'_>) -> Result<Response, String> {
    let limit = req.timeout;
    match tokio::time::timeout(limit, exchange(req)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Connections kept alive between requests to one service (any URL: a connection is
/// taken again only for its own scheme and authority).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: std::sync::Mutex<Vec<(String, Sender)>>,
}

/// Idle connections a pool keeps at most.
const POOL_IDLE: usize = 64;

impl Pool {
    /// Sends `req` over an idle connection to its authority, or a new one, and keeps the
    /// connection for the next request if the server keeps it open.
    pub(crate) async fn send(&self, req: Request<'_>) -> Result<Response, String> {
        let limit = req.timeout;
        match tokio::time::timeout(limit, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        }
    }

    fn take(&self, origin: &str) -> Option<Sender> {
        let mut idle = crate::lock(&self.idle);
        while let Some(i) = idle.iter().rposition(|(o, _)| o == origin) {
            let (_, sender) = idle.swap_remove(i);
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn exchange(&self, req: Request<'_>) -> Result<Response, String> {
        let uri: http::Uri = req.url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        // An idle connection is ready once its task has seen the last answer through;
        // one the server closed meanwhile fails here and a new one is opened.
        let reused = match self.take(&origin) {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let (sender, response) = match reused {
            Some(mut sender) => match request(&mut sender, &uri, req.clone(), false).await {
                Ok(r) => (sender, r),
                // The server closed the idle connection as the request went out: once
                // more on a new one.
                Err(e) if e.starts_with("HTTP:") => {
                    let mut sender = open(&uri).await?;
                    let r = request(&mut sender, &uri, req, false).await?;
                    (sender, r)
                }
                Err(e) => return Err(e),
            },
            None => {
                let mut sender = open(&uri).await?;
                let r = request(&mut sender, &uri, req, false).await?;
                (sender, r)
            }
        };
        let reusable = !response
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if reusable && !sender.is_closed() {
            let mut idle = crate::lock(&self.idle);
            if idle.len() < POOL_IDLE {
                idle.push((origin, sender));
            }
        }
        Ok(response)
    }
}

/// A new connection to `uri`'s authority (TLS for `https://`).
async fn open(uri: &http::Uri) -> Result<Sender, String> {
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return handshake(tcp).await;
    }
    let name = tidewire::rustls::pki_types::ServerName::try_from(bare)
        .map_err(|e| format!("not a TLS server name: {e}"))?;
    let connector = tidewire::tokio_rustls::TlsConnector::from(tidewire::default_client_config());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    handshake(stream).await
}

async fn handshake<S>(stream: S) -> Result<Sender, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn exchange(req: Request<'_>) -> Result<Response, String> {
    let uri: http::Uri = req.url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let mut sender = open(&uri).await?;
    request(&mut sender, &uri, req, true).await
}

/// One request on `sender`'s connection; `close` asks the server to close it after.
async fn request(
    sender: &mut Sender,
    uri: &http::Uri,
    req: Request<'_>,
    close: bool,
) -> Result<Response, String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("tidewire/", env!("CARGO_PKG_VERSION")),
        );
    if close {
        builder = builder.header(http::header::CONNECTION, "close");
    }
    for (name, value) in req.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(req.body.unwrap_or_default()))
        .map_err(|e| format!("bad request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, req.max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers one request with `answer` and returns what it read.
    async fn one_shot(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keys?x=1", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (url, task)
    }

    #[tokio::test]
    async fn gets_an_answer() {
        let (url, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\n{}")
                .await;
        let r = send(Request::get(&url, Duration::from_secs(2), 1024))
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
        assert_eq!(r.headers["cache-control"], "max-age=60");
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /keys?x=1 HTTP/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn bounds_the_answer_and_the_time() {
        let (url, _server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789").await;
        let e = send(Request::get(&url, Duration::from_secs(2), 4))
            .await
            .unwrap_err();
        assert!(e.contains("reading the answer"), "{e}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let e = send(Request::get(&url, Duration::from_millis(200), 4))
            .await
            .unwrap_err();
        assert!(e.contains("no answer within 200 ms"), "{e}");
        let e = send(Request::get("ftp://x/", Duration::from_secs(1), 4))
            .await
            .unwrap_err();
        assert!(e.contains("http://"), "{e}");
    }
}
