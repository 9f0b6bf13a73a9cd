//! Tokens as identity providers issue them, against a real `tidewire serve`: ES256 and
//! EdDSA with public keys from PEM files, and keys from a JWKS URL served by the test
//! itself (fetched at start, fetched again for a key id it does not hold, at most every
//! 10 s, and a clear refusal for one it never gets). Also channels limited to the users their name lists.

mod common;

use base64::Engine;
use common::hub::{client_q, close_of, request, serve, Serve};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key pair made for the test: its signing key, algorithm, public PEM and JWK.
struct TestKey {
    alg: Algorithm,
    signing: EncodingKey,
    public_pem: String,
    jwk: Value,
}

impl TestKey {
    fn es256(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // The uncompressed point: 0x04 || X || Y.
        let point = pair.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4));
        TestKey {
            alg: Algorithm::ES256,
            signing: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            public_pem: pair.public_key_pem(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                        "x": b64url(&point[1..33]), "y": b64url(&point[33..])}),
        }
    }

    fn eddsa(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        TestKey {
            alg: Algorithm::EdDSA,
            signing: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            public_pem: pair.public_key_pem(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                        "x": b64url(pair.public_key_raw())}),
        }
    }

    /// A token for `sub` valid for an hour, with key id `kid` when given.
    fn token(&self, sub: &str, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        let claims = json!({"sub": sub, "exp": now() + 3600, "iat": now()});
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }
}

/// Whether a `/ws` upgrade with `token` is accepted; the refusal otherwise.
async fn upgrade(srv: &Serve, token: &str) -> Result<(), String> {
    tidewire::ClientBuilder::new(format!("ws://{}/ws?token={token}", srv.addr))
        .protocols(["tidewire.v1"])
        .connect()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_with_pem_public_keys() {
    let es = TestKey::es256("e1");
    let ed = TestKey::eddsa("d1");
    let es_file = common::temp_file("es256.pem", &es.public_pem);
    let ed_file = common::temp_file("ed25519.pem", &ed.public_pem);
    let srv = serve(&[
        "--auth-public-key",
        es_file.to_str().unwrap(),
        "--auth-public-key",
        ed_file.to_str().unwrap(),
    ]);
    upgrade(&srv, &es.token("ann", None)).await.unwrap();
    upgrade(&srv, &ed.token("bob", Some("any"))).await.unwrap();
    // A key the hub does not hold, and a wrong signature.
    let other = TestKey::es256("x");
    let e = upgrade(&srv, &other.token("eve", None)).await.unwrap_err();
    assert!(e.contains("401") && e.contains("signature"), "{e}");
    // A `connect` with the token says who it is for.
    let mut ws = client_q(srv.addr, &format!("?token={}", ed.token("bob", None))).await;
    let r = request(&mut ws, json!({"id": 1, "op": "connect"}), &mut Vec::new()).await;
    assert_eq!(r["result"]["user"], "bob", "{r}");
    // A file that holds no public key is refused at start, naming the flag.
    let junk = common::temp_file(
        "junk.pem",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--listen", "127.0.0.1:0", "--auth-public-key"])
        .arg(&junk)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--auth-public-key") && err.contains("public key"),
        "{err}"
    );
}

/// A JWKS endpoint of the test: serves `keys` (as they are when asked) and counts the
/// requests.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (k, h) = (k.clone(), h.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = json!({"keys": *k.lock().unwrap()}).to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        JwksServer { url, keys, hits }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_follow_the_provider() {
    let first = TestKey::es256("k1");
    let jwks = JwksServer::start(vec![first.jwk.clone()]).await;
    let srv = serve(&["--auth-jwks-url", &jwks.url]);
    // Fetched at start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while jwks.hits.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the JWKS was not fetched at start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    upgrade(&srv, &first.token("ann", Some("k1")))
        .await
        .unwrap();
    // The provider adds a key: the first token with its id makes the hub fetch again.
    let second = TestKey::eddsa("k2");
    jwks.keys.lock().unwrap().push(second.jwk.clone());
    let before = jwks.hits.load(Ordering::SeqCst);
    let mut ws = client_q(srv.addr, "").await;
    let t = second.token("bob", Some("k2"));
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut Vec::new(),
    )
    .await;
    assert_eq!(r["result"]["user"], "bob", "{r}");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), before + 1);
    // A key id it never gets: refused with the reason, and fetched again at most every 10 s.
    let stranger = TestKey::es256("k9");
    let e = upgrade(&srv, &stranger.token("eve", Some("k9")))
        .await
        .unwrap_err();
    assert!(e.contains("401"), "{e}");
    let mut ws = client_q(srv.addr, "").await;
    let t = stranger.token("eve", Some("k9"));
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut Vec::new(),
    )
    .await;
    let message = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("unknown key id k9") && message.contains(&jwks.url),
        "{r}"
    );
    assert_eq!(close_of(&mut ws).await.0, 4008);
    // The fetch for k2 was less than 10 s ago: no other one for k9.
    assert_eq!(jwks.hits.load(Ordering::SeqCst), before + 1);
    // The key that signed `first`'s tokens is still good.
    upgrade(&srv, &first.token("ann", Some("k1")))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_lists_its_users_is_theirs_only() {
    const SECRET: &str = "user-channels-test-secret-of-32-chars";
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "exp": now() + 3600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let srv = serve(&["--auth-hmac-secret", SECRET, "--auth-anonymous"]);
    let mut pushed = Vec::new();
    let channel = "chat:dm#ann,bob";
    for (who, allowed) in [
        (Some("ann"), true),
        (Some("bob"), true),
        (Some("eve"), false),
        (None, false),
    ] {
        let query = who.map_or(String::new(), |w| format!("?token={}", token(w)));
        let mut ws = client_q(srv.addr, &query).await;
        let sub = request(
            &mut ws,
            json!({"id": 1, "op": "subscribe", "channel": channel}),
            &mut pushed,
        )
        .await;
        let publish = request(
            &mut ws,
            json!({"id": 2, "op": "publish", "channel": channel, "data": "hi"}),
            &mut pushed,
        )
        .await;
        if allowed {
            assert_eq!(
                (sub["ok"].clone(), publish["ok"].clone()),
                (json!(true), json!(true)),
                "{who:?}: {sub} {publish}"
            );
        } else {
            assert_eq!(sub["error"]["code"], 104, "{who:?}: {sub}");
            assert_eq!(publish["error"]["code"], 104, "{who:?}: {publish}");
        }
    }
}
