//! `cargo bench --bench gateway`: what the gateway costs, measured in one run.
//!
//! 1. The release binary: file size, time from exec to the `SERVING` log line, RSS idle and after
//!    calls, time from SIGTERM to a clean exit.
//! 2. In process, as the tests build the app: sequential latency (p50/p90/p99) and concurrent
//!    throughput, with a real tonic client over loopback, against the embedded local Cognito.
//! 3. The same loads sent straight to the local Cognito with the AWS SDK, no gateway, so the
//!    difference is the gateway's own overhead.
//!
//! The gateway's limits (caller rate, backend guard, per-user cooldown) are raised out of the way,
//! as the tests do: their checks still run on every call, but none refuses one and no answer is
//! remembered (cooldown 0), so the figures are the gateway's work rather than its throttles. Only
//! the per-user single-flight stays: concurrent loads name a new user each call, apart from one
//! line that shows the sharing on purpose.
//!
//! The machine is shared and noisy, so every figure is a median over repeated rounds, gateway and
//! direct rounds are interleaved (a noisy spell hits both), and overheads are paired per round. The
//! tables go to stdout and, with the method and machine, to `docs/benchmarks.md`.
//!
//! `cargo test --all-targets` also builds and runs this (harness = false) target, without
//! `--bench`; `main` then returns at once so the test suite stays fast.

// A benchmark that meets an unexpected state should stop loudly rather than report numbers for the
// wrong thing; every `expect` below says what it relies on.

use std::{
    fmt::Write as _,
    future::Future,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cognitoidentityprovider::{Client as SdkClient, config::Credentials};
use cognito_gateway::{
    App, Config,
    cognito::SdkBackend,
    config::CognitoSettings,
    local::{DEMO_POOL_ID, LocalCognito},
    proto::{ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient},
};
use tokio::{runtime::Runtime, sync::oneshot, task::JoinSet};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

/// The release binary under `cargo bench`.
const BINARY: &str = env!("CARGO_BIN_EXE_cognito-gateway");
/// The binary's config file: limits out of the way (the defaults allow 10 calls/s per caller and
/// answer a repeat reset of the same user within 30 s without calling Cognito).
const BINARY_CONFIG: &str = "\
# Written by benches/gateway.rs: limits out of the way (the largest values the file accepts).
[limits]
backend_rps = 10000
backend_burst = 10000
default_rate_per_second = 100000
default_burst = 100000
user_cooldown_secs = 0
";
/// Where the report is written.
const REPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");

/// Fresh processes started for startup and RSS figures.
const STARTUP_RUNS: usize = 10;
/// Sequential calls driven through each of those processes before RSS is read again.
const BINARY_CALLS: usize = 2_000;
/// Cumulative call counts at which the long-running process's RSS is read (concurrent load).
const GROWTH_CHECKPOINTS: [usize; 5] = [2_000, 10_000, 20_000, 40_000, 80_000];

/// Rounds of each in-process measurement; figures are medians over rounds.
const ROUNDS: usize = 5;
/// Calls not measured before the first round of each path (connections, SDK caches, allocator).
const WARM_UP: usize = 200;
/// Sequential calls per round.
const SEQUENTIAL_CALLS: usize = 2_000;
/// Sequential calls per round on error paths (one line each in the table).
const ERROR_CALLS: usize = 1_000;
/// Calls in flight at once under concurrent load.
const IN_FLIGHT: usize = 64;
/// Calls per concurrent round.
const CONCURRENT_CALLS: usize = 10_000;

fn main() {
    // cargo bench passes --bench; cargo test does not, and must not pay for minutes of load.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let started = Instant::now();
    // Default worker count (one per core), as the binary's #[tokio::main] has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds");

    let machine = Machine::probe();
    eprintln!("benchmarking the release binary ({STARTUP_RUNS} processes)...");
    let binary = bench_binary(&runtime);
    eprintln!("benchmarking in process ({ROUNDS} rounds per figure)...");
    let in_process = runtime.block_on(bench_in_process());
    let load_after = read_loadavg();

    let mut report = String::new();
    write_report(
        &mut report,
        &machine,
        &binary,
        &in_process,
        &load_after,
        started.elapsed(),
    );
    println!("{report}");
    if let Some(dir) = Path::new(REPORT).parent() {
        std::fs::create_dir_all(dir).expect("docs/ can be created");
    }
    std::fs::write(REPORT, &report).expect("docs/benchmarks.md is writable");
    eprintln!("written to {REPORT}");
}

// ---------------------------------------------------------------------------------------------
// 1. The release binary.
// ---------------------------------------------------------------------------------------------

/// One `serve --local` process, from exec to exit.
struct BinaryRun {
    startup: Duration,
    idle_rss_kib: u64,
    loaded_rss_kib: u64,
    peak_rss_kib: u64,
    /// Latencies of the sequential calls, first (cold) call excluded.
    calls: Summary,
    first_call: Duration,
    shutdown: Duration,
    /// stderr lines the process wrote (one JSON line per call, plus start and stop).
    log_lines: usize,
}

/// The long-running process: RSS at each checkpoint of sustained concurrent load.
struct Growth {
    idle_rss_kib: u64,
    /// (calls served so far, VmRSS)
    checkpoints: Vec<(usize, u64)>,
    peak_rss_kib: u64,
    calls_per_sec: f64,
}

struct BinaryFigures {
    size_bytes: u64,
    runs: Vec<BinaryRun>,
    growth: Growth,
}

fn bench_binary(runtime: &Runtime) -> BinaryFigures {
    let size_bytes = std::fs::metadata(BINARY)
        .expect("cargo built the binary")
        .len();
    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-gateway.toml");
    std::fs::write(&config, BINARY_CONFIG).expect("the target tmp dir is writable");
    let runs = (0..STARTUP_RUNS)
        .map(|_| {
            let server = Server::spawn(&config);
            let idle_rss_kib = server.rss().0;
            let (first_call, calls) = runtime.block_on(async {
                let client = connect(server.addr).await;
                let call = gateway_call(&client, Who::Alice, &Counter::default());
                let (first, latencies) = sequential_with_first(BINARY_CALLS, &call).await;
                (first, Summary::of(latencies))
            });
            let (loaded_rss_kib, peak_rss_kib) = server.rss();
            let startup = server.startup;
            let (shutdown, log_lines) = server.stop();
            BinaryRun {
                startup,
                idle_rss_kib,
                loaded_rss_kib,
                peak_rss_kib,
                calls,
                first_call,
                shutdown,
                log_lines,
            }
        })
        .collect();

    // One process kept under concurrent load, to see whether RSS settles or keeps growing. Each
    // call names another unknown user, so every one reaches Cognito and passes the user gate.
    let server = Server::spawn(&config);
    let idle_rss_kib = server.rss().0;
    let mut checkpoints = Vec::new();
    let mut served = 0;
    let mut busy = Duration::ZERO;
    runtime.block_on(async {
        let client = connect(server.addr).await;
        for checkpoint in GROWTH_CHECKPOINTS {
            let load = concurrent(
                checkpoint - served,
                IN_FLIGHT,
                &gateway_call(&client, Who::Nobody, &Counter::default()),
                "binary growth",
            )
            .await;
            busy += load.elapsed;
            served = checkpoint;
            checkpoints.push((served, server.rss().0));
        }
    });
    let peak_rss_kib = server.rss().1;
    server.stop();
    let growth = Growth {
        idle_rss_kib,
        checkpoints,
        peak_rss_kib,
        calls_per_sec: served as f64 / busy.as_secs_f64(),
    };

    BinaryFigures {
        size_bytes,
        runs,
        growth,
    }
}

/// A running `cognito-gateway serve --local` child.
struct Server {
    child: Child,
    addr: SocketAddr,
    startup: Duration,
    /// Drains stderr to EOF (a full pipe would block the child's logging, and so its calls).
    logs: std::thread::JoinHandle<usize>,
}

impl Server {
    fn spawn(config: &Path) -> Self {
        let started = Instant::now();
        let mut child = Command::new(BINARY)
            .args(["serve", "--local", "--listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--config"])
            .arg(config)
            // The default filter, whatever the caller's shell has: one info line per call is part
            // of what the binary costs.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the release binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let logs = std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut lines = 0;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines += 1;
                // The banner of --local is plain text; only JSON lines are events.
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["message"] == "SERVING"
                    && let Some(addr) = event["addr"].as_str()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
            lines
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the binary logs SERVING within 30 s");
        let startup = started.elapsed();
        Self {
            child,
            addr: addr.parse().expect("SERVING's addr is a socket address"),
            startup,
            logs,
        }
    }

    /// (VmRSS, VmHWM) in KiB, from /proc.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the child is alive and /proc is mounted");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("/proc/<pid>/status has VmRSS and VmHWM in kB")
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM, as Kubernetes sends it; returns the time to exit and the stderr line count.
    fn stop(mut self) -> (Duration, usize) {
        let started = Instant::now();
        // std has no kill(2) with a signal and the crate forbids unsafe code: use kill(1).
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "kill -TERM failed");
        let exit = self.child.wait().expect("the child can be waited for");
        let shutdown = started.elapsed();
        assert!(
            exit.success(),
            "the gateway exited with {exit} after SIGTERM"
        );
        let lines = self.logs.join().expect("the log reader does not panic");
        (shutdown, lines)
    }
}

async fn connect(addr: SocketAddr) -> UserAdminServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the gateway is listening");
    UserAdminServiceClient::new(channel)
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. In process: the gateway and the SDK straight to the local Cognito, interleaved.
// ---------------------------------------------------------------------------------------------

/// Sequential rounds of one path.
struct Sequential {
    label: &'static str,
    rounds: Vec<Summary>,
}

/// Concurrent rounds of one path.
struct Concurrent {
    label: &'static str,
    calls_per_sec: Vec<f64>,
    latencies: Vec<Summary>,
    calls: usize,
    /// Requests that reached the local Cognito during these rounds.
    cognito_requests: u64,
}

struct InProcess {
    gateway_first: Duration,
    direct_first: Duration,
    gateway: Sequential,
    direct: Sequential,
    errors: Vec<Sequential>,
    /// Distinct unknown users: every call reaches Cognito, through the gateway or not.
    gateway_load: Concurrent,
    direct_load: Concurrent,
    /// One user (`alice`) from every call: the gateway's single-flight shares Cognito calls.
    gateway_same_user: Concurrent,
    direct_same_user: Concurrent,
    same_user_deduplicated: usize,
}

async fn bench_in_process() -> InProcess {
    // Built as tests/api/helpers.rs builds it, with the production Cognito settings.
    let local = LocalCognito::start()
        .await
        .expect("the local Cognito starts");
    let backend =
        SdkBackend::with_endpoint(&local.endpoint_url(), "local-1", CognitoSettings::default())
            .await;
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    // As tests/api/helpers.rs does, limits out of the way (set field by field, so that a new limit
    // keeps its default): every check still runs, none refuses a call, and with no cooldown every
    // sequential reset reaches Cognito. In process nothing validates these, so they are set far
    // above any rate this machine reaches.
    config.limits.backend_rps = 1_000_000;
    config.limits.backend_burst = 1_000_000;
    config.limits.default_rate_per_second = 1_000_000;
    config.limits.default_burst = 1_000_000;
    config.limits.user_cooldown = Duration::ZERO;
    let app = App::build(config, backend).await.expect("port 0 binds");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let figures = {
        let gateway = connect(addr).await;
        let direct = sdk_client(&local.endpoint_url()).await;
        let deduplicated = Counter::default();
        let gw_ok = gateway_call(&gateway, Who::Alice, &deduplicated);
        let sdk_ok = direct_call(&direct, Who::Alice);

        // The first call of each path, alone: it pays for connections and lazy initialisation.
        // alice becomes RESET_REQUIRED here; every later reset of alice is an OK no-op.
        let (gateway_first, _) = sequential_with_first(1, &gw_ok).await;
        let (direct_first, _) = sequential_with_first(1, &sdk_ok).await;
        sequential(WARM_UP, &gw_ok, "gateway warm-up").await;
        sequential(WARM_UP, &sdk_ok, "direct warm-up").await;

        let before = local.requests();
        let mut gw_seq = Sequential::new("gateway → local Cognito, `alice` OK");
        let mut sdk_seq = Sequential::new("SDK direct → local Cognito, `alice` OK");
        for _ in 0..ROUNDS {
            gw_seq.push(sequential(SEQUENTIAL_CALLS, &gw_ok, gw_seq.label).await);
            sdk_seq.push(sequential(SEQUENTIAL_CALLS, &sdk_ok, sdk_seq.label).await);
        }
        // Same work on both sides: no gateway call was answered without Cognito.
        assert_eq!(
            local.requests() - before,
            (2 * ROUNDS * SEQUENTIAL_CALLS) as u64,
            "every sequential call reached the local Cognito once"
        );
        assert_eq!(
            deduplicated.load(Ordering::Relaxed),
            0,
            "no sequential call deduplicated"
        );

        let gw_missing = gateway_call(&gateway, Who::Nobody, &deduplicated);
        let sdk_missing = direct_call(&direct, Who::Nobody);
        let gw_invalid = gateway_call(&gateway, Who::Invalid, &deduplicated);
        let mut errors = vec![
            Sequential::new("gateway, unknown user → NOT_FOUND"),
            Sequential::new("SDK direct, unknown user → UserNotFoundException"),
            Sequential::new("gateway, empty username → INVALID_ARGUMENT (no Cognito call)"),
        ];
        for _ in 0..ROUNDS {
            for (rounds, call) in errors
                .iter_mut()
                .zip([&gw_missing, &sdk_missing, &gw_invalid])
            {
                let latencies = sequential(ERROR_CALLS, call, rounds.label).await;
                rounds.push(latencies);
            }
        }

        let mut gw_load = Concurrent::new("gateway, distinct unknown users → NOT_FOUND");
        let mut sdk_load = Concurrent::new("SDK direct, distinct unknown users");
        let mut gw_same = Concurrent::new("gateway, `alice` from every call → OK");
        let mut sdk_same = Concurrent::new("SDK direct, `alice` from every call");
        let dedup_before = deduplicated.load(Ordering::Relaxed);
        for _ in 0..ROUNDS {
            for (rounds, call) in [
                (&mut gw_load, &gw_missing),
                (&mut sdk_load, &sdk_missing),
                (&mut gw_same, &gw_ok),
                (&mut sdk_same, &sdk_ok),
            ] {
                let before = local.requests();
                let load = concurrent(CONCURRENT_CALLS, IN_FLIGHT, call, rounds.label).await;
                rounds.push(load, local.requests() - before);
            }
        }
        let same_user_deduplicated = deduplicated.load(Ordering::Relaxed) - dedup_before;

        InProcess {
            gateway_first,
            direct_first,
            gateway: gw_seq,
            direct: sdk_seq,
            errors,
            gateway_load: gw_load,
            direct_load: sdk_load,
            gateway_same_user: gw_same,
            direct_same_user: sdk_same,
            same_user_deduplicated,
        }
        // Every client is dropped here, so graceful shutdown has no connection to wait for.
    };

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("the in-process gateway stops")
        .expect("the server task does not panic")
        .expect("the server stops cleanly");
    figures
}

/// The SDK client as `SdkBackend::with_endpoint` configures its base: fixed credentials, an
/// explicit endpoint. (The gateway's per-region client adds its retry rules and timeouts on top.)
async fn sdk_client(endpoint_url: &str) -> SdkClient {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("local-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "bench"))
        .endpoint_url(endpoint_url)
        .load()
        .await;
    SdkClient::new(&config)
}

/// Whom a load resets, and so which answer it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// `alice` of the demo pool: OK (after the first reset, an OK no-op).
    Alice,
    /// Another unknown user each call (`nobody-<n>`): NOT_FOUND from Cognito. Distinct names keep
    /// the gateway's single-flight from sharing one Cognito call between concurrent calls.
    Nobody,
    /// An empty username: INVALID_ARGUMENT from the gateway, which never calls Cognito.
    Invalid,
}

impl Who {
    fn username(self) -> String {
        // One sequence for the whole run: no unknown name is ever used twice.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        match self {
            Self::Alice => "alice".to_owned(),
            Self::Nobody => format!("nobody-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            Self::Invalid => String::new(),
        }
    }
}

/// Gateway answers marked `deduplicated` (answered without a Cognito call of their own).
type Counter = Arc<AtomicUsize>;

/// One call; resolves to whether the outcome was the expected one.
type CallFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Makes one call each time it is called; shared by the tasks of a concurrent load.
type Call = Arc<dyn Fn() -> CallFuture + Send + Sync>;

/// One ResetUserPassword through the gateway.
fn gateway_call(
    client: &UserAdminServiceClient<Channel>,
    who: Who,
    deduplicated: &Counter,
) -> Call {
    let client = client.clone();
    let deduplicated = Arc::clone(deduplicated);
    Arc::new(move || {
        // Clones share the one HTTP/2 connection; a clone per call is what tonic expects.
        let mut client = client.clone();
        let deduplicated = Arc::clone(&deduplicated);
        let request = ResetUserPasswordRequest {
            user_pool_id: DEMO_POOL_ID.to_owned(),
            username: who.username(),
            client_metadata: Default::default(),
        };
        Box::pin(async move {
            match (client.reset_user_password(request).await, who) {
                (Ok(reply), Who::Alice) => {
                    if reply.get_ref().deduplicated {
                        deduplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
                (Err(status), Who::Nobody) => status.code() == Code::NotFound,
                (Err(status), Who::Invalid) => status.code() == Code::InvalidArgument,
                _ => false,
            }
        })
    })
}

/// One AdminResetUserPassword straight to the local Cognito (`Alice` or `Nobody`).
fn direct_call(client: &SdkClient, who: Who) -> Call {
    assert_ne!(
        who,
        Who::Invalid,
        "the direct path has no validation to measure"
    );
    let client = client.clone();
    Arc::new(move || {
        let send = client
            .admin_reset_user_password()
            .user_pool_id(DEMO_POOL_ID)
            .username(who.username())
            .send();
        Box::pin(async move {
            match (send.await, who) {
                (Ok(_), Who::Alice) => true,
                (Err(error), Who::Nobody) => error
                    .as_service_error()
                    .is_some_and(|e| e.is_user_not_found_exception()),
                _ => false,
            }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Load drivers and statistics.
// ---------------------------------------------------------------------------------------------

/// `n` calls one after another; panics if any outcome is not the expected one.
async fn sequential(n: usize, call: &Call, label: &str) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let expected = call().await;
        latencies.push(started.elapsed());
        assert!(expected, "unexpected outcome: {label}");
    }
    latencies
}

/// Like [`sequential`], with the first call's latency apart (it is the cold one).
async fn sequential_with_first(n: usize, call: &Call) -> (Duration, Vec<Duration>) {
    let mut latencies = sequential(n, call, "sequential").await;
    let first = latencies.remove(0);
    (first, latencies)
}

struct Load {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// `total` calls with `in_flight` of them outstanding at all times (until the tail), each of
/// `in_flight` tasks making its calls one after another.
async fn concurrent(total: usize, in_flight: usize, call: &Call, label: &str) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let call = Arc::clone(call);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut unexpected = 0_usize;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let started = Instant::now();
                if !call().await {
                    unexpected += 1;
                }
                latencies.push(started.elapsed());
            }
            (latencies, unexpected)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut unexpected = 0;
    while let Some(worker) = workers.join_next().await {
        let (mine, bad) = worker.expect("a load worker does not panic");
        latencies.extend(mine);
        unexpected += bad;
    }
    let elapsed = started.elapsed();
    assert_eq!(unexpected, 0, "unexpected outcomes under load: {label}");
    Load { elapsed, latencies }
}

/// Latency percentiles of one round, in µs.
#[derive(Clone, Copy)]
struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
}

impl Summary {
    fn of(mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        // Nearest rank: the smallest sample with at least p% of samples at or below it.
        let at = |p: f64| {
            let rank = (p / 100.0 * latencies.len() as f64).ceil() as usize;
            micros(latencies[rank.clamp(1, latencies.len()) - 1])
        };
        Self {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
        }
    }

    /// The per-percentile median over rounds.
    fn median_of(rounds: &[Self]) -> Self {
        Self {
            p50: median(rounds.iter().map(|s| s.p50)),
            p90: median(rounds.iter().map(|s| s.p90)),
            p99: median(rounds.iter().map(|s| s.p99)),
        }
    }
}

impl Sequential {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            rounds: Vec::new(),
        }
    }

    fn push(&mut self, latencies: Vec<Duration>) {
        self.rounds.push(Summary::of(latencies));
    }

    fn median(&self) -> Summary {
        Summary::median_of(&self.rounds)
    }

    fn p50_range(&self) -> (f64, f64) {
        min_max(self.rounds.iter().map(|s| s.p50))
    }
}

impl Concurrent {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            calls_per_sec: Vec::new(),
            latencies: Vec::new(),
            calls: 0,
            cognito_requests: 0,
        }
    }

    fn push(&mut self, load: Load, cognito_requests: u64) {
        self.calls += load.latencies.len();
        self.cognito_requests += cognito_requests;
        self.calls_per_sec
            .push(load.latencies.len() as f64 / load.elapsed.as_secs_f64());
        self.latencies.push(Summary::of(load.latencies));
    }

    /// Local Cognito requests per call: 1 when every call made its own.
    fn cognito_per_call(&self) -> f64 {
        self.cognito_requests as f64 / self.calls as f64
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn min_max(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// min, median, max.
fn spread(values: impl IntoIterator<Item = f64> + Clone) -> (f64, f64, f64) {
    let (lo, hi) = min_max(values.clone());
    (lo, median(values), hi)
}

// ---------------------------------------------------------------------------------------------
// The machine, and the report.
// ---------------------------------------------------------------------------------------------

struct Machine {
    date: String,
    cpus: usize,
    cpu_model: String,
    kernel: String,
    rustc: String,
    load_before: String,
}

impl Machine {
    fn probe() -> Self {
        let command = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
            rustc: command(
                &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()),
                &["--version"],
            ),
            load_before: read_loadavg(),
        }
    }
}

/// The 1, 5 and 15 minute load averages: how shared the machine was.
fn read_loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A Markdown table with padded columns, so it reads the same in a terminal.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        out.push('|');
        for (cell, width) in cells.zip(&widths) {
            let pad = width - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    out.push('|');
    for width in &widths {
        let _ = write!(out, "{}|", "-".repeat(width + 2));
    }
    out.push('\n');
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
    out.push('\n');
}

fn us(v: f64) -> String {
    format!("{v:.0}")
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn write_report(
    out: &mut String,
    machine: &Machine,
    binary: &BinaryFigures,
    in_process: &InProcess,
    load_after: &str,
    took: Duration,
) {
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         Generated by `cargo bench --bench gateway` (benches/gateway.rs); every figure below comes \
         from one run. Rerun it to refresh this file.\n\n\
         - Date: {date}; took {took:.0} s.\n\
         - Machine: {cpus} CPUs ({model}), Linux {kernel}; load average {before} before, \
         {after} after (the machine is shared: figures are medians over repeated rounds).\n\
         - Build: release profile (thin LTO, codegen-units = 1, stripped), {rustc}.\n",
        date = machine.date,
        took = took.as_secs_f64(),
        cpus = machine.cpus,
        model = machine.cpu_model,
        kernel = machine.kernel,
        before = machine.load_before,
        after = load_after,
        rustc = machine.rustc,
    );

    // 1. Binary.
    let runs = &binary.runs;
    let _ = writeln!(
        out,
        "## Release binary\n\n\
         `cognito-gateway serve --local --listen 127.0.0.1:0 --log-format json`, started \
         {STARTUP_RUNS} times. Startup is exec to the `SERVING` log line on stderr (the embedded \
         local Cognito and the SDK configuration included). RSS is VmRSS from /proc right after \
         `SERVING` and after {BINARY_CALLS} sequential resets of `alice` over one connection (one \
         JSON log line each, read from the pipe); peak is VmHWM. Each process is stopped with \
         SIGTERM and must exit 0. `--config` raises the limits as far as the file allows \
         (`[limits]` backend_rps = 10000, default_rate_per_second = 100000, user_cooldown_secs = \
         0), so that every call reaches the local Cognito and none is refused.\n"
    );
    let size = binary.size_bytes;
    let mut rows = vec![vec![
        "binary size".to_owned(),
        String::new(),
        format!("{size} B ({:.1} MiB)", size as f64 / (1024.0 * 1024.0)),
        String::new(),
    ]];
    let mut row = |what: &str, values: Vec<f64>, fmt: fn(f64) -> String| {
        let (lo, mid, hi) = spread(values);
        rows.push(vec![what.to_owned(), fmt(lo), fmt(mid), fmt(hi)]);
    };
    let ms = |v: f64| format!("{v:.1} ms");
    let kib = |v: f64| format!("{} MiB", mib(v as u64));
    let micro = |v: f64| format!("{v:.0} µs");
    row(
        "exec → SERVING",
        runs.iter().map(|r| millis(r.startup)).collect(),
        ms,
    );
    row(
        "RSS idle, right after SERVING",
        runs.iter().map(|r| r.idle_rss_kib as f64).collect(),
        kib,
    );
    row(
        &format!("RSS after {BINARY_CALLS} calls"),
        runs.iter().map(|r| r.loaded_rss_kib as f64).collect(),
        kib,
    );
    row(
        "peak RSS (VmHWM)",
        runs.iter().map(|r| r.peak_rss_kib as f64).collect(),
        kib,
    );
    row(
        "first call (new connection)",
        runs.iter().map(|r| micros(r.first_call)).collect(),
        micro,
    );
    row(
        "later calls, p50",
        runs.iter().map(|r| r.calls.p50).collect(),
        micro,
    );
    row(
        "later calls, p99",
        runs.iter().map(|r| r.calls.p99).collect(),
        micro,
    );
    row(
        "SIGTERM → exit 0",
        runs.iter().map(|r| millis(r.shutdown)).collect(),
        ms,
    );
    row(
        "stderr lines per process",
        runs.iter().map(|r| r.log_lines as f64).collect(),
        |v| format!("{v:.0}"),
    );
    table(out, &["release binary", "min", "median", "max"], &rows);

    let growth = &binary.growth;
    let _ = writeln!(
        out,
        "One more process under sustained load ({IN_FLIGHT} calls in flight over one connection, \
         {:.0} calls/s, each call a new unknown user, so every one reaches Cognito and the user \
         gate sees a new key): does RSS settle? Idle {} MiB; peak (VmHWM) {} MiB at the end.\n",
        growth.calls_per_sec,
        mib(growth.idle_rss_kib),
        mib(growth.peak_rss_kib),
    );
    let rows: Vec<Vec<String>> = growth
        .checkpoints
        .iter()
        .map(|&(calls, rss)| {
            vec![
                calls.to_string(),
                mib(rss),
                format!("{:+.1}", (rss as f64 - growth.idle_rss_kib as f64) / 1024.0),
            ]
        })
        .collect();
    table(
        out,
        &["calls served", "VmRSS (MiB)", "vs idle (MiB)"],
        &rows,
    );

    // 2 and 3. In process.
    let p = in_process;
    let _ = writeln!(
        out,
        "## In process: latency and the gateway's overhead\n\n\
         Built as the tests build it (`LocalCognito::start()`, `SdkBackend::with_endpoint(.., \
         \"local-1\", CognitoSettings::default())`, `App::build` on 127.0.0.1:0, no authentication, \
         rate limits set far above reach and a user cooldown of 0, so every check runs and none \
         refuses or deduplicates a call) in one tokio runtime with {cpus} workers, which the client, the gateway and the local Cognito share; no \
         log subscriber is installed (the binary's figures above include logging). The gateway is \
         called with a tonic client over one loopback HTTP/2 connection; \"SDK direct\" sends the \
         same `AdminResetUserPassword` straight to the same local Cognito with an AWS SDK client \
         configured as `SdkBackend::with_endpoint` configures its base, so the difference is what \
         the gateway adds: gRPC, admission (load shedding, caller, rate), validation, the user \
         gate and the second hop. After one cold call \
         and {WARM_UP} warm-up calls per path, {ROUNDS} rounds of {SEQUENTIAL_CALLS} sequential \
         calls, gateway and direct rounds interleaved; percentiles are per round, the table shows \
         their median over rounds. `alice` is reset by the cold call and every later reset is an \
         OK no-op, as in the demo; both paths made exactly one Cognito request per call (checked).\n",
        cpus = machine.cpus,
    );
    let seq_row = |s: &Sequential| {
        let m = s.median();
        let (lo, hi) = s.p50_range();
        vec![
            s.label.to_owned(),
            us(m.p50),
            us(m.p90),
            us(m.p99),
            format!("{}–{}", us(lo), us(hi)),
        ]
    };
    let mut rows = vec![seq_row(&p.gateway), seq_row(&p.direct)];
    // Paired per round: each gateway round against the direct round run right after it.
    let paired = |f: fn(&Summary) -> f64| {
        let pairs = p.gateway.rounds.iter().zip(&p.direct.rounds);
        let deltas: Vec<f64> = pairs.clone().map(|(g, d)| f(g) - f(d)).collect();
        let ratios: Vec<f64> = pairs.map(|(g, d)| f(g) / f(d)).collect();
        (median(deltas), median(ratios))
    };
    let (d50, r50) = paired(|s| s.p50);
    let (d90, r90) = paired(|s| s.p90);
    let (d99, r99) = paired(|s| s.p99);
    rows.push(vec![
        "gateway overhead (paired per round)".to_owned(),
        format!("+{} (×{r50:.2})", us(d50)),
        format!("+{} (×{r90:.2})", us(d90)),
        format!("+{} (×{r99:.2})", us(d99)),
        String::new(),
    ]);
    rows.extend(p.errors.iter().map(seq_row));
    table(
        out,
        &[
            "sequential, µs",
            "p50",
            "p90",
            "p99",
            "p50 range over rounds",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "The gateway adds **{} µs at p50** (ratio {r50:.2}) to a call that costs {} µs straight to \
         the local Cognito. Error rows: {ERROR_CALLS} calls per round, each unknown user a new name. Cold first call (new \
         SDK client and connections): gateway {} µs, SDK direct {} µs.\n",
        us(d50),
        us(p.direct.median().p50),
        us(micros(p.gateway_first)),
        us(micros(p.direct_first)),
    );

    let _ = writeln!(
        out,
        "## In process: throughput\n\n\
         {IN_FLIGHT} calls in flight, {CONCURRENT_CALLS} calls per round, {ROUNDS} rounds, the four \
         paths interleaved. The gateway multiplexes the calls on one HTTP/2 connection and keeps \
         its own pool of HTTP/1.1 connections to the local Cognito; the direct client has such a \
         pool itself. The fair comparison is the first pair: each call names another unknown \
         user, so every call reaches Cognito on both paths. With one user from every call, the \
         gateway's per-user single-flight lets concurrent resets share one Cognito call (the last \
         column), which is its purpose, not speed.\n"
    );
    let load_row = |c: &Concurrent| {
        let (lo, mid, hi) = spread(c.calls_per_sec.clone());
        let m = Summary::median_of(&c.latencies);
        vec![
            c.label.to_owned(),
            format!("{mid:.0}"),
            format!("{lo:.0}–{hi:.0}"),
            us(m.p50),
            us(m.p99),
            format!("{:.2}", c.cognito_per_call()),
        ]
    };
    // Paired per round, as for latency.
    let ratio = |g: &Concurrent, d: &Concurrent| {
        let ratios = g
            .calls_per_sec
            .iter()
            .zip(&d.calls_per_sec)
            .map(|(g, d)| g / d);
        vec![
            "gateway / direct (paired per round)".to_owned(),
            format!("×{:.2}", median(ratios)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]
    };
    let rows = vec![
        load_row(&p.gateway_load),
        load_row(&p.direct_load),
        ratio(&p.gateway_load, &p.direct_load),
        load_row(&p.gateway_same_user),
        load_row(&p.direct_same_user),
        ratio(&p.gateway_same_user, &p.direct_same_user),
    ];
    table(
        out,
        &[
            "concurrent",
            "calls/s",
            "range",
            "p50 µs",
            "p99 µs",
            "Cognito requests per call",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "Same user: {} of {} gateway answers were marked `deduplicated` (shared a call in flight; \
         the cooldown is 0 here).",
        p.same_user_deduplicated, p.gateway_same_user.calls,
    );
}
