//! The soak's two peers of the gateway, in the driver's process: a Cognito on the wire that
//! answers by the username's prefix and counts every send, and an OTLP collector that keeps the
//! gateway's latest metric values.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::MetricsService,
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::TraceService,
        },
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{AggregationTemporality, metric},
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use wiremock::{
    Mock, MockServer, Respond, ResponseTemplate,
    matchers::{header, method},
};

use crate::kit::fake_cognito::{DESCRIBE, TARGET, cognito_error, cognito_ok};

/// How long Cognito takes for `slow-` and `cancel-` users: longer than the deadlines the soak
/// gives those calls, well inside the gateway's operation timeout.
pub(crate) const SLOW: Duration = Duration::from_millis(800);

/// The Cognito errors the soak asks for, by index (`x<index>-<n>` usernames): every row of the
/// error table that a reply can produce, 5xx included. Throttling has a prefix of its own
/// (`thr-`), since its sends are retries.
pub(crate) const ERRORS: &[(u16, &str, &str)] = &[
    (400, "UserNotFoundException", "User does not exist."),
    (
        400,
        "ResourceNotFoundException",
        "User pool does not exist.",
    ),
    (
        400,
        "InvalidParameterException",
        "Cannot reset password for the user as there is no registered/verified email or phone_number",
    ),
    (
        400,
        "InvalidParameterException",
        "1 validation error detected",
    ),
    (400, "NotAuthorizedException", "User is disabled."),
    (
        400,
        "LimitExceededException",
        "Attempt limit exceeded, please try after some time.",
    ),
    (400, "UserLambdaValidationException", "PreForgot failed"),
    (400, "UnexpectedLambdaException", "lambda failed"),
    (400, "InvalidLambdaResponseException", "bad lambda response"),
    (400, "InvalidSmsRoleAccessPolicyException", "sms role"),
    (400, "InvalidSmsRoleTrustRelationshipException", "sms trust"),
    (400, "InvalidEmailRoleAccessPolicyException", "email role"),
    (400, "OperationNotEnabledException", "not enabled"),
    (400, "AccessDeniedException", "not authorized to perform"),
    (400, "SomethingNewException", "a code nobody knows"),
    (500, "InternalErrorException", "Internal error"),
    (503, "ServiceUnavailable", "try later"),
];

/// The index in [`ERRORS`] of HTTP 500: an unknown outcome.
pub(crate) const INTERNAL_ERROR: usize = 15;

/// The fake Cognito's state: sends by username prefix, and who waits to hear that a user's reset
/// arrived.
#[derive(Default)]
pub(crate) struct Cognito {
    sends: Mutex<BTreeMap<String, u64>>,
    arrivals: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Cognito {
    /// Starts the fake on 127.0.0.1:0 (request recording off: the soak sends too many to keep).
    pub(crate) async fn start() -> (MockServer, Arc<Self>) {
        let cognito = Arc::new(Self::default());
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        Mock::given(method("POST"))
            .and(header("x-amz-target", TARGET))
            .respond_with(Responder(Arc::clone(&cognito)))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(header("x-amz-target", DESCRIBE))
            .respond_with(ResponseTemplate::new(200).set_body_raw(
                r#"{"UserPool":{"Id":"us-east-1_Soak","UsernameConfiguration":{"CaseSensitive":true}}}"#,
                "application/x-amz-json-1.1",
            ))
            .mount(&server)
            .await;
        (server, cognito)
    }

    /// Resolves when `username`'s reset arrives (register before the call is made).
    pub(crate) fn on_arrival(&self, username: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.arrivals).insert(username.to_owned(), tx);
        rx
    }

    /// Sends so far, by username prefix.
    pub(crate) fn sends(&self) -> BTreeMap<String, u64> {
        lock(&self.sends).clone()
    }
}

struct Responder(Arc<Cognito>);

impl Respond for Responder {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: serde_json::Value = request.body_json().unwrap_or_default();
        let username = body["Username"].as_str().unwrap_or_default();
        let prefix = prefix(username);
        *lock(&self.0.sends).entry(prefix.to_owned()).or_default() += 1;
        if let Some(arrived) = lock(&self.0.arrivals).remove(username) {
            let _ = arrived.send(());
        }
        match prefix {
            "slow" | "cancel" => cognito_ok("soak-slow").set_delay(SLOW),
            "thr" => cognito_error(400, "TooManyRequestsException", "Rate exceeded", "soak-thr"),
            error if error.starts_with('x') => {
                let (http, exception, message) = error[1..]
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| ERRORS.get(index))
                    .expect("x<index> names a row of ERRORS");
                cognito_error(*http, exception, message, "soak-error")
            }
            _ => cognito_ok("soak-ok"),
        }
    }
}

/// `ok-17` → `ok`: what the soak asked of the user, and the key its sends are counted under.
pub(crate) fn prefix(username: &str) -> &str {
    username
        .split_once('-')
        .map_or(username, |(prefix, _)| prefix)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No critical section can panic half-way; a poisoned lock is still consistent.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// One series of a metric: its name and its attributes, rendered `key=value` and sorted.
pub(crate) type Series = (String, Vec<String>);

/// An OTLP collector keeping, per series, the latest value a cumulative export reported (or the
/// sum of delta exports): for a histogram its count, for a sum its value. Traces are accepted and
/// dropped (the soak samples none).
#[derive(Clone, Default)]
pub(crate) struct Collector {
    values: Arc<Mutex<BTreeMap<Series, f64>>>,
    exports: Arc<Mutex<u64>>,
}

impl Collector {
    /// Metric exports received so far.
    pub(crate) fn exports(&self) -> u64 {
        *lock(&self.exports)
    }

    /// The sum over the series of `metric` whose attributes include every one of `with`.
    pub(crate) fn total(&self, metric: &str, with: &[&str]) -> f64 {
        lock(&self.values)
            .iter()
            .filter(|((name, attributes), _)| {
                name == metric && with.iter().all(|w| attributes.iter().any(|a| a == w))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut values = lock(&self.values);
        *lock(&self.exports) += 1;
        let metrics = request
            .into_inner()
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics);
        for metric in metrics {
            let points: Vec<(Vec<KeyValue>, f64, i32)> = match metric.data {
                Some(metric::Data::Histogram(h)) => h
                    .data_points
                    .into_iter()
                    .map(|p| (p.attributes, p.count as f64, h.aggregation_temporality))
                    .collect(),
                Some(metric::Data::Sum(s)) => s
                    .data_points
                    .into_iter()
                    .map(|p| (p.attributes, number(p.value), s.aggregation_temporality))
                    .collect(),
                Some(metric::Data::Gauge(g)) => g
                    .data_points
                    .into_iter()
                    .map(|p| {
                        let cumulative = AggregationTemporality::Cumulative as i32;
                        (p.attributes, number(p.value), cumulative)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for (attributes, value, temporality) in points {
                let key = (metric.name.clone(), render(&attributes));
                if temporality == AggregationTemporality::Delta as i32 {
                    *values.entry(key).or_default() += value;
                } else {
                    values.insert(key, value);
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        _request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn number(value: Option<opentelemetry_proto::tonic::metrics::v1::number_data_point::Value>) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match value {
        Some(Value::AsInt(i)) => i as f64,
        Some(Value::AsDouble(d)) => d,
        None => 0.0,
    }
}

fn render(attributes: &[KeyValue]) -> Vec<String> {
    let mut rendered: Vec<String> = attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            format!("{}={value}", kv.key)
        })
        .collect();
    rendered.sort();
    rendered
}
