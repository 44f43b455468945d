//! The gateway's metrics, under OpenTelemetry's semantic conventions v1.42 (the version of
//! `opentelemetry-semantic-conventions` 0.33, `SCHEMA_URL`): `rpc.server.call.duration` and
//! `rpc.client.call.duration` in seconds, with `rpc.system.name`, a fully qualified `rpc.method`,
//! `rpc.response.status_code` (the gRPC code's name) and `error.type` on failures; plus a few of
//! the gateway's own under `cognito_gateway.*`. docs/observability.md maps the v1.37 names used
//! before to these.
//!
//! Every attribute has a small, fixed set of values: method, gRPC status code, reason, exception
//! name, region, caller name. Never a username, a request id or anything else per call.
//!
//! Without an OTLP endpoint or `--metrics-listen` the global meter is OpenTelemetry's no-op one,
//! and recording costs a function call.

use std::{
    sync::{
        LazyLock, Once,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, UpDownCounter},
};

use crate::config::LimitSettings;

/// The instruments. Built on first use, from the global meter provider, so telemetry must be set up
/// first (the binary does that before anything else).
pub(crate) struct Metrics {
    /// `rpc.server.call.duration`: each call ([`record_server_call`]).
    rpc_server_call_duration: Histogram<f64>,
    /// `rpc.client.call.duration`: each Cognito call ([`record_client_call`]).
    rpc_client_call_duration: Histogram<f64>,
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
    /// `cognito_gateway.jwks.refreshes`: loads of the JWKS, by `outcome` (`ok`, `failed`: the keys
    /// in use stay).
    pub(crate) jwks_refreshes: Counter<u64>,
    /// `cognito_gateway.tls.reloads`: reloads of the mTLS certificate files, by `outcome` (`ok`,
    /// `failed`: the certificates in use stay).
    pub(crate) tls_reloads: Counter<u64>,
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

/// Bucket bounds in seconds: from a local round trip to the 5 s operation cap and beyond.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds in seconds for the fleet's store: a loopback or in-zone round trip, up to the
/// longest `fleet.timeout_ms` is likely to be.
const FLEET_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let meter = global::meter("cognito-gateway");
    Metrics {
        rpc_server_call_duration: meter
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of inbound gRPC calls")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        rpc_client_call_duration: meter
            .f64_histogram("rpc.client.call.duration")
            .with_unit("s")
            .with_description("Duration of calls to Cognito, retries included")
            .with_boundaries(DURATION_BUCKETS.to_vec())
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
        jwks_refreshes: meter
            .u64_counter("cognito_gateway.jwks.refreshes")
            .with_description("Loads of the JWKS, by outcome")
            .build(),
        tls_reloads: meter
            .u64_counter("cognito_gateway.tls.reloads")
            .with_description("Reloads of the mTLS certificate files, by outcome")
            .build(),
        fleet_duration: meter
            .f64_histogram("cognito_gateway.fleet.duration")
            .with_unit("s")
            .with_description("Round trips to the fleet's store")
            .with_boundaries(FLEET_BUCKETS.to_vec())
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

/// Records one inbound call in `rpc.server.call.duration`: `full_method` is the method's fully
/// qualified name (`package.Service/Method`) or `_OTHER`, `code` the status code's name as gRPC
/// spells it, `server_error` whether gRPC's conventions count that code as the server's failure
/// (the caller's own mistakes, INVALID_ARGUMENT, NOT_FOUND, ..., are not), `caller` a configured
/// name or `""`. The caller (the trace layer) sorts the code, so that metrics need no error table.
pub(crate) fn record_server_call(
    full_method: &'static str,
    code: &'static str,
    server_error: bool,
    caller: &str,
    took: Duration,
) {
    let attributes = [
        KeyValue::new("rpc.system.name", "grpc"),
        KeyValue::new("rpc.method", full_method),
        KeyValue::new("rpc.response.status_code", code),
        // Configured names only (or "" before authentication): bounded.
        KeyValue::new("cognito_gateway.caller", caller.to_owned()),
        KeyValue::new("error.type", code),
    ];
    // `error.type` only for the server's own failures; an array, not a Vec, on every call.
    let attributes = if server_error {
        &attributes[..]
    } else {
        &attributes[..4]
    };
    metrics()
        .rpc_server_call_duration
        .record(took.as_secs_f64(), attributes);
}

/// Records one Cognito call in `rpc.client.call.duration`: `exception` is `""` on success, else
/// a name from a bounded set (an exception the error table knows, the gateway's names for
/// failures on the way, or `_OTHER`), as `error.type`.
pub(crate) fn record_client_call(
    method: &'static str,
    exception: &str,
    region: &str,
    took: Duration,
) {
    let mut attributes = vec![
        KeyValue::new("rpc.system.name", "aws-api"),
        KeyValue::new("rpc.method", cognito_method(method)),
        KeyValue::new("cloud.region", region.to_owned()),
    ];
    if !exception.is_empty() {
        attributes.push(KeyValue::new("error.type", exception.to_owned()));
    }
    metrics()
        .rpc_client_call_duration
        .record(took.as_secs_f64(), &attributes);
}

/// The fully qualified name (`Service/Operation`) of a Cognito operation the gateway calls.
fn cognito_method(operation: &'static str) -> &'static str {
    match operation {
        "AdminResetUserPassword" => "CognitoIdentityProvider/AdminResetUserPassword",
        "DescribeUserPool" => "CognitoIdentityProvider/DescribeUserPool",
        "AdminGetUser" => "CognitoIdentityProvider/AdminGetUser",
        _ => "_OTHER",
    }
}

/// Counts one load of the JWKS (at start, periodic, or for a token naming an unknown key).
pub(crate) fn record_jwks_refresh(ok: bool) {
    metrics().jwks_refreshes.add(1, &[outcome(ok)]);
}

/// The JWKS in use: when it was loaded (Unix seconds) and its usable keys.
static JWKS_LOADED_AT: AtomicU64 = AtomicU64::new(0);
static JWKS_KEYS: AtomicU64 = AtomicU64::new(0);

/// Notes a JWKS that replaced the keys in use: `cognito_gateway.jwks.loaded_at` (its age is
/// `time() - ...`) and `cognito_gateway.jwks.keys`, exported from the first load on (so only with
/// `auth.mode = "jwt"`).
pub(crate) fn record_jwks_loaded(keys: usize) {
    JWKS_LOADED_AT.store(unix_now(), Ordering::Relaxed);
    JWKS_KEYS.store(keys as u64, Ordering::Relaxed);
    static OBSERVED: Once = Once::new();
    OBSERVED.call_once(|| {
        let meter = global::meter("cognito-gateway");
        let _loaded_at = meter
            .u64_observable_gauge("cognito_gateway.jwks.loaded_at")
            .with_unit("s")
            .with_description("When the JWKS in use was loaded, in Unix seconds")
            .with_callback(|gauge| gauge.observe(JWKS_LOADED_AT.load(Ordering::Relaxed), &[]))
            .build();
        let _keys = meter
            .u64_observable_gauge("cognito_gateway.jwks.keys")
            .with_description("Usable keys (RS256, ES256) in the JWKS in use")
            .with_callback(|gauge| gauge.observe(JWKS_KEYS.load(Ordering::Relaxed), &[]))
            .build();
    });
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Counts one reload of the mTLS certificate files.
pub(crate) fn record_tls_reload(ok: bool) {
    metrics().tls_reloads.add(1, &[outcome(ok)]);
}

fn outcome(ok: bool) -> KeyValue {
    KeyValue::new("outcome", if ok { "ok" } else { "failed" })
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
        took.as_secs_f64(),
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
