//! An application backend for the tests: a small HTTP/1.1 server (keep-alive) that answers
//! the hub's calls (`POST /connect`, `/subscribe`, `/publish`, `/rpc`, `/events`) with a
//! handler given by the test, and records every request.

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the handler answers: a status, a JSON body, and how long to wait first.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub delay: Duration,
}

impl Answer {
    pub fn result(v: Value) -> Answer {
        Answer {
            status: 200,
            body: serde_json::json!({ "result": v }),
            delay: Duration::ZERO,
        }
    }

    pub fn error(code: Option<u32>, message: &str) -> Answer {
        let mut e = serde_json::json!({ "message": message });
        if let Some(c) = code {
            e["code"] = c.into();
        }
        Answer {
            status: 200,
            body: serde_json::json!({ "error": e }),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            body: serde_json::json!({}),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

pub type Handler = Arc<dyn Fn(&str, &Value) -> Answer + Send + Sync>;

/// A backend: its base URL and the requests it got (path, body).
pub struct Backend {
    pub url: String,
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(handler: Handler) -> Backend {
        Self::start_on("127.0.0.1", handler).await
    }

    /// [`Backend::start`] listening on `ip` (`0.0.0.0`: reachable from a network namespace).
    pub async fn start_on(ip: &str, handler: Handler) -> Backend {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let got = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(s, handler.clone(), got.clone()));
            }
        });
        Backend {
            url: format!("http://{addr}"),
            addr,
            requests,
            task,
        }
    }

    /// The bodies of the requests to `path`.
    pub fn bodies(&self, path: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// Serves one connection's requests, one after another.
async fn serve(
    mut s: tokio::net::TcpStream,
    handler: Handler,
    got: Arc<Mutex<Vec<(String, Value)>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // The head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value = serde_json::from_slice(&buf[end..end + length]).unwrap_or(Value::Null);
        buf.drain(..end + length);
        got.lock().unwrap().push((path.clone(), body.clone()));
        let answer = handler(&path, &body);
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        let text = answer.body.to_string();
        let out = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            answer.status,
            text.len()
        );
        if s.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
