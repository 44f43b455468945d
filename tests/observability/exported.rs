//! What the gateway exports, under the names Prometheus sees, and the test that ties the list to
//! `src/`. main.rs checks the observability assets against it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::LazyLock,
};

use Kind::{Counter, Gauge, Histogram, UpDownCounter};
use regex::Regex;

use super::{assert_none, root};

/// An OpenTelemetry instrument kind, which decides the Prometheus suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `_bucket`, `_sum`, `_count` series; `le` on the buckets.
    Histogram,
    /// Monotonic: `_total`.
    Counter,
    /// Not monotonic: a Prometheus gauge, no `_total`.
    UpDownCounter,
    Gauge,
}

/// One exported metric.
#[derive(Debug)]
pub(super) struct Metric {
    /// The instrument's name in `src/`.
    pub(super) otel: &'static str,
    /// Its unit (`.with_unit`), `""` for none.
    unit: &'static str,
    kind: Kind,
    /// Its attribute keys; the labels are these with dots turned into underscores.
    attributes: &'static [&'static str],
    /// The Prometheus name (for a histogram, without the `_bucket`/`_sum`/`_count` suffix).
    pub(super) prometheus: &'static str,
}

/// THE list of what the gateway exports, and under which names Prometheus sees it: on the
/// gateway's own `/metrics` (`--metrics-listen`), and after the OpenTelemetry Collector's
/// `prometheus` or `prometheusremotewrite` exporter with default settings, which name them alike
/// (dots to underscores, unit suffix, `_total` on monotonic counters). `job` and `instance` come
/// from the scrape, or from `service.name` and `service.instance.id` through the collector.
///
/// The instruments are in src/metrics.rs (`Metrics`, `record_server_call`, `record_client_call`,
/// `observe_callers`, `observe_limits`, `record_round_trip`, `observe_store_up`,
/// `observe_reloaded_at`, `record_jwks_loaded`) and src/telemetry.rs
/// (`register_process_metrics`); the methods of `rpc.server.call.duration` in
/// src/middleware/trace.rs, those of `cognito_gateway.rejections` in src/status.rs
/// (`rejection_attributes`), `kind` of `cognito_gateway.deduplicated` in src/api.rs and
/// src/middleware/rescue.rs, `exception` of `cognito_gateway.pools_not_described` in
/// src/identity.rs. `exported_names_are_the_sources` checks each entry against them.
#[rustfmt::skip] // A table reads better one metric to a few lines.
pub(super) const EXPORTED: &[Metric] = &[
    Metric { otel: "rpc.server.call.duration", unit: "s", kind: Histogram,
        attributes: &["rpc.system.name", "rpc.method", "rpc.response.status_code", "error.type",
            "cognito_gateway.caller"],
        prometheus: "rpc_server_call_duration_seconds" },
    Metric { otel: "rpc.client.call.duration", unit: "s", kind: Histogram,
        attributes: &["rpc.system.name", "rpc.method", "error.type", "cloud.region"],
        prometheus: "rpc_client_call_duration_seconds" },
    Metric { otel: "cognito_gateway.rejections", unit: "", kind: Counter,
        attributes: &["reason", "limit"], prometheus: "cognito_gateway_rejections_total" },
    Metric { otel: "cognito_gateway.deduplicated", unit: "", kind: Counter,
        attributes: &["kind"], prometheus: "cognito_gateway_deduplicated_total" },
    Metric { otel: "cognito_gateway.pools_not_described", unit: "", kind: Counter,
        attributes: &["exception"], prometheus: "cognito_gateway_pools_not_described_total" },
    Metric { otel: "cognito_gateway.in_flight", unit: "", kind: UpDownCounter,
        attributes: &[], prometheus: "cognito_gateway_in_flight" },
    Metric { otel: "cognito_gateway.callers", unit: "", kind: Gauge,
        attributes: &[], prometheus: "cognito_gateway_callers" },
    Metric { otel: "cognito_gateway.limit", unit: "", kind: Gauge,
        attributes: &["setting"], prometheus: "cognito_gateway_limit" },
    Metric { otel: "cognito_gateway.request_ids_evicted", unit: "", kind: Counter,
        attributes: &[], prometheus: "cognito_gateway_request_ids_evicted_total" },
    Metric { otel: "cognito_gateway.connections_refused", unit: "", kind: Counter,
        attributes: &["reason"], prometheus: "cognito_gateway_connections_refused_total" },
    Metric { otel: "cognito_gateway.health.watches", unit: "", kind: UpDownCounter,
        attributes: &[], prometheus: "cognito_gateway_health_watches" },
    // Reloads: the configuration file always; the JWKS with auth.mode = "jwt" (the gauges from
    // its first load on); the certificates with auth.mode = "mtls".
    Metric { otel: "cognito_gateway.config.reloads", unit: "", kind: Counter,
        attributes: &["outcome"], prometheus: "cognito_gateway_config_reloads_total" },
    Metric { otel: "cognito_gateway.config.reloaded_at", unit: "s", kind: Gauge,
        attributes: &[], prometheus: "cognito_gateway_config_reloaded_at_seconds" },
    Metric { otel: "cognito_gateway.jwks.refreshes", unit: "", kind: Counter,
        attributes: &["outcome"], prometheus: "cognito_gateway_jwks_refreshes_total" },
    Metric { otel: "cognito_gateway.jwks.loaded_at", unit: "s", kind: Gauge,
        attributes: &[], prometheus: "cognito_gateway_jwks_loaded_at_seconds" },
    Metric { otel: "cognito_gateway.jwks.keys", unit: "", kind: Gauge,
        attributes: &[], prometheus: "cognito_gateway_jwks_keys" },
    Metric { otel: "cognito_gateway.tls.reloads", unit: "", kind: Counter,
        attributes: &["outcome"], prometheus: "cognito_gateway_tls_reloads_total" },
    // With [fleet] only (store_up), or only once the fleet's store is used.
    Metric { otel: "cognito_gateway.fleet.duration", unit: "s", kind: Histogram,
        attributes: &["operation", "outcome"],
        prometheus: "cognito_gateway_fleet_duration_seconds" },
    Metric { otel: "cognito_gateway.fleet.fallbacks", unit: "", kind: Counter,
        attributes: &[], prometheus: "cognito_gateway_fleet_fallbacks_total" },
    Metric { otel: "cognito_gateway.fleet.store_up", unit: "", kind: Gauge,
        attributes: &[], prometheus: "cognito_gateway_fleet_store_up" },
    Metric { otel: "process.memory.usage", unit: "By", kind: Gauge,
        attributes: &[], prometheus: "process_memory_usage_bytes" },
    Metric { otel: "process.cpu.time", unit: "s", kind: Counter,
        attributes: &["cpu.mode"], prometheus: "process_cpu_time_seconds_total" },
];

/// Labels every series has: from the resource (`service.name`, `service.instance.id`) or the scrape.
pub(super) const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The values a matcher may name, for the labels whose values are a closed set; a literal outside
/// them is a typo. `limit` is checked in [`known_value`] (`backend`, `pool` or `caller:<name>`).
#[rustfmt::skip] // One label to a paragraph, not one value to a line.
const LABEL_VALUES: &[(&str, &[&str])] = &[
    // src/status.rs, `rejection_attributes` (the rows' reasons).
    ("reason", &["UNAUTHENTICATED", "CALLER_NOT_ALLOWED", "RATE_LIMITED", "OVERLOADED"]),
    // Absent on success. On the server metric, a server-class gRPC code's name
    // (src/metrics.rs, `record_server_call`); on the client metric, the Cognito exception name
    // (src/status.rs, `cognito_row` and `CREDENTIAL_CODES`) or the gateway's name for a failure
    // on the way (src/cognito.rs, `record_cognito_call`).
    ("error_type", &[
        "", "UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "InvalidParameterException", "ResourceNotFoundException", "UserNotFoundException",
        "NotAuthorizedException", "TooManyRequestsException", "LimitExceededException",
        "UserLambdaValidationException", "UnexpectedLambdaException",
        "InvalidLambdaResponseException", "InvalidSmsRoleAccessPolicyException",
        "InvalidSmsRoleTrustRelationshipException", "InvalidEmailRoleAccessPolicyException",
        "OperationNotEnabledException", "InternalErrorException", "AccessDeniedException",
        "AccessDenied", "ExpiredTokenException", "ExpiredToken", "IncompleteSignature",
        "IncompleteSignatureException", "InvalidClientTokenId", "InvalidSignatureException",
        "MissingAuthenticationToken", "MissingAuthenticationTokenException", "RequestExpired",
        "SignatureDoesNotMatch", "UnrecognizedClientException",
        "Timeout", "Unreachable", "ConnectionLost", "RegionNotAllowed", "Misconfigured",
        "BadResponse", "_OTHER",
    ]),
    ("rpc_system_name", &["grpc", "aws-api"]),
    // Fully qualified: this server's methods (src/middleware/trace.rs, `KNOWN_METHODS`; `_OTHER`
    // for any other path), and Cognito's: the reset, and the lookups of src/identity.rs
    // (src/metrics.rs, `cognito_method`).
    ("rpc_method", &[
        "cognitogateway.v1.UserAdminService/ResetUserPassword", "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch", "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "CognitoIdentityProvider/AdminResetUserPassword", "CognitoIdentityProvider/DescribeUserPool",
        "CognitoIdentityProvider/AdminGetUser", "_OTHER",
    ]),
    ("rpc_response_status_code", &[
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
        "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ]),
    ("cpu_mode", &["user", "system"]),
    // src/api.rs: how a deduplicated answer came.
    ("kind", &["in_flight", "cooldown", "unknown_outcome"]),
    // src/fleet.rs and src/metrics.rs (`record_round_trip`): the two scripts, and how they went.
    ("operation", &["claim", "settle"]),
    // The fleet's round trips: ok, error; the configuration's reloads: ok, refused; the JWKS's
    // and the certificates': ok, failed.
    ("outcome", &["ok", "error", "refused", "failed"]),
    // src/metrics.rs, `observe_limits`.
    ("setting", &[
        "backend_rps", "backend_burst", "pool_rps", "max_in_flight", "max_in_flight_per_caller",
        "user_cooldown_secs",
    ]),
];

fn label_of(attribute: &str) -> String {
    attribute.replace('.', "_")
}

/// The series names a metric appears as, each with its labels. Nothing else: Prometheus's own `up`
/// would describe its scrape of the collector, not the gateway (the alerts use the absence of
/// `cognito_gateway_callers` instead).
pub(super) fn series() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for metric in EXPORTED {
        let mut labels: BTreeSet<String> = metric.attributes.iter().map(|a| label_of(a)).collect();
        labels.extend(TARGET_LABELS.iter().map(|l| (*l).to_owned()));
        if metric.kind == Histogram {
            let mut bucket = labels.clone();
            bucket.insert("le".to_owned());
            all.insert(format!("{}_bucket", metric.prometheus), bucket);
            all.insert(format!("{}_sum", metric.prometheus), labels.clone());
            all.insert(format!("{}_count", metric.prometheus), labels);
        } else {
            all.insert(metric.prometheus.to_owned(), labels);
        }
    }
    all
}

/// Whether `value` is one a matcher on `label` may name literally.
pub(super) fn known_value(label: &str, value: &str) -> bool {
    if label == "limit" {
        return value == "backend" || value == "pool" || value.starts_with("caller:");
    }
    match LABEL_VALUES.iter().find(|(l, _)| *l == label) {
        Some((_, values)) => values.contains(&value),
        None => true,
    }
}

/// The name the collector's Prometheus exporters give an instrument by default.
fn prometheus_name(metric: &Metric) -> String {
    let mut name = label_of(metric.otel);
    let unit = match metric.unit {
        "" => "",
        "ms" => "milliseconds",
        "s" => "seconds",
        "By" => "bytes",
        other => panic!("{}: unit {other:?} has no suffix here", metric.otel),
    };
    if !unit.is_empty() && !name.ends_with(unit) {
        name.push('_');
        name.push_str(unit);
    }
    if metric.kind == Counter {
        name.push_str("_total");
    }
    name
}

/// A unit in an instrument's builder chain.
static WITH_UNIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"\.with_unit\(\s*"([^"]*)"\s*\)"#).expect("a valid regex"));

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path) -> String {
    let mut all = String::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            all.push_str(&sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            all.push('\n');
        }
    }
    all
}

/// [`EXPORTED`] is what `src/` builds: each name with the right instrument kind and unit, each
/// attribute key, each reason and exception name; and the Prometheus names follow from them.
#[test]
fn exported_names_are_the_sources() {
    let src = sources(&root().join("src"));
    let mut problems = Vec::new();
    for metric in EXPORTED {
        let derived = prometheus_name(metric);
        if derived != metric.prometheus {
            problems.push(format!(
                "{}: the collector names it `{derived}`, EXPORTED says `{}`",
                metric.otel, metric.prometheus
            ));
        }
        let builder = match metric.kind {
            Histogram => r"f64_histogram",
            Counter => r"(u64|f64)_(observable_)?counter",
            UpDownCounter => r"(i64|f64)_(observable_)?up_down_counter",
            Gauge => r"(u64|i64|f64)_(observable_)?gauge",
        };
        let pattern = format!(r#"\.{builder}\(\s*"{}"\s*\)"#, regex::escape(metric.otel));
        let Some(found) = Regex::new(&pattern)
            .expect("an escaped name makes a valid regex")
            .find(&src)
        else {
            problems.push(format!(
                "{}: no `{builder}(\"{}\")` in src/ (renamed, or another instrument kind?)",
                metric.otel, metric.otel
            ));
            continue;
        };
        // The unit is set in the same builder chain, before `.build()`.
        let chain = &src[found.end()..];
        let chain = &chain[..chain.find(".build()").unwrap_or(chain.len())];
        let unit = WITH_UNIT
            .captures(chain)
            .map(|c| c[1].to_owned())
            .unwrap_or_default();
        if unit != metric.unit {
            problems.push(format!(
                "{}: unit {unit:?} in src/, {:?} in EXPORTED",
                metric.otel, metric.unit
            ));
        }
        for attribute in metric.attributes {
            if !src.contains(&format!("\"{attribute}\"")) {
                problems.push(format!(
                    "{}: attribute \"{attribute}\" appears nowhere in src/",
                    metric.otel
                ));
            }
        }
    }
    // The closed sets whose every value is a string literal in src/ (the methods and codes are
    // not: tonic and the proto name them).
    let literal = [
        "reason",
        "error_type",
        "kind",
        "operation",
        "outcome",
        "rpc_method",
    ];
    for (label, values) in LABEL_VALUES {
        if !literal.contains(label) {
            continue;
        }
        for value in values.iter().filter(|v| !v.is_empty()) {
            if !src.contains(&format!("\"{value}\"")) {
                problems.push(format!("{label} value \"{value}\" appears nowhere in src/"));
            }
        }
    }
    assert_none(&problems);
}
