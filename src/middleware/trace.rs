//! One SERVER span per call, under OpenTelemetry's RPC conventions (v1.37: `rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), continuing the caller's W3C trace, and the
//! `rpc.server.call.duration` (v1.42, see `crate::metrics`) and in-flight metrics. Outermost, so
//! that it sees every call and the final status, whoever answered it.
//!
//! Layers and the handler add to the span as they learn: the caller (`cognito_gateway.caller`), the
//! pool (`cognito.user_pool_id`), `cognito_gateway.deduplicated`. A call the gateway refused
//! before asking Cognito anything is marked `cognito_gateway.refused` and never exported (see
//! `telemetry::UnsampledRefusals`): anyone can send a flood of them, and they would crowd the
//! calls that matter out of the export queue.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use opentelemetry::{global, propagation::Extractor};
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument as _, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::CallRecord;
use crate::{
    metrics::{metrics, record_server_call},
    status::{code_name, is_server_side},
    telemetry::{in_incoming_trace, with_incoming_trace},
};

/// Adds [`Trace`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Trace<S> {
    inner: S,
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Trace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The call's record: the layers below and the handler fill it in; the caller's name in it
        // labels the duration metric.
        let record = Arc::new(CallRecord::default());
        request.extensions_mut().insert(Arc::clone(&record));
        let path = request.uri().path();
        let name = path.trim_start_matches('/');
        let (service, method, full_method) = known_method(name);
        let span = tracing::info_span!(
            "rpc",
            otel.name = if service == OTHER { OTHER } else { name },
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            cognito_gateway.caller = Empty,
            cognito.user_pool_id = Empty,
            cognito_gateway.deduplicated = Empty,
            cognito_gateway.refused = Empty,
        );
        // The parent must be set before the span is first entered (that starts the OTel span).
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let incoming = {
            use opentelemetry::trace::TraceContextExt as _;
            let remote_span = parent.span();
            let remote = remote_span.span_context();
            remote.is_valid().then(|| remote.trace_id())
        };
        let _ = span.set_parent(parent);
        let in_flight = InFlight::enter(full_method, record);
        let call = {
            let _entered = span.enter();
            in_incoming_trace(incoming, || self.inner.call(request))
        };
        let recorder = span.clone();
        Box::pin(
            with_incoming_trace(incoming, async move {
                let response = call.await;
                let code = match &response {
                    // Unary replies that fail carry the status in the headers (trailers-only); a
                    // success carries `grpc-status: 0` in the trailers, after this point.
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(Code::Ok, Code::from_i32),
                    Err(_) => Code::Internal,
                };
                recorder.record("rpc.grpc.status_code", code as i32);
                if is_server_side(code) {
                    recorder.record("otel.status_code", "ERROR");
                }
                in_flight.finish(code);
                response
            })
            .instrument(span),
        )
    }
}

/// The methods this server has, fully qualified. Any other path is measured as `_OTHER` (as
/// OpenTelemetry's conventions say), so that made-up paths, which anyone can send, cannot create
/// metric series.
const KNOWN_METHODS: &[&str] = &[
    "cognitogateway.v1.UserAdminService/ResetUserPassword",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// What spans and metrics call a method that is not one of [`KNOWN_METHODS`].
const OTHER: &str = "_OTHER";

/// The (service, method, fully qualified method) of a path `service/method`, if this server has
/// it; else `_OTHER` three times.
pub(crate) fn known_method(name: &str) -> (&'static str, &'static str, &'static str) {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == name)
        .and_then(|known| {
            let (service, method) = known.split_once('/')?;
            Some((service, method, *known))
        })
        .unwrap_or((OTHER, OTHER, OTHER))
}

/// A call in flight: counted in `cognito_gateway.in_flight` until dropped, and measured in
/// `rpc.server.call.duration` when it ends, also when it ends without an answer (a client hanging
/// up, tonic's own deadline): then as CANCELLED.
struct InFlight {
    started: Instant,
    full_method: &'static str,
    record: Arc<CallRecord>,
    code: Option<Code>,
}

impl InFlight {
    fn enter(full_method: &'static str, record: Arc<CallRecord>) -> Self {
        metrics().in_flight.add(1, &[]);
        Self {
            started: Instant::now(),
            full_method,
            record,
            code: None,
        }
    }

    fn finish(mut self, code: Code) {
        self.code = Some(code);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight.add(-1, &[]);
        let code = self.code.unwrap_or(Code::Cancelled);
        record_server_call(
            self.full_method,
            code_name(code),
            is_server_side(code),
            self.record.caller_name(),
            self.started.elapsed(),
        );
    }
}
