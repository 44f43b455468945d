//! Two sections out of process, as a user would compare: the release binary and a client of
//! the AWS SDK, each in its own process, against one fake Cognito in a third; the bench process
//! drives them and calls the gateway.
//!
//! - Added latency and throughput: gateway against the direct SDK call, with the bare gRPC hop
//!   (`grpc.health.v1.Health/Check` on the same connection) beside them; rounds interleaved.
//! - Cold and idle connections over TLS: the fake Cognito behind a TLS front that, like AWS,
//!   closes connections left idle; the first call after each idle period against warm calls.
//!
//! The fake Cognito and the direct client are this bench binary started again in a role
//! (`COGNITO_GATEWAY_BENCH_ROLE`): `cognito` serves the embedded local Cognito (plain HTTP, or TLS
//! with an idle limit), `direct` makes the calls it is told on stdin with an SDK client configured
//! as `SdkBackend` configures its base, and answers with their latencies.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cognito_gateway::{
    local::LocalCognito, proto::user_admin_service_client::UserAdminServiceClient,
};
use tokio::runtime::Runtime;

use crate::{
    IN_FLIGHT, ROUNDS, WARM_UP,
    compare::{cpu_ticks, ticks_per_second},
    kit::{self, binary::Gateway},
    load::{Counter, Who, concurrent, connect, gateway_call, sequential},
    report::{table, us},
    stats::{Summary, median, micros, spread},
};

/// The variable that starts this binary in a role instead of benchmarking.
pub(crate) const ROLE: &str = "COGNITO_GATEWAY_BENCH_ROLE";
/// Sequential calls per round and path.
const SEQUENTIAL_CALLS: usize = 2_000;
/// Calls per concurrent round.
const CONCURRENT_CALLS: usize = 10_000;
/// Warm calls measured around each idle period.
const WARM_CALLS: usize = 50;

/// The gateway's config: no authentication (said explicitly), limits out of the way, the demo's
/// region allowed (so that it is connected at start), and how often connections are renewed.
fn gateway_config(refresh_secs: u64) -> String {
    format!(
        "# Written by benches/gateway/out_of_process.rs.\n\
         [auth]\nmode = \"none\"\n\n\
         [cognito]\nallowed_regions = [\"local-1\"]\nconnection_refresh_secs = {refresh_secs}\n\n\
         [limits]\nbackend_rps = 10000\nbackend_burst = 10000\n\
         default_rate_per_second = 100000\ndefault_burst = 100000\nuser_cooldown_secs = 0\n"
    )
}

/// Idle periods, server idle limit and the gateway's renewal: shortened by default (seconds);
/// `COGNITO_GATEWAY_BENCH_IDLE=30,120,600 COGNITO_GATEWAY_BENCH_SERVER_IDLE=20
/// COGNITO_GATEWAY_BENCH_REFRESH=15` is the full run.
pub(crate) struct IdlePlan {
    idles: Vec<u64>,
    server_idle: u64,
    refresh: u64,
}

impl IdlePlan {
    pub(crate) fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secs = |name: &str, default: u64| {
            var(name).map_or(default, |v| v.parse().expect("a whole number of seconds"))
        };
        Self {
            idles: var("COGNITO_GATEWAY_BENCH_IDLE").map_or(vec![2, 12, 30], |list| {
                list.split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .expect("idle periods: seconds, comma-separated")
                    })
                    .collect()
            }),
            server_idle: secs("COGNITO_GATEWAY_BENCH_SERVER_IDLE", 10),
            refresh: secs("COGNITO_GATEWAY_BENCH_REFRESH", 5),
        }
    }
}

/// The out-of-process comparison's figures.
pub(crate) struct Hop {
    gateway: Vec<Summary>,
    direct: Vec<Summary>,
    health: Vec<Summary>,
    gateway_cps: Vec<f64>,
    direct_cps: Vec<f64>,
    gateway_conc: Vec<Summary>,
    direct_conc: Vec<Summary>,
    /// CPU the gateway process used per sequential call, µs.
    gateway_cpu_us: f64,
}

/// One idle period's figures: the first call after it and the warm p50 that followed, µs.
struct IdlePoint {
    secs: u64,
    gateway: (f64, f64),
    direct: (f64, f64),
    /// `Health/Check` on a second gateway process that sat idle as long: the bare hop.
    hop: (f64, f64),
}

/// The idle connections' figures, per idle period.
pub(crate) struct Idle {
    plan: IdlePlan,
    points: Vec<IdlePoint>,
    /// The direct client's first call on a new TLS connection, and its warm p50, µs.
    direct_cold: f64,
    /// Connections the TLS front accepted while the processes sat idle, and how long that was.
    accepted_while_idle: u64,
    idle_total: Duration,
}

/// Runs the comparison, then the idle periods of `plan`.
pub(crate) fn bench(runtime: &Runtime, plan: IdlePlan) -> (Hop, Idle) {
    (hop(runtime), idle(runtime, plan))
}

fn hop(runtime: &Runtime) -> Hop {
    let cognito = Role::cognito(None);
    let gateway = start_gateway(&cognito.endpoint, 15, None);
    let mut direct = Role::direct(&cognito.endpoint, None);
    let addr = gateway
        .addr
        .parse()
        .expect("SERVING names a socket address");
    let pid = gateway.child.id();
    runtime.block_on(async {
        // One connection for both: the hop is measured where the resets go.
        let channel = kit::app::connect(addr).await;
        let client = UserAdminServiceClient::new(channel.clone());
        let health = tonic_health::pb::health_client::HealthClient::new(channel);
        let none = Counter::default();
        let gw_alice = gateway_call(&client, Who::Alice, &none);
        let gw_nobody = gateway_call(&client, Who::Nobody, &none);
        let check = health_call(health);
        // alice becomes RESET_REQUIRED with the first call; every later reset is an OK no-op.
        sequential(WARM_UP, &gw_alice, "gateway warm-up").await;
        direct.sequential(WARM_UP, "alice");
        sequential(WARM_UP, &check, "health warm-up").await;

        let mut figures = Hop {
            gateway: Vec::new(),
            direct: Vec::new(),
            health: Vec::new(),
            gateway_cps: Vec::new(),
            direct_cps: Vec::new(),
            gateway_conc: Vec::new(),
            direct_conc: Vec::new(),
            gateway_cpu_us: 0.0,
        };
        let stat = format!("/proc/{pid}/stat");
        let mut gateway_ticks = 0;
        for round in 0..ROUNDS {
            // Which path goes first alternates: a noisy spell hits both.
            for step in 0..3 {
                match (step + round) % 3 {
                    0 => {
                        let before = cpu_ticks(&stat);
                        let latencies = sequential(SEQUENTIAL_CALLS, &gw_alice, "gateway").await;
                        gateway_ticks += cpu_ticks(&stat) - before;
                        figures.gateway.push(Summary::of(latencies));
                    }
                    1 => figures
                        .direct
                        .push(Summary::of(direct.sequential(SEQUENTIAL_CALLS, "alice"))),
                    _ => figures.health.push(Summary::of(
                        sequential(SEQUENTIAL_CALLS, &check, "health").await,
                    )),
                }
            }
            let load = concurrent(CONCURRENT_CALLS, IN_FLIGHT, &gw_nobody, "gateway load").await;
            figures
                .gateway_cps
                .push(CONCURRENT_CALLS as f64 / load.elapsed.as_secs_f64());
            figures.gateway_conc.push(Summary::of(load.latencies));
            let (elapsed, latencies) = direct.concurrent(CONCURRENT_CALLS, IN_FLIGHT);
            figures
                .direct_cps
                .push(CONCURRENT_CALLS as f64 / elapsed.as_secs_f64());
            figures.direct_conc.push(Summary::of(latencies));
        }
        figures.gateway_cpu_us =
            gateway_ticks as f64 / ticks_per_second() * 1e6 / (ROUNDS * SEQUENTIAL_CALLS) as f64;
        figures
    })
}

fn idle(runtime: &Runtime, plan: IdlePlan) -> Idle {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-tls");
    std::fs::create_dir_all(&dir).expect("the target tmp dir is writable");
    let ca = dir.join("ca.pem");
    let mut cognito = Role::cognito(Some((&ca, plan.server_idle)));
    let gateway = start_gateway(&cognito.endpoint, plan.refresh, Some(&ca));
    // A second gateway, asked only Health/Check: how much of a first call after idle is waking
    // a process that sat idle and crossing the gRPC hop, with no Cognito call behind it.
    let hop_gateway = start_gateway(&cognito.endpoint, plan.refresh, Some(&ca));
    let mut direct = Role::direct(&cognito.endpoint, Some(&ca));
    let addr = |gateway: &Gateway| -> std::net::SocketAddr {
        gateway
            .addr
            .parse()
            .expect("SERVING names a socket address")
    };
    runtime.block_on(async {
        let client = connect(addr(&gateway)).await;
        let check = health_call(tonic_health::pb::health_client::HealthClient::new(
            kit::app::connect(addr(&hop_gateway)).await,
        ));
        let none = Counter::default();
        let gw_alice = gateway_call(&client, Who::Alice, &none);
        let direct_first = direct.sequential(WARM_CALLS, "alice");
        let direct_cold = micros(direct_first[0]);
        sequential(WARM_CALLS, &gw_alice, "gateway warm-up").await;
        sequential(WARM_CALLS, &check, "hop warm-up").await;

        let mut points = Vec::new();
        let accepted_before = cognito.accepted();
        let mut idle_total = Duration::ZERO;
        for (i, &idle) in plan.idles.iter().enumerate() {
            let idle_started = Instant::now();
            tokio::time::sleep(Duration::from_secs(idle)).await;
            idle_total += idle_started.elapsed();
            // All three waited the same; which is asked first rotates.
            let (mut gw_first, mut direct_first, mut hop_first) = (None, None, None);
            for step in 0..3 {
                match (i + step) % 3 {
                    0 => gw_first = Some(sequential(1, &gw_alice, "gateway after idle").await[0]),
                    1 => direct_first = Some(direct.sequential(1, "alice")[0]),
                    _ => hop_first = Some(sequential(1, &check, "hop after idle").await[0]),
                }
            }
            let first = |d: Option<Duration>| micros(d.expect("each path was asked once"));
            let gw_warm = Summary::of(sequential(WARM_CALLS, &gw_alice, "gateway warm").await);
            let direct_warm = Summary::of(direct.sequential(WARM_CALLS, "alice"));
            let hop_warm = Summary::of(sequential(WARM_CALLS, &check, "hop warm").await);
            points.push(IdlePoint {
                secs: idle,
                gateway: (first(gw_first), gw_warm.p50),
                direct: (first(direct_first), direct_warm.p50),
                hop: (first(hop_first), hop_warm.p50),
            });
        }
        let accepted_while_idle = cognito.accepted() - accepted_before;
        Idle {
            plan,
            points,
            direct_cold,
            accepted_while_idle,
            idle_total,
        }
    })
}

/// The release binary against `endpoint` (fake credentials, nothing from this machine's AWS files),
/// trusting `ca` where given.
fn start_gateway(endpoint: &str, refresh_secs: u64, ca: Option<&Path>) -> Gateway {
    let config =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-oop-{refresh_secs}.toml"));
    std::fs::write(&config, gateway_config(refresh_secs)).expect("the target tmp dir is writable");
    let mut command = kit::binary::serve_command();
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("OTEL_") || name_text.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "local-1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    Gateway::start(command)
}

pub(crate) fn health_call(
    health: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
) -> crate::load::Call {
    Arc::new(move || {
        let mut health = health.clone();
        Box::pin(async move {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok()
        })
    })
}

/// This binary in a role, as a child process: its stdin takes commands, its stdout answers.
struct Role {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    endpoint: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Role {
    fn start(role: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the bench knows its path"))
            .env(ROLE, role)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the bench binary starts again");
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("the role says it is ready");
        let endpoint = first
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("{role} role: {first:?}"))
            .to_owned();
        Self {
            child,
            stdin,
            stdout,
            endpoint,
        }
    }

    /// The local Cognito in its own process: plain HTTP, or TLS (a certificate for `localhost`
    /// whose CA is written to the path given) closing connections idle for the seconds given.
    fn cognito(tls: Option<(&Path, u64)>) -> Self {
        match tls {
            None => Self::start("cognito", &[]),
            Some((ca, idle)) => Self::start(
                "cognito",
                &[
                    ("BENCH_CA_OUT", &ca.to_string_lossy()),
                    ("BENCH_SERVER_IDLE_SECS", &idle.to_string()),
                ],
            ),
        }
    }

    fn direct(endpoint: &str, ca: Option<&Path>) -> Self {
        let ca = ca.map(|ca| ca.to_string_lossy().into_owned());
        let mut env = vec![("BENCH_ENDPOINT", endpoint)];
        if let Some(ca) = &ca {
            env.push(("SSL_CERT_FILE", ca));
        }
        Self::start("direct", &env)
    }

    fn ask(&mut self, command: &str) -> Vec<u64> {
        writeln!(self.stdin, "{command}").expect("the role reads commands");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("the role answers");
        line.split_whitespace()
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{command}: {line:?}")))
            .collect()
    }

    fn sequential(&mut self, n: usize, who: &str) -> Vec<Duration> {
        self.ask(&format!("seq {n} {who}"))
            .into_iter()
            .map(Duration::from_nanos)
            .collect()
    }

    fn concurrent(&mut self, n: usize, in_flight: usize) -> (Duration, Vec<Duration>) {
        let mut answer = self
            .ask(&format!("conc {n} {in_flight}"))
            .into_iter()
            .map(Duration::from_nanos);
        let elapsed = answer.next().expect("the elapsed time comes first");
        (elapsed, answer.collect())
    }

    fn accepted(&mut self) -> u64 {
        self.ask("accepted")[0]
    }
}

/// Runs this process as `role` (see the module docs) until its stdin closes.
pub(crate) fn run_role(role: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    match role {
        "cognito" => {
            let (endpoint, accepted, _local) = runtime.block_on(serve_cognito());
            writeln!(out, "READY {endpoint}").expect("stdout is open");
            for line in stdin.lines() {
                let line = line.expect("stdin is readable");
                if line.trim() == "accepted" {
                    writeln!(out, "{}", accepted.load(Ordering::Relaxed)).expect("stdout is open");
                }
            }
        }
        "direct" => {
            let endpoint = std::env::var("BENCH_ENDPOINT").expect("BENCH_ENDPOINT is set");
            let client = runtime.block_on(crate::in_process::sdk_client(&endpoint));
            writeln!(out, "READY {endpoint}").expect("stdout is open");
            for line in stdin.lines() {
                let line = line.expect("stdin is readable");
                let words: Vec<&str> = line.split_whitespace().collect();
                let answer: Vec<u128> = runtime.block_on(async {
                    match words.as_slice() {
                        ["seq", n, who] => {
                            let who = if *who == "alice" {
                                Who::Alice
                            } else {
                                Who::Nobody
                            };
                            let call = crate::in_process::direct_call(&client, who);
                            let n = n.parse().expect("a count");
                            sequential(n, &call, "direct")
                                .await
                                .iter()
                                .map(Duration::as_nanos)
                                .collect()
                        }
                        ["conc", n, in_flight] => {
                            let call = crate::in_process::direct_call(&client, Who::Nobody);
                            let load = concurrent(
                                n.parse().expect("a count"),
                                in_flight.parse().expect("a count"),
                                &call,
                                "direct",
                            )
                            .await;
                            std::iter::once(load.elapsed)
                                .chain(load.latencies)
                                .map(|d| d.as_nanos())
                                .collect()
                        }
                        _ => panic!("direct role: unknown command {line:?}"),
                    }
                });
                let text: Vec<String> = answer.iter().map(u128::to_string).collect();
                writeln!(out, "{}", text.join(" ")).expect("stdout is open");
            }
        }
        other => panic!("unknown {ROLE} {other:?}"),
    }
}

/// The local Cognito; with `BENCH_CA_OUT`, behind a TLS front for `localhost` (its CA written
/// there) that closes a connection after `BENCH_SERVER_IDLE_SECS` without a byte either way, as
/// AWS endpoints close idle connections. Returns the endpoint, the TLS front's accepted
/// connections, and the Cognito (which must live on).
async fn serve_cognito() -> (String, Arc<AtomicU64>, LocalCognito) {
    let local = LocalCognito::start()
        .await
        .expect("the local Cognito starts");
    let accepted = Arc::new(AtomicU64::new(0));
    let Ok(ca_out) = std::env::var("BENCH_CA_OUT") else {
        return (local.endpoint_url(), accepted, local);
    };
    let idle = Duration::from_secs(
        std::env::var("BENCH_SERVER_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let (ca_pem, leaf, key) = localhost_certificate();
    std::fs::write(&ca_out, ca_pem).expect("the CA file is writable");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs has the default versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf], key)
    .expect("the certificate and key match");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 binds");
    let port = listener.local_addr().expect("bound").port();
    let upstream = local
        .endpoint_url()
        .trim_start_matches("http://")
        .to_owned();
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counted.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(plain) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = plain.set_nodelay(true);
                let _ = pipe_until_idle(tls, plain, idle).await;
            });
        }
    });
    (format!("https://localhost:{port}"), accepted, local)
}

/// Copies bytes both ways until either side closes or none has moved for `idle`; then closes the
/// TLS side with a close_notify, as a server does.
async fn pipe_until_idle(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    plain: tokio::net::TcpStream,
    idle: Duration,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_read, mut client_write) = tokio::io::split(tls);
    let (mut server_read, mut server_write) = plain.into_split();
    let mut up = vec![0_u8; 16 * 1024];
    let mut down = vec![0_u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => {
                let n = read?;
                if n == 0 { break; }
                server_write.write_all(&up[..n]).await?;
            }
            read = server_read.read(&mut down) => {
                let n = read?;
                if n == 0 { break; }
                client_write.write_all(&down[..n]).await?;
                client_write.flush().await?;
            }
            () = tokio::time::sleep(idle) => break,
        }
    }
    client_write.shutdown().await
}

/// A CA (PEM) and a `localhost` certificate it issued (DER) with its key.
fn localhost_certificate() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("no names");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cognito-gateway bench CA");
    let ca_pem = ca.self_signed(&ca_key).expect("self-signed").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("a DNS name")
        .signed_by(&key, &issuer)
        .expect("the CA signs");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (ca_pem, leaf.der().clone(), key)
}

/// The report's two sections.
pub(crate) fn write(out: &mut String, hop: &Hop, idle: &Idle) {
    let _ = writeln!(
        out,
        "## Out of process: the release binary against the SDK called directly\n\n\
         What a user would compare. Three processes on this machine: the local Cognito (this \
         bench binary started again, serving the embedded local Cognito on loopback, plain HTTP), \
         the release `cognito-gateway serve` pointed at it (`AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER`, \
         fake credentials, `[auth] mode = \"none\"`, limits out of reach, JSON logs to a pipe), and a \
         direct client (the bench binary again: an AWS SDK client configured as `SdkBackend` \
         configures its base, sending `AdminResetUserPassword` straight to the same local \
         Cognito). The bench process calls the gateway over one HTTP/2 connection, and asks the \
         direct client for rounds of calls over a pipe (latencies are measured inside each \
         client). The bare gRPC hop is `grpc.health.v1.Health/Check` on the gateway's \
         connection: the gRPC round trip with the gateway's layers and no Cognito. After \
         {WARM_UP} warm-up calls per path, {ROUNDS} rounds of {SEQUENTIAL_CALLS} sequential \
         calls per path (`alice`, an OK no-op after the first reset), the paths' order rotating \
         per round; then per round {CONCURRENT_CALLS} calls with {IN_FLIGHT} in flight, each a \
         new unknown user (NOT_FOUND from Cognito). **The machine was shared with other people's \
         builds (load average above): read the ratios and paired differences, not the \
         absolute times.**\n"
    );
    let paired = |f: fn(&Summary) -> f64| {
        let added: Vec<f64> = hop
            .gateway
            .iter()
            .zip(&hop.direct)
            .map(|(g, d)| f(g) - f(d))
            .collect();
        let health: Vec<f64> = hop.health.iter().map(f).collect();
        let margin: Vec<f64> = added.iter().zip(&health).map(|(a, h)| a - h).collect();
        (median(added), median(health), median(margin))
    };
    let row = |label: &str, rounds: &[Summary]| {
        let m = Summary::median_of(rounds);
        let (lo, _, hi) = spread(rounds.iter().map(|s| s.p50).collect::<Vec<_>>());
        vec![
            label.to_owned(),
            us(m.p50),
            us(m.p90),
            us(m.p99),
            format!("{}–{}", us(lo), us(hi)),
        ]
    };
    let (a50, h50, m50) = paired(|s| s.p50);
    let (a99, h99, m99) = paired(|s| s.p99);
    let rows = vec![
        row("gateway (release binary) → local Cognito", &hop.gateway),
        row("SDK direct (own process) → local Cognito", &hop.direct),
        row("bare gRPC hop: Health/Check on the gateway", &hop.health),
        vec![
            "added by the gateway (paired per round)".to_owned(),
            format!("+{}", us(a50)),
            String::new(),
            format!("+{}", us(a99)),
            String::new(),
        ],
        vec![
            "added − bare hop (target ≤ 30)".to_owned(),
            format!("{m50:+.0}"),
            String::new(),
            format!("{m99:+.0}"),
            String::new(),
        ],
    ];
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
    let ratio = median(
        hop.gateway_cps
            .iter()
            .zip(&hop.direct_cps)
            .map(|(g, d)| g / d),
    );
    let conc = |label: &str, cps: &[f64], rounds: &[Summary]| {
        let (lo, mid, hi) = spread(cps.to_vec());
        let m = Summary::median_of(rounds);
        vec![
            label.to_owned(),
            format!("{mid:.0}"),
            format!("{lo:.0}–{hi:.0}"),
            us(m.p50),
            us(m.p99),
        ]
    };
    let _ = writeln!(
        out,
        "The gateway adds **{} µs at p50 and {} µs at p99** over the direct call; the bare gRPC \
         hop costs {} µs at p50 and {} µs at p99, so the gateway's work beyond the hop is \
         **{m50:+.0} µs at p50 and {m99:+.0} µs at p99** (paired per round). The gateway \
         process used {:.0} µs of CPU per sequential call (its layers, the SDK, the JSON log \
         line).\n",
        us(a50),
        us(a99),
        us(h50),
        us(h99),
        hop.gateway_cpu_us,
    );
    table(
        out,
        &[
            "64 in flight, distinct users",
            "calls/s",
            "range",
            "p50 µs",
            "p99 µs",
        ],
        &[
            conc("gateway", &hop.gateway_cps, &hop.gateway_conc),
            conc("SDK direct", &hop.direct_cps, &hop.direct_conc),
            vec![
                "gateway / direct (paired per round)".to_owned(),
                format!("×{ratio:.2}"),
                String::new(),
                String::new(),
                String::new(),
            ],
        ],
    );

    let plan = &idle.plan;
    let _ = writeln!(
        out,
        "## Cold and idle connections over TLS\n\n\
         The same processes (and a second gateway for the bare hop), with the local Cognito behind a TLS front for `localhost` \
         (rustls; its own CA, given to the gateway and the direct client as `SSL_CERT_FILE`) \
         that closes a connection after **{} s** without a byte either way (with a close_notify), \
         as AWS endpoints close idle connections. The gateway renews its connections every \
         **{} s** (`cognito.connection_refresh_secs`; the default is 15 s, against 5–60 s \
         reported of AWS endpoints). The direct client is the SDK's own HTTP client (hyper's \
         pool, 90 s idle), which is what the gateway used before this change. After {WARM_CALLS} \
         warm-up calls each, all sit idle for each period below, then make one call each (which \
         goes first rotates), then {WARM_CALLS} warm calls each, whose p50 is the warm \
         figure. Idle periods, server limit and renewal are set with \
         `COGNITO_GATEWAY_BENCH_IDLE` (seconds, comma-separated), \
         `COGNITO_GATEWAY_BENCH_SERVER_IDLE` and `COGNITO_GATEWAY_BENCH_REFRESH`; the default is \
         shortened.\n",
        plan.server_idle, plan.refresh,
    );
    let rows: Vec<Vec<String>> = idle
        .points
        .iter()
        .map(|point| {
            let mut row = vec![format!("{} s", point.secs)];
            for (first, warm) in [point.gateway, point.direct, point.hop] {
                row.push(format!("{} / {}", us(first), us(warm)));
                row.push(format!("×{:.2}", first / warm));
            }
            row.push(us(point.gateway.0 - point.direct.0 - point.hop.0));
            row
        })
        .collect();
    table(
        out,
        &[
            "idle",
            "gateway first / warm p50, µs",
            "gateway ratio (target ≤ 1.5)",
            "direct first / warm p50, µs",
            "direct ratio",
            "bare hop first / warm p50, µs",
            "hop ratio",
            "gateway first − direct first − hop first, µs",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "The bare hop is `grpc.health.v1.Health/Check` on a second gateway process that sat idle \
         as long and calls no Cognito: what waking an idle process and crossing the gRPC hop \
         costs by itself. The last column is what the gateway's first call costs beyond the \
         direct client's first call and that hop.\n"
    );
    let _ = writeln!(
        out,
        "A first call on a new TLS connection (the direct client's very first) took {} µs. \
         While both processes sat idle ({:.0} s in all) the TLS front accepted {} connections: \
         the gateway's renewals (one per {} s) and the direct client's reconnections. None of \
         them carried a request: only calls reach Cognito.\n",
        us(idle.direct_cold),
        idle.idle_total.as_secs_f64(),
        idle.accepted_while_idle,
        plan.refresh,
    );
}
