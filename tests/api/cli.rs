//! The binary itself: `serve --local`, `reset`, a bad config, SIGTERM.

use std::process::Command;

use crate::helpers::{BIN, start_binary};

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
