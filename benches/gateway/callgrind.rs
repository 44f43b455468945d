//! `COGNITO_GATEWAY_BENCH=callgrind`: a harness for `valgrind --tool=callgrind`, whose instruction
//! counts repeat on a machine too noisy for wall-clock differences of a few microseconds.
//!
//! The gateway in process as the tests build it, in front of the embedded local Cognito (the real
//! SDK path: region, HMAC, user gate, SigV4, HTTP), called over loopback by a tonic client:
//! `COGNITO_GATEWAY_BENCH_CALLS` sequential resets of `alice` (default 1000) after 100 unmeasured
//! ones, with the log layer `COGNITO_GATEWAY_BENCH_LOGS` names:
//!
//! - `none`: no subscriber;
//! - `json`: the binary's JSON lines (`telemetry::json_logs`), into a sink;
//! - `json-spans`: the JSON layer as it was configured before (span fields formatted, and
//!   re-serialised at every `Span::record`), into a sink.
//!
//! `COGNITO_GATEWAY_BENCH_PATH` chooses what is called: `gateway` (the default), `direct` (the same
//! `AdminResetUserPassword` through an SDK client configured as the out-of-process bench's direct
//! client, no gateway), or `hop` (`grpc.health.v1.Health/Check` on the gateway's connection: the
//! gRPC round trip with the layers and no Cognito), or `refused` (a reset with a token no caller
//! has, answered UNAUTHENTICATED: what a flood of refused calls costs each). Then gateway − direct
//! − hop is, in instructions, what the out-of-process section calls the gateway's work beyond the
//! hop; `calls=` lines to `malloc` in the same two runs count the allocations per call.
//!
//! `COGNITO_GATEWAY_BENCH=allocations` runs the same harness natively with the gateway (and its
//! SDK client) on a tokio runtime of its own, and prints the heap allocations its threads made per
//! measured call: the gateway's share, without the client's or the local Cognito's.
//!
//! Everything but the measured calls is the same in two runs with different counts, so
//! `(Ir(N2) - Ir(N1)) / (N2 - N1)` is the instructions per call of client, gateway and local
//! Cognito together; `callgrind_annotate` splits them by function.
//!
//! ```sh
//! for n in 1000 2000; do COGNITO_GATEWAY_BENCH=callgrind COGNITO_GATEWAY_BENCH_CALLS=$n \
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n target/release/deps/gateway-* --bench; done
//! ```

use std::time::Duration;

use cognito_gateway::{
    Config,
    cognito::SdkBackend,
    config::{AccessConfig, AuthMode, CallerConfig, CognitoSettings},
    local::LocalCognito,
    proto::{ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient},
    telemetry,
};
use sha2::Digest as _;
use tonic::{Code, transport::Channel};
use tracing_subscriber::{EnvFilter, Layer as _, filter::FilterFn, layer::SubscriberExt as _};

use crate::{
    in_process::limits_out_of_reach,
    kit::app::spawn_app_with,
    load::{Call, Counter, Who, gateway_call, sequential},
};

/// `count_allocations`: `COGNITO_GATEWAY_BENCH=allocations` (see the module docs).
pub(crate) async fn run(count_allocations: bool) {
    let calls: usize = std::env::var("COGNITO_GATEWAY_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let logs = std::env::var("COGNITO_GATEWAY_BENCH_LOGS").unwrap_or_else(|_| "none".to_owned());
    match logs.as_str() {
        "none" => {}
        "json" => {
            let layer = telemetry::log_layer(telemetry::LogFormat::Json, std::io::sink);
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("no other subscriber is installed");
        }
        "json-spans" => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::sink)
                .with_filter(EnvFilter::new("info"))
                .with_filter(FilterFn::new(telemetry::allowed));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("no other subscriber is installed");
        }
        other => panic!("COGNITO_GATEWAY_BENCH_LOGS: none, json or json-spans, not {other:?}"),
    }
    let path = std::env::var("COGNITO_GATEWAY_BENCH_PATH").unwrap_or_else(|_| "gateway".into());
    // Counting allocations, the gateway runs on a runtime of its own whose threads are counted.
    let gateway_runtime = count_allocations.then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(allocations::count_this_thread)
            .build()
            .expect("a tokio runtime builds")
    });
    let local = LocalCognito::start()
        .await
        .expect("the local Cognito starts");
    let app = {
        let endpoint = local.endpoint_url();
        let config = harness_config(&path);
        let spawn = async move {
            let backend =
                SdkBackend::with_endpoint(&endpoint, "local-1", CognitoSettings::default()).await;
            spawn_app_with(config, backend).await
        };
        match &gateway_runtime {
            Some(runtime) => runtime.spawn(spawn).await.expect("the gateway starts"),
            None => spawn.await,
        }
    };
    {
        // A client of this runtime's own, not the app's (whose connection task runs beside the
        // gateway when it has a runtime of its own).
        let client = UserAdminServiceClient::new(crate::kit::app::connect(app.addr).await);
        let call = match path.as_str() {
            "gateway" => gateway_call(&client, Who::Alice, &Counter::default()),
            "direct" => crate::in_process::direct_call(
                &crate::in_process::sdk_client(&local.endpoint_url()).await,
                Who::Alice,
            ),
            "hop" => crate::out_of_process::health_call(
                tonic_health::pb::health_client::HealthClient::new(
                    crate::kit::app::connect(app.addr).await,
                ),
            ),
            "refused" => refused_call(&client),
            other => {
                panic!("COGNITO_GATEWAY_BENCH_PATH: gateway, direct, hop or refused, not {other:?}")
            }
        };
        sequential(100, &call, "callgrind warm-up").await;
        let before = allocations::counted();
        sequential(calls, &call, "callgrind").await;
        if count_allocations {
            let made = allocations::counted() - before;
            println!(
                "{path}: {:.1} allocations per call on the gateway's threads ({made} in {calls} calls)",
                made as f64 / calls as f64
            );
        }
    }
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the gateway stops")
        .expect("the gateway stops cleanly");
    if let Some(runtime) = gateway_runtime {
        runtime.shutdown_background();
    }
    eprintln!("callgrind harness: {calls} calls, logs {logs}");
}

/// The gateway as the tests build it, limits out of reach; for `refused`, with one caller whose
/// token the measured calls do not send.
fn harness_config(path: &str) -> Config {
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    config.limits = limits_out_of_reach();
    if path == "refused" {
        config.access = AccessConfig {
            mode: AuthMode::Token,
            callers: vec![CallerConfig {
                name: "web".into(),
                token_sha256: Some(sha2::Sha256::digest(b"the caller's token").into()),
                user_pools: None,
                rate_per_second: 10_000,
                burst: 10_000,
            }],
            ..AccessConfig::none()
        };
    }
    config
}

/// A reset with a token no caller has: UNAUTHENTICATED, before the body is decoded.
fn refused_call(client: &UserAdminServiceClient<Channel>) -> Call {
    let client = client.clone();
    std::sync::Arc::new(move || {
        let mut client = client.clone();
        let mut request = tonic::Request::new(ResetUserPasswordRequest {
            user_pool_id: cognito_gateway::local::DEMO_POOL_ID.to_owned(),
            username: Who::Alice.username(),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static("Bearer nobody-has-this-token"),
        );
        Box::pin(async move {
            matches!(client.reset_user_password(request).await, Err(status) if status.code() == Code::Unauthenticated)
        })
    })
}

/// Heap allocations made on the threads that asked to be counted: the bench binary's allocator is
/// the system's, with a counter in front.
#[allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; every call is passed on unchanged.
pub(crate) mod allocations {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
    };

    thread_local! {
        static COUNTED: Cell<bool> = const { Cell::new(false) };
    }
    static MADE: AtomicU64 = AtomicU64::new(0);
    /// Whether any thread counts: until one does (every bench section but this one), an allocation
    /// costs one relaxed load more than the system allocator's, not a thread-local lookup.
    static ANY: AtomicBool = AtomicBool::new(false);

    /// Counts this thread's allocations from now on (a runtime's `on_thread_start`).
    pub(crate) fn count_this_thread() {
        ANY.store(true, Ordering::Relaxed);
        COUNTED.with(|counted| counted.set(true));
    }

    /// Allocations (and reallocations) on counted threads so far.
    pub(crate) fn counted() -> u64 {
        MADE.load(Ordering::Relaxed)
    }

    pub(crate) struct Counting;

    fn count() {
        // `try_with`: an allocation while the thread's locals are torn down is not counted.
        if ANY.load(Ordering::Relaxed) && COUNTED.try_with(Cell::get).unwrap_or(false) {
            MADE.fetch_add(1, Ordering::Relaxed);
        }
    }

    // SAFETY: every call goes to the system allocator unchanged; only a counter is added.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

/// `COGNITO_GATEWAY_BENCH=log_line`: what one call's JSON line costs, in CPU time on this machine:
/// the line an OK reset writes (the rescue layer's fields, with values of their usual length),
/// formatted by the binary's own JSON layer, 200,000 times, against the same event with no
/// subscriber; into a sink (formatting alone) and into `/dev/null` (with its `write` call, as to
/// stdout). Medians of 5 rounds, nanoseconds per line.
pub(crate) fn log_line() {
    const LINES: u32 = 200_000;
    fn line() {
        tracing::info!(
            code = "OK",
            trace_id = "",
            span_id = "",
            caller = "billing",
            user_pool_id = "eu-west-1_AbC123def",
            cognito_request_id = "3f1c6a2e-8d4b-4f0e-9a51-2c7e0b6d9f13",
            deduplicated = false,
            duration_ms = 42_u64,
            "{}",
            "cognitogateway.v1.UserAdminService/ResetUserPassword",
        );
    }
    fn per_line(dispatch: &tracing::Dispatch) -> f64 {
        let mut rounds: Vec<f64> = (0..5)
            .map(|_| {
                tracing::dispatcher::with_default(dispatch, || {
                    let started = std::time::Instant::now();
                    for _ in 0..LINES {
                        line();
                    }
                    started.elapsed().as_nanos() as f64 / f64::from(LINES)
                })
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        rounds[2]
    }
    let none = per_line(&tracing::Dispatch::none());
    let sink = per_line(&tracing::Dispatch::new(
        tracing_subscriber::registry().with(telemetry::log_layer(
            telemetry::LogFormat::Json,
            std::io::sink,
        )),
    ));
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null opens");
    let dev_null = per_line(&tracing::Dispatch::new(
        tracing_subscriber::registry().with(telemetry::log_layer(
            telemetry::LogFormat::Json,
            std::sync::Mutex::new(null),
        )),
    ));
    println!(
        "one call's JSON line, ns: no subscriber {none:.0}; JSON into a sink {sink:.0} (+{:.0}); \
         JSON into /dev/null {dev_null:.0} (+{:.0})",
        sink - none,
        dev_null - none
    );
}
