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
//! gRPC round trip with the layers and no Cognito). Then gateway − direct − hop is, in instructions,
//! what the out-of-process section calls the gateway's work beyond the hop.
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
    Config, cognito::SdkBackend, config::CognitoSettings, local::LocalCognito, telemetry,
};
use tracing_subscriber::{EnvFilter, Layer as _, filter::FilterFn, layer::SubscriberExt as _};

use crate::{
    in_process::limits_out_of_reach,
    kit::app::spawn_app_with,
    load::{Counter, Who, gateway_call, sequential},
};

pub(crate) async fn run() {
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
    let local = LocalCognito::start()
        .await
        .expect("the local Cognito starts");
    let backend =
        SdkBackend::with_endpoint(&local.endpoint_url(), "local-1", CognitoSettings::default())
            .await;
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    config.limits = limits_out_of_reach();
    let app = spawn_app_with(config, backend).await;
    {
        let path = std::env::var("COGNITO_GATEWAY_BENCH_PATH").unwrap_or_else(|_| "gateway".into());
        let call = match path.as_str() {
            "gateway" => gateway_call(&app.client, Who::Alice, &Counter::default()),
            "direct" => crate::in_process::direct_call(
                &crate::in_process::sdk_client(&local.endpoint_url()).await,
                Who::Alice,
            ),
            "hop" => crate::out_of_process::health_call(
                tonic_health::pb::health_client::HealthClient::new(
                    crate::kit::app::connect(app.addr).await,
                ),
            ),
            other => panic!("COGNITO_GATEWAY_BENCH_PATH: gateway, direct or hop, not {other:?}"),
        };
        sequential(100, &call, "callgrind warm-up").await;
        sequential(calls, &call, "callgrind").await;
    }
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the gateway stops")
        .expect("the gateway stops cleanly");
    eprintln!("callgrind harness: {calls} calls, logs {logs}");
}
