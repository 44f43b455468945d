//! The soak: the release binary under mixed load for minutes, then an audit.
//!
//! `cargo test --locked --bench gateway -- --soak` (the driver as `cargo test` builds it; the
//! gateway is `target/release/cognito-gateway`, or `COGNITO_GATEWAY_SOAK_BIN`), for
//! `COGNITO_GATEWAY_SOAK_SECS` seconds (default 600). A run of ten minutes or more replaces the Soak
//! section of docs/benchmarks.md; a shorter one (`.ci/run`'s 60 s) prints it and checks the same.
//!
//! The load, from [`WORKERS`] tasks at about [`CALLS_PER_SEC`] calls a second in all, cycles through
//! [`DECK`]: successes; every Cognito error row; throttling (retried); unknown outcomes; repeats and
//! request-id retries answered from memory; a request id reused for another user; invalid
//! requests; bad tokens; callers not allowed the pool; a caller held to 2 calls a second; deadlines
//! that expire while Cognito is answering; calls the client abandons once Cognito has them. The
//! caller policy is reloaded every [`RELOAD_EVERY`], by SIGHUP and by rewriting the file in turn.
//!
//! Afterwards it checks, and fails loudly otherwise:
//! - every call made has one outcome counted by the clients;
//! - the Cognito sends, counted by the fake by username prefix, equal exactly what the rules
//!   allow for the outcomes seen (one per reset that went out, none for an answer from memory or a
//!   refusal, `max_attempts` for throttling, one per person whose call ran out of time or was
//!   abandoned, retry included);
//! - the gateway's own metrics (exported over OTLP to a collector in this process) count the same
//!   calls by status code (hang-ups and deadlines together: which of the two a call ends as is a
//!   race between the client's timer and the gateway's answer), the same refusals, the same
//!   answers from memory, the same reloads, and nothing in flight at the end;
//! - VmRSS, open file descriptors and threads (tokio's tasks are not visible from outside; the
//!   gateway exports no task count) drift less than 10% between the first and the last tenth of
//!   the run after warm-up (the first fifth).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cognito_gateway::proto::{
    ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient,
};
use sha2::Digest as _;
use tokio::runtime::Runtime;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

use crate::{
    kit::{self, binary::Gateway},
    report::{self, mib, table},
};

mod peers;

use peers::{Cognito, Collector, ERRORS, INTERNAL_ERROR, prefix};

/// Runs this long or longer write their figures into docs/benchmarks.md.
const REPORTED_SECS: u64 = 600;
/// Load tasks.
const WORKERS: usize = 8;
/// The whole load's pace: enough to exercise everything, little enough for a shared machine.
const CALLS_PER_SEC: u64 = 120;
/// A config reload this often.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// /proc is read this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Sends per throttled reset (`cognito.max_attempts` in [`config`]).
const MAX_ATTEMPTS: u64 = 3;
const POOL: &str = "us-east-1_Soak1";

/// One step of the load; [`DECK`] says how often each comes.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// A new user: OK, one send.
    Ok,
    /// A new user, then the same again: OK, then OK from memory (cooldown).
    Repeat,
    /// A request id, its retry (from memory), and the id reused for another user.
    RequestId,
    /// HTTP 500 with a request id, and its retry: unknown, then the same from memory.
    Unknown,
    /// One of [`ERRORS`], in turn.
    CognitoError,
    /// TooManyRequestsException, each attempt: `max_attempts` sends.
    Throttled,
    /// An empty username: refused at the edge.
    Invalid,
    /// A token nobody has.
    Unauthenticated,
    /// A caller whose pools do not include this one.
    NotAllowed,
    /// A pool in a region the gateway does not serve (`cognito.allowed_regions`).
    OtherRegion,
    /// The caller held to 2 calls a second.
    RateLimited,
    /// A deadline that expires while Cognito answers, then a retry without one (joins the call
    /// still in flight, or is answered from memory).
    Deadline,
    /// The client hangs up once Cognito has the reset, then retries.
    Cancel,
}

const DECK: &[Plan] = &[
    Plan::Ok,
    Plan::CognitoError,
    Plan::RateLimited,
    Plan::Ok,
    Plan::Repeat,
    Plan::Invalid,
    Plan::CognitoError,
    Plan::RequestId,
    Plan::Ok,
    Plan::Unauthenticated,
    Plan::Deadline,
    Plan::RateLimited,
    Plan::CognitoError,
    Plan::Unknown,
    Plan::NotAllowed,
    Plan::Throttled,
    Plan::OtherRegion,
    Plan::Ok,
    Plan::Cancel,
];

/// One outcome as the client saw it: code, reason, and whether it was answered from memory.
type Outcome = (String, String, bool);

/// What the clients counted.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    outcomes: Mutex<BTreeMap<Outcome, u64>>,
    /// Sends the rules allow for the outcomes seen, by username prefix.
    expected_sends: Mutex<BTreeMap<String, u64>>,
    /// Calls the client's own deadline timer ended (tonic's CANCELLED "Timeout expired") before
    /// the gateway's DEADLINE_EXCEEDED arrived.
    client_timer: AtomicU64,
}

/// Who calls: the tokens of the soak's callers.
struct Callers {
    main: String,
    limited: String,
    narrow: String,
}

/// A figure a [`Sample`] holds, and its name.
type Field = (&'static str, fn(&Sample) -> u64);

/// One /proc sample of the gateway.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    threads: u64,
    fds: u64,
}

/// Everything the report says.
struct Figures {
    took: Duration,
    calls: u64,
    outcomes: BTreeMap<Outcome, u64>,
    sends: BTreeMap<String, u64>,
    expected_sends: BTreeMap<String, u64>,
    client_timer: u64,
    reloads: u64,
    samples: Vec<Sample>,
    metrics: Vec<(String, f64, f64)>,
    log_lines: u64,
    peak_rss_kib: u64,
    /// Metric exports the collector received.
    exports: u64,
}

/// Runs the soak and writes its section of docs/benchmarks.md; panics if an audit fails.
pub(crate) fn run(runtime: &Runtime) {
    let secs: u64 = std::env::var("COGNITO_GATEWAY_SOAK_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("COGNITO_GATEWAY_SOAK_SECS is a number of seconds")
        })
        .unwrap_or(600);
    let binary = std::env::var_os("COGNITO_GATEWAY_SOAK_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/cognito-gateway"),
        PathBuf::from,
    );
    assert!(
        binary.exists(),
        "{} is missing: cargo build --release --bin cognito-gateway first",
        binary.display()
    );
    eprintln!("soak: {} for {secs} s", binary.display());
    let machine = report::Machine::probe();
    let figures = runtime.block_on(soak(&binary, Duration::from_secs(secs)));
    let mut section = String::new();
    write(&mut section, &figures, &machine, secs);
    println!("{section}");
    // Only the documented ten minutes make the report; shorter runs (CI's) are checks.
    if secs >= REPORTED_SECS {
        replace_section(&section);
        eprintln!("soak: written to {}", report::REPORT);
    }
    let failures = audit(&figures);
    assert!(
        failures.is_empty(),
        "soak audit failed:\n{}",
        failures.join("\n")
    );
    eprintln!("soak: every audit passed");
}

async fn soak(binary: &Path, duration: Duration) -> Figures {
    let (server, cognito) = Cognito::start().await;
    let collector = Collector::default();
    let (otlp, _collector_task) =
        kit::otlp::serve_otlp(collector.clone(), None, std::future::pending()).await;
    let callers = Callers {
        main: token("main"),
        limited: token("limited"),
        narrow: token("narrow"),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak");
    std::fs::create_dir_all(&dir).expect("the target tmp dir is writable");
    let config_path = dir.join("gateway.toml");
    write_config(&config_path, &callers, 2);

    let mut command = Command::new(binary);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", server.uri())
        .env("AWS_ACCESS_KEY_ID", "AKIDSOAK")
        .env("AWS_SECRET_ACCESS_KEY", "soak")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "5000")
        .env("OTEL_TRACES_SAMPLER", "always_off");
    let mut gateway = tokio::task::spawn_blocking(move || Gateway::start(command))
        .await
        .expect("starting the binary does not panic");
    let pid = gateway.child.id();
    let logs = LogCounter::drain(&mut gateway);
    let addr = gateway
        .addr
        .parse()
        .expect("SERVING names a socket address");
    let channel = kit::app::connect(addr).await;

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let cognito_ref = Arc::clone(&cognito);
    let deck_position = Arc::new(AtomicUsize::new(0));
    let callers = Arc::new(callers);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (tally, cognito, callers, deck) = (
            Arc::clone(&tally),
            Arc::clone(&cognito_ref),
            Arc::clone(&callers),
            Arc::clone(&deck_position),
        );
        let client = UserAdminServiceClient::new(channel.clone());
        workers.spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_micros(
                1_000_000 * WORKERS as u64 / CALLS_PER_SEC,
            ));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while started.elapsed() < duration {
                pace.tick().await;
                let n = deck.fetch_add(1, Ordering::Relaxed);
                let plan = DECK[n % DECK.len()];
                play(plan, n, &client, &callers, &cognito, &tally).await;
            }
        });
    }

    // Meanwhile: /proc every SAMPLE_EVERY, a reload every RELOAD_EVERY (none in the last 10 s,
    // so that the last one is seen before the end).
    let mut samples = Vec::new();
    let mut reloads = 0u64;
    let mut next_reload = RELOAD_EVERY;
    let mut peak_rss_kib = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let sample = sample(pid, started.elapsed());
        peak_rss_kib = peak_rss_kib.max(sample.rss_kib);
        samples.push(sample);
        if started.elapsed() >= next_reload
            && started.elapsed() + Duration::from_secs(10) < duration
        {
            reloads += 1;
            if reloads % 2 == 1 {
                // The limited caller's rate, 2 or 3 a second: a real change, seen by the watcher.
                write_config(&config_path, &callers, if reloads % 4 == 1 { 3 } else { 2 });
            } else {
                let status = Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .expect("kill(1) runs");
                assert!(status.success(), "kill -HUP failed");
            }
            next_reload += RELOAD_EVERY;
        }
    }
    while workers.join_next().await.is_some() {}
    // Calls end with the load; the ones still running in the gateway (deadlines, hang-ups) end
    // within SLOW. Wait for the last reload to be logged, then stop it as Kubernetes would.
    let waited = Instant::now();
    while logs.reloads() < reloads && waited.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(peers::SLOW * 2).await;
    let took = started.elapsed();
    let exit = tokio::task::spawn_blocking(move || {
        let code = gateway.terminate();
        drop(gateway);
        code
    })
    .await
    .expect("terminating does not panic");
    assert_eq!(exit, Some(0), "the gateway's exit code after SIGTERM");
    let log_lines = logs.wait_for_end();

    let outcomes = tally
        .outcomes
        .lock()
        .expect("no panic with the lock")
        .clone();
    let expected_sends = tally
        .expected_sends
        .lock()
        .expect("no panic with the lock")
        .clone();
    let metrics = compare_metrics(&collector, &outcomes, reloads);
    Figures {
        took,
        calls: tally.calls.load(Ordering::Relaxed),
        outcomes,
        sends: cognito.sends(),
        expected_sends,
        client_timer: tally.client_timer.load(Ordering::Relaxed),
        reloads,
        samples,
        metrics,
        log_lines,
        peak_rss_kib,
        exports: collector.exports(),
    }
}

/// Plays one step of the load: one call or a few, each tallied.
async fn play(
    plan: Plan,
    n: usize,
    client: &UserAdminServiceClient<Channel>,
    callers: &Callers,
    cognito: &Cognito,
    tally: &Tally,
) {
    let call = |user: String, token: &str, request_id: String, deadline: Option<Duration>| {
        let mut request = tonic::Request::new(ResetUserPasswordRequest {
            user_pool_id: POOL.to_owned(),
            username: user,
            client_metadata: Default::default(),
            request_id,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a token is ASCII"),
        );
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        let mut client = client.clone();
        async move {
            client
                .reset_user_password(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let main = callers.main.as_str();
    let id = || request_id(n);
    match plan {
        Plan::Ok => {
            let user = format!("ok-{n}");
            tally.record(&user, call(user.clone(), main, String::new(), None).await);
        }
        Plan::Repeat => {
            let user = format!("ok-{n}");
            for _ in 0..2 {
                tally.record(&user, call(user.clone(), main, String::new(), None).await);
            }
        }
        Plan::RequestId | Plan::Unknown => {
            let user = match plan {
                Plan::RequestId => format!("ok-{n}"),
                _ => format!("x{INTERNAL_ERROR}-{n}"),
            };
            let id = id();
            for _ in 0..2 {
                tally.record(&user, call(user.clone(), main, id.clone(), None).await);
            }
            if let Plan::RequestId = plan {
                let other = format!("ok-{n}b");
                tally.record(&other, call(other.clone(), main, id, None).await);
            }
        }
        Plan::CognitoError => {
            let user = format!("x{}-{n}", (n / DECK.len()) % ERRORS.len());
            tally.record(&user, call(user.clone(), main, String::new(), None).await);
        }
        Plan::Throttled => {
            let user = format!("thr-{n}");
            tally.record(&user, call(user.clone(), main, String::new(), None).await);
        }
        Plan::Invalid => {
            tally.record(
                "invalid",
                call(String::new(), main, String::new(), None).await,
            );
        }
        Plan::Unauthenticated => {
            let user = format!("ok-{n}");
            tally.record(
                &user,
                call(user.clone(), "not-a-token", String::new(), None).await,
            );
        }
        Plan::NotAllowed => {
            let user = format!("ok-{n}");
            let narrow = callers.narrow.as_str();
            tally.record(&user, call(user.clone(), narrow, String::new(), None).await);
        }
        Plan::OtherRegion => {
            let user = format!("ok-{n}");
            tally.record(&user, other_region(client, main, &user).await);
        }
        Plan::RateLimited => {
            let user = format!("lim-{n}");
            let limited = callers.limited.as_str();
            tally.record(
                &user,
                call(user.clone(), limited, String::new(), None).await,
            );
        }
        Plan::Deadline => {
            // Whether the first call ends as DEADLINE_EXCEEDED or, when the client's own timer
            // wins, CANCELLED, and whether the retry joins it in flight or finds it remembered,
            // the person gets exactly one send.
            let user = format!("slow-{n}");
            let deadline = Some(peers::SLOW / 4);
            let first = call(user.clone(), main, String::new(), deadline).await;
            tally.count_only(first);
            let retry = call(user.clone(), main, String::new(), None).await;
            tally.count_only(retry);
            tally.expect_sends(&user, 1);
        }
        Plan::Cancel => {
            let user = format!("cancel-{n}");
            let arrived = cognito.on_arrival(&user);
            let abandoned = tokio::spawn(call(user.clone(), main, String::new(), None));
            tally.calls.fetch_add(1, Ordering::Relaxed);
            // Cognito has the reset: the call hangs up now (its stream is reset), and the reset
            // goes on in the gateway.
            if tokio::time::timeout(Duration::from_secs(10), arrived)
                .await
                .is_ok()
            {
                abandoned.abort();
                let _ = abandoned.await;
                tally.count(("CANCELLED (by the client)".into(), String::new(), false));
                tally.expect_sends(&user, 1);
            } else {
                let result = abandoned.await.expect("the call does not panic");
                tally.calls.fetch_sub(1, Ordering::Relaxed);
                tally.record(&user, result);
            }
            tally.record(&user, call(user.clone(), main, String::new(), None).await);
        }
    }
}

/// One call for a pool in eu-west-1, which the soak's gateway does not serve.
async fn other_region(
    client: &UserAdminServiceClient<Channel>,
    token: &str,
    user: &str,
) -> Result<cognito_gateway::proto::ResetUserPasswordResponse, Status> {
    let mut request = tonic::Request::new(ResetUserPasswordRequest {
        user_pool_id: "eu-west-1_Soak2".to_owned(),
        username: user.to_owned(),
        client_metadata: Default::default(),
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    client
        .clone()
        .reset_user_password(request)
        .await
        .map(tonic::Response::into_inner)
}

impl Tally {
    /// Counts a call's outcome and the sends the rules allow for it.
    fn record(
        &self,
        user: &str,
        result: Result<cognito_gateway::proto::ResetUserPasswordResponse, Status>,
    ) {
        let sends = self.count_only(result);
        self.expect_sends(user, sends);
    }

    /// Counts a call's outcome; returns the sends the rules allow for it.
    fn count_only(
        &self,
        result: Result<cognito_gateway::proto::ResetUserPasswordResponse, Status>,
    ) -> u64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (outcome, sends) = match result {
            Ok(response) => (
                ("OK".to_owned(), String::new(), response.deduplicated),
                u64::from(!response.deduplicated),
            ),
            Err(status) => {
                if status.code() == Code::Cancelled && status.message().contains("Timeout expired")
                {
                    self.client_timer.fetch_add(1, Ordering::Relaxed);
                }
                let info = status.get_details_error_info();
                let reason = info.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
                let remembered = info
                    .as_ref()
                    .is_some_and(|i| i.metadata.get("deduplicated").is_some_and(|d| d == "true"));
                let from_cognito = info
                    .as_ref()
                    .is_some_and(|i| i.domain == "cognito-idp.amazonaws.com");
                let sends = match reason.as_str() {
                    "COGNITO_THROTTLED" => MAX_ATTEMPTS,
                    "RESET_OUTCOME_UNKNOWN" => u64::from(!remembered),
                    "DEADLINE_EXCEEDED" => {
                        u64::from(!status.message().contains("before anything was sent"))
                    }
                    _ => u64::from(from_cognito),
                };
                ((code_name(status.code()), reason, remembered), sends)
            }
        };
        self.count(outcome);
        sends
    }

    fn count(&self, outcome: Outcome) {
        *self
            .outcomes
            .lock()
            .expect("no panic with the lock")
            .entry(outcome)
            .or_default() += 1;
    }

    fn expect_sends(&self, user: &str, sends: u64) {
        if sends > 0 {
            *self
                .expected_sends
                .lock()
                .expect("no panic with the lock")
                .entry(prefix(user).to_owned())
                .or_default() += sends;
        }
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

/// A UUID unique to this step of the load.
fn request_id(n: usize) -> String {
    format!("5e1f0000-0000-4000-8000-{n:012x}")
}

fn token(name: &str) -> String {
    format!("soak-token-of-{name}-0123456789abcdef")
}

fn write_config(path: &Path, callers: &Callers, limited_rate: u32) {
    let hash = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let config = format!(
        r#"# Written by benches/gateway/soak.rs.
[auth]
mode = "token"
reload_interval_secs = 1

[[callers]]
name = "main"
token_sha256 = "{main}"
user_pools = ["*"]
rate_per_second = 100000
burst = 100000

[[callers]]
name = "limited"
token_sha256 = "{limited}"
user_pools = ["*"]
rate_per_second = {limited_rate}
burst = 1

[[callers]]
name = "narrow"
token_sha256 = "{narrow}"
user_pools = ["us-east-1_Elsewhere"]

[limits]
backend_rps = 10000
backend_burst = 10000
user_cooldown_secs = 30
# Request ids are kept a minute, not a day: the soak shows memory reaching its steady state.
request_id_ttl_secs = 60

[cognito]
allowed_regions = ["us-east-1"]
operation_timeout_ms = 3000
max_attempts = {MAX_ATTEMPTS}
initial_backoff_ms = 1
max_backoff_ms = 5
"#,
        main = hash(&callers.main),
        limited = hash(&callers.limited),
        narrow = hash(&callers.narrow),
    );
    // Written whole and renamed, as Kubernetes swaps a mounted file: never read half-written.
    let staged = path.with_extension("toml.new");
    let mut file = std::fs::File::create(&staged).expect("the soak dir is writable");
    file.write_all(config.as_bytes())
        .expect("the soak dir is writable");
    std::fs::rename(&staged, path).expect("the soak dir is writable");
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the gateway is alive and /proc is mounted");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("/proc/<pid>/status has the field")
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the gateway's fds are readable")
        .count() as u64;
    Sample {
        at,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    }
}

/// Counts the gateway's log lines as they come, so that the pipe never fills.
struct LogCounter {
    lines: Arc<AtomicU64>,
    reloads: Arc<AtomicU64>,
    done: std::thread::JoinHandle<()>,
}

impl LogCounter {
    fn drain(gateway: &mut Gateway) -> Self {
        let (_, empty) = std::sync::mpsc::channel();
        let lines = std::mem::replace(&mut gateway.lines, empty);
        let count = Arc::new(AtomicU64::new(gateway.startup_log.len() as u64));
        let reloads = Arc::new(AtomicU64::new(0));
        let (count_in, reloads_in) = (Arc::clone(&count), Arc::clone(&reloads));
        let done = std::thread::spawn(move || {
            for line in lines {
                count_in.fetch_add(1, Ordering::Relaxed);
                if line.contains("caller policy reloaded") {
                    reloads_in.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            lines: count,
            reloads,
            done,
        }
    }

    fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The line count, once the process has exited and its stderr ended.
    fn wait_for_end(self) -> u64 {
        self.done.join().expect("the log reader does not panic");
        self.lines.load(Ordering::Relaxed)
    }
}

/// The gateway's metrics against the clients' counts: (what, the gateway's figure, the clients').
fn compare_metrics(
    collector: &Collector,
    outcomes: &BTreeMap<Outcome, u64>,
    reloads: u64,
) -> Vec<(String, f64, f64)> {
    let count = |filter: &dyn Fn(&Outcome) -> bool| -> f64 {
        outcomes
            .iter()
            .filter(|(o, _)| filter(o))
            .map(|(_, n)| *n as f64)
            .sum()
    };
    let method = "rpc.method=cognitogateway.v1.UserAdminService/ResetUserPassword";
    let mut rows = Vec::new();
    let mut codes: Vec<String> = outcomes.keys().map(|(code, _, _)| code.clone()).collect();
    codes.dedup();
    // A client hang-up and a deadline race the gateway's answer: tonic's client enforces the
    // deadline too, and when its timer wins, the gateway's DEADLINE_EXCEEDED (or, if the gateway
    // had not answered yet, its CANCELLED) is discarded. The two are compared together.
    let ended_early =
        |code: &str| ["Cancelled", "DeadlineExceeded", "CANCELLED (by the client)"].contains(&code);
    for code in &codes {
        let Some(name) = wire_name(code).filter(|_| !ended_early(code)) else {
            continue;
        };
        let gateway = collector.total(
            "rpc.server.call.duration",
            &[method, &format!("rpc.response.status_code={name}")],
        );
        rows.push((
            format!("calls answered {code}"),
            gateway,
            count(&|o| o.0 == *code),
        ));
    }
    let early = |code: Code| {
        collector.total(
            "rpc.server.call.duration",
            &[
                method,
                &format!(
                    "rpc.response.status_code={}",
                    cognito_gateway::code_name(code)
                ),
            ],
        )
    };
    rows.push((
        "calls answered Cancelled or DeadlineExceeded (hang-ups, deadlines)".into(),
        early(Code::Cancelled) + early(Code::DeadlineExceeded),
        count(&|o| ended_early(&o.0)),
    ));
    rows.push((
        "calls in all".into(),
        collector.total("rpc.server.call.duration", &[method]),
        count(&|_| true),
    ));
    for (reason, label) in [
        ("RATE_LIMITED", "refusals RATE_LIMITED"),
        ("UNAUTHENTICATED", "refusals UNAUTHENTICATED"),
        ("CALLER_NOT_ALLOWED", "refusals CALLER_NOT_ALLOWED"),
    ] {
        rows.push((
            label.into(),
            collector.total("cognito_gateway.rejections", &[&format!("reason={reason}")]),
            count(&|o| o.1 == reason),
        ));
    }
    rows.push((
        "answers from memory or a shared call (deduplicated)".into(),
        collector.total("cognito_gateway.deduplicated", &[]),
        count(&|o| o.2),
    ));
    rows.push((
        "config reloads".into(),
        collector.total("cognito_gateway.config.reloads", &["outcome=ok"]),
        reloads as f64,
    ));
    rows.push((
        "calls in flight at the end".into(),
        collector.total("cognito_gateway.in_flight", &[]),
        0.0,
    ));
    rows
}

/// The code's name as the metrics carry it (`rpc.response.status_code`, as gRPC spells it:
/// `DEADLINE_EXCEEDED`), from the name the soak counts it under (tonic's, `DeadlineExceeded`).
fn wire_name(name: &str) -> Option<&'static str> {
    (0..=16)
        .map(Code::from_i32)
        .find(|code| code_name(*code) == name)
        .map(cognito_gateway::code_name)
}

/// Everything that must hold; each failure as a line.
fn audit(figures: &Figures) -> Vec<String> {
    let mut failures = Vec::new();
    let outcomes: u64 = figures.outcomes.values().sum();
    if outcomes != figures.calls {
        failures.push(format!(
            "{} calls made, {outcomes} outcomes counted",
            figures.calls
        ));
    }
    if figures.sends != figures.expected_sends {
        failures.push(format!(
            "Cognito sends {:?}, the rules allow {:?}",
            figures.sends, figures.expected_sends
        ));
    }
    for (what, gateway, clients) in &figures.metrics {
        if gateway != clients {
            failures.push(format!(
                "{what}: the gateway's metrics say {gateway}, the clients {clients}"
            ));
        }
    }
    for (what, drift) in drifts(&figures.samples) {
        if drift.abs() >= 0.10 {
            failures.push(format!(
                "{what} drifted {:+.1}% after warm-up",
                drift * 100.0
            ));
        }
    }
    failures
}

/// (what, relative change) of RSS, fds and threads between the first and the last tenth of the
/// samples after warm-up (the first fifth of the run).
fn drifts(samples: &[Sample]) -> Vec<(&'static str, f64)> {
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.at * 5 >= last.at).collect();
    let tenth = (warm.len() / 10).max(1);
    let mean = |part: &[&Sample], field: fn(&Sample) -> u64| {
        part.iter().map(|s| field(s) as f64).sum::<f64>() / part.len() as f64
    };
    let (first, end) = (&warm[..tenth], &warm[warm.len() - tenth..]);
    let fields: [Field; 3] = [
        ("VmRSS", |s| s.rss_kib),
        ("open file descriptors", |s| s.fds),
        ("threads", |s| s.threads),
    ];
    fields
        .into_iter()
        .map(|(what, field)| (what, mean(end, field) / mean(first, field) - 1.0))
        .collect()
}

/// The report's Soak section.
fn write(out: &mut String, figures: &Figures, machine: &report::Machine, secs: u64) {
    let _ = writeln!(out, "## Soak\n");
    let _ = writeln!(
        out,
        "Generated by `COGNITO_GATEWAY_SOAK_SECS={secs} cargo test --locked --bench gateway -- --soak` \
         (benches/gateway/soak.rs; `.ci/run` runs it for 60 s) against `target/release/cognito-gateway` as a child \
         process, {date}, on {cpus} shared CPUs (load average after: {load}). Not part of `cargo bench`'s run: it \
         replaces only this section.\n",
        date = machine.date(),
        cpus = machine.cpus,
        load = report::read_loadavg(),
    );
    let _ = writeln!(
        out,
        "{WORKERS} client tasks over one HTTP/2 connection, about {CALLS_PER_SEC} calls/s in all, {calls} calls in {took:.0} s, \
         cycling through: new users (OK), repeats within the cooldown and request-id retries (answered from memory), a \
         request id reused for another user, every Cognito error row (17 replies, 500 and 503 among them), throttling \
         (retried to `max_attempts` = {MAX_ATTEMPTS}), invalid requests, a bad token, a caller not allowed the pool, a \
         caller held to 2-3 calls/s (RATE_LIMITED), deadlines of {deadline} ms expiring while Cognito takes {slow} ms, \
         and calls the client abandons once Cognito has them (then retries). Cognito is a wiremock server in the driver \
         answering by username prefix and counting every send; the gateway runs its real SDK path against it. Every {reload} s \
         the caller policy is reloaded, by rewriting the file and by SIGHUP in turn ({reloads} reloads). The gateway \
         exports its metrics over OTLP every 5 s to a collector in the driver ({exports} exports; the last is the \
         flush at SIGTERM). The gateway wrote {log_lines} log lines.\n",
        calls = figures.calls,
        took = figures.took.as_secs_f64(),
        deadline = (peers::SLOW / 4).as_millis(),
        slow = peers::SLOW.as_millis(),
        reload = RELOAD_EVERY.as_secs(),
        reloads = figures.reloads,
        log_lines = figures.log_lines,
        exports = figures.exports,
    );
    let rows: Vec<Vec<String>> = figures
        .outcomes
        .iter()
        .map(|((code, reason, remembered), n)| {
            vec![
                code.clone(),
                reason.clone(),
                if *remembered {
                    "yes".into()
                } else {
                    String::new()
                },
                n.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &["outcome (client)", "reason", "deduplicated", "calls"],
        &rows,
    );
    let _ = writeln!(
        out,
        "\n{} calls made, {} outcomes counted; the client's own deadline timer beat the gateway's DEADLINE_EXCEEDED {} times.\n",
        figures.calls,
        figures.outcomes.values().sum::<u64>(),
        figures.client_timer,
    );
    let mut prefixes: Vec<&String> = figures
        .sends
        .keys()
        .chain(figures.expected_sends.keys())
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let rows: Vec<Vec<String>> = prefixes
        .into_iter()
        .map(|p| {
            vec![
                p.clone(),
                figures.sends.get(p).copied().unwrap_or(0).to_string(),
                figures
                    .expected_sends
                    .get(p)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "username prefix",
            "Cognito sends (fake)",
            "sends the rules allow for the outcomes",
        ],
        &rows,
    );
    let _ = writeln!(out);
    let rows: Vec<Vec<String>> = figures
        .metrics
        .iter()
        .map(|(what, gateway, clients)| {
            vec![what.clone(), format!("{gateway}"), format!("{clients}")]
        })
        .collect();
    table(
        out,
        &["", "gateway's metrics (OTLP)", "clients' count"],
        &rows,
    );
    let _ = writeln!(out);
    let after: Vec<&Sample> = match figures.samples.last() {
        Some(last) => figures
            .samples
            .iter()
            .filter(|s| s.at * 5 >= last.at)
            .collect(),
        None => Vec::new(),
    };
    let points = 6;
    let rows: Vec<Vec<String>> = (0..points)
        .filter_map(|i| after.get(i * (after.len().saturating_sub(1)) / (points - 1)))
        .map(|s| {
            vec![
                format!("{}", s.at.as_secs()),
                mib(s.rss_kib),
                s.fds.to_string(),
                s.threads.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &["s into the run", "VmRSS (MiB)", "open fds", "threads"],
        &rows,
    );
    let drifts: Vec<String> = drifts(&figures.samples)
        .into_iter()
        .map(|(what, d)| format!("{what} {:+.1}%", d * 100.0))
        .collect();
    let _ = writeln!(
        out,
        "\n/proc/PID/status and /proc/PID/fd read every {} s; the table shows the samples after warm-up (the first fifth). \
         Drift, the mean of the last tenth of those samples against the first tenth: {} (the audit requires each under 10%). \
         Peak VmRSS {} MiB. Tokio's tasks are not visible from outside and the gateway exports no task count: threads \
         (tokio's workers and its blocking pool, which the SDK's DNS lookups use) and `cognito_gateway.in_flight` stand in.",
        SAMPLE_EVERY.as_secs(),
        drifts.join(", "),
        mib(figures.peak_rss_kib),
    );
}

/// Puts `section` into docs/benchmarks.md in place of the Soak section there (or at the end).
fn replace_section(section: &str) {
    let report = std::fs::read_to_string(report::REPORT).unwrap_or_default();
    let mut kept = report::without_section(&report, "## Soak");
    if !kept.ends_with("\n\n") {
        kept.push('\n');
    }
    kept.push_str(section);
    std::fs::write(report::REPORT, kept).expect("docs/benchmarks.md is writable");
}
