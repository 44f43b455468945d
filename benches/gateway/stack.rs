//! Section 5, the middleware stack's cost: the gateway as `App::build` assembles it against the
//! bare handler with no layers, both in front of a backend that answers at once, so the figures are
//! the gateway's alone, not Cognito's.

use std::{
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use cognito_gateway::{
    Config, MemoryStore, Policy, ResetGate, Times, UserAdmin,
    app::hardened_server,
    cognito::{Backend, BackendError, CallBounds, ResetOutcome},
    config::{
        AccessConfig, AuthMode, CallerConfig, CognitoSettings, LimitSettings, ServerSettings,
    },
    domain::ResetRequest,
    local::DEMO_POOL_ID,
    proto::{
        ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient,
        user_admin_service_server::UserAdminServiceServer,
    },
    random_key, telemetry,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, server::TcpIncoming},
};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::{
    IN_FLIGHT, ROUNDS, WARM_UP,
    compare::{
        COMPARE_CONCURRENT, COMPARE_SEQUENTIAL, Compared, cpu_ticks, ticks_per_second, write_table,
    },
    in_process::limits_out_of_reach,
    kit::app::spawn_app_with,
    load::{Call, Who, concurrent, connect, sequential},
};

/// The bearer token of the stack comparison's one caller.
const BENCH_TOKEN: &str = "bench-token-0123456789abcdef";

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

/// The comparison under each logging setup.
pub(crate) struct StackFigures {
    pairs: Vec<StackPair>,
    ticks_per_second: f64,
}

/// The bare handler: `UserAdminServiceServer` on a plain tonic server, with the HTTP/2 settings of
/// `App::build` (its `hardened_server`), the same TCP settings and no layer. One tonic interceptor
/// puts the `anonymous` caller in the request's extensions, as authentication would: without a
/// caller the handler fails closed (UNAUTHENTICATED) before it does anything else.
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
    let operation_timeout = CognitoSettings::default().operation_timeout;
    let store = MemoryStore::new(
        Times {
            cooldown: limits.user_cooldown,
            lease: operation_timeout,
            request_ttl: limits.request_id_ttl,
        },
        (limits.backend_rps, limits.backend_burst),
        (limits.pool_rps, limits.pool_burst),
    );
    let gate = ResetGate::new(random_key(), Arc::new(store));
    let handler = UserAdminServiceServer::new(UserAdmin::new(
        Arc::new(backend),
        limits.user_identity,
        Arc::new(gate),
        operation_timeout,
        limits.user_cooldown,
    ))
    .max_decoding_message_size(server.max_decoding_message_size)
    .max_encoding_message_size(server.max_encoding_message_size);
    let service = InterceptedService::new(handler, move |mut request: tonic::Request<()>| {
        request.extensions_mut().insert(Arc::clone(&caller));
        Ok(request)
    });
    let router = hardened_server(&server).add_service(service);
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
            request_id: String::new(),
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

/// Measures the stack against the bare handler, with no log subscriber and then with the binary's
/// JSON log layer.
pub(crate) async fn bench() -> StackFigures {
    // Limits far above reach, as in the in-process section.
    let limits = limits_out_of_reach();
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
    let app = spawn_app_with(config, stack_backend).await;
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
        let bare_client = connect(bare_addr).await;
        let stack_call = instant_call(&app.client, &authorization);
        let bare_call = instant_call(&bare_client, &authorization);
        let self_cpu = || cpu_ticks("/proc/self/stat");
        let stack_calls = || stack_seen.load(Ordering::Relaxed);
        let bare_calls = || bare_seen.load(Ordering::Relaxed);

        for logging in ["no log subscriber", "JSON logs as the binary writes them"] {
            if !pairs.is_empty() {
                // Second pass: the binary's log layer (telemetry::init, JSON), into a counting sink.
                let writer = sink.clone();
                let logs = telemetry::log_layer(telemetry::LogFormat::Json, move || writer.clone());
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
        // The load's clients are dropped here: no call is in flight when graceful shutdown starts.
    }

    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("the stack stops")
        .expect("the stack stops cleanly");
    let _ = stop_bare.send(());
    tokio::time::timeout(Duration::from_secs(15), bare_task)
        .await
        .expect("the bare server stops")
        .expect("the server task does not panic")
        .expect("the bare server stops cleanly");
    StackFigures {
        pairs,
        ticks_per_second: ticks_per_second(),
    }
}

/// The report's section on the middleware stack's cost.
pub(crate) fn write(out: &mut String, s: &StackFigures) {
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
        let d = write_table(out, &pair.bare, &pair.stack, s.ticks_per_second);
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
                 {:.0} B (the call's own line: caller, pool, outcome, ids; no span's fields). \
                 The difference between the two runs' CPU under load is what that line costs \
                 per call (`COGNITO_GATEWAY_BENCH=log_line` measures it alone).\n",
                pair.log_lines_per_call.0,
                pair.log_bytes_per_call.0,
                pair.log_lines_per_call.1,
                pair.log_bytes_per_call.1,
            );
        }
    }
}
