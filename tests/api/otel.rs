//! OpenTelemetry end to end: the real binary exports to an OTLP collector running in this test (a
//! tonic server implementing the OTLP trace and metrics services), and the test reads what arrived.

use std::{
    net::SocketAddr,
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
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;
use tonic::{Request, Response, Status, transport::Identity};

use crate::{
    helpers::Ca,
    kit::{
        binary::{Gateway, start_binary},
        files::Files,
        otlp::serve_otlp,
    },
};

mod otlp_http;
mod scrape;

/// A metric's name and the attributes of all its data points.
type MetricSeen = (String, Vec<KeyValue>);

/// What the collector received, decoded and as raw bytes (to search for anything sensitive).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    metric_names: Arc<Mutex<Vec<MetricSeen>>>,
    /// Each export's resource attributes, traces and metrics alike.
    resources: Arc<Mutex<Vec<Vec<KeyValue>>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Collector {
    /// The one resource every export carried (one process, one resource).
    fn resource(&self) -> Vec<KeyValue> {
        let mut resources: Vec<Vec<KeyValue>> = self.resources.lock().unwrap().clone();
        for resource in &mut resources {
            resource.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let first = resources.first().expect("an export").clone();
        assert!(resources.iter().all(|r| *r == first), "{resources:?}");
        first
    }
}

fn resource_string<'a>(resource: &'a [KeyValue], key: &str) -> &'a str {
    match attribute(resource, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("resource {key}: {other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let request = request.into_inner();
        self.raw.lock().unwrap().extend(request.encode_to_vec());
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            self.resources.lock().unwrap().push(attributes);
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let request = request.into_inner();
        self.raw.lock().unwrap().extend(request.encode_to_vec());
        let mut names = self.metric_names.lock().unwrap();
        for resource in request.resource_metrics {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            self.resources.lock().unwrap().push(attributes);
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    // Every data point's attributes, flattened: enough to check labels.
                    let attributes: Vec<KeyValue> = match &metric.data {
                        Some(Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .flat_map(|p| p.attributes.clone())
                            .collect(),
                        Some(Data::Sum(s)) => s
                            .data_points
                            .iter()
                            .flat_map(|p| p.attributes.clone())
                            .collect(),
                        Some(Data::Gauge(g)) => g
                            .data_points
                            .iter()
                            .flat_map(|p| p.attributes.clone())
                            .collect(),
                        _ => Vec::new(),
                    };
                    names.push((metric.name.clone(), attributes));
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn start_collector() -> (SocketAddr, Collector) {
    start_collector_with(None).await
}

/// A collector serving TLS with `identity` when given, for as long as the test runs.
async fn start_collector_with(identity: Option<Identity>) -> (SocketAddr, Collector) {
    let collector = Collector::default();
    let (addr, _server) = serve_otlp(collector.clone(), identity, std::future::pending()).await;
    (addr, collector)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string<'a>(span: &'a Span, key: &str) -> &'a str {
    match attribute(&span.attributes, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?} on {}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(&span.attributes, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key}: {other:?} on {}", span.name),
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

async fn reset(gateway: &Gateway, user: &str, traceparent: Option<&str>) -> Result<(), Status> {
    use cognito_gateway::proto::{
        ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient,
    };
    let mut client = UserAdminServiceClient::connect(format!("http://{}", gateway.addr))
        .await
        .unwrap();
    let mut request = Request::new(ResetUserPasswordRequest {
        user_pool_id: "local-1_DemoPool".into(),
        username: user.into(),
        client_metadata: [("tenant".to_owned(), "secret-metadata-value".to_owned())].into(),
        request_id: String::new(),
    });
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    client.reset_user_password(request).await.map(drop)
}

/// SIGTERM, then the exit code and everything the gateway logged.
async fn stop(mut gateway: Gateway) -> (Option<i32>, Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let code = gateway.terminate();
        (code, gateway.rest_of_log())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_reach_an_otlp_collector_without_usernames() {
    let (collector_addr, collector) = start_collector().await;
    let endpoint = format!("http://{collector_addr}");
    let gateway = start_binary(
        &["--local"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_SERVICE_NAME", "gateway-under-test"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test,service.name=loses-to-OTEL_SERVICE_NAME",
            ),
        ],
    );
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    reset(&gateway, "alice", Some(&traceparent)).await.unwrap();
    reset(&gateway, "alice", None).await.unwrap(); // deduplicated: no Cognito call
    let disabled = reset(&gateway, "bob-disabled", None).await.unwrap_err();
    assert_eq!(disabled.code(), tonic::Code::FailedPrecondition);
    // RequestInfo: Cognito's request id where there is one, with the trace id beside it...
    let info = tonic_types::StatusExt::get_error_details(&disabled)
        .request_info()
        .cloned()
        .unwrap();
    assert!(info.request_id.starts_with("local-"), "{info:?}");
    assert!(info.serving_data.starts_with("trace_id="), "{info:?}");
    // ...and the trace id where there is none: here, the caller's own trace.
    let invalid = reset(&gateway, "not valid", Some(&traceparent))
        .await
        .unwrap_err();
    let info = tonic_types::StatusExt::get_error_details(&invalid)
        .request_info()
        .cloned()
        .unwrap();
    assert_eq!(info.request_id, TRACE_ID);
    // SIGTERM flushes what is pending. (Waiting for the exit blocks: off the runtime, which serves
    // the collector meanwhile.)
    let (code, logs) = stop(gateway).await;
    assert_eq!(code, Some(0));

    let spans = collector.spans.lock().unwrap().clone();
    let server = |pred: &dyn Fn(&Span) -> bool| {
        spans
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .find(|s| pred(s))
            .cloned()
    };
    // The refused call (INVALID_ARGUMENT, before anything reached Cognito) is not exported: a
    // flood of them would crowd real calls out of the export queue. Its trace id was still given.
    let refused = spans.iter().find(|s| {
        matches!(
            attribute(&s.attributes, "rpc.grpc.status_code"),
            Some(Value::IntValue(3))
        )
    });
    assert!(refused.is_none(), "a refused call's span: {refused:?}");
    // The first call continues the caller's trace.
    let first = server(&|s| {
        hex::encode(&s.trace_id) == TRACE_ID
            && matches!(
                attribute(&s.attributes, "rpc.grpc.status_code"),
                Some(Value::IntValue(0))
            )
    })
    .expect("the OK server span in the caller's trace");
    assert_eq!(hex::encode(&first.parent_span_id), PARENT_SPAN);
    assert_eq!(
        first.name,
        "cognitogateway.v1.UserAdminService/ResetUserPassword"
    );
    assert_eq!(string(&first, "rpc.system"), "grpc");
    assert_eq!(
        string(&first, "rpc.service"),
        "cognitogateway.v1.UserAdminService"
    );
    assert_eq!(string(&first, "rpc.method"), "ResetUserPassword");
    assert_eq!(int(&first, "rpc.grpc.status_code"), 0);
    assert_eq!(string(&first, "cognito.user_pool_id"), "local-1_DemoPool");
    assert_eq!(string(&first, "cognito_gateway.caller"), "anonymous");

    // Its Cognito call is a CLIENT child.
    let client = spans
        .iter()
        .find(|s| {
            s.kind == SpanKind::Client as i32
                && s.parent_span_id == first.span_id
                && s.name.ends_with("AdminResetUserPassword")
        })
        .expect("a client span under the first server span");
    assert_eq!(client.trace_id, first.trace_id);
    assert_eq!(
        client.name,
        "CognitoIdentityProvider/AdminResetUserPassword"
    );
    assert_eq!(string(client, "rpc.system"), "aws-api");
    assert_eq!(string(client, "rpc.service"), "CognitoIdentityProvider");
    assert_eq!(string(client, "rpc.method"), "AdminResetUserPassword");
    assert_eq!(string(client, "cloud.region"), "local-1");
    assert_eq!(int(client, "aws.attempts"), 1);
    assert!(string(client, "aws.request_id").starts_with("local-"));

    // The repeat is marked deduplicated and made no Cognito call.
    let repeat = server(&|s| {
        matches!(
            attribute(&s.attributes, "cognito_gateway.deduplicated"),
            Some(Value::BoolValue(true))
        )
    })
    .expect("a deduplicated server span");
    assert!(
        !spans
            .iter()
            .any(|s| s.parent_span_id == repeat.span_id && s.kind == SpanKind::Client as i32)
    );

    // The failure: the client span names the exception; FAILED_PRECONDITION is the caller's, not an
    // error of the server span.
    let failed = server(&|s| {
        matches!(
            attribute(&s.attributes, "rpc.grpc.status_code"),
            Some(Value::IntValue(9))
        )
    })
    .expect("the FAILED_PRECONDITION span");
    assert_ne!(
        failed.status.as_ref().map(|s| s.code),
        Some(2),
        "not an ERROR span"
    );
    let failed_client = spans
        .iter()
        .find(|s| s.parent_span_id == failed.span_id)
        .expect("its client span");
    assert_eq!(
        string(failed_client, "aws.exception"),
        "NotAuthorizedException"
    );
    assert_eq!(
        failed_client.status.as_ref().map(|s| s.code),
        Some(2),
        "the client span is an error"
    );

    // Metrics with their labels.
    let metrics = collector.metric_names.lock().unwrap().clone();
    let has = |name: &str| metrics.iter().any(|(n, _)| n == name);
    for name in [
        "rpc.server.call.duration",
        "rpc.client.call.duration",
        "cognito_gateway.deduplicated",
        "cognito_gateway.in_flight",
        "cognito_gateway.limit",
        "process.memory.usage",
    ] {
        assert!(
            has(name),
            "{name} missing from {:?}",
            metrics.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
    let server_duration = metrics
        .iter()
        .filter(|(n, _)| n == "rpc.server.call.duration")
        .flat_map(|(_, a)| a)
        .collect::<Vec<_>>();
    // Semantic conventions v1.42: the code's name, a fully qualified method, no rpc.service.
    assert!(server_duration.iter().any(|kv| kv.key == "rpc.response.status_code"
        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(c)) if c == "FAILED_PRECONDITION")));
    assert!(server_duration.iter().any(|kv| kv.key == "rpc.method"
        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(m)) if m == "cognitogateway.v1.UserAdminService/ResetUserPassword")));
    assert!(!server_duration.iter().any(|kv| kv.key == "rpc.service"));
    assert!(server_duration.iter().any(|kv| kv.key == "cognito_gateway.caller"
        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(c)) if c == "anonymous")));

    let settings: Vec<_> = metrics
        .iter()
        .filter(|(n, _)| n == "cognito_gateway.limit")
        .flat_map(|(_, a)| a)
        .filter(|kv| kv.key == "setting")
        .collect();
    assert!(
        settings.iter().any(|kv| matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(s)) if s == "backend_rps")),
        "{settings:?}"
    );

    // Nothing the caller sent as sensitive left the process.
    let raw = collector.raw.lock().unwrap().clone();
    let raw = String::from_utf8_lossy(&raw);
    for secret in [
        "alice",
        "bob-disabled",
        "not valid",
        "secret-metadata-value",
    ] {
        assert!(!raw.contains(secret), "{secret} was exported");
        assert!(
            !logs.iter().any(|l| l.contains(secret)),
            "{secret} was logged"
        );
    }
    // The resource: OTEL_SERVICE_NAME over OTEL_RESOURCE_ATTRIBUTES over the defaults, and an
    // instance id that tells this process's series from any other's.
    let resource = collector.resource();
    assert_eq!(
        resource_string(&resource, "service.name"),
        "gateway-under-test"
    );
    assert_eq!(
        resource_string(&resource, "deployment.environment.name"),
        "test"
    );
    assert_eq!(
        resource_string(&resource, "service.version"),
        env!("CARGO_PKG_VERSION")
    );
    let instance = resource_string(&resource, "service.instance.id");
    assert!(
        instance.len() == 36 && instance.as_bytes()[14] == b'4',
        "a version 4 UUID: {instance}"
    );

    // Logs and traces join on the trace id.
    assert!(
        logs.iter()
            .any(|l| l.contains(TRACE_ID) && l.contains("ResetUserPassword")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_no_outcome() {
    // A port that was free a moment ago: the exporter's connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let gateway = start_binary(
        &["--local"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    );
    for _ in 0..3 {
        reset(&gateway, "alice", None).await.unwrap();
    }
    let status = reset(&gateway, "bob-disabled", None).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let started = std::time::Instant::now();
    let (code, _) = stop(gateway).await;
    assert_eq!(code, Some(0), "and the exit is still clean");
    // The flush at exit is bounded (5 s), whatever the collector does.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_to_a_tls_collector_trusting_the_configured_ca() {
    let files = Files::new("otlp");
    let ca = Ca::new("collector CA");
    let (cert, key) = ca.issue(&["localhost"], None);
    let (collector_addr, collector) =
        start_collector_with(Some(Identity::from_pem(cert, key))).await;
    let ca_file = files.write("collector-ca.pem", &ca.pem);
    let endpoint = format!("https://localhost:{}", collector_addr.port());
    let gateway = start_binary(
        &["--local"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-a"),
        ],
    );
    reset(&gateway, "alice", None).await.unwrap();
    let (code, logs) = stop(gateway).await;
    assert_eq!(code, Some(0));
    assert!(
        !logs.iter().any(|l| l.contains("OTLP")),
        "no exporter error: {logs:?}"
    );

    let spans = collector.spans.lock().unwrap().clone();
    assert!(
        spans.iter().any(|s| s.kind == SpanKind::Server as i32),
        "the server span arrived over TLS"
    );
    let resource = collector.resource();
    assert_eq!(
        resource_string(&resource, "service.name"),
        "cognito-gateway"
    );
    assert_eq!(resource_string(&resource, "service.instance.id"), "pod-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_callers_trace_id_still_names_the_call() {
    let gateway = start_binary(&["--local"], &[]);
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let invalid = reset(&gateway, "not valid", Some(&traceparent))
        .await
        .unwrap_err();
    let info = tonic_types::StatusExt::get_error_details(&invalid)
        .request_info()
        .cloned()
        .unwrap();
    assert_eq!(info.request_id, TRACE_ID);
    let (code, logs) = stop(gateway).await;
    assert_eq!(code, Some(0));
    assert!(
        logs.iter()
            .any(|l| l.contains(TRACE_ID) && l.contains("INVALID_ARGUMENT")),
        "{logs:?}"
    );
}
