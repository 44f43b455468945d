//! The README's Python client, run as a caller would run it: its stubs generated from proto/ with
//! grpcio-tools, against the real server with token authentication, in front of a Cognito that
//! answers one person with HTTP 500 (an unknown outcome). The snippet must read ErrorInfo,
//! RetryInfo and `deduplicated`, and its one retry of the unknown outcome must send nothing.
//!
//! Python's grpcio, grpcio-status and grpcio-tools are required: CI installs them, and their
//! absence fails the test rather than skipping it.

use std::{path::Path, process::Command, time::Duration};

use cognito_gateway::config::{AccessConfig, AuthMode, CallerConfig};
use sha2::{Digest as _, Sha256};
use wiremock::{
    Mock,
    matchers::{body_partial_json, header},
};

use crate::kit::{
    app::{sdk_backend, spawn_app_with, test_config, test_settings},
    fake_cognito::{TARGET, cognito_error, cognito_ok, fake_cognito, resets},
    files::Files,
};

const POOL: &str = "us-east-1_ReadMe1";
const TOKEN: &str = "readme-example-token";

/// The README's only ```python block.
fn python_snippet() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("README.md has a ```python block")
        + 10;
    let length = readme[start..].find("```").unwrap();
    readme[start..start + length].to_owned()
}

/// Runs `python3 args` in `dir`, and returns its stdout; a failure shows its stderr.
fn python(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("python3")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 {args:?} failed (it needs: pip install grpcio grpcio-status grpcio-tools):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_readme_python_client_reads_the_details_and_does_not_resend_an_unknown_outcome() {
    let cognito = fake_cognito(cognito_ok("rid-ok")).await;
    // carol's reset fails as Cognito's own 5xx does: it may have been sent.
    Mock::given(header("x-amz-target", TARGET))
        .and(body_partial_json(
            serde_json::json!({ "Username": "carol" }),
        ))
        .respond_with(cognito_error(
            500,
            "InternalErrorException",
            "Internal error",
            "rid-500",
        ))
        .with_priority(1)
        .mount(&cognito)
        .await;
    let mut config = test_config();
    config.limits.user_cooldown = Duration::from_secs(30);
    config.access = AccessConfig {
        mode: AuthMode::Token,
        callers: vec![CallerConfig {
            name: "readme".into(),
            token_sha256: Some(Sha256::digest(TOKEN).into()),
            user_pools: None,
            rate_per_second: 100,
            burst: 100,
        }],
        ..AccessConfig::none()
    };
    let app = spawn_app_with(config, sdk_backend(&cognito.uri(), test_settings()).await).await;

    let files = Files::new("readme-python");
    let dir = files.path("");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let proto = proto.to_str().unwrap();
    let api = format!("{proto}/cognitogateway/v1/user_admin.proto");
    python(
        &dir,
        &[
            "-m",
            "grpc_tools.protoc",
            "-I",
            proto,
            "--python_out=.",
            "--grpc_python_out=.",
            &api,
        ],
    );
    files.write("reset.py", &python_snippet());
    let addr = app.addr.to_string();
    let run = |username: &'static str| {
        let (dir, addr) = (dir.clone(), addr.clone());
        tokio::task::spawn_blocking(move || {
            python(&dir, &["reset.py", &addr, TOKEN, POOL, username])
        })
    };

    let ok = run("alice").await.unwrap();
    assert_eq!(ok, "OK deduplicated=false cognito_request_id=rid-ok\n");
    let again = run("alice").await.unwrap();
    assert_eq!(
        again, "OK deduplicated=true cognito_request_id=rid-ok\n",
        "within the cooldown"
    );

    let unknown = run("carol").await.unwrap();
    let lines: Vec<_> = unknown.lines().collect();
    assert_eq!(lines.len(), 2, "{unknown}");
    assert!(
        lines[0].starts_with("UNKNOWN RESET_OUTCOME_UNKNOWN deduplicated=false retry_after_s="),
        "{unknown}"
    );
    let delay: f64 = lines[0].rsplit('=').next().unwrap().parse().unwrap();
    assert!(
        delay > 25.0 && delay <= 30.0,
        "the rest of the cooldown: {delay}"
    );
    assert!(
        lines[1].starts_with("UNKNOWN RESET_OUTCOME_UNKNOWN deduplicated=true retry_after_s="),
        "{unknown}"
    );
    // alice once, carol once: neither the repeat nor the retry of the unknown outcome sent.
    assert_eq!(resets(&cognito).await.len(), 2);
}
