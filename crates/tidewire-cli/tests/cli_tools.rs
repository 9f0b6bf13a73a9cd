//! The small commands a new user reaches for first: `tidewire --version`, and
//! `tidewire gentoken` against a real `tidewire serve` with auth on (issue 13, "Also
//! expected on day one").

mod common;

use common::hub::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "test-secret-of-at-least-thirty-two-chars";
const RSA_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rsa-test-public.pem"
);

fn tidewire() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    // Only what a test sets: not the environment of whoever runs the tests.
    cmd.env_remove("TIDEWIRE_AUTH_HMAC_SECRET")
        .env_remove("TIDEWIRE_CONFIG");
    cmd
}

/// Runs `tidewire gentoken ARGS` with extra environment variables: (status, stdout, stderr).
fn gentoken(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tidewire();
    cmd.arg("gentoken").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tidewire gentoken");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The token `tidewire gentoken ARGS` prints; panics if it fails.
fn token(args: &[&str], env: &[(&str, &str)]) -> String {
    let (code, out, err) = gentoken(args, env);
    assert_eq!(code, 0, "{args:?}: {err}");
    assert!(err.is_empty(), "{err}");
    let t = out.trim_end_matches('\n');
    assert_eq!(t.lines().count(), 1, "{out}");
    assert_eq!(t.split('.').count(), 3, "not a JWT: {t}");
    t.to_owned()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidewire-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn version_prints_the_version() {
    for flag in ["--version", "-V"] {
        let out = tidewire().arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("tidewire {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[tokio::test]
async fn a_token_from_gentoken_opens_what_it_lists_and_nothing_else() {
    let config = temp_file(
        "hub.toml",
        &format!(
            "[auth]\nhmac_secret = \"{SECRET}\"\n\n[namespaces.private]\nprivate = true\npresence = true\n"
        ),
    );
    let config = config.to_str().unwrap();
    let srv = serve(&["--config", config]);
    let mut pushed = Vec::new();
    let subscribe =
        |id: u64, channel: &str| json!({"id": id, "op": "subscribe", "channel": channel});

    // A token that expires in 1 s, for the end of the test.
    let expiring = token(&["--user", "eve", "--ttl", "1s", "--config", config], &[]);
    let made = Instant::now();

    // Signed with the [auth] of the hub's own file, given in the URL: the listed private
    // channels open (an exact name and a prefix), another does not; presence shows the
    // user and the info.
    let t = token(
        &[
            "--user",
            "ann",
            "--channels",
            "private:a,private:b-*",
            "--info",
            r#"{"name":"Ann"}"#,
            "--config",
            config,
        ],
        &[],
    );
    let mut ws = client_q(srv.addr, &format!("?token={t}")).await;
    for (id, channel) in [(1, "private:a"), (2, "private:b-1")] {
        let r = request(&mut ws, subscribe(id, channel), &mut pushed).await;
        assert_eq!(r["ok"], true, "{channel}: {r}");
    }
    let r = request(&mut ws, subscribe(3, "private:c"), &mut pushed).await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    let r = request(
        &mut ws,
        json!({"id": 4, "op": "presence", "channel": "private:a"}),
        &mut pushed,
    )
    .await;
    let me = &r["result"]["clients"][0];
    assert_eq!(
        (&me["user"], &me["info"]),
        (&json!("ann"), &json!({"name": "Ann"})),
        "{r}"
    );

    // Signed with TIDEWIRE_AUTH_HMAC_SECRET, sent in `connect`: no channels listed, so no
    // private channel.
    let t = token(&["--user", "bob"], &[("TIDEWIRE_AUTH_HMAC_SECRET", SECRET)]);
    let mut ws = client(srv.addr).await;
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["result"]["user"], "bob", "{r}");
    let r = request(&mut ws, subscribe(2, "private:a"), &mut pushed).await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    let r = request(&mut ws, subscribe(3, "news"), &mut pushed).await;
    assert_eq!(r["ok"], true, "{r}");

    // No token at all: refused (auth on, no anonymous access).
    let mut ws = client(srv.addr).await;
    let r = request(&mut ws, subscribe(1, "private:a"), &mut pushed).await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    assert_eq!(close_of(&mut ws).await.0, 4008);

    // Another secret's token: refused.
    let other = "another-secret-of-at-least-thirty-two-chars";
    let t = token(&["--user", "mallory", "--auth-hmac-secret", other], &[]);
    let mut ws = client(srv.addr).await;
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut pushed,
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("signature")),
        "{r}"
    );

    // The expired one (past its 1 s and the hub's 5 s of leeway): refused, 4001.
    let wait = Duration::from_secs(7).saturating_sub(made.elapsed());
    tokio::time::sleep(wait).await;
    let mut ws = client(srv.addr).await;
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": expiring}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{r}"
    );
    assert_eq!(close_of(&mut ws).await.0, 4001);
}

#[test]
fn gentoken_refuses_without_a_secret_it_can_sign_with() {
    let refused = |args: &[&str], env: &[(&str, &str)], needles: &[&str]| {
        let (code, out, err) = gentoken(args, env);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    };
    // No secret anywhere: the message names every way to give one.
    refused(
        &["--user", "ann"],
        &[],
        &[
            "--auth-hmac-secret",
            "TIDEWIRE_AUTH_HMAC_SECRET",
            "--config",
        ],
    );
    // A secret the hub would refuse.
    refused(
        &["--user", "ann"],
        &[("TIDEWIRE_AUTH_HMAC_SECRET", "short")],
        &["--auth-hmac-secret", "at least 32 characters"],
    );
    // An RS256-only configuration: the hub holds the public key, signing needs the private one.
    let rsa = temp_file(
        "rsa.toml",
        &format!("[auth]\nrsa_public_key_file = \"{RSA_PUBLIC}\"\n"),
    );
    let rsa = rsa.to_str().unwrap();
    refused(
        &["--user", "ann", "--config", rsa],
        &[],
        &["rsa.toml", "no hmac_secret", "private key"],
    );
    // ... also when the file is named by TIDEWIRE_CONFIG.
    refused(
        &["--user", "ann"],
        &[("TIDEWIRE_CONFIG", rsa)],
        &["private key"],
    );
    // A configuration without [auth].
    let plain = temp_file("plain.toml", "demo = false\n");
    refused(
        &["--user", "ann", "--config", plain.to_str().unwrap()],
        &[],
        &["plain.toml has no [auth]", "--auth-hmac-secret"],
    );
    // A file that is not there, or not valid.
    refused(
        &["--user", "ann", "--config", "/nonexistent/hub.toml"],
        &[],
        &["/nonexistent/hub.toml", "cannot read"],
    );
    let bad = temp_file("bad.toml", "[auth]\nhmac_secret = 42\n");
    refused(
        &["--user", "ann", "--config", bad.to_str().unwrap()],
        &[],
        &["bad.toml:2"],
    );
    // The flag wins over the file, as with tidewire serve.
    let t = token(
        &[
            "--user",
            "ann",
            "--config",
            rsa,
            "--auth-hmac-secret",
            SECRET,
        ],
        &[],
    );
    assert!(!t.is_empty());
}
