//! The one place a failed call becomes a gRPC status (in the manner of linkerd2-proxy's
//! `ServerRescue`), and where every call's one log line is written and its outcome counted.
//!
//! Layers below fail with a typed [`GatewayError`] carried up in an empty response ([`fail`]), the
//! handler with one as the source of a placeholder status ([`placeholder`]); tonic's own refusals
//! (an undecodable or oversized message, an unknown method) arrive as plain statuses. Either way
//! the status the caller gets comes from here, from the error table ([`crate::status`]), with the
//! pool and request ids the call's [`CallRecord`] holds: built for the call, or, for the few
//! refusals whose status never varies, copied from one built once ([`fixed_answer`]).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{CallRecord, trace::known_method};
use crate::{
    cognito::{BackendError, CognitoFailure},
    domain::UserPoolId,
    metrics::metrics,
    status::{
        GatewayError, code_name, fixed_answer, is_refusal, is_server_side, message_is_aws_text,
        reason, rejection_attributes, to_status_with,
    },
    telemetry::{REFUSED, current_ids},
};

mod quota;

pub(crate) use quota::LogQuota;

/// The reply of a call that failed with `error`, for [`RescueLayer`] to turn into its status: an
/// empty response that carries the error, so a refusal builds its status once, not twice.
pub(crate) fn fail<B: Default>(error: GatewayError) -> Response<B> {
    let mut response = Response::new(B::default());
    response.extensions_mut().insert(Failed(error));
    response
}

/// [`fail`]'s error, on its way up to [`RescueLayer`].
#[derive(Debug, Clone)]
struct Failed(GatewayError);

/// A status that only carries `error` up to [`RescueLayer`] (the handler's `Err`).
pub(crate) fn placeholder(error: GatewayError) -> Status {
    let mut status = Status::new(Code::Unknown, "");
    status.set_source(Arc::new(error));
    status
}

/// Adds [`Rescue`].
#[derive(Debug, Clone)]
pub(crate) struct RescueLayer {
    quota: Arc<LogQuota>,
}

impl RescueLayer {
    /// Refusals are logged within `quota`.
    pub(crate) fn new(quota: Arc<LogQuota>) -> Self {
        Self { quota }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            quota: Arc::clone(&self.quota),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    quota: Arc<LogQuota>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Rescue<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let record = match request.extensions().get::<Arc<CallRecord>>() {
            Some(record) => Arc::clone(record),
            None => {
                let record = Arc::new(CallRecord::default());
                request.extensions_mut().insert(Arc::clone(&record));
                record
            }
        };
        let mut line = CallLine {
            started: Instant::now(),
            method: known_method(request.uri().path().trim_start_matches('/')).1,
            record,
            quota: Arc::clone(&self.quota),
            written: false,
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(line.rescue(response))
        })
    }
}

/// A call's log line, written once: when its answer is ready, or, if it never is, when the call
/// is dropped.
struct CallLine {
    started: Instant,
    /// The method, as the trace layer names it: one the server has, or `_OTHER` (a path is the
    /// caller's text, and no log line repeats it).
    method: &'static str,
    record: Arc<CallRecord>,
    quota: Arc<LogQuota>,
    written: bool,
}

impl CallLine {
    fn rescue<B: Default>(&mut self, mut response: Response<B>) -> Response<B> {
        self.written = true;
        let error = if let Some(Failed(error)) = response.extensions_mut().remove::<Failed>() {
            Some(error)
        } else {
            match response.extensions().get::<Status>() {
                Some(status) if status.code() != Code::Ok => Some(
                    std::error::Error::source(status)
                        .and_then(|source| source.downcast_ref::<GatewayError>())
                        .cloned()
                        .unwrap_or_else(|| protocol_error(status)),
                ),
                Some(_) => None,
                // A status written into the headers without going through `Status::into_http`.
                None => Status::from_header_map(response.headers())
                    .filter(|status| status.code() != Code::Ok)
                    .map(|status| protocol_error(&status)),
            }
        };
        if let Some(kind) = self.record.deduplicated() {
            metrics()
                .deduplicated
                .add(1, &[opentelemetry::KeyValue::new("kind", kind)]);
        }
        match error {
            Some(error) => {
                // A deadline that ran out before the call asked Cognito anything: nothing happened,
                // and the caller is told so.
                let error = match error {
                    GatewayError::DeadlineExceeded if !self.record.reached_cognito() => {
                        GatewayError::DeadlineExceededUnsent
                    }
                    other => other,
                };
                if !self.record.reached_cognito() && is_refusal(&error) {
                    // Before anything asks for the span's context: that starts it, and the
                    // sampler decides on what it has by then.
                    tracing::Span::current().record(REFUSED, true);
                }
                let ids = current_ids();
                let pool = self.record.pool();
                let trace_id = ids.as_ref().map(|(trace_id, _)| trace_id.as_str());
                // A refusal whose answer is the same every time is not built again each time, so
                // that a flood of them costs less (issue 11).
                if let Some(answer) = fixed_answer(&error, pool, trace_id) {
                    self.failed(&error, answer.code, ids);
                    return answer.response();
                }
                let status = to_status_with(&error, pool, trace_id);
                self.failed(&error, status.code(), ids);
                status.into_http()
            }
            None => {
                if let Some(reset) = self.record.reset() {
                    let (trace_id, span_id) = current_ids().unwrap_or_default();
                    tracing::info!(
                        code = "OK",
                        trace_id,
                        span_id,
                        caller = self.record.caller_name(),
                        user_pool_id = self.pool(),
                        cognito_request_id =
                            reset.cognito_request_id.as_deref().unwrap_or_default(),
                        deduplicated = reset.deduplicated,
                        duration_ms = self.duration_ms(),
                        "{}",
                        self.method,
                    );
                }
                response
            }
        }
    }

    fn pool(&self) -> &str {
        self.record
            .pool()
            .map(UserPoolId::as_str)
            .unwrap_or_default()
    }

    fn duration_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Counts a failed call and writes its line; server-side failures in full (with text a Lambda
    /// wrote left out), since their status is opaque.
    fn failed(&self, error: &GatewayError, code: Code, ids: Option<(String, String)>) {
        match rejection_attributes(error) {
            Some((reason, Some(limit))) => metrics().rejections.add(1, &[reason, limit]),
            Some((reason, None)) => metrics().rejections.add(1, &[reason]),
            None => {}
        }
        let reason = reason(error);
        // A call that never asked Cognito anything cost the gateway nothing but this line, and
        // anyone can send a flood of them (open paths need no credentials): they are logged within
        // a quota, and counted in full above. What reached Cognito is always logged: the audit
        // trail.
        let reached = self.record.reached_cognito();
        if !reached && !self.quota.admit(reason, self.record.caller_or_none()) {
            return;
        }
        // A failure the caller caused before anything reached Cognito (an unknown method, a
        // malformed message, its own deadline) is no server error, whatever its code.
        let server_side = is_server_side(code)
            && (reached
                || !matches!(
                    error,
                    GatewayError::Protocol { .. }
                        | GatewayError::DeadlineExceeded
                        | GatewayError::DeadlineExceededUnsent
                ));
        let code = code_name(code);
        let caller = self.record.caller_name();
        let pool = self.pool();
        let request_id = error.cognito_request_id().unwrap_or_default();
        let duration_ms = self.duration_ms();
        let (trace_id, span_id) = ids.unwrap_or_default();
        let detail = match error {
            // Server-side failures are logged in full, their status being opaque; but never the
            // text a Lambda (or an unknown exception) wrote, which may quote the request.
            GatewayError::Backend(BackendError::Cognito(failure))
            | GatewayError::Lookup(BackendError::Cognito(failure))
                if server_side && !message_is_aws_text(&failure.code) =>
            {
                unquoted(failure)
            }
            GatewayError::OutcomeUnknown {
                exception,
                cause: Some(BackendError::Cognito(failure)),
                ..
            } if !message_is_aws_text(&failure.code) => {
                format!(
                    "the reset's outcome is unknown ({exception}): {}",
                    unquoted(failure)
                )
            }
            // A caller-side Cognito error is the reason alone, as its message may quote the
            // request.
            GatewayError::Backend(_) | GatewayError::Lookup(_) if !server_side => String::new(),
            // The rest: backend errors were scrubbed of the request where the call ran, and the
            // gateway's own refusals say which check failed (the caller is told less).
            other => other.to_string(),
        };
        // One shape of line, at the level the failure deserves.
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    code,
                    trace_id,
                    span_id,
                    reason,
                    caller,
                    user_pool_id = pool,
                    cognito_request_id = request_id,
                    duration_ms,
                    error = detail,
                    "{}",
                    self.method,
                )
            };
        }
        if server_side {
            line!(error);
        } else {
            line!(info);
        }
    }
}

impl Drop for CallLine {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        // The caller hung up, or the connection closed, before the answer. A reset it started
        // goes on; its outcome is logged when it ends, if nobody is left to be told. Hanging up
        // early costs a caller nothing: those lines are held to the quota too.
        if !self.record.reached_cognito()
            && !self.quota.admit("CANCELLED", self.record.caller_or_none())
        {
            return;
        }
        let (trace_id, span_id) = current_ids().unwrap_or_default();
        tracing::info!(
            code = "CANCELLED",
            trace_id,
            span_id,
            reason = "",
            caller = self.record.caller_name(),
            user_pool_id = self.pool(),
            duration_ms = self.duration_ms(),
            "{}",
            self.method,
        );
    }
}

/// Cognito's failure without its message, which may quote the request.
fn unquoted(failure: &CognitoFailure) -> String {
    format!(
        "Cognito returned {} (HTTP {}); its message ({} characters) is not logged: it may quote the request",
        failure.code,
        failure.http_status,
        failure.message.chars().count()
    )
}

/// A status tonic wrote itself, before or instead of our handler.
fn protocol_error(status: &Status) -> GatewayError {
    GatewayError::Protocol {
        code: status.code(),
        message: status.message().to_owned(),
    }
}
