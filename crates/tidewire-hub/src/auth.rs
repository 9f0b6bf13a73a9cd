//! Connection tokens: JWTs signed with HS256 (a secret shared with the application), or
//! with the application's or an identity provider's private key, the hub holding the public
//! keys: RS256/384/512 and PS256/384/512 (RSA), ES256 (P-256), ES384 (P-384), EdDSA
//! (Ed25519), from PEM files or from a JWKS URL (Auth0, Keycloak, a company's issuer).
//!
//! Claims read by the hub (others are ignored):
//! - `sub` (required): the user id, shown in presence.
//! - `exp` (required): expiry, seconds since the Unix epoch.
//! - `channels` (optional): channel patterns this token may use in private namespaces:
//!   an exact name (`private:support-42`) or a prefix ending in `*` (`private:support-*`).
//! - `info` (optional): any JSON, shown to other subscribers in presence.
//! - `iat` (optional): when it was issued (the server API's `revoke_tokens`).
//!
//! [`Claims`] is that set; [`AuthConfig::sign`] makes an HS256 token of it with the
//! configured secret (what `tidewire gentoken` prints).
//!
//! A token's header picks the key: its `alg`, and its `kid` when it has one. With a JWKS
//! URL, the keys are fetched when the hub starts and again every 5 minutes (or as the
//! answer's `Cache-Control: max-age` says, from 1 minute to 1 hour); a token whose `kid` is
//! not among them makes the hub fetch them again at once (at most every 10 s) before it is
//! refused as signed with an unknown key.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey};
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A key that verifies tokens.
#[derive(Clone)]
struct Key {
    /// The `kid` it answers to (keys from PEM files have none: they answer to any).
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// How the hub checks tokens.
#[derive(Clone)]
pub struct AuthConfig {
    keys: Vec<Key>,
    /// The HS256 secret as a signing key (none with public keys only).
    signing: Option<EncodingKey>,
    jwks: Option<Arc<Jwks>>,
    anonymous: bool,
}

/// Never shows a key or the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|k| k.alg).collect();
        f.debug_struct("AuthConfig")
            .field("algorithms", &algs)
            .field("jwks", &self.jwks.as_ref().map(|j| &j.url))
            .field("can_sign", &self.signing.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

/// The algorithms an RSA key verifies.
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The keys behind a JWKS URL, as last fetched.
struct Jwks {
    url: String,
    keys: RwLock<Vec<Key>>,
    /// When the keys were last fetched (or tried), and what went wrong then.
    fetched: Mutex<(Option<Instant>, Option<String>)>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// When a token with an unknown key id last made it fetch.
    on_demand: Mutex<Option<Instant>>,
}

/// At most one fetch of a JWKS URL in this long for unknown key ids (besides the regular
/// ones).
const JWKS_AGAIN_AFTER: Duration = Duration::from_secs(10);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_MAX_BYTES: usize = 1 << 20;

impl Jwks {
    /// Fetches the keys; how long to keep them.
    async fn fetch(&self) -> Result<Duration, String> {
        let _one = self.fetching.lock().await;
        let request = crate::http_client::Request::get(&self.url, JWKS_TIMEOUT, JWKS_MAX_BYTES);
        let result = async {
            let r = crate::http_client::send(request).await?;
            if r.status != 200 {
                return Err(format!("answered {}", r.status));
            }
            let set: JwkSet =
                serde_json::from_slice(&r.body).map_err(|e| format!("not a JWK set: {e}"))?;
            let keys = keys_of(&set);
            if keys.is_empty() {
                return Err("no key it can use (RSA, EC P-256/P-384, Ed25519)".into());
            }
            let max_age = r
                .headers
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
                })
                .map_or(Duration::from_secs(300), Duration::from_secs)
                .clamp(Duration::from_secs(60), Duration::from_secs(3600));
            Ok((keys, max_age))
        }
        .await;
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        fetched.0 = Some(Instant::now());
        match result {
            Ok((keys, max_age)) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
                fetched.1 = None;
                Ok(max_age)
            }
            Err(e) => {
                fetched.1 = Some(e.clone());
                Err(e)
            }
        }
    }

    fn has(&self, kid: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Why a token with key id `kid` has no key: for people.
    fn unknown(&self, kid: &str) -> AuthError {
        let fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        let why = match &fetched.1 {
            Some(e) => format!("the keys of {} could not be fetched: {e}", self.url),
            None => format!("it is not among the keys of {}", self.url),
        };
        AuthError::UnknownKey(format!("{kid}: {why}"))
    }
}

/// The keys of `set` the hub can use, each with its `kid` and algorithm.
fn keys_of(set: &JwkSet) -> Vec<Key> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let declared = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        let algs: Vec<Algorithm> = match (&jwk.algorithm, declared) {
            (_, Some(a)) => vec![a],
            (AlgorithmParameters::RSA(_), None) => RSA.to_vec(),
            (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            (AlgorithmParameters::OctetKeyPair(_), None) => vec![Algorithm::EdDSA],
            _ => continue,
        };
        for alg in algs {
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key: key.clone(),
            });
        }
    }
    keys
}

/// The keys of a PEM public key: RSA, EC (P-256 or P-384) or Ed25519.
fn keys_of_pem(pem: &[u8]) -> Result<Vec<Key>, String> {
    let key = |alg, key| Key {
        kid: None,
        alg,
        key,
    };
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok(RSA.iter().map(|a| key(*a, k.clone())).collect());
    }
    let der = pem_body(pem).ok_or("not a PEM public key")?;
    // The curve's object identifier in the key's SubjectPublicKeyInfo.
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
    if has(ED25519) {
        let k = DecodingKey::from_ed_pem(pem).map_err(|e| format!("an Ed25519 key: {e}"))?;
        return Ok(vec![key(Algorithm::EdDSA, k)]);
    }
    let alg = if has(P256) {
        Algorithm::ES256
    } else if has(P384) {
        Algorithm::ES384
    } else {
        return Err("not an RSA, EC (P-256, P-384) or Ed25519 public key".into());
    };
    let k = DecodingKey::from_ec_pem(pem).map_err(|e| format!("an EC key: {e}"))?;
    Ok(vec![key(alg, k)])
}

/// The DER bytes of the first PEM block.
fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

impl AuthConfig {
    /// Tokens signed with `hmac_secret` (HS256) and/or verified with the PEM RSA public key
    /// (RS256); at least one is needed. With `anonymous`, connections without a token are
    /// accepted too (they cannot use private namespaces).
    pub fn new(
        hmac_secret: Option<&str>,
        rsa_public_key_pem: Option<&[u8]>,
        anonymous: bool,
    ) -> Result<Self, String> {
        let pems: Vec<&[u8]> = rsa_public_key_pem.into_iter().collect();
        Self::with_keys(hmac_secret, &pems, None, anonymous)
    }

    /// Tokens signed with `hmac_secret` (HS256), verified with the PEM public keys
    /// `public_keys` (RSA, EC P-256/P-384 or Ed25519) and/or the keys behind `jwks_url`; at
    /// least one is needed. With `anonymous`, connections without a token are accepted too.
    pub fn with_keys(
        hmac_secret: Option<&str>,
        public_keys: &[&[u8]],
        jwks_url: Option<&str>,
        anonymous: bool,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        let mut signing = None;
        if let Some(secret) = hmac_secret {
            if secret.len() < 32 {
                return Err("hmac_secret must be at least 32 characters".into());
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
            signing = Some(EncodingKey::from_secret(secret.as_bytes()));
        }
        for pem in public_keys {
            keys.extend(keys_of_pem(pem)?);
        }
        let jwks = match jwks_url {
            None => None,
            Some(url) => {
                let uri: http::Uri = url.parse().map_err(|e| format!("jwks_url {url}: {e}"))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(format!("jwks_url {url}: expected http(s)://HOST/PATH"));
                }
                Some(Arc::new(Jwks {
                    url: url.to_owned(),
                    keys: RwLock::new(Vec::new()),
                    fetched: Mutex::new((None, None)),
                    fetching: tokio::sync::Mutex::new(()),
                    on_demand: Mutex::new(None),
                }))
            }
        };
        if keys.is_empty() && jwks.is_none() {
            return Err(
                "set hmac_secret (HS256), a public key file (RSA, EC or Ed25519) or jwks_url"
                    .into(),
            );
        }
        Ok(AuthConfig {
            keys,
            signing,
            jwks,
            anonymous,
        })
    }

    /// With a JWKS URL: fetches its keys now, then keeps them fresh for as long as the
    /// runtime runs. Call once, from inside a tokio runtime.
    pub fn start(&self) {
        let Some(jwks) = self.jwks.clone() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let wait = match jwks.fetch().await {
                    Ok(max_age) => max_age,
                    Err(e) => {
                        tracing::warn!(
                            url = jwks.url.as_str(),
                            "auth: fetching the JWKS failed: {e}"
                        );
                        Duration::from_secs(10)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Before [`AuthConfig::verify`]: when `token` names a key id the JWKS does not hold,
    /// fetches the keys again (at most every 10 s), so that a key the provider just added
    /// is known.
    pub async fn refresh_for(&self, token: &str) {
        let Some(jwks) = &self.jwks else { return };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        let Some(kid) = header.kid else { return };
        if jwks.has(&kid) {
            return;
        }
        let due = {
            let mut last = jwks.on_demand.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= JWKS_AGAIN_AFTER);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            if let Err(e) = jwks.fetch().await {
                tracing::warn!(
                    url = jwks.url.as_str(),
                    "auth: fetching the JWKS failed: {e}"
                );
            }
        }
    }

    /// Whether connections without a token are accepted.
    pub fn anonymous(&self) -> bool {
        self.anonymous
    }

    /// The same keys, with connections without a token accepted (`true`) or refused.
    pub fn with_anonymous(mut self, anonymous: bool) -> Self {
        self.anonymous = anonymous;
        self
    }

    /// Checks a token and returns who it is for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let fetched: Vec<Key> = self.jwks.as_ref().map_or_else(Vec::new, |j| {
            j.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
        });
        let kid = header.kid.as_deref();
        // The keys for its algorithm: those named by its key id first, then those without
        // one.
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .chain(&fetched)
            .filter(|k| k.alg == header.alg)
            .filter(|k| k.kid.is_none() || kid.is_none() || k.kid.as_deref() == kid)
            .collect();
        if candidates.is_empty() {
            if let (Some(jwks), Some(kid)) = (&self.jwks, kid) {
                if !fetched.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                    return Err(jwks.unknown(kid));
                }
            }
            return Err(AuthError::Algorithm);
        }
        let mut last = AuthError::Signature;
        for key in candidates {
            let mut validation = Validation::new(key.alg);
            validation.leeway = 5;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    return Ok(Identity {
                        user: data.claims.sub,
                        channels: data.claims.channels,
                        info: data.claims.info,
                        expires: Some(data.claims.exp),
                        issued: data.claims.iat,
                    })
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::InvalidSignature => AuthError::Signature,
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(AuthError::MissingClaim(c.clone()))
                        }
                        ErrorKind::Json(_) => return Err(AuthError::MissingClaim("sub".into())),
                        _ => AuthError::Malformed,
                    }
                }
            }
        }
        Err(last)
    }
}

impl AuthConfig {
    /// Signs `claims` as an HS256 token that [`verify`](Self::verify) accepts, with the
    /// configured `hmac_secret`. A configuration with only an RS256 public key cannot
    /// sign: RS256 tokens are signed with the private key, which the hub does not hold.
    pub fn sign(&self, claims: &Claims) -> Result<String, SignError> {
        let key = self.signing.as_ref().ok_or(SignError::NoSecret)?;
        encode(&Header::new(Algorithm::HS256), claims, key)
            .map_err(|e| SignError::Encode(e.to_string()))
    }
}

/// The claims of a connection token: what [`AuthConfig::verify`] reads and
/// [`AuthConfig::sign`] writes (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claims {
    /// The user id, shown in presence.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Channel patterns for private namespaces: `private:support-42`, `private:support-*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Any JSON, shown to other subscribers in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// When the token was issued, seconds since the Unix epoch: the server API's
    /// `revoke_tokens` refuses tokens issued before a time (one without `iat` counts as
    /// issued before any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// Claims for `user`, expiring at `exp` (seconds since the Unix epoch), with no
    /// channels and no info.
    pub fn new(user: impl Into<String>, exp: u64) -> Claims {
        Claims {
            sub: user.into(),
            exp,
            channels: Vec::new(),
            info: None,
            iat: Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
        }
    }

    /// Sets the channel patterns for private namespaces.
    pub fn channels<I, T>(mut self, channels: I) -> Claims
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.channels = channels.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the JSON shown in presence.
    pub fn info(mut self, info: serde_json::Value) -> Claims {
        self.info = Some(info);
        self
    }
}

/// Why [`AuthConfig::sign`] could not sign.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// No `hmac_secret` is configured (public keys only).
    NoSecret,
    /// The token could not be encoded.
    Encode(String),
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignError::NoSecret => f.write_str(
                "no hmac_secret (HS256) is configured: with public keys only, tokens are signed \
                 with the private key, which the hub does not hold",
            ),
            SignError::Encode(e) => write!(f, "cannot encode the token: {e}"),
        }
    }
}

impl std::error::Error for SignError {}

/// Who a verified token is for.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `sub`.
    pub user: String,
    /// Channel patterns for private namespaces.
    pub channels: Vec<String>,
    /// Shown in presence.
    pub info: Option<serde_json::Value>,
    /// `exp`: seconds since the Unix epoch. A connection is closed with 4001 when its
    /// token expires, unless it sent `connect` with a fresh one before.
    pub expires: Option<u64>,
    /// `iat`: when the token was issued, seconds since the Unix epoch, if it says.
    pub issued: Option<u64>,
}

impl Identity {
    /// How long until the token expires (zero if it already has), if it expires.
    pub fn time_left(&self) -> Option<std::time::Duration> {
        let exp = self.expires?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(std::time::Duration::from_secs(exp.saturating_sub(now)))
    }
}

impl Identity {
    /// Whether the token's `channels` claim covers `channel`.
    pub fn may_use(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => p == channel,
        })
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token where one is required.
    Missing,
    /// Not a JWT.
    Malformed,
    /// Signed with an algorithm the hub has no key for.
    Algorithm,
    /// The signature does not verify.
    Signature,
    /// `exp` is in the past.
    Expired,
    /// A required claim is absent.
    MissingClaim(String),
    /// Its `kid` names no key the hub holds (with a JWKS URL); the key id and why.
    UnknownKey(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("token required"),
            AuthError::Malformed => f.write_str("token is not a valid JWT"),
            AuthError::Algorithm => f.write_str("token algorithm not accepted"),
            AuthError::Signature => f.write_str("token signature invalid"),
            AuthError::Expired => f.write_str("token expired"),
            AuthError::MissingClaim(c) => write!(f, "token lacks the {c} claim"),
            AuthError::UnknownKey(why) => write!(f, "token signed with an unknown key id {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn hs256() {
        let auth = AuthConfig::new(Some(SECRET), None, false).unwrap();
        let t = token(
            json!({"sub": "ann", "exp": now() + 60, "channels": ["private:a-*"], "info": {"n": 1}}),
            SECRET,
        );
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.user, "ann");
        assert!(id.may_use("private:a-1"));
        assert!(!id.may_use("private:b-1"));
        assert_eq!(id.info, Some(json!({"n": 1})));

        let expired = token(json!({"sub": "ann", "exp": now() - 60}), SECRET);
        assert_eq!(auth.verify(&expired).unwrap_err(), AuthError::Expired);
        let forged = token(
            json!({"sub": "ann", "exp": now() + 60}),
            "another secret of thirty-two characters",
        );
        assert_eq!(auth.verify(&forged).unwrap_err(), AuthError::Signature);
        assert_eq!(auth.verify("x.y.z").unwrap_err(), AuthError::Malformed);
        let no_sub = token(json!({"exp": now() + 60}), SECRET);
        assert!(matches!(
            auth.verify(&no_sub).unwrap_err(),
            AuthError::MissingClaim(_)
        ));
    }

    #[test]
    fn signed_tokens_verify_with_every_claim() {
        let auth = AuthConfig::new(Some(SECRET), None, false).unwrap();
        let claims = Claims::new("ann", now() + 60)
            .channels(["private:a-*", "private:b"])
            .info(json!({"name": "Ann"}));
        let t = auth.sign(&claims).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&t).unwrap().alg,
            Algorithm::HS256
        );
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.user, "ann");
        assert_eq!(id.channels, ["private:a-*", "private:b"]);
        assert!(id.may_use("private:a-1") && id.may_use("private:b"));
        assert_eq!(id.info, Some(json!({"name": "Ann"})));
        assert_eq!(id.expires, Some(claims.exp));
        // Exactly the claims the hub reads; empty ones left out.
        let bare = auth.sign(&Claims::new("bob", 7)).unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let raw =
            decode::<serde_json::Value>(&bare, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
                .unwrap()
                .claims;
        let iat = raw["iat"].as_u64().expect("iat");
        assert!(iat.abs_diff(now()) <= 5, "{raw}");
        assert_eq!(raw, json!({"sub": "bob", "exp": 7, "iat": iat}));
        assert_eq!(auth.verify(&t).unwrap().issued, claims.iat);
        // Expired claims sign, and are refused.
        let old = auth.sign(&Claims::new("ann", now() - 600)).unwrap();
        assert_eq!(auth.verify(&old).unwrap_err(), AuthError::Expired);
        // Another secret: the signature does not verify.
        let theirs = AuthConfig::new(Some("another secret of thirty-two characters"), None, false)
            .unwrap()
            .sign(&claims)
            .unwrap();
        assert_eq!(auth.verify(&theirs).unwrap_err(), AuthError::Signature);
    }

    #[test]
    fn rs256_only_cannot_sign_and_debug_hides_the_secret() {
        // The public half of tidewire-cli's tests/fixtures/rsa-test-private.pem.
        const PEM: &str = concat!(
            "-----BEGIN PUBLIC KEY-----\n",
            "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAk6j6BsMUea9Faf4igQG8\n",
            "IhVrcPJ5oWnIs7UwX8/VVPgM71KDdFByEZz51mXpncplw8oYRn07SnBCqdqdEqp0\n",
            "ST9VuCsCjk8Acsf63aUXSWGpYoVRHncZ6M6FE+NjRN1JAhrUPnUVu6gYOAKpex1W\n",
            "BVxnL3xkgWD8KpkD2iferrFptHviM2vToxCmRj5bnAtIddcgyms16I+trBsljJzd\n",
            "XVp695G5r3EaRsuwdP+pPsV/ntHIeizaSZRWbrPYD8C24bM2h2qm3wN6505NN2HS\n",
            "l5OiCOdfXuTFl0UzAmxryNP6JPtc9Yzv4MCtS00a5uKoytboHuM1hiSms8RDd9KX\n",
            "2wIDAQAB\n",
            "-----END PUBLIC KEY-----\n",
        );
        let rsa = AuthConfig::new(None, Some(PEM.as_bytes()), false).unwrap();
        let e = rsa.sign(&Claims::new("ann", now() + 60)).unwrap_err();
        assert_eq!(e, SignError::NoSecret);
        assert!(e.to_string().contains("private key"), "{e}");
        let hs = AuthConfig::new(Some(SECRET), None, false).unwrap();
        let debug = format!("{hs:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains("0123"),
            "{debug}"
        );
        assert!(debug.contains("can_sign: true"), "{debug}");
    }

    #[test]
    fn config_errors() {
        assert!(AuthConfig::new(None, None, false).is_err());
        assert!(AuthConfig::new(Some("short"), None, false).is_err());
        assert!(AuthConfig::new(None, Some(b"not pem"), false).is_err());
    }
}
