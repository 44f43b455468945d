//! The binary itself: `serve --local`, `reset`, a bad config, SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_cognito-gateway");

/// A running `cognito-gateway serve`, killed if the test fails before it stops it.
struct Gateway {
    child: Child,
    addr: String,
    /// The rest of stderr, line by line.
    lines: mpsc::Receiver<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on port 0 with JSON logs and waits for its SERVING line.
fn start(args: &[&str]) -> Gateway {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway prints SERVING within 30 s");
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == "SERVING"
        {
            break event["addr"].as_str().unwrap().to_owned();
        }
    };
    Gateway { child, addr, lines }
}

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
    let mut gateway = start(&["--local"]);

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

    let status = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = gateway.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM is a clean exit");
    let rest: Vec<String> = gateway.lines.try_iter().collect();
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
