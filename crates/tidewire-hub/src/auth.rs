//! Connection tokens: JWT signed with HS256 (a shared secret) or RS256 (the application's
//! private key; the hub holds the public key).
//!
//! Claims read by the hub (others are ignored):
//! - `sub` (required): the user id, shown in presence.
//! - `exp` (required): expiry, seconds since the Unix epoch.
//! - `channels` (optional): channel patterns this token may use in private namespaces:
//!   an exact name (`private:support-42`) or a prefix ending in `*` (`private:support-*`).
//! - `info` (optional): any JSON, shown to other subscribers in presence.

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::fmt;

/// How the hub checks tokens.
#[derive(Clone)]
pub struct AuthConfig {
    keys: Vec<(Algorithm, DecodingKey)>,
    anonymous: bool,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("AuthConfig")
            .field("algorithms", &algs)
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
        if let Some(secret) = hmac_secret {
            if secret.len() < 32 {
                return Err("hmac_secret must be at least 32 characters".into());
            }
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(pem) = rsa_public_key_pem {
            let key = DecodingKey::from_rsa_pem(pem)
                .map_err(|e| format!("not an RSA public key in PEM format: {e}"))?;
            keys.push((Algorithm::RS256, key));
        }
        if keys.is_empty() {
            return Err("set hmac_secret (HS256) or rsa_public_key_file (RS256)".into());
        }
        Ok(AuthConfig { keys, anonymous })
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

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

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
    fn config_errors() {
        assert!(AuthConfig::new(None, None, false).is_err());
        assert!(AuthConfig::new(Some("short"), None, false).is_err());
        assert!(AuthConfig::new(None, Some(b"not pem"), false).is_err());
    }
}
