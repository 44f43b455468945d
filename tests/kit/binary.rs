//! The real binary as a child process: `cognito-gateway serve` on port 0 with JSON logs, waited for
//! until it logs `SERVING`, its stderr read line by line, stopped with SIGTERM as Kubernetes stops
//! it.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::files::Files;

/// The binary Cargo built for this test or bench target (debug under `cargo test`, release under
/// `cargo bench`).
pub const BIN: &str = env!("CARGO_BIN_EXE_cognito-gateway");

/// A running `cognito-gateway serve`, killed if the test fails before it stops it.
pub struct Gateway {
    pub child: Child,
    /// The address its `SERVING` line names.
    pub addr: String,
    /// stderr up to and including the `SERVING` line.
    pub startup_log: Vec<String>,
    /// The rest of stderr, line by line.
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cognito-gateway serve --listen 127.0.0.1:0 --log-format json` with stdin and stdout closed and
/// stderr piped for [`Gateway::start`]; the caller adds arguments and decides the environment.
pub fn serve_command() -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts the binary on port 0 with JSON logs, `args` and `env`, and waits for its SERVING line.
/// Nothing of the machine's that would change a test's outcome reaches it: no RUST_LOG and no AWS
/// region unless `env` names them.
pub fn start_binary(args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let mut command = serve_command();
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .envs(env.iter().copied());
    Gateway::start(command)
}

/// The binary as a pod runs it against a Cognito at `endpoint` (wiremock): `[auth] mode = "none"`
/// said explicitly, fake credentials, nothing from this machine's AWS files; `env` adds to that
/// (a later value for the same variable wins). The files live as long as the returned [`Files`].
pub async fn start_binary_against(endpoint: &str, env: &[(&str, &str)]) -> (Gateway, Files) {
    let files = Files::new("binary");
    let config = files.write("gateway.toml", "[auth]\nmode = \"none\"\n");
    let all: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", endpoint),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
    .into_iter()
    .chain(env.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // Waiting for SERVING blocks; the caller's runtime may be serving the fake Cognito meanwhile.
    let gateway = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = config.to_str().expect("the temp dir's path is UTF-8");
        start_binary(&["--config", config], &env)
    })
    .await
    .expect("starting the binary does not panic");
    (gateway, files)
}

impl Gateway {
    /// Spawns `command` (a [`serve_command`] with the caller's additions) and waits up to 30 s for
    /// its SERVING line.
    pub fn start(mut command: Command) -> Self {
        let mut child = command.spawn().expect("the gateway binary starts");
        let stderr = child.stderr.take().expect("serve_command pipes stderr");
        let (tx, lines) = mpsc::channel();
        // Drained as it comes, whether anyone reads the lines or not: a full pipe would block the
        // gateway's logging, and with it its calls.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut startup_log = Vec::new();
        let addr = loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) else {
                panic!("no SERVING line within 30 s; stderr so far: {startup_log:#?}");
            };
            // Plain-text lines (the banner of --local) are not events.
            let serving = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .filter(|event| event["message"] == "SERVING")
                .map(|event| {
                    event["addr"]
                        .as_str()
                        .expect("SERVING names its address")
                        .to_owned()
                });
            startup_log.push(line);
            if let Some(addr) = serving {
                break addr;
            }
        };
        Self {
            child,
            addr,
            startup_log,
            lines,
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // std has no kill(2) with a signal and the crate forbids unsafe code: kill(1) sends it.
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -TERM failed");
        self.child
            .wait()
            .expect("the child is ours to wait for")
            .code()
    }

    /// The rest of stderr, to its end: call after the process exited.
    pub fn rest_of_log(&self) -> Vec<String> {
        // The reader thread ends at EOF, which the exit brings; `iter` waits for it.
        self.lines.iter().collect()
    }
}
