//! Section 1, the release binary: its size, exec to `SERVING`, RSS idle, after calls and under
//! sustained load, SIGTERM to exit. Also the child-process plumbing the tracing comparison uses.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use tokio::runtime::Runtime;

use crate::{
    IN_FLIGHT,
    compare::cpu_ticks,
    kit::{self, binary::Gateway},
    load::{Counter, Who, concurrent, connect, gateway_call, sequential_with_first},
    report::{mib, table},
    stats::{Summary, micros, millis, spread},
};

/// The binary's config file: limits out of the way (the defaults allow 10 calls/s per caller and
/// answer a repeat reset of the same user within 30 s without calling Cognito).
const BINARY_CONFIG: &str = "\
# Written by benches/gateway/binary.rs: limits out of the way (the largest values the file accepts).
[limits]
backend_rps = 10000
backend_burst = 10000
default_rate_per_second = 100000
default_burst = 100000
user_cooldown_secs = 0
";
/// Fresh processes started for startup and RSS figures.
pub(crate) const STARTUP_RUNS: usize = 10;
/// Sequential calls driven through each of those processes before RSS is read again.
const BINARY_CALLS: usize = 2_000;
/// Cumulative call counts at which the long-running process's RSS is read (concurrent load).
const GROWTH_CHECKPOINTS: [usize; 5] = [2_000, 10_000, 20_000, 40_000, 80_000];

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

/// The release binary's figures.
pub(crate) struct BinaryFigures {
    size_bytes: u64,
    runs: Vec<BinaryRun>,
    growth: Growth,
}

/// Starts [`STARTUP_RUNS`] fresh processes, one after another, then keeps one under load.
pub(crate) fn bench(runtime: &Runtime) -> BinaryFigures {
    let size_bytes = std::fs::metadata(kit::binary::BIN)
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
pub(crate) fn binary_config() -> std::path::PathBuf {
    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-gateway.toml");
    std::fs::write(&config, BINARY_CONFIG).expect("the target tmp dir is writable");
    config
}

/// A running `cognito-gateway serve --local` child.
pub(crate) struct Server {
    gateway: Gateway,
    pub(crate) addr: SocketAddr,
    startup: Duration,
}

impl Server {
    /// Starts the binary with `env` added; any OTEL_* variable of the bench's own environment is
    /// removed first, so that only `env` decides whether telemetry is exported.
    pub(crate) fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        let started = Instant::now();
        let mut command = kit::binary::serve_command();
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command
            .args(["--local", "--config"])
            .arg(config)
            // The default filter, whatever the caller's shell has: one info line per call is part
            // of what the binary costs.
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let gateway = Gateway::start(command);
        let startup = started.elapsed();
        Self {
            addr: gateway
                .addr
                .parse()
                .expect("SERVING's addr is a socket address"),
            gateway,
            startup,
        }
    }

    /// (VmRSS, VmHWM) in KiB, from /proc.
    pub(crate) fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.gateway.child.id()))
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
    pub(crate) fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&format!("/proc/{}/stat", self.gateway.child.id()))
    }

    /// SIGTERM, as Kubernetes sends it; returns the time to exit and the stderr line count.
    pub(crate) fn stop(mut self) -> (Duration, usize) {
        let started = Instant::now();
        let code = self.gateway.terminate();
        let shutdown = started.elapsed();
        assert_eq!(code, Some(0), "the gateway's exit code after SIGTERM");
        let lines = self.gateway.startup_log.len() + self.gateway.rest_of_log().len();
        (shutdown, lines)
    }
}

/// The report's section on the release binary.
pub(crate) fn write(out: &mut String, binary: &BinaryFigures) {
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
}
