//! Section 7, hostile clients: what a flood of refused calls and a crowd of idle connections cost
//! the gateway, and the well-behaved caller beside them.
//!
//! The release binary with token authentication and two callers: `web`, well-behaved, and `noisy`,
//! held to 1 call/s. A flood sends 5,000 calls/s, half with a token nobody has (UNAUTHENTICATED),
//! half as `noisy` far over its rate (RATE_LIMITED), from a runtime of its own on separate
//! connections. Meanwhile 1,000 connections send the HTTP/2 preface and then nothing, from four
//! addresses (each within its share of places).
//!
//! Rounds interleave `web` alone and `web` beside the flood (sequential calls for a fixed time
//! each); a flood-only window gives the CPU per refused call from the process's own utime + stime.
//! RSS is read idle, at its highest during the abuse, and 20 s after it ended.
//!
//! `COGNITO_GATEWAY_BENCH=abuse` runs this section alone (its table to stdout);
//! `COGNITO_GATEWAY_BENCH_BINARY` points it at another build of the gateway (an allocator's, say).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cognito_gateway::{
    local::DEMO_POOL_ID,
    proto::{ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient},
};
use sha2::Digest as _;
use tokio::{io::AsyncWriteExt as _, net::TcpSocket, runtime::Runtime};
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use crate::{
    compare::{cpu_ticks, ticks_per_second},
    kit::binary::Gateway,
    report::{mib, table, us},
    stats::Summary,
};

/// Refused calls sent per second by the flood.
const FLOOD_RATE: u64 = 5_000;
/// Connections that send the preface and then stay silent.
const IDLE_CONNECTIONS: usize = 1_000;
/// Each measured window.
const WINDOW: Duration = Duration::from_secs(4);
/// Rounds of (alone, beside the flood).
const ROUNDS: usize = 3;
/// How long after the abuse RSS is read again.
const SETTLE: Duration = Duration::from_secs(20);

const GOOD_TOKEN: &str = "bench-good-token";
const NOISY_TOKEN: &str = "bench-noisy-token";

pub(crate) struct AbuseFigures {
    binary: String,
    binary_bytes: u64,
    idle_rss_kib: u64,
    during_rss_kib: u64,
    after_rss_kib: u64,
    alone: Summary,
    beside: Summary,
    flood_rate: f64,
    cpu_us_per_refused: f64,
    unexpected: u64,
}

fn config(dir: &Path) -> PathBuf {
    let hash = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let text = format!(
        "# Written by benches/gateway/abuse.rs.\n\
         [auth]\nmode = \"token\"\n\
         [[callers]]\nname = \"web\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\nrate_per_second = 100000\nburst = 100000\n\
         [[callers]]\nname = \"noisy\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\nrate_per_second = 1\nburst = 1\n\
         [limits]\nbackend_rps = 10000\nbackend_burst = 10000\nuser_cooldown_secs = 0\n",
        hash(GOOD_TOKEN),
        hash(NOISY_TOKEN)
    );
    let path = dir.join("bench-abuse.toml");
    std::fs::write(&path, text).expect("the target tmp dir is writable");
    path
}

fn binary() -> String {
    std::env::var("COGNITO_GATEWAY_BENCH_BINARY")
        .unwrap_or_else(|_| crate::kit::binary::BIN.to_owned())
}

fn spawn(config: &Path) -> Gateway {
    let mut command = std::process::Command::new(binary());
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--local",
            "--config",
        ])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    Gateway::start(command)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the gateway is alive")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB")
}

/// Adds a caller's bearer token to every call.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client =
    UserAdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn client(addr: SocketAddr, token: &str) -> Client {
    let channel = crate::kit::app::connect(addr).await;
    let header = format!("Bearer {token}").parse().expect("ASCII");
    UserAdminServiceClient::with_interceptor(channel, Bearer(header))
}

fn request(user: String) -> ResetUserPasswordRequest {
    ResetUserPasswordRequest {
        user_pool_id: DEMO_POOL_ID.to_owned(),
        username: user,
        client_metadata: Default::default(),
        request_id: String::new(),
    }
}

/// Sequential calls by `web` for `WINDOW`: their latencies (each NOT_FOUND from Cognito: a
/// distinct unknown user per call, so every call reaches the backend).
async fn well_behaved(client: &Client, next: &AtomicU64) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let until = Instant::now() + WINDOW;
    while Instant::now() < until {
        let user = format!("nobody-{}", next.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        let answer = client.clone().reset_user_password(request(user)).await;
        latencies.push(started.elapsed());
        assert_eq!(
            answer.expect_err("an unknown user").code(),
            Code::NotFound,
            "web's calls are answered by Cognito"
        );
    }
    latencies
}

/// The flood, on a runtime of its own, until `stop`: refused calls at `FLOOD_RATE`, paced every
/// 10 ms. Counts the calls answered as refusals and anything else.
struct Flood {
    refused: Arc<AtomicU64>,
    unexpected: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Flood {
    fn start(addr: SocketAddr) -> Self {
        let refused = Arc::new(AtomicU64::new(0));
        let unexpected = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, u, s) = (
            Arc::clone(&refused),
            Arc::clone(&unexpected),
            Arc::clone(&stop),
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let mut clients = Vec::new();
                for token in ["nobody-has-this-token", NOISY_TOKEN] {
                    for _ in 0..2 {
                        clients.push(client(addr, token).await);
                    }
                }
                let per_tick = FLOOD_RATE / 100;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut sent = 0u64;
                while !s.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..per_tick {
                        let mut client = clients[(sent % 4) as usize].clone();
                        sent += 1;
                        let (r, u) = (Arc::clone(&r), Arc::clone(&u));
                        tokio::spawn(async move {
                            match client.reset_user_password(request("victim".into())).await {
                                Err(status)
                                    if matches!(
                                        status.code(),
                                        Code::Unauthenticated | Code::ResourceExhausted
                                    ) =>
                                {
                                    r.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    u.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                    }
                }
            });
        });
        Self {
            refused,
            unexpected,
            stop,
            thread,
        }
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the flood thread ends");
        self.unexpected.load(Ordering::Relaxed)
    }
}

/// Connections that send the HTTP/2 preface and an empty SETTINGS frame, then nothing.
async fn idle_connections(addr: SocketAddr) -> Vec<tokio::net::TcpStream> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let mut sockets = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let socket = TcpSocket::new_v4().expect("a socket");
        let from: SocketAddr = format!("127.0.0.{}:0", 10 + i % 4)
            .parse()
            .expect("an address");
        socket.bind(from).expect("loopback addresses bind");
        let mut stream = socket.connect(addr).await.expect("the gateway accepts");
        stream
            .write_all(PREFACE)
            .await
            .expect("the preface is written");
        sockets.push(stream);
    }
    sockets
}

pub(crate) fn bench(runtime: &Runtime) -> AbuseFigures {
    let config = config(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let mut gateway = spawn(&config);
    let pid = gateway.child.id();
    let addr: SocketAddr = gateway.addr.parse().expect("SERVING names an address");
    let next = AtomicU64::new(0);
    let ticks = ticks_per_second();
    let stat = format!("/proc/{pid}/stat");

    let (alone, beside, idle_rss_kib, during_rss_kib, flood_rate, cpu_us, unexpected, idle) =
        runtime.block_on(async {
            let web = client(addr, GOOD_TOKEN).await;
            // Warm: connections, the pool's description, the allocator.
            for _ in 0..200 {
                let user = format!("nobody-{}", next.fetch_add(1, Ordering::Relaxed));
                let _ = web.clone().reset_user_password(request(user)).await;
            }
            let idle_rss = rss_kib(pid);
            let idle = idle_connections(addr).await;
            let mut peak = rss_kib(pid);
            let (mut alone, mut beside) = (Vec::new(), Vec::new());
            let mut unexpected = 0;
            for _ in 0..ROUNDS {
                alone.push(Summary::of(well_behaved(&web, &next).await));
                let flood = Flood::start(addr);
                beside.push(Summary::of(well_behaved(&web, &next).await));
                peak = peak.max(rss_kib(pid));
                unexpected += flood.stop();
            }
            // The flood alone: its CPU per refused call.
            let flood = Flood::start(addr);
            let (cpu_before, refused_before, started) =
                (cpu_ticks(&stat), flood.refused(), Instant::now());
            tokio::time::sleep(WINDOW).await;
            let (cpu, refused, took) = (
                cpu_ticks(&stat) - cpu_before,
                flood.refused() - refused_before,
                started.elapsed(),
            );
            peak = peak.max(rss_kib(pid));
            unexpected += flood.stop();
            let cpu_us = cpu as f64 / ticks * 1e6 / refused.max(1) as f64;
            (
                alone,
                beside,
                idle_rss,
                peak,
                refused as f64 / took.as_secs_f64(),
                cpu_us,
                unexpected,
                idle,
            )
        });
    drop(idle);
    std::thread::sleep(SETTLE);
    let after_rss_kib = rss_kib(pid);
    assert_eq!(gateway.terminate(), Some(0), "the gateway exits cleanly");
    AbuseFigures {
        binary_bytes: std::fs::metadata(binary()).map(|m| m.len()).unwrap_or(0),
        binary: binary(),
        idle_rss_kib,
        during_rss_kib,
        after_rss_kib,
        alone: Summary::median_of(&alone),
        beside: Summary::median_of(&beside),
        flood_rate,
        cpu_us_per_refused: cpu_us,
        unexpected,
    }
}

pub(crate) fn write(out: &mut String, f: &AbuseFigures) {
    let _ = writeln!(
        out,
        "## 7. Hostile clients: a refused-call flood and idle connections\n\n\
         The release binary (`{}`, {:.1} MiB) with token authentication. A flood of {FLOOD_RATE} \
         refused calls/s (a token nobody has, and a caller far over its rate, from a runtime of \
         its own), and {IDLE_CONNECTIONS} connections that send the HTTP/2 preface and then \
         nothing. A well-behaved caller makes sequential calls (each answered by the local Cognito) \
         for {} s alone, then {} s beside the flood, {ROUNDS} rounds interleaved; medians over \
         rounds.\n",
        f.binary,
        f.binary_bytes as f64 / (1024.0 * 1024.0),
        WINDOW.as_secs(),
        WINDOW.as_secs(),
    );
    table(
        out,
        &["well-behaved caller", "p50 (µs)", "p99 (µs)"],
        &[
            vec!["alone".into(), us(f.alone.p50), us(f.alone.p99)],
            vec![
                "beside the flood".into(),
                us(f.beside.p50),
                us(f.beside.p99),
            ],
            vec![
                "ratio".into(),
                format!("×{:.2}", f.beside.p50 / f.alone.p50),
                format!("×{:.2}", f.beside.p99 / f.alone.p99),
            ],
        ],
    );
    table(
        out,
        &[
            "RSS (MiB)",
            "idle",
            "highest during",
            "20 s after",
            "after − idle",
        ],
        &[vec![
            String::new(),
            mib(f.idle_rss_kib),
            mib(f.during_rss_kib),
            mib(f.after_rss_kib),
            format!(
                "{:+.1}",
                (f.after_rss_kib as f64 - f.idle_rss_kib as f64) / 1024.0
            ),
        ]],
    );
    let _ = writeln!(
        out,
        "Flood alone: {:.0} refused calls/s answered, **{:.1} µs of gateway CPU per refused call** \
         (utime + stime over a {} s window). Flood calls answered with anything but a refusal: {}.\n",
        f.flood_rate,
        f.cpu_us_per_refused,
        WINDOW.as_secs(),
        f.unexpected,
    );
}
