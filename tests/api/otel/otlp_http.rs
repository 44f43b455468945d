//! OTLP over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`): the real binary exports to a
//! real HTTP receiver, which decodes what arrived.

use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use prost::Message as _;

use super::{reset, stop};
use crate::{
    helpers::Ca,
    kit::{binary::start_binary, files::Files, otlp::serve_otlp_http},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_reaches_an_http_receiver() {
    let (receiver, exports) = serve_otlp_http(None).await;
    let endpoint = format!("http://{receiver}");
    let gateway = start_binary(
        &["--local"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    reset(&gateway, "alice", None).await.unwrap();
    // SIGTERM flushes what is pending.
    let (code, logs) = stop(gateway).await;
    assert_eq!(code, Some(0));
    assert!(
        !logs.iter().any(|l| l.contains("OTLP")),
        "no exporter error: {logs:?}"
    );

    let exports = exports.lock().unwrap().clone();
    assert!(
        exports
            .iter()
            .all(|(_, content_type, _)| content_type == "application/x-protobuf"),
        "{exports:?}"
    );
    let spans: Vec<String> = exports
        .iter()
        .filter(|(path, _, _)| path == "/v1/traces")
        .flat_map(|(_, _, body)| {
            ExportTraceServiceRequest::decode(body.clone())
                .unwrap()
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .map(|span| span.name)
        .collect();
    assert!(
        spans
            .iter()
            .any(|name| name == "cognitogateway.v1.UserAdminService/ResetUserPassword"),
        "{spans:?}"
    );
    let metrics: Vec<String> = exports
        .iter()
        .filter(|(path, _, _)| path == "/v1/metrics")
        .flat_map(|(_, _, body)| {
            ExportMetricsServiceRequest::decode(body.clone())
                .unwrap()
                .resource_metrics
        })
        .flat_map(|r| r.scope_metrics)
        .flat_map(|s| s.metrics)
        .map(|metric| metric.name)
        .collect();
    for name in ["rpc.server.call.duration", "rpc.client.call.duration"] {
        assert!(metrics.iter().any(|m| m == name), "{name}: {metrics:?}");
    }
}

/// `https://` over HTTP: the receiver's certificate is checked against
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` alone, as for gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_https_trusts_the_configured_ca() {
    let files = Files::new("otlp-https");
    let ca = Ca::new("receiver CA");
    let (receiver, exports) = serve_otlp_http(Some(ca.issue(&["localhost"], None))).await;
    let ca_file = files.write("receiver-ca.pem", &ca.pem);
    let endpoint = format!("https://localhost:{}", receiver.port());
    let gateway = start_binary(
        &["--local"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    reset(&gateway, "alice", None).await.unwrap();
    let (code, _) = stop(gateway).await;
    assert_eq!(code, Some(0));
    let paths: Vec<String> = exports
        .lock()
        .unwrap()
        .iter()
        .map(|(path, _, _)| path.clone())
        .collect();
    for path in ["/v1/traces", "/v1/metrics"] {
        assert!(paths.iter().any(|p| p == path), "{path}: {paths:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_otlp_protocol_is_said_at_start() {
    let gateway = start_binary(
        &["--local"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    assert!(
        gateway
            .startup_log
            .iter()
            .any(|l| l.contains("OTEL_EXPORTER_OTLP_PROTOCOL \"http/json\" is not supported")),
        "{:?}",
        gateway.startup_log
    );
    // The gateway serves all the same.
    reset(&gateway, "alice", None).await.unwrap();
    let (code, _) = stop(gateway).await;
    assert_eq!(code, Some(0));
}
