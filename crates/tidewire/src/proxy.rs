//! Client proxies: the TCP connection of a `ws://` or `wss://` client through an HTTP
//! proxy (`CONNECT`, RFC 9110 §9.3.6, with basic auth) or a SOCKS5 proxy (RFC 1928, no auth
//! or username and password, RFC 1929), from an option ([`ClientBuilder::proxy`]) or from
//! the environment, as curl reads it: `wss://` uses `https_proxy`, `ws://` uses
//! `http_proxy`, both fall back to `all_proxy` (each also in upper case; the lower case
//! wins), and `no_proxy` lists the hosts reached directly, as do `localhost` and loopback
//! addresses (as Go's HTTP client does: a proxy elsewhere cannot reach this machine's
//! loopback; an explicit [`Proxy::parse`] is used for them too). Through a tunnel, TLS and the
//! WebSocket handshake run end to end with the server, as without a proxy.
//!
//! `socks5h://` has the proxy resolve the host name (remote DNS), `socks5://` resolves it
//! here and sends the address. `https://` proxies (TLS to the proxy itself) are refused
//! with an error saying so.
//!
//! [`ClientBuilder::proxy`]: crate::ClientBuilder::proxy

use crate::connect::WsUrl;
use crate::error::{Error, Kind};
use base64::Engine;
use std::fmt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which proxy a client goes through. The default reads the environment at each
/// connection ([`Proxy::from_env`]).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Proxy(Choice);

#[derive(Clone, PartialEq, Eq, Default)]
enum Choice {
    #[default]
    Env,
    None,
    Via(Route),
}

/// One proxy: how to speak to it, where it is, and the credentials.
#[derive(Clone, PartialEq, Eq)]
struct Route {
    scheme: Scheme,
    host: String,
    port: u16,
    auth: Option<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    Http,
    /// SOCKS5, the name resolved here.
    Socks5,
    /// SOCKS5, the name resolved by the proxy.
    Socks5h,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Choice::Env => f.write_str("Proxy(from the environment)"),
            Choice::None => f.write_str("Proxy(none)"),
            Choice::Via(r) => write!(f, "Proxy({r})"),
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Route {
    /// The proxy's URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
            Scheme::Socks5h => "socks5h",
        };
        let user = match &self.auth {
            Some((u, _)) => format!("{u}:***@"),
            None => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{user}{host}:{}", self.port)
    }
}

impl Proxy {
    /// No proxy, whatever the environment says.
    pub fn none() -> Proxy {
        Proxy(Choice::None)
    }

    /// The proxy the environment names for each URL (the default): see the module
    /// documentation.
    pub fn from_env() -> Proxy {
        Proxy(Choice::Env)
    }

    /// A proxy from its URL: `http://[USER:PASSWORD@]HOST[:PORT]` (port 8080 by default; an
    /// HTTP CONNECT proxy), `socks5://...` or `socks5h://...` (port 1080 by default).
    /// User and password are percent-decoded. An error names what is wrong.
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        parse_route(url).map(|r| Proxy(Choice::Via(r)))
    }

    /// Whether `url` goes through a proxy.
    #[cfg(feature = "http3")]
    pub(crate) fn applies_to(&self, url: &WsUrl) -> Result<bool, Error> {
        self.route(url).map(|r| r.is_some())
    }

    /// The route for `url`, if it goes through a proxy.
    fn route(&self, url: &WsUrl) -> Result<Option<Route>, Error> {
        match &self.0 {
            Choice::None => Ok(None),
            Choice::Via(r) => Ok(Some(r.clone())),
            Choice::Env => from_env(url, &|name| std::env::var(name).ok()),
        }
    }
}

fn bad(url: &str, why: &str) -> Error {
    let shown = match url.split_once('@') {
        Some((head, tail)) => match head.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{tail}"),
            None => format!("***@{tail}"),
        },
        None => url.to_owned(),
    };
    Error::new(Kind::Proxy(format!("{shown:?}: {why}"), true))
}

fn parse_route(url: &str) -> Result<Route, Error> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        // `host:port` alone, as some set http_proxy: an HTTP proxy.
        None => ("http".to_owned(), url),
    };
    let (scheme, default_port) = match scheme.as_str() {
        "http" => (Scheme::Http, 8080),
        "socks5" => (Scheme::Socks5, 1080),
        "socks5h" => (Scheme::Socks5h, 1080),
        "https" => {
            return Err(bad(
                url,
                "https:// proxies (TLS to the proxy) are not supported; use http:// (the tunnel is still end-to-end TLS for wss://)",
            ))
        }
        other => {
            return Err(bad(
                url,
                &format!("unknown proxy scheme {other:?} (http, socks5 or socks5h)"),
            ))
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (auth, hostport) = match authority.rsplit_once('@') {
        Some((cred, hp)) => {
            let (user, pass) = cred.split_once(':').unwrap_or((cred, ""));
            let user =
                percent_decode(user).ok_or_else(|| bad(url, "bad percent-encoding in the user"))?;
            let pass = percent_decode(pass)
                .ok_or_else(|| bad(url, "bad percent-encoding in the password"))?;
            if user.len() > 255 || pass.len() > 255 {
                return Err(bad(url, "user and password are at most 255 bytes each"));
            }
            (Some((user, pass)), hp)
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| bad(url, "unclosed [ in the host"))?;
        (h.to_owned(), tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad(url, "no host"));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad(url, &format!("port {p:?} is not 1 to 65535"))),
        },
    };
    Ok(Route {
        scheme,
        host,
        port,
        auth,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The variable `name` in lower case, else in upper case; empty counts as unset.
fn var(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name)
        .or_else(|| get(&name.to_ascii_uppercase()))
        .filter(|v| !v.trim().is_empty())
}

/// The environment's proxy for `url` (`get` reads a variable).
fn from_env(url: &WsUrl, get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Route>, Error> {
    let loopback = url.host.eq_ignore_ascii_case("localhost")
        || url
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(None);
    }
    let wanted = if url.tls { "https_proxy" } else { "http_proxy" };
    let Some(value) = var(get, wanted).or_else(|| var(get, "all_proxy")) else {
        return Ok(None);
    };
    if let Some(list) = var(get, "no_proxy") {
        if bypassed(&list, &url.host, url.port) {
            return Ok(None);
        }
    }
    parse_route(value.trim()).map(Some)
}

/// Whether `no_proxy`'s `list` names `host` (`*`, a host, a domain and its subdomains with
/// or without a leading dot, an IP address, each optionally with `:PORT`).
fn bypassed(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    list.split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = match entry.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((h, tail)) => (h, tail.strip_prefix(':')),
                    None => (v6, None),
                },
                None => match entry.rsplit_once(':') {
                    // An IPv6 address without brackets has several colons: no port.
                    Some((h, p)) if !h.contains(':') => (h, Some(p)),
                    _ => (entry, None),
                },
            };
            if entry_port.is_some_and(|p| p.parse::<u16>().ok() != Some(port)) {
                return false;
            }
            let name = name
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase();
            host == name || host.ends_with(&format!(".{name}"))
        })
}

/// The TCP connection to `url`'s host, through `proxy` where one applies.
pub(crate) async fn open(url: &WsUrl, proxy: &Proxy) -> Result<TcpStream, Error> {
    let Some(route) = proxy.route(url)? else {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        tcp.set_nodelay(true)?;
        return Ok(tcp);
    };
    let failed = |(why, for_good): (String, bool)| {
        Error::new(Kind::Proxy(format!("{route}: {why}"), for_good))
    };
    let mut tcp = TcpStream::connect((route.host.as_str(), route.port))
        .await
        .map_err(|e| failed((format!("cannot connect: {e}"), false)))?;
    tcp.set_nodelay(true)?;
    let tunnel = match route.scheme {
        Scheme::Http => http_connect(&mut tcp, url, &route).await,
        Scheme::Socks5 | Scheme::Socks5h => socks5(&mut tcp, url, &route).await,
    };
    // Refused credentials will be refused again; the rest may pass on a retry.
    tunnel.map_err(|why| {
        let for_good = why.contains("credentials") || why.contains("user and password");
        failed((why, for_good))
    })?;
    Ok(tcp)
}

/// `CONNECT host:port`: a 2xx opens the tunnel.
async fn http_connect(tcp: &mut TcpStream, url: &WsUrl, route: &Route) -> Result<(), String> {
    let target = url.authority();
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = &route.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        head.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    // The answer's head, a byte at a time: whatever follows it is the server's.
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= 16 * 1024 {
            return Err("its answer to CONNECT has a head over 16 KiB".into());
        }
        match tcp.read(&mut byte).await {
            Ok(0) => return Err("it closed the connection before answering CONNECT".into()),
            Ok(_) => answer.push(byte[0]),
            Err(e) => return Err(format!("reading its answer to CONNECT: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("").trim().to_owned();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer to CONNECT: {status_line:?}"))?;
    match status {
        200..=299 => Ok(()),
        407 if route.auth.is_none() => Err(format!(
            "it requires authentication ({status_line}): give user:password in the proxy URL"
        )),
        407 => Err(format!("it refused the credentials ({status_line})")),
        _ => Err(format!("it refused CONNECT {target}: {status_line}")),
    }
}

/// The SOCKS5 handshake and `CONNECT`.
async fn socks5(tcp: &mut TcpStream, url: &WsUrl, route: &Route) -> Result<(), String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    let greeting: &[u8] = if route.auth.is_some() {
        &[5, 2, 0x00, 0x02]
    } else {
        &[5, 1, 0x00]
    };
    tcp.write_all(greeting).await.map_err(io("greeting"))?;
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice)
        .await
        .map_err(io("reading its method"))?;
    if choice[0] != 5 {
        return Err(format!("not a SOCKS5 proxy (version byte {})", choice[0]));
    }
    match (choice[1], &route.auth) {
        (0x00, _) => {}
        (0x02, Some((user, pass))) => {
            let mut m = vec![1, user.len() as u8];
            m.extend_from_slice(user.as_bytes());
            m.push(pass.len() as u8);
            m.extend_from_slice(pass.as_bytes());
            tcp.write_all(&m).await.map_err(io("authenticating"))?;
            let mut status = [0u8; 2];
            tcp.read_exact(&mut status)
                .await
                .map_err(io("reading the authentication's answer"))?;
            if status[1] != 0 {
                return Err("it refused the user and password".into());
            }
        }
        (0xff, None) => {
            return Err("it requires authentication: give user:password in the proxy URL".into())
        }
        (0xff, Some(_)) => {
            return Err("it accepts none of our methods (no auth, user and password)".into())
        }
        (m, _) => return Err(format!("it chose method {m:#04x}, which was not offered")),
    }
    let mut req = vec![5, 1, 0];
    let literal: Option<std::net::IpAddr> = url.host.parse().ok();
    let address = match (literal, route.scheme) {
        (Some(ip), _) => Some(ip),
        (None, Scheme::Socks5) => {
            let mut addrs = tokio::net::lookup_host((url.host.as_str(), url.port))
                .await
                .map_err(|e| format!("resolving {}: {e}", url.host))?;
            Some(
                addrs
                    .next()
                    .ok_or_else(|| format!("{} has no address", url.host))?
                    .ip(),
            )
        }
        (None, _) => None,
    };
    match address {
        Some(std::net::IpAddr::V4(v4)) => {
            req.push(1);
            req.extend_from_slice(&v4.octets());
        }
        Some(std::net::IpAddr::V6(v6)) => {
            req.push(4);
            req.extend_from_slice(&v6.octets());
        }
        None => {
            if url.host.len() > 255 {
                return Err("the host name is longer than SOCKS5 allows (255)".into());
            }
            req.push(3);
            req.push(url.host.len() as u8);
            req.extend_from_slice(url.host.as_bytes());
        }
    }
    req.extend_from_slice(&url.port.to_be_bytes());
    tcp.write_all(&req).await.map_err(io("sending CONNECT"))?;
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply)
        .await
        .map_err(io("reading its answer to CONNECT"))?;
    if reply[1] != 0 {
        let why = match reply[1] {
            1 => "general failure",
            2 => "connection not allowed by its rules",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        };
        return Err(format!(
            "it could not connect to {}: {why} (SOCKS5 reply {})",
            url.authority(),
            reply[1]
        ));
    }
    // The bound address, read and dropped.
    let skip = match reply[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut n = [0u8; 1];
            tcp.read_exact(&mut n)
                .await
                .map_err(io("reading its answer"))?;
            n[0] as usize
        }
        t => return Err(format!("its answer has address type {t}")),
    };
    let mut rest = vec![0u8; skip + 2];
    tcp.read_exact(&mut rest)
        .await
        .map_err(io("reading its answer"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> WsUrl {
        WsUrl::parse(u).unwrap()
    }

    #[test]
    fn proxy_urls_parse_strictly() {
        let p = parse_route("http://ann:p%40ss@proxy.local:3128").unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (Scheme::Http, "proxy.local", 3128)
        );
        assert_eq!(p.auth, Some(("ann".into(), "p@ss".into())));
        assert_eq!(p.to_string(), "http://ann:***@proxy.local:3128");
        let p = parse_route("socks5h://[::1]").unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (Scheme::Socks5h, "::1", 1080)
        );
        assert_eq!(parse_route("10.0.0.1:3128").unwrap().port, 3128);
        assert_eq!(parse_route("http://proxy/").unwrap().port, 8080);
        for (bad_url, why) in [
            ("https://p:1", "not supported"),
            ("ftp://p:1", "unknown proxy scheme"),
            ("http://:8080", "no host"),
            ("http://p:0", "not 1 to 65535"),
            ("http://p:99999", "not 1 to 65535"),
            ("http://ann:%zz@p", "percent-encoding"),
        ] {
            let e = parse_route(bad_url).unwrap_err().to_string();
            assert!(e.contains(why), "{bad_url}: {e}");
        }
        // The password is not shown in errors.
        let e = parse_route("ftp://ann:secret@p").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn the_environment_picks_by_scheme_and_no_proxy() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let get = env(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("http_proxy", "http://plain:2"),
            ("HTTP_PROXY", "http://upper:3"),
            (
                "NO_PROXY",
                "localhost, .internal.example, 10.1.2.3, host.test:8443",
            ),
        ]);
        let host = |u: &str| from_env(&url(u), &get).unwrap().map(|r| r.host);
        assert_eq!(host("wss://a.example/").as_deref(), Some("secure"));
        assert_eq!(host("ws://a.example/").as_deref(), Some("plain"));
        assert_eq!(host("ws://localhost:9/"), None);
        // Loopback is never proxied from the environment.
        let everything = env(&[("all_proxy", "http://p:1")]);
        for u in [
            "ws://localhost/",
            "wss://127.0.0.1:9/",
            "ws://[::1]/",
            "ws://127.8.0.1/",
        ] {
            assert_eq!(from_env(&url(u), &everything).unwrap(), None, "{u}");
        }
        assert!(from_env(&url("ws://192.168.1.2/"), &everything)
            .unwrap()
            .is_some());
        assert_eq!(host("ws://svc.internal.example/"), None);
        assert_eq!(host("ws://internal.example/"), None);
        assert_eq!(host("ws://10.1.2.3/"), None);
        assert_eq!(host("wss://host.test:8443/"), None);
        assert_eq!(host("wss://host.test/").as_deref(), Some("secure"));
        assert_eq!(host("ws://notinternal.example/").as_deref(), Some("plain"));
        let all = env(&[("ALL_PROXY", "socks5h://s:9"), ("no_proxy", "*")]);
        assert_eq!(from_env(&url("ws://x/"), &all).unwrap(), None);
        let all = env(&[("all_proxy", "socks5h://s:9"), ("https_proxy", "")]);
        let r = from_env(&url("wss://x/"), &all).unwrap().unwrap();
        assert_eq!((r.scheme, r.host.as_str()), (Scheme::Socks5h, "s"));
        assert_eq!(from_env(&url("ws://x/"), &env(&[])).unwrap(), None);
        let broken = env(&[("http_proxy", "gopher://x")]);
        assert!(from_env(&url("ws://x/"), &broken).is_err());
    }
}
