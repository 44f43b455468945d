//! The gateway's metrics, under OpenTelemetry's semantic conventions v1.37 (`rpc.server.duration`
//! and `rpc.client.duration` in milliseconds) plus a few of its own under `cognito_gateway.*`.
//!
//! Every attribute has a small, fixed set of values: method, gRPC status code, reason, exception
//! name, region, caller name. Never a username, a request id or anything else per call.
//!
//! Without an OTLP endpoint the global meter is OpenTelemetry's no-op one, and recording costs a
//! function call.

use std::sync::LazyLock;

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, UpDownCounter},
};

use crate::config::LimitSettings;

/// The instruments. Built on first use, from the global meter provider, so telemetry must be set up
/// first (the binary does that before anything else).
pub(crate) struct Metrics {
    /// `rpc.server.duration`: each call, by `rpc.method` and `rpc.grpc.status_code`.
    pub rpc_server_duration: Histogram<f64>,
    /// `rpc.client.duration`: each Cognito call, by `aws.exception` (`""` on success) and region.
    pub rpc_client_duration: Histogram<f64>,
    /// `cognito_gateway.rejections`: calls the gateway refused itself, by `reason`.
    pub rejections: Counter<u64>,
    /// `cognito_gateway.deduplicated`: calls answered without their own Cognito call.
    pub deduplicated: Counter<u64>,
    /// `cognito_gateway.in_flight`: calls being served.
    pub in_flight: UpDownCounter<i64>,
    /// `cognito_gateway.pools_not_described`: failed `DescribeUserPool` calls, by `exception`;
    /// meanwhile the pool's usernames are compared exactly.
    pub pools_not_described: Counter<u64>,
    /// `cognito_gateway.request_ids_evicted`: request ids forgotten before their time because too
    /// many were kept in this process.
    pub(crate) request_ids_evicted: Counter<u64>,
    /// `cognito_gateway.connections_refused`: connections closed before HTTP/2, by `reason`
    /// (`max_connections`, `max_connections_per_peer`, `handshake_timeout`).
    pub(crate) connections_refused: Counter<u64>,
    /// `cognito_gateway.health.watches`: health `Watch` streams open.
    pub(crate) health_watches: UpDownCounter<i64>,
    /// `cognito_gateway.config.reloads`: reloads of the configuration file, by `outcome` (`ok`,
    /// `refused`: the file was invalid and the previous policy stays).
    pub(crate) config_reloads: Counter<u64>,
    /// `cognito_gateway.fleet.duration`: each round trip to the fleet's store, by `operation`
    /// (`claim`, `settle`) and `outcome` (`ok`, `error`).
    pub fleet_duration: Histogram<f64>,
    /// `cognito_gateway.fleet.fallbacks`: calls decided by this replica alone because the fleet's
    /// store was down (`on_unavailable = "local"`).
    pub fleet_fallbacks: Counter<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Bucket bounds in milliseconds: from a local round trip to the 5 s operation cap and beyond.
const DURATION_BUCKETS_MS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];

/// Bucket bounds in milliseconds for the fleet's store: a loopback or in-zone round trip, up to
/// the longest `fleet.timeout_ms` is likely to be.
const FLEET_BUCKETS_MS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let meter = global::meter("cognito-gateway");
    Metrics {
        rpc_server_duration: meter
            .f64_histogram("rpc.server.duration")
            .with_unit("ms")
            .with_description("Duration of inbound gRPC calls")
            .with_boundaries(DURATION_BUCKETS_MS.to_vec())
            .build(),
        rpc_client_duration: meter
            .f64_histogram("rpc.client.duration")
            .with_unit("ms")
            .with_description("Duration of calls to Cognito, retries included")
            .with_boundaries(DURATION_BUCKETS_MS.to_vec())
            .build(),
        rejections: meter
            .u64_counter("cognito_gateway.rejections")
            .with_description("Calls refused by the gateway itself, by reason")
            .build(),
        deduplicated: meter
            .u64_counter("cognito_gateway.deduplicated")
            .with_description("Calls answered without a Cognito call of their own")
            .build(),
        in_flight: meter
            .i64_up_down_counter("cognito_gateway.in_flight")
            .with_description("Calls being served")
            .build(),
        pools_not_described: meter
            .u64_counter("cognito_gateway.pools_not_described")
            .with_description("Failed DescribeUserPool calls; the pool's usernames are compared exactly meanwhile")
            .build(),
        request_ids_evicted: meter
            .u64_counter("cognito_gateway.request_ids_evicted")
            .with_description("Request ids forgotten before their time: too many in this process")
            .build(),
        connections_refused: meter
            .u64_counter("cognito_gateway.connections_refused")
            .with_description("Connections closed before HTTP/2: over the cap, or no handshake in time")
            .build(),
        health_watches: meter
            .i64_up_down_counter("cognito_gateway.health.watches")
            .with_description("Health Watch streams open")
            .build(),
        config_reloads: meter
            .u64_counter("cognito_gateway.config.reloads")
            .with_description("Reloads of the configuration file, by outcome")
            .build(),
        fleet_duration: meter
            .f64_histogram("cognito_gateway.fleet.duration")
            .with_unit("ms")
            .with_description("Round trips to the fleet's store")
            .with_boundaries(FLEET_BUCKETS_MS.to_vec())
            .build(),
        fleet_fallbacks: meter
            .u64_counter("cognito_gateway.fleet.fallbacks")
            .with_description(
                "Calls decided by this replica alone while the fleet's store was down",
            )
            .build(),
    }
});

/// The instruments.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

/// The attributes every Cognito client measurement carries.
pub(crate) fn cognito_attributes(
    method: &'static str,
    exception: &str,
    region: &str,
) -> [KeyValue; 5] {
    [
        KeyValue::new("rpc.system", "aws-api"),
        KeyValue::new("rpc.service", "CognitoIdentityProvider"),
        KeyValue::new("rpc.method", method),
        KeyValue::new("aws.exception", exception.to_owned()),
        KeyValue::new("cloud.region", region.to_owned()),
    ]
}

/// `cognito_gateway.callers`: how many callers the policy in force has (read at each export), so
/// that "no traffic while callers are configured" can be told from "no callers".
pub(crate) fn observe_callers(count: impl Fn() -> usize + Send + Sync + 'static) {
    let _gauge = global::meter("cognito-gateway")
        .u64_observable_gauge("cognito_gateway.callers")
        .with_description("Callers in the policy in force")
        .with_callback(move |gauge| gauge.observe(count() as u64, &[]))
        .build();
}

/// `cognito_gateway.limit`: the configured limits, by `setting`, so that dashboards draw demand
/// against the deployment's own values rather than numbers typed into them.
pub(crate) fn observe_limits(limits: &LimitSettings) {
    let values = [
        ("backend_rps", f64::from(limits.backend_rps)),
        ("backend_burst", f64::from(limits.backend_burst)),
        ("pool_rps", f64::from(limits.pool_rps)),
        ("max_in_flight", limits.max_in_flight as f64),
        (
            "max_in_flight_per_caller",
            limits.max_in_flight_per_caller as f64,
        ),
        ("user_cooldown_secs", limits.user_cooldown.as_secs_f64()),
    ];
    let _gauge = global::meter("cognito-gateway")
        .f64_observable_gauge("cognito_gateway.limit")
        .with_description("Configured limits: limits.<setting>")
        .with_callback(move |gauge| {
            for (setting, value) in values {
                gauge.observe(value, &[KeyValue::new("setting", setting)]);
            }
        })
        .build();
}

/// Records one round trip to the fleet's store.
pub(crate) fn record_round_trip(operation: &'static str, took: std::time::Duration, ok: bool) {
    metrics().fleet_duration.record(
        took.as_secs_f64() * 1000.0,
        &[
            KeyValue::new("operation", operation),
            KeyValue::new("outcome", if ok { "ok" } else { "error" }),
        ],
    );
}

/// `cognito_gateway.fleet.store_up`: 1 while the fleet's store answers, 0 while it is marked down.
pub(crate) fn observe_store_up(up: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let _gauge = global::meter("cognito-gateway")
        .u64_observable_gauge("cognito_gateway.fleet.store_up")
        .with_description("Whether the fleet's store answers (1) or is marked down (0)")
        .with_callback(move |gauge| {
            gauge.observe(
                u64::from(up.load(std::sync::atomic::Ordering::Relaxed)),
                &[],
            );
        })
        .build();
}

/// `cognito_gateway.config.reloaded_at`: when the configuration in force was read (Unix seconds).
pub(crate) fn observe_reloaded_at(at: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let _gauge = global::meter("cognito-gateway")
        .u64_observable_gauge("cognito_gateway.config.reloaded_at")
        .with_unit("s")
        .with_description("When the configuration in force was read, in Unix seconds")
        .with_callback(move |gauge| {
            gauge.observe(at.load(std::sync::atomic::Ordering::Relaxed), &[]);
        })
        .build();
}
