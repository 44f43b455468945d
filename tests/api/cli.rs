//! The binary itself: `serve --local`, `reset`, a bad config, SIGTERM.

use std::process::Command;

use crate::kit::{
    binary::{BIN, start_binary, start_binary_against},
    fake_cognito::{cognito_ok, fake_cognito},
};

fn reset(addr: &str, user: &str) -> std::process::Output {
    Command::new(BIN)
        .args([
            "reset",
            "--addr",
            &format!("http://{addr}"),
            "--user-pool-id",
            "local-1_DemoPool",
            "--username",
            user,
        ])
        .output()
        .unwrap()
}

#[test]
fn serve_local_then_reset_then_sigterm_exits_zero() {
    let mut gateway = start_binary(&["--local"], &[]);

    let ok = reset(&gateway.addr, "alice");
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.starts_with("OK"), "{stdout}");
    assert!(stdout.contains("local-"), "prints the request id: {stdout}");

    let failed = reset(&gateway.addr, "bob-disabled");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.starts_with("FAILED_PRECONDITION USER_NOT_RESETTABLE: User is disabled."),
        "{stderr}"
    );
    assert!(stderr.contains("request id: local-"), "{stderr}");

    assert_eq!(gateway.terminate(), Some(0), "SIGTERM is a clean exit");
    let rest = gateway.rest_of_log();
    assert!(rest.iter().any(|l| l.contains("NOT_SERVING")), "{rest:?}");
    assert!(
        !rest.iter().any(|l| l.contains("alice")),
        "no username in the logs: {rest:?}"
    );
}

#[test]
fn a_sighup_as_soon_as_serving_reloads_rather_than_kills() {
    let mut gateway = start_binary(&["--local"], &[]);
    // At once: its handler is installed before SERVING is logged.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gateway.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ok = reset(&gateway.addr, "alice");
    assert!(ok.status.success(), "still serving after SIGHUP: {ok:?}");
    assert_eq!(gateway.terminate(), Some(0));
    let rest = gateway.rest_of_log();
    assert!(
        rest.iter().any(|l| l.contains("SIGHUP: reloading")),
        "{rest:?}"
    );
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("cg-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[server]\nmax_concurrent_streams = 0\n").unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--local", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.max_concurrent_streams"), "{stderr}");

    std::fs::write(&path, "[cognito]\nmax_attempt = 2\n").unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--local", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_attempt"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reset_reports_an_unreachable_gateway() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = reset(&format!("127.0.0.1:{port}"), "alice");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("UNAVAILABLE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_aws_settings_from_the_standard_environment() {
    use crate::kit::fake_cognito::TARGET;
    use wiremock::{
        Mock,
        matchers::{header, method},
    };
    let cognito = fake_cognito(cognito_ok("rid-env")).await;
    let (gateway, _files) = start_binary_against(
        &cognito.uri(),
        &[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .await;
    let addr = gateway.addr.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "reset",
                "--addr",
                &format!("http://{addr}"),
                "--user-pool-id",
                "ap-south-1_Env1",
                "--username",
                "alice",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("rid-env"));
    let sent = crate::kit::fake_cognito::resets(&cognito).await;
    assert_eq!(sent.len(), 1);
    let authorization = sent[0].headers["authorization"].to_str().unwrap();
    assert!(
        authorization.contains("AKIDEXAMPLE/"),
        "the environment's credentials sign it"
    );
    assert!(
        authorization.contains("/ap-south-1/cognito-idp/"),
        "the pool's region, not AWS_REGION"
    );

    // --timeout-ms goes to the gateway as the call's deadline: a slow Cognito makes it
    // DEADLINE_EXCEEDED, the gateway's answer, not a local CANCELLED.
    Mock::given(method("POST"))
        .and(header("x-amz-target", TARGET))
        .and(wiremock::matchers::body_string_contains(
            "\"Username\":\"slow\"",
        ))
        .respond_with(cognito_ok("rid-slow").set_delay(std::time::Duration::from_secs(3)))
        .with_priority(1)
        .mount(&cognito)
        .await;
    let run = |user: &'static str, extra: &'static [&'static str]| {
        let addr = gateway.addr.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["reset", "--addr", &format!("http://{addr}")])
                .args(["--user-pool-id", "ap-south-1_Env1", "--username", user])
                .args(extra)
                .output()
                .unwrap()
        })
    };
    let slow = run("slow", &["--timeout-ms", "300"]).await.unwrap();
    let stderr = String::from_utf8_lossy(&slow.stderr);
    assert!(
        stderr.starts_with("DEADLINE_EXCEEDED DEADLINE_EXCEEDED"),
        "{stderr}"
    );
    // And a repeat inside the cooldown says that no new code went out.
    let repeat = run("alice", &[]).await.unwrap();
    assert!(repeat.status.success(), "{repeat:?}");
    let stdout = String::from_utf8_lossy(&repeat.stdout);
    assert!(stdout.contains("no new code was sent"), "{stdout}");

    let mut gateway = gateway;
    let code = tokio::task::spawn_blocking(move || gateway.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn reset_authenticates_with_a_token_file() {
    let dir = std::env::temp_dir().join(format!("cg-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "demo-token\n").unwrap();
    let config = dir.join("gateway.toml");
    // SHA-256 of "demo-token".
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"demo-token"));
    std::fs::write(
        &config,
        format!("[auth]\nmode = \"token\"\n[[callers]]\nname = \"ops\"\ntoken_sha256 = \"{hash}\"\nuser_pools = [\"*\"]\n"),
    )
    .unwrap();
    let config_path = config.display().to_string();
    let mut gateway = start_binary(&["--local", "--config", &config_path], &[]);
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "reset",
                "--addr",
                &format!("http://{}", gateway.addr),
                "--user-pool-id",
                "local-1_DemoPool",
                "--username",
                "alice",
            ])
            .args(extra)
            .env_remove("COGNITO_GATEWAY_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).starts_with("UNAUTHENTICATED UNAUTHENTICATED"),
        "{refused:?}"
    );
    let token_path = token.display().to_string();
    let ok = run(&["--token-file", &token_path]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(gateway.terminate(), Some(0));
    assert!(
        !gateway
            .rest_of_log()
            .iter()
            .any(|l| l.contains("demo-token")),
        "the token is never logged"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_aws_region_the_start_never_asks_imds() {
    // An IMDS that counts: a listener nobody should connect to.
    let imds = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    imds.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", imds.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!("cg-imds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(&config, "[auth]\nmode = \"none\"\n").unwrap();
    let mut gateway = start_binary(
        &["--config", config.to_str().unwrap()],
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ],
    );
    // SERVING was printed: the start is over.
    assert!(
        imds.accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the start connected to IMDS"
    );
    assert_eq!(gateway.terminate(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_key_of_a_bad_one() {
    let files = crate::kit::files::Files::new("check-config");
    let secret = files.write("secret", &"s".repeat(40));
    let good = files.write(
        "good.toml",
        &format!(
            "[auth]\nmode = \"none\"\n[limits]\nuser_identity = \"canonical\"\n[fleet]\nredis_url = \"redis://127.0.0.1:1/0\"\nuser_key_secret_file = {:?}\n",
            secret.display().to_string()
        ),
    );
    let check = |path: &std::path::Path| {
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(path)
            .env_remove("COGNITO_GATEWAY_REDIS_URL")
            .output()
            .unwrap()
    };
    let ok = check(&good);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let summary = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert!(
        summary.starts_with("config OK: auth none") && summary.contains("user identity canonical"),
        "{summary}"
    );
    // Nothing is served and Redis is not asked: the check passed with no Redis at that address.
    for (name, toml, key) in [
        (
            "range.toml",
            "[server]\nmax_concurrent_streams = 0\n".to_owned(),
            "server.max_concurrent_streams",
        ),
        (
            "secret.toml",
            "[auth]\nmode = \"none\"\n[fleet]\nredis_url = \"redis://x\"\nuser_key_secret_file = \"/nonexistent/secret\"\n".to_owned(),
            "fleet.user_key_secret_file",
        ),
        (
            "jwks.toml",
            "[auth]\nmode = \"jwt\"\n[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"/nonexistent/jwks.json\"\n[[callers]]\nname = \"svc\"\nuser_pools = [\"*\"]\n".to_owned(),
            "auth.jwt.jwks_file",
        ),
    ] {
        let bad = check(&files.write(name, &toml));
        assert_eq!(bad.status.code(), Some(2), "{name}: {bad:?}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains(key), "{name}: {stderr}");
    }
}

#[test]
fn reset_prints_the_request_id_to_retry_an_unknown_outcome_with() {
    let mut gateway = start_binary(&["--local"], &[]);
    const ID: &str = "0b3e6f1c-7d2a-4e8b-9c5f-1a2b3c4d5e6f";
    let run = |user: &str| {
        Command::new(BIN)
            .args(["reset", "--addr", &format!("http://{}", gateway.addr)])
            .args(["--user-pool-id", "local-1_DemoPool", "--username", user])
            .args(["--request-id", ID])
            .output()
            .unwrap()
    };
    let first = run("alice");
    assert!(first.status.success(), "{first:?}");
    let again = run("alice");
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no new code was sent"),
        "{again:?}"
    );
    // The same id for another user is refused.
    let reused = run("carol-unconfirmed");
    assert!(
        String::from_utf8_lossy(&reused.stderr)
            .starts_with("FAILED_PRECONDITION REQUEST_ID_REUSED"),
        "{reused:?}"
    );
    assert_eq!(gateway.terminate(), Some(0));
}
