//! Connection tokens: JWT signed with HS256 (a shared secret) or RS256 (the application's
//! private key; the hub holds the public key).
//!
//! Claims read by the hub (others are ignored):
//! - `sub` (required): the user id, shown in presence.
//! - `exp` (required): expiry, seconds since the Unix epoch.
//! - `channels` (optional): channel patterns this token may use in private namespaces:
//!   an exact name (`private:support-42`) or a prefix ending in `*` (`private:support-*`).
//! - `info` (optional): any JSON, shown to other subscribers in presence.
//!
//! [`Claims`] is that set; [`AuthConfig::sign`] makes an HS256 token of it with the
//! configured secret (what `tidewire gentoken` prints).

use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey};
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How the hub checks tokens.
#[derive(Clone)]
pub struct AuthConfig {
    keys: Vec<(Algorithm, DecodingKey)>,
    /// The HS256 secret as a signing key (none with an RS256 public key only).
    signing: Option<EncodingKey>,
    anonymous: bool,
}

/// Never shows a key or the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("AuthConfig")
            .field("algorithms", &algs)
            .field("can_sign", &self.signing.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
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
        let mut keys = Vec::new();
        let mut signing = None;
        if let Some(secret) = hmac_secret {
            if secret.len() < 32 {
                return Err("hmac_secret must be at least 32 characters".into());
            }
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
            signing = Some(EncodingKey::from_secret(secret.as_bytes()));
        }
        if let Some(pem) = rsa_public_key_pem {
            let key = DecodingKey::from_rsa_pem(pem)
                .map_err(|e| format!("not an RSA public key in PEM format: {e}"))?;
            keys.push((Algorithm::RS256, key));
        }
        if keys.is_empty() {
            return Err("set hmac_secret (HS256) or rsa_public_key_file (RS256)".into());
        }
        Ok(AuthConfig {
            keys,
            signing,
            anonymous,
        })
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
        let Some((alg, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::Algorithm);
        };
        let mut validation = Validation::new(*alg);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match decode::<Claims>(token, key, &validation) {
            Ok(data) => Ok(Identity {
                user: data.claims.sub,
                channels: data.claims.channels,
                info: data.claims.info,
                expires: Some(data.claims.exp),
                issued: data.claims.iat,
            }),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                ErrorKind::Json(_) => AuthError::MissingClaim("sub".into()),
                _ => AuthError::Malformed,
            }),
        }
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
    /// No `hmac_secret` is configured (RS256 only).
    NoSecret,
    /// The token could not be encoded.
    Encode(String),
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignError::NoSecret => f.write_str(
                "no hmac_secret (HS256) is configured: an RS256 configuration holds only the \
                 public key, and RS256 tokens are signed with the private key",
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
