//! `tidewire gentoken --user ID`: a connection token for `tidewire serve`, signed with the
//! hub's own secret, so that auth can be tried without writing code.
//!
//! The secret is the one the hub uses: `--auth-hmac-secret` (or `TIDEWIRE_AUTH_HMAC_SECRET`),
//! else `[auth] hmac_secret` of the `--config` file (or `TIDEWIRE_CONFIG`), the same
//! precedence as `tidewire serve`. The token is an HS256 JWT with exactly the claims the hub
//! reads (`tidewire_hub::auth::Claims`: `sub`, `exp`, `channels`, `info`), signed by
//! `AuthConfig::sign`, the counterpart of the hub's `verify`. It is printed alone on
//! standard output, for `TOKEN=$(tidewire gentoken ...)`.
//!
//! Exit status: 0 with the token; 2 when no token can be made (no secret, a secret the hub
//! would refuse, an RS256-only configuration, a bad flag value), with one line saying why.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tidewire_hub::auth::{Claims, SignError};
use tidewire_hub::{AuthConfig, HubConfig};

#[derive(Debug, Args)]
pub struct GentokenArgs {
    /// The user id: the token's `sub` claim, shown in presence as `user`.
    #[arg(long, value_name = "ID", value_parser = user)]
    user: String,

    /// Channels of private namespaces the token may use, comma-separated: exact names
    /// (private:support-42) or prefixes ending in * (private:support-*).
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = channel)]
    channels: Vec<String>,

    /// How long the token is valid: 30s, 15m, 1h, 7d. The hub closes a connection whose
    /// token expires with 4001.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = ttl)]
    ttl: Duration,

    /// JSON shown to other subscribers in presence (the `info` claim): '{"name":"Ann"}'.
    #[arg(long, value_name = "JSON", value_parser = json)]
    info: Option<serde_json::Value>,

    /// The hub's HS256 secret, as given to `tidewire serve --auth-hmac-secret`. Wins over
    /// --config.
    #[arg(
        long,
        env = "TIDEWIRE_AUTH_HMAC_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    auth_hmac_secret: Option<String>,

    /// The hub's TOML configuration file: its `[auth] hmac_secret` signs the token.
    #[arg(long, env = "TIDEWIRE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn user(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the user id must not be empty".into());
    }
    Ok(s.to_owned())
}

fn channel(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty channel name (two commas in a row, or a comma at an end?)".into());
    }
    if s.trim() != s {
        return Err(format!(
            "{s:?} starts or ends with a space (write the list without spaces: a,b)"
        ));
    }
    Ok(s.to_owned())
}

fn ttl(s: &str) -> Result<Duration, String> {
    let d = crate::connect::parse_duration(s)?;
    if d.as_secs() == 0 {
        return Err("must be at least one second".into());
    }
    Ok(d)
}

fn json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

pub fn run(args: GentokenArgs) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match token(&args, now) {
        Ok(token) => {
            println!("{token}");
            Ok(())
        }
        // Nothing was wrong but the invocation: a usage error, exit 2, as clap's own.
        Err(why) => clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("tidewire gentoken: {why}\n"),
        )
        .exit(),
    }
}

/// The signed token, or why there is none.
fn token(args: &GentokenArgs, now: u64) -> Result<String, String> {
    let (auth, from) = signer(args)?;
    let exp = now
        .checked_add(args.ttl.as_secs())
        .ok_or_else(|| "--ttl is too long".to_owned())?;
    let mut claims = Claims::new(args.user.as_str(), exp).channels(args.channels.iter());
    if let Some(info) = &args.info {
        claims = claims.info(info.clone());
    }
    auth.sign(&claims).map_err(|e| match e {
        SignError::NoSecret => format!("cannot sign with {from}: {e}"),
        e => e.to_string(),
    })
}

/// The hub's token configuration, and where it came from (for messages).
fn signer(args: &GentokenArgs) -> Result<(AuthConfig, String), String> {
    if let Some(secret) = &args.auth_hmac_secret {
        let auth = AuthConfig::new(Some(secret), None, false)
            .map_err(|e| format!("--auth-hmac-secret: {e}"))?;
        return Ok((auth, "--auth-hmac-secret".into()));
    }
    let Some(path) = &args.config else {
        return Err(
            "no secret to sign with: pass --auth-hmac-secret SECRET (or set \
                    TIDEWIRE_AUTH_HMAC_SECRET), or --config FILE whose [auth] has hmac_secret"
                .into(),
        );
    };
    let config = HubConfig::default()
        .load_file(path)
        .map_err(|e| e.to_string())?;
    match config.auth {
        Some(auth) => Ok((auth, format!("the [auth] of {}", path.display()))),
        None => Err(format!(
            "{} has no [auth] section with hmac_secret: add one (as tidewire serve reads it), \
             or pass --auth-hmac-secret",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GentokenArgs,
    }

    fn parse(argv: &[&str]) -> Result<GentokenArgs, clap::Error> {
        let full = std::iter::once("gentoken").chain(argv.iter().copied());
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn the_token_carries_the_claims_the_hub_reads() {
        let args = parse(&[
            "--user",
            "ann",
            "--channels",
            "private:a,private:b-*",
            "--ttl",
            "2h",
            "--info",
            r#"{"name":"Ann"}"#,
            "--auth-hmac-secret",
            SECRET,
        ])
        .unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = token(&args, now).unwrap();
        let id = AuthConfig::new(Some(SECRET), None, false)
            .unwrap()
            .verify(&t)
            .unwrap();
        assert_eq!(id.user, "ann");
        assert_eq!(id.channels, ["private:a", "private:b-*"]);
        assert_eq!(id.info, Some(serde_json::json!({"name": "Ann"})));
        assert_eq!(id.expires, Some(now + 7200));
    }

    #[test]
    fn flag_values_are_checked() {
        for (argv, flag) in [
            (&["--user", ""][..], "--user"),
            (&["--user", "a", "--channels", "a,,b"], "--channels"),
            (&["--user", "a", "--channels", "a, b"], "--channels"),
            (&["--user", "a", "--ttl", "0"], "--ttl"),
            (&["--user", "a", "--ttl", "500ms"], "--ttl"),
            (&["--user", "a", "--ttl", "99999999999999999999d"], "--ttl"),
            (&["--user", "a", "--info", "{name}"], "--info"),
            (&["--channels", "a"], "--user"),
        ] {
            let e = parse(argv).err().unwrap_or_else(|| panic!("{argv:?}"));
            assert!(e.to_string().contains(flag), "{argv:?}: {e}");
        }
    }

    #[test]
    fn no_usable_secret_is_refused_with_the_flags_to_use() {
        let args = parse(&["--user", "a"]).unwrap();
        // Only when neither variable is set in the environment of the test run.
        if args.auth_hmac_secret.is_none() && args.config.is_none() {
            let e = token(&args, 0).unwrap_err();
            for flag in [
                "--auth-hmac-secret",
                "TIDEWIRE_AUTH_HMAC_SECRET",
                "--config",
            ] {
                assert!(e.contains(flag), "{e}");
            }
        }
        let args = parse(&["--user", "a", "--auth-hmac-secret", "short"]).unwrap();
        let e = token(&args, 0).unwrap_err();
        assert!(e.contains("--auth-hmac-secret") && e.contains("32"), "{e}");
        let args = parse(&["--user", "a", "--auth-hmac-secret", SECRET]).unwrap();
        assert_eq!(token(&args, u64::MAX).unwrap_err(), "--ttl is too long");
    }
}
