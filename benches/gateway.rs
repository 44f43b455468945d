//! `cargo bench --bench gateway`: what the gateway costs, measured in one run.
//!
//! 1. The release binary: file size, time from exec to the `SERVING` log line, RSS idle and after
//!    calls, time from SIGTERM to a clean exit.
//! 2. In process, as the tests build the app: sequential latency (p50/p90/p99) and concurrent
//!    throughput, with a real tonic client over loopback, against the embedded local Cognito.
//! 3. The same loads sent straight to the local Cognito with the AWS SDK, no gateway, so the
//!    difference is the gateway's own overhead.
//! 4. Tracing's cost: the release binary with OTLP export at 100% sampling to a live collector
//!    running in this process, against the same binary with no OTEL_* variables, rounds
//!    interleaved; the collector counts the spans it received.
//! 5. The middleware stack's cost: the gateway as `App::build` assembles it (token authentication
//!    on) against the bare handler with no layers, both in front of a backend that answers at once,
//!    so the figures are the gateway's alone, not Cognito's.
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
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cognitoidentityprovider::{Client as SdkClient, config::Credentials};
use cognito_gateway::{
    App, Config,
    api::UserAdmin,
    auth::Policy,
    cognito::{Backend, BackendError, CallBounds, ResetOutcome, SdkBackend},
    config::{
        AccessConfig, AuthMode, CallerConfig, CognitoSettings, LimitSettings, ServerSettings,
    },
    domain::ResetRequest,
    limits::{RateLimit, UserGate},
    local::{DEMO_POOL_ID, LocalCognito},
    proto::{
        ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient,
        user_admin_service_server::UserAdminServiceServer,
    },
    telemetry,
};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    trace::v1::span::SpanKind,
};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::{runtime::Runtime, sync::oneshot, task::JoinSet};
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint, server::TcpIncoming},
};
use tracing_subscriber::{EnvFilter, Layer as _, filter::FilterFn, layer::SubscriberExt as _};

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

/// Sequential calls per round in the tracing and stack comparisons.
const COMPARE_SEQUENTIAL: usize = 2_000;
/// Concurrent calls per round in the tracing and stack comparisons.
const COMPARE_CONCURRENT: usize = 10_000;
/// The bearer token of the stack comparison's one caller.
const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";

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
    eprintln!("benchmarking tracing: OTLP export on and off ({ROUNDS} rounds)...");
    let tracing_cost = bench_tracing(&runtime);
    // Last: its second half installs a process-wide log subscriber, which nothing before expects.
    eprintln!("benchmarking the middleware stack against the bare handler ({ROUNDS} rounds)...");
    let stack = runtime.block_on(bench_stack());
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
    write_tracing(&mut report, &tracing_cost);
    write_stack(&mut report, &stack);
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
    let config = binary_config();
    let runs = (0..STARTUP_RUNS)
        .map(|_| {
            let server = Server::spawn(&config, &[]);
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
    let server = Server::spawn(&config, &[]);
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

/// Writes the binary's `--config` file (limits out of the way) and returns its path.
fn binary_config() -> std::path::PathBuf {
    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-gateway.toml");
    std::fs::write(&config, BINARY_CONFIG).expect("the target tmp dir is writable");
    config
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
    /// Starts the binary with `env` added; any OTEL_* variable of the bench's own environment is
    /// removed first, so that only `env` decides whether telemetry is exported.
    fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        let started = Instant::now();
        let mut command = Command::new(BINARY);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["serve", "--local", "--listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--config"])
            .arg(config)
            // The default filter, whatever the caller's shell has: one info line per call is part
            // of what the binary costs.
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
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

    /// CPU time the process has used so far (utime + stime), in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.child.id()))
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
    /// Calls the backend received during these rounds, where the bench can see it.
    backend_calls: u64,
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
// 4. Tracing's cost: the release binary exporting OTLP to a collector in this process, or not.
// ---------------------------------------------------------------------------------------------

/// What the in-bench OTLP collector received.
#[derive(Default)]
struct CollectorCounts {
    server_spans: AtomicUsize,
    client_spans: AtomicUsize,
    other_spans: AtomicUsize,
    trace_exports: AtomicUsize,
    metric_exports: AtomicUsize,
    /// Encoded size of every export request, traces and metrics.
    bytes: AtomicUsize,
}

impl CollectorCounts {
    fn spans(&self) -> usize {
        self.server_spans.load(Ordering::Relaxed)
            + self.client_spans.load(Ordering::Relaxed)
            + self.other_spans.load(Ordering::Relaxed)
    }
}

/// A minimal OTLP/gRPC receiver (as tests/api/otel.rs builds one): it decodes every export, as a
/// collector must, and counts what it got.
#[derive(Clone, Default)]
struct OtlpCollector(Arc<CollectorCounts>);

#[tonic::async_trait]
impl TraceService for OtlpCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let counts = &self.0;
        counts.trace_exports.fetch_add(1, Ordering::Relaxed);
        counts
            .bytes
            .fetch_add(request.encoded_len(), Ordering::Relaxed);
        for span in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let counter = if span.kind == SpanKind::Server as i32 {
                &counts.server_spans
            } else if span.kind == SpanKind::Client as i32 {
                &counts.client_spans
            } else {
                &counts.other_spans
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let counts = &self.0;
        counts.metric_exports.fetch_add(1, Ordering::Relaxed);
        counts
            .bytes
            .fetch_add(request.get_ref().encoded_len(), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// One path of a comparison: sequential and concurrent rounds, and the CPU they used.
struct Compared {
    sequential: Sequential,
    concurrent: Concurrent,
    /// CPU used during the sequential rounds, and the calls made in them.
    sequential_cpu: CpuUse,
    concurrent_cpu: CpuUse,
}

impl Compared {
    fn new(label: &'static str) -> Self {
        Self {
            sequential: Sequential::new(label),
            concurrent: Concurrent::new(label),
            sequential_cpu: CpuUse::default(),
            concurrent_cpu: CpuUse::default(),
        }
    }

    /// One sequential round; `cpu` reads the CPU ticks of whatever is being measured and `backend`
    /// the calls its backend has received (0 where they cannot be seen).
    async fn sequential_round(
        &mut self,
        n: usize,
        call: &Call,
        cpu: &dyn Fn() -> u64,
        backend: &dyn Fn() -> u64,
    ) {
        let (ticks, calls) = (cpu(), backend());
        let latencies = sequential(n, call, self.sequential.label).await;
        self.sequential_cpu.add(cpu() - ticks, n);
        self.sequential.push(latencies);
        self.sequential.backend_calls += backend() - calls;
    }

    async fn concurrent_round(
        &mut self,
        n: usize,
        call: &Call,
        cpu: &dyn Fn() -> u64,
        backend: &dyn Fn() -> u64,
    ) {
        let (ticks, calls) = (cpu(), backend());
        let load = concurrent(n, IN_FLIGHT, call, self.concurrent.label).await;
        self.concurrent_cpu.add(cpu() - ticks, n);
        self.concurrent.push(load, backend() - calls);
    }
}

/// CPU ticks used over some calls.
#[derive(Default, Clone, Copy)]
struct CpuUse {
    ticks: u64,
    calls: usize,
}

impl CpuUse {
    fn add(&mut self, ticks: u64, calls: usize) {
        self.ticks += ticks;
        self.calls += calls;
    }

    /// CPU µs per call.
    fn per_call(self, ticks_per_second: f64) -> f64 {
        self.ticks as f64 / ticks_per_second * 1e6 / self.calls as f64
    }
}

/// utime + stime of a /proc/<pid>/stat file, in clock ticks.
fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).expect("/proc/<pid>/stat is readable");
    // The command name may hold spaces; fields are counted after its closing parenthesis (field 3
    // is the first after it; utime and stime are fields 14 and 15).
    let rest = &stat[stat
        .rfind(')')
        .expect("stat has the command in parentheses")
        + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .expect("utime and stime are numbers")
    };
    field(11) + field(12)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

struct TracingFigures {
    off: Compared,
    on: Compared,
    /// Calls made to the traced process, warm-up included.
    traced_calls: usize,
    /// Spans the collector had received when the load ended, and after the exit's flush.
    spans_at_end_of_load: usize,
    spans_after_exit: usize,
    server_spans: usize,
    client_spans: usize,
    other_spans: usize,
    trace_exports: usize,
    metric_exports: usize,
    export_bytes: usize,
    /// Time from SIGTERM to exit 0: (off, on); the traced one flushes its exporters first.
    shutdown: (Duration, Duration),
    ticks_per_second: f64,
}

fn bench_tracing(runtime: &Runtime) -> TracingFigures {
    let config = binary_config();
    let collector = OtlpCollector::default();
    let counts = Arc::clone(&collector.0);
    let (stop_collector, collector_stopped) = oneshot::channel::<()>();
    let (collector_addr, collector_task) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port 0 binds");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = collector_stopped.await;
            });
        (addr, tokio::spawn(server))
    });
    let endpoint = format!("http://{collector_addr}");

    // Both processes run side by side, so that their rounds can alternate.
    let off = Server::spawn(&config, &[]);
    let on = Server::spawn(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    let mut off_figures = Compared::new("tracing off (no OTEL_* variable)");
    let mut on_figures = Compared::new("tracing on: OTLP to a live collector, always_on");
    let mut traced_calls = 0;
    runtime.block_on(async {
        let off_client = connect(off.addr).await;
        let on_client = connect(on.addr).await;
        let none = Counter::default();
        // Sequential: `alice`, an OK no-op after the first reset (one Cognito call each: the
        // cooldown is 0). Concurrent: another unknown user each call, so no call shares another's.
        let off_ok = gateway_call(&off_client, Who::Alice, &none);
        let on_ok = gateway_call(&on_client, Who::Alice, &none);
        let off_missing = gateway_call(&off_client, Who::Nobody, &none);
        let on_missing = gateway_call(&on_client, Who::Nobody, &none);
        for call in [&off_ok, &on_ok] {
            sequential(WARM_UP, call, "tracing warm-up").await;
        }
        for call in [&off_missing, &on_missing] {
            concurrent(WARM_UP * 5, IN_FLIGHT, call, "tracing warm-up").await;
        }
        traced_calls += WARM_UP * 6;
        let off_cpu = || off.cpu_ticks();
        let on_cpu = || on.cpu_ticks();
        let unseen = || 0;
        for round in 0..ROUNDS {
            // Which goes first alternates, so that neither always follows the other's load.
            let mut order = [
                (
                    &mut off_figures,
                    &off_ok,
                    &off_missing,
                    &off_cpu as &dyn Fn() -> u64,
                ),
                (&mut on_figures, &on_ok, &on_missing, &on_cpu),
            ];
            if round % 2 == 1 {
                order.reverse();
            }
            for (figures, ok, _, cpu) in &mut order {
                figures
                    .sequential_round(COMPARE_SEQUENTIAL, ok, *cpu, &unseen)
                    .await;
            }
            for (figures, _, missing, cpu) in &mut order {
                figures
                    .concurrent_round(COMPARE_CONCURRENT, missing, *cpu, &unseen)
                    .await;
            }
            traced_calls += COMPARE_SEQUENTIAL + COMPARE_CONCURRENT;
        }
    });
    // The batch span processor exports every 5 s or 512 spans: some are still queued here.
    let spans_at_end_of_load = counts.spans();
    let (off_shutdown, _) = off.stop();
    // The exit flushes the exporters (the collector keeps serving on the runtime meanwhile) and
    // waits for their answers, so everything exported has been counted once the process is gone.
    let (on_shutdown, _) = on.stop();
    let _ = stop_collector.send(());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), collector_task).await })
        .expect("the collector stops")
        .expect("the collector task does not panic")
        .expect("the collector stops cleanly");

    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    TracingFigures {
        off: off_figures,
        on: on_figures,
        traced_calls,
        spans_at_end_of_load,
        spans_after_exit: counts.spans(),
        server_spans: load(&counts.server_spans),
        client_spans: load(&counts.client_spans),
        other_spans: load(&counts.other_spans),
        trace_exports: load(&counts.trace_exports),
        metric_exports: load(&counts.metric_exports),
        export_bytes: load(&counts.bytes),
        shutdown: (off_shutdown, on_shutdown),
        ticks_per_second: ticks_per_second(),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The middleware stack against the bare handler, both in front of an instant backend.
// ---------------------------------------------------------------------------------------------

/// A backend that answers OK at once, counting its calls: what is left is the gateway's own work.
#[derive(Debug, Clone, Default)]
struct InstantBackend(Arc<AtomicU64>);

impl Backend for InstantBackend {
    fn reset_user_password(
        &self,
        _request: &ResetRequest,
        _bounds: CallBounds,
    ) -> impl Future<Output = Result<ResetOutcome, BackendError>> + Send {
        self.0.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(ResetOutcome {
            request_id: Some("instant".to_owned()),
        }))
    }
}

/// Counts what the log subscriber writes (the binary writes the same lines to a pipe).
#[derive(Clone, Default)]
struct LogSink {
    lines: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.fetch_add(buf.len(), Ordering::Relaxed);
        self.lines.fetch_add(
            buf.iter().filter(|&&b| b == b'\n').count(),
            Ordering::Relaxed,
        );
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The stack and the bare handler, under one logging setup.
struct StackPair {
    logging: &'static str,
    bare: Compared,
    stack: Compared,
    /// Log lines and bytes written per call: (bare, stack); zero with no subscriber.
    log_lines_per_call: (f64, f64),
    log_bytes_per_call: (f64, f64),
}

struct StackFigures {
    pairs: Vec<StackPair>,
    ticks_per_second: f64,
}

/// The bare handler: `UserAdminServiceServer` on a plain tonic server, with the same HTTP/2 and TCP
/// settings as `App::build` and no layer. One tonic interceptor puts the `anonymous` caller in the
/// request's extensions, as authentication would: without a caller the handler fails closed
/// (UNAUTHENTICATED) before it does anything else.
async fn start_bare(
    backend: InstantBackend,
    limits: &LimitSettings,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 binds");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let caller = Policy::build(&AccessConfig::none(), limits, None)
        .authenticate(None)
        .expect("without authentication everyone is `anonymous`");
    let server = ServerSettings::default();
    let handler = UserAdminServiceServer::new(UserAdmin::new(
        Arc::new(backend),
        Arc::new(UserGate::new(limits.user_cooldown)),
        Arc::new(RateLimit::new(limits.backend_rps, limits.backend_burst)),
        CognitoSettings::default().operation_timeout,
    ))
    .max_decoding_message_size(server.max_decoding_message_size)
    .max_encoding_message_size(server.max_encoding_message_size);
    let service = InterceptedService::new(handler, move |mut request: tonic::Request<()>| {
        request.extensions_mut().insert(Arc::clone(&caller));
        Ok(request)
    });
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(server.max_local_error_reset_streams))
        .http2_max_pending_accept_reset_streams(Some(server.max_pending_accept_reset_streams))
        .http2_max_header_list_size(server.max_header_list_size)
        .http2_keepalive_interval(Some(server.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(server.http2_keepalive_timeout))
        .add_service(service);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(server.tcp_keepalive));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// One reset of a new user each call, with the caller's bearer token; OK expected, never
/// deduplicated.
fn instant_call(
    client: &UserAdminServiceClient<Channel>,
    authorization: &MetadataValue<Ascii>,
) -> Call {
    let client = client.clone();
    let authorization = authorization.clone();
    Arc::new(move || {
        let mut client = client.clone();
        let mut request = tonic::Request::new(ResetUserPasswordRequest {
            user_pool_id: DEMO_POOL_ID.to_owned(),
            username: Who::Nobody.username(),
            client_metadata: Default::default(),
        });
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
        Box::pin(async move {
            client
                .reset_user_password(request)
                .await
                .is_ok_and(|reply| !reply.get_ref().deduplicated)
        })
    })
}

async fn bench_stack() -> StackFigures {
    // Limits far above reach, as in the in-process section (tests/api/helpers.rs::test_config's
    // 10 000/s would be within reach of 64 calls in flight here).
    let mut limits = Config::with_listen("127.0.0.1:0".parse().expect("a literal address")).limits;
    limits.backend_rps = 1_000_000;
    limits.backend_burst = 1_000_000;
    limits.default_rate_per_second = 1_000_000;
    limits.default_burst = 1_000_000;
    limits.user_cooldown = Duration::ZERO;
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    config.limits = limits.clone();
    config.access = AccessConfig {
        mode: AuthMode::Token,
        callers: vec![CallerConfig {
            name: "bench".to_owned(),
            token_sha256: Some(Sha256::digest(BENCH_TOKEN.as_bytes()).into()),
            user_pools: Some(vec![DEMO_POOL_ID.to_owned()]),
            rate_per_second: 1_000_000,
            burst: 1_000_000,
        }],
        ..AccessConfig::none()
    };

    let stack_backend = InstantBackend::default();
    let stack_seen = Arc::clone(&stack_backend.0);
    let app = App::build(config, stack_backend)
        .await
        .expect("port 0 binds");
    let stack_addr = app.local_addr();
    let (stop_stack, stack_stopped) = oneshot::channel::<()>();
    let stack_task = tokio::spawn(app.run(async {
        let _ = stack_stopped.await;
    }));
    let bare_backend = InstantBackend::default();
    let bare_seen = Arc::clone(&bare_backend.0);
    let (bare_addr, stop_bare, bare_task) = start_bare(bare_backend, &limits).await;

    let sink = LogSink::default();
    let mut pairs = Vec::new();
    {
        // Both get the same request bytes, the token included; the bare server ignores it.
        let authorization: MetadataValue<Ascii> = format!("Bearer {BENCH_TOKEN}")
            .parse()
            .expect("the token is a valid header value");
        let stack_client = connect(stack_addr).await;
        let bare_client = connect(bare_addr).await;
        let stack_call = instant_call(&stack_client, &authorization);
        let bare_call = instant_call(&bare_client, &authorization);
        let self_cpu = || cpu_ticks("/proc/self/stat");
        let stack_calls = || stack_seen.load(Ordering::Relaxed);
        let bare_calls = || bare_seen.load(Ordering::Relaxed);

        for logging in ["no log subscriber", "JSON logs as the binary writes them"] {
            if !pairs.is_empty() {
                // Second pass: the binary's log layer (telemetry::init, JSON), into a counting sink.
                let writer = sink.clone();
                let logs = tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(move || writer.clone())
                    .with_filter(EnvFilter::new("info"))
                    .with_filter(FilterFn::new(telemetry::allowed));
                tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logs))
                    .expect("no other subscriber is installed");
            }
            let mut bare = Compared::new("bare handler (no layers)");
            let mut stack = Compared::new("full stack (token authentication)");
            for call in [&bare_call, &stack_call] {
                sequential(WARM_UP, call, "stack warm-up").await;
                concurrent(WARM_UP * 5, IN_FLIGHT, call, "stack warm-up").await;
            }
            let mut lines = (0, 0);
            let mut bytes = (0, 0);
            for round in 0..ROUNDS {
                let mut order = [
                    (
                        &mut bare,
                        &bare_call,
                        &bare_calls as &dyn Fn() -> u64,
                        &mut lines.0,
                        &mut bytes.0,
                    ),
                    (
                        &mut stack,
                        &stack_call,
                        &stack_calls,
                        &mut lines.1,
                        &mut bytes.1,
                    ),
                ];
                if round % 2 == 1 {
                    order.reverse();
                }
                for (figures, call, seen, lines, bytes) in &mut order {
                    let (l, b) = (
                        sink.lines.load(Ordering::Relaxed),
                        sink.bytes.load(Ordering::Relaxed),
                    );
                    figures
                        .sequential_round(COMPARE_SEQUENTIAL, call, &self_cpu, *seen)
                        .await;
                    **lines += sink.lines.load(Ordering::Relaxed) - l;
                    **bytes += sink.bytes.load(Ordering::Relaxed) - b;
                }
                for (figures, call, seen, _, _) in &mut order {
                    figures
                        .concurrent_round(COMPARE_CONCURRENT, call, &self_cpu, *seen)
                        .await;
                }
            }
            for figures in [&bare, &stack] {
                assert_eq!(
                    figures.sequential.backend_calls,
                    (ROUNDS * COMPARE_SEQUENTIAL) as u64,
                    "every sequential call reached the backend: {}",
                    figures.sequential.label
                );
                assert_eq!(
                    figures.concurrent.cognito_requests, figures.concurrent.calls as u64,
                    "every concurrent call reached the backend: {}",
                    figures.concurrent.label
                );
            }
            let per_call = |n: usize| n as f64 / (ROUNDS * COMPARE_SEQUENTIAL) as f64;
            pairs.push(StackPair {
                logging,
                bare,
                stack,
                log_lines_per_call: (per_call(lines.0), per_call(lines.1)),
                log_bytes_per_call: (per_call(bytes.0), per_call(bytes.1)),
            });
        }
        // The clients are dropped here, so graceful shutdown has no connection to wait for.
    }

    for (stop, task) in [(stop_stack, stack_task), (stop_bare, bare_task)] {
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the server stops")
            .expect("the server task does not panic")
            .expect("the server stops cleanly");
    }
    StackFigures {
        pairs,
        ticks_per_second: ticks_per_second(),
    }
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
            backend_calls: 0,
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
         the cooldown is 0 here).\n",
        p.same_user_deduplicated, p.gateway_same_user.calls,
    );
}

/// A comparison's rows: both paths, then the second against the first, paired per round.
fn compared_rows(out: &mut Vec<Vec<String>>, base: &Compared, other: &Compared, ticks: f64) {
    let row = |c: &Compared| {
        let s = c.sequential.median();
        let (lo, hi) = c.sequential.p50_range();
        let (cps_lo, cps, cps_hi) = spread(c.concurrent.calls_per_sec.clone());
        let conc = Summary::median_of(&c.concurrent.latencies);
        vec![
            c.sequential.label.to_owned(),
            us(s.p50),
            us(s.p99),
            format!("{}–{}", us(lo), us(hi)),
            format!("{:.1}", c.sequential_cpu.per_call(ticks)),
            format!("{cps:.0}"),
            format!("{cps_lo:.0}–{cps_hi:.0}"),
            us(conc.p50),
            us(conc.p99),
            format!("{:.1}", c.concurrent_cpu.per_call(ticks)),
        ]
    };
    let d = Difference::of(base, other, ticks);
    out.push(row(base));
    out.push(row(other));
    out.push(vec![
        "difference (paired per round)".to_owned(),
        format!("{:+.0} (×{:.2})", d.p50.0, d.p50.1),
        format!("{:+.0} (×{:.2})", d.p99.0, d.p99.1),
        String::new(),
        format!("{:+.1} (×{:.2})", d.sequential_cpu.0, d.sequential_cpu.1),
        format!("×{:.2}", d.throughput),
        String::new(),
        format!("{:+.0}", d.concurrent_p50),
        format!("{:+.0}", d.concurrent_p99),
        format!("{:+.1} (×{:.2})", d.concurrent_cpu.0, d.concurrent_cpu.1),
    ]);
}

/// The second path of a comparison against the first: (difference, ratio) pairs, latencies
/// paired per round, CPU over all rounds.
struct Difference {
    p50: (f64, f64),
    p99: (f64, f64),
    /// Whether the two paths' per-round sequential p50 ranges overlap (the p50 change is then
    /// within the noise between rounds).
    p50_ranges_overlap: bool,
    sequential_cpu: (f64, f64),
    throughput: f64,
    concurrent_p50: f64,
    concurrent_p99: f64,
    concurrent_cpu: (f64, f64),
}

impl Difference {
    fn of(base: &Compared, other: &Compared, ticks: f64) -> Self {
        let paired = |f: fn(&Summary) -> f64| {
            let pairs = base.sequential.rounds.iter().zip(&other.sequential.rounds);
            let delta = median(pairs.clone().map(|(b, o)| f(o) - f(b)));
            let ratio = median(pairs.map(|(b, o)| f(o) / f(b)));
            (delta, ratio)
        };
        let concurrent_p = |f: fn(&Summary) -> f64| {
            let pairs = base
                .concurrent
                .latencies
                .iter()
                .zip(&other.concurrent.latencies);
            median(pairs.map(|(b, o)| f(o) - f(b)))
        };
        let cpu = |b: CpuUse, o: CpuUse| {
            let (b, o) = (b.per_call(ticks), o.per_call(ticks));
            (o - b, o / b)
        };
        let (base_lo, base_hi) = base.sequential.p50_range();
        let (other_lo, other_hi) = other.sequential.p50_range();
        Self {
            p50: paired(|s| s.p50),
            p99: paired(|s| s.p99),
            p50_ranges_overlap: base_lo.max(other_lo) <= base_hi.min(other_hi),
            sequential_cpu: cpu(base.sequential_cpu, other.sequential_cpu),
            throughput: median(
                base.concurrent
                    .calls_per_sec
                    .iter()
                    .zip(&other.concurrent.calls_per_sec)
                    .map(|(b, o)| o / b),
            ),
            concurrent_p50: concurrent_p(|s| s.p50),
            concurrent_p99: concurrent_p(|s| s.p99),
            concurrent_cpu: cpu(base.concurrent_cpu, other.concurrent_cpu),
        }
    }

    /// "+7 µs at p50 (×1.06)", noting when the rounds' ranges overlap.
    fn p50_text(&self) -> String {
        let noise = if self.p50_ranges_overlap {
            ", within the spread between rounds"
        } else {
            ""
        };
        format!("{:+.0} µs at p50 (×{:.2}{noise})", self.p50.0, self.p50.1)
    }
}

const COMPARED_HEADER: [&str; 10] = [
    "path",
    "seq p50 µs",
    "seq p99 µs",
    "seq p50 range",
    "CPU µs/call (seq)",
    "calls/s (64 in flight)",
    "calls/s range",
    "conc p50 µs",
    "conc p99 µs",
    "CPU µs/call (conc)",
];

fn write_tracing(out: &mut String, t: &TracingFigures) {
    let _ = writeln!(
        out,
        "## Tracing's cost: OTLP export on and off (release binary)\n\n\
         Two `cognito-gateway serve --local --log-format json` processes run side by side with the \
         high-limits `--config` above and `RUST_LOG=info` (one JSON log line per call to a pipe, \
         both): one with no OTEL_* variable, one with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an \
         OTLP/gRPC collector running in the bench process (opentelemetry-proto's tonic services, \
         which decode every export and count the spans), `OTEL_TRACES_SAMPLER=always_on` and \
         `OTEL_METRIC_EXPORT_INTERVAL=1000` (metrics exported every second). The same load goes to \
         both, over one connection each: after {WARM_UP} sequential and {} concurrent warm-up \
         calls, {ROUNDS} rounds of {COMPARE_SEQUENTIAL} sequential resets of `alice` (an OK no-op, \
         one local-Cognito call each) then {COMPARE_CONCURRENT} calls with {IN_FLIGHT} in flight, \
         each a new unknown user (NOT_FOUND, one local-Cognito call each); the two processes' \
         rounds alternate and which goes first alternates too. Latency is measured by the client; \
         CPU is the gateway process's own (utime + stime from /proc/<pid>/stat around each phase, \
         divided by its calls; {:.0} ms ticks, summed over rounds). The machine has 2 CPUs \
         shared by the client, both gateways and the collector.\n",
        WARM_UP * 5,
        1000.0 / t.ticks_per_second,
    );
    let mut rows = Vec::new();
    compared_rows(&mut rows, &t.off, &t.on, t.ticks_per_second);
    table(out, &COMPARED_HEADER, &rows);
    let d = Difference::of(&t.off, &t.on, t.ticks_per_second);
    let _ = writeln!(
        out,
        "With export on, the gateway spends **{:+.1} µs more CPU per call under load** (×{:.2}) \
         and serves **×{:.2} the calls per second**; sequential calls move {} and {:+.0} µs at \
         p99 (×{:.2}).\n",
        d.concurrent_cpu.0,
        d.concurrent_cpu.1,
        d.throughput,
        d.p50_text(),
        d.p99.0,
        d.p99.1,
    );
    let per_call = |n: usize| n as f64 / t.traced_calls as f64;
    let _ = writeln!(
        out,
        "The collector received **{} spans for {} calls to the traced process ({:.2} per call)**: \
         {} SERVER ({:.2} per call), {} CLIENT ({:.2} per call), {} other; every call here makes \
         one Cognito call, so 2 per call is complete. {} of them ({:.2} per call) had arrived when \
         the load ended, the rest in the flush at exit (the batch processor exports every 5 s or \
         512 spans). {} trace exports ({:.0} spans each), {} metric exports, {:.1} MiB of OTLP in \
         all ({:.0} B per call). SIGTERM → exit 0: {:.0} ms untraced, {:.0} ms traced (the \
         exporters flush first).\n",
        t.spans_after_exit,
        t.traced_calls,
        per_call(t.spans_after_exit),
        t.server_spans,
        per_call(t.server_spans),
        t.client_spans,
        per_call(t.client_spans),
        t.other_spans,
        t.spans_at_end_of_load,
        per_call(t.spans_at_end_of_load),
        t.trace_exports,
        t.spans_after_exit as f64 / t.trace_exports.max(1) as f64,
        t.metric_exports,
        t.export_bytes as f64 / (1024.0 * 1024.0),
        per_call(t.export_bytes),
        millis(t.shutdown.0),
        millis(t.shutdown.1),
    );
}

fn write_stack(out: &mut String, s: &StackFigures) {
    let _ = writeln!(
        out,
        "## The middleware stack's cost: full stack against the bare handler\n\n\
         **This measures the gateway alone, not Cognito**: both servers call a backend implemented \
         in the bench (`impl Backend`) that answers OK at once, so every microsecond below is \
         gRPC, the layers and the handler. \"Full stack\" is `App::build` as in production: the \
         trace layer, error details, deadline, load shedding, authentication in token mode (one \
         caller, limited to the demo pool; the client sends `authorization: Bearer ...`, checked \
         by SHA-256) and the per-caller rate, then the handler; health and reflection are on the \
         same router. \"Bare handler\" is `UserAdminServiceServer::new(UserAdmin::new(..))` on a \
         plain `tonic::transport::Server` with the same HTTP/2 and TCP settings (TCP_NODELAY \
         included) and no layer, but one tonic interceptor that puts the `anonymous` caller in the \
         request's extensions: the handler fails closed (UNAUTHENTICATED) without a caller, so a \
         truly bare handler answers nothing useful. Both get the same request bytes (the token \
         too). Limits are far above reach (rates 1 000 000/s, user cooldown 0) and each call names \
         another user, so every check runs, none refuses, the user gate never shares a call, and \
         every call reaches the backend (checked: exactly one backend call per call). Everything \
         runs in the bench process, one tokio runtime with 2 workers, tonic client over one \
         loopback HTTP/2 connection per server: after {WARM_UP} sequential and {} concurrent \
         warm-up calls per path, {ROUNDS} rounds of {COMPARE_SEQUENTIAL} sequential calls then \
         {COMPARE_CONCURRENT} with {IN_FLIGHT} in flight, bare and stack rounds alternating (and \
         which goes first). CPU is the whole bench process's (utime + stime from /proc/self/stat \
         around each phase, summed over rounds, divided by calls): **the client is in it too**, so \
         read the difference, not the absolute figure. Run twice: with no log subscriber (the \
         layers' spans cost next to nothing) and with the binary's log layer (`telemetry::init`'s \
         JSON formatter, `info`, the same filters) writing into a counting sink instead of \
         stderr; no OpenTelemetry layer in either (the section above measures that).\n",
        WARM_UP * 5,
    );
    for pair in &s.pairs {
        let _ = writeln!(out, "### {}\n", pair.logging);
        let mut rows = Vec::new();
        compared_rows(&mut rows, &pair.bare, &pair.stack, s.ticks_per_second);
        table(out, &COMPARED_HEADER, &rows);
        let d = Difference::of(&pair.bare, &pair.stack, s.ticks_per_second);
        let _ = writeln!(
            out,
            "The stack adds **{}** and {:+.0} µs at p99 to a sequential call, and **{:+.1} µs \
             of CPU per call under load** (×{:.2} of the whole process's, client included); \
             throughput ×{:.2}.\n",
            d.p50_text(),
            d.p99.0,
            d.concurrent_cpu.0,
            d.concurrent_cpu.1,
            d.throughput,
        );
        if pair.log_lines_per_call.1 > 0.0 {
            let _ = writeln!(
                out,
                "Log output per sequential call: bare {:.2} lines, {:.0} B; stack {:.2} lines, \
                 {:.0} B (the stack's line lists its `rpc` span with the caller and pool). \
                 Likely contributors to the stack's larger cost with logs on (not profiled): \
                 the JSON layer formats the `rpc` span's fields when it opens, and \
                 tracing-subscriber's JSON formatter re-parses and re-serialises them at every \
                 `Span::record` (4 per OK call: caller, pool, deduplicated, status code); the \
                 longer line is formatted once more per call.\n",
                pair.log_lines_per_call.0,
                pair.log_bytes_per_call.0,
                pair.log_lines_per_call.1,
                pair.log_bytes_per_call.1,
            );
        }
    }
}
