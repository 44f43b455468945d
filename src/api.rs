//! The gRPC service: authorize -> validate -> the user gate -> Cognito -> answer. Every call that
//! gets here ends here in exactly one log line, and every failure becomes a status through
//! [`crate::status`] only.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, field::Empty};

use crate::{
    auth::Caller,
    cognito::{Backend, BackendError, CallBounds},
    domain::{ResetRequest, UserPoolId},
    limits::{GatedReset, PoolRateLimit, RateLimit, UserGate},
    metrics::metrics,
    middleware::deadline::Deadline,
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_server::UserAdminService,
    },
    status::{
        GatewayError, Limit, code_name, is_server_side, message_is_aws_text, rejection_attributes,
        to_status,
    },
    telemetry::current_ids,
};

/// `cognitogateway.v1.UserAdminService`.
#[derive(Debug)]
pub struct UserAdmin<B> {
    backend: Arc<B>,
    gate: Arc<UserGate>,
    backend_guard: Arc<RateLimit>,
    pool_limit: Option<Arc<PoolRateLimit>>,
    operation_timeout: Duration,
}

impl<B> UserAdmin<B> {
    /// A service calling `backend` through `gate` and `backend_guard`. Each Cognito call is bounded
    /// by `operation_timeout`; each caller's wait, by their own deadline as well.
    pub fn new(
        backend: Arc<B>,
        gate: Arc<UserGate>,
        backend_guard: Arc<RateLimit>,
        operation_timeout: Duration,
    ) -> Self {
        Self {
            backend,
            gate,
            backend_guard,
            pool_limit: None,
            operation_timeout,
        }
    }

    /// Adds a limit per pool on the calls that reach Cognito, checked before the backend guard.
    #[must_use]
    pub fn with_pool_limit(mut self, limit: PoolRateLimit) -> Self {
        self.pool_limit = Some(Arc::new(limit));
        self
    }
}

/// What the log line says about a call, gathered as it goes.
struct CallLog {
    started: Instant,
    caller: Option<Arc<str>>,
    pool: Option<UserPoolId>,
    /// Whether the call's line was written; if not when dropped, the call ended without an
    /// answer, and that is the line.
    written: bool,
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        // The caller hung up, or the connection closed, before the answer. A reset it started
        // goes on; its outcome is logged when it ends, if nobody is left to be told.
        let (trace_id, span_id) = current_ids().unwrap_or_default();
        tracing::info!(
            code = "CANCELLED",
            trace_id,
            span_id,
            reason = "",
            caller = self.caller.as_deref().unwrap_or_default(),
            user_pool_id = self
                .pool
                .as_ref()
                .map(UserPoolId::as_str)
                .unwrap_or_default(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "ResetUserPassword",
        );
    }
}

#[tonic::async_trait]
impl<B: Backend> UserAdminService for UserAdmin<B> {
    async fn reset_user_password(
        &self,
        request: Request<ResetUserPasswordRequest>,
    ) -> Result<Response<ResetUserPasswordResponse>, Status> {
        let deadline = request.extensions().get::<Deadline>().copied();
        let caller = request.extensions().get::<Arc<Caller>>().cloned();
        let message = request.into_inner();
        let mut log = CallLog {
            started: Instant::now(),
            caller: caller.as_ref().map(|c| Arc::clone(&c.name)),
            pool: None,
            written: false,
        };

        // Fail closed: the authentication layer always sets a caller for this path.
        let Some(caller) = caller else {
            let error = GatewayError::Unauthenticated("no caller identity reached the service");
            return Err(log.failed(&error, None));
        };
        // Authorization comes before anything that could tell whether the pool exists.
        if !caller.may_reset_in(&message.user_pool_id) {
            log.pool = UserPoolId::parse(message.user_pool_id).ok();
            let error = GatewayError::CallerNotAllowed {
                caller: Arc::clone(&caller.name),
            };
            return Err(log.failed(&error, None));
        }
        let pool_id = message.user_pool_id.clone();
        let request = match ResetRequest::parse(
            message.user_pool_id,
            message.username,
            message.client_metadata,
        ) {
            Ok(request) => request,
            Err(violations) => {
                log.pool = UserPoolId::parse(pool_id).ok();
                return Err(log.failed(&GatewayError::InvalidRequest(violations), None));
            }
        };
        log.pool = Some(request.user_pool_id.clone());
        tracing::Span::current().record("cognito.user_pool_id", request.user_pool_id.as_str());

        // The caller's deadline bounds the caller's wait and the Cognito call's retries, not the
        // call itself: a call another caller may share, and whose outcome decides whether a retry
        // sends the user a second code, runs to its end (at most `operation_timeout`), so that a
        // success is remembered and the retry deduplicated. A call with no time left at all does
        // not start one.
        let remaining = deadline.map(|d| d.remaining());
        if remaining == Some(Duration::ZERO) {
            return Err(log.failed(&GatewayError::DeadlineExceededUnsent, Some(&request)));
        }
        let request = Arc::new(request);
        let retry_until = remaining.map(|remaining| Instant::now() + remaining);
        let gated = self.reset_once(Arc::clone(&request), retry_until);
        let result = match remaining {
            Some(remaining) => tokio::time::timeout(remaining, gated)
                .await
                .unwrap_or(Err(GatewayError::DeadlineExceeded)),
            None => gated.await,
        };
        match result {
            Ok(reset) => Ok(Response::new(log.succeeded(reset))),
            Err(error) => Err(log.failed(&error, Some(&request))),
        }
    }
}

impl<B: Backend> UserAdmin<B> {
    /// The reset, through the user gate: only a call that must reach Cognito, and can, spends the
    /// backend guard's budget.
    async fn reset_once(
        &self,
        request: Arc<ResetRequest>,
        retry_until: Option<Instant>,
    ) -> Result<GatedReset, GatewayError> {
        let bounds = CallBounds {
            timeout: self.operation_timeout,
            retry_until,
        };
        let key = self.gate.key(&request.user_pool_id, &request.username);
        let backend = Arc::clone(&self.backend);
        let guard = Arc::clone(&self.backend_guard);
        let pool_limit = self.pool_limit.clone();
        self.gate
            .reset(key, move || {
                backend
                    .serves(&request.user_pool_id)
                    .map_err(GatewayError::Backend)?;
                if let Some(limit) = &pool_limit {
                    limit.check(&request.user_pool_id).map_err(|wait| {
                        GatewayError::RateLimited {
                            limit: Limit::Pool(request.user_pool_id.clone()),
                            wait,
                        }
                    })?;
                }
                guard.check().map_err(|wait| GatewayError::RateLimited {
                    limit: Limit::Backend,
                    wait,
                })?;
                // The CLIENT span is made here, in the caller's span, and goes with the call into
                // its own task.
                let span = tracing::info_span!(
                    "cognito",
                    otel.name = "CognitoIdentityProvider/AdminResetUserPassword",
                    otel.kind = "client",
                    otel.status_code = Empty,
                    rpc.system = "aws-api",
                    rpc.service = "CognitoIdentityProvider",
                    rpc.method = "AdminResetUserPassword",
                    cloud.region = Empty,
                    aws.request_id = Empty,
                    aws.exception = Empty,
                    aws.attempts = Empty,
                );
                Ok(async move {
                    backend
                        .reset_user_password(&request, bounds)
                        .await
                        .map_err(|error| GatewayError::Backend(error.scrubbed(&request)))
                }
                .instrument(span))
            })
            .await
    }
}

impl CallLog {
    fn succeeded(mut self, reset: GatedReset) -> ResetUserPasswordResponse {
        self.written = true;
        if reset.deduplicated {
            metrics().deduplicated.add(1, &[]);
        }
        tracing::Span::current().record("cognito_gateway.deduplicated", reset.deduplicated);
        let (trace_id, span_id) = current_ids().unwrap_or_default();
        tracing::info!(
            code = "OK",
            trace_id,
            span_id,
            caller = self.caller.as_deref().unwrap_or_default(),
            user_pool_id = self
                .pool
                .as_ref()
                .map(UserPoolId::as_str)
                .unwrap_or_default(),
            cognito_request_id = reset.outcome.request_id.as_deref().unwrap_or_default(),
            deduplicated = reset.deduplicated,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "ResetUserPassword",
        );
        ResetUserPasswordResponse {
            cognito_request_id: reset.outcome.request_id.unwrap_or_default(),
            deduplicated: reset.deduplicated,
        }
    }

    /// Builds the status and writes the call's one log line; server-side failures are logged in
    /// full (with anything the caller sent scrubbed out, and text a Lambda wrote left out), since
    /// their status is opaque.
    fn failed(&mut self, error: &GatewayError, request: Option<&ResetRequest>) -> Status {
        self.written = true;
        let status = to_status(error, self.pool.as_ref());
        let reason = tonic_types::StatusExt::get_details_error_info(&status)
            .map(|info| info.reason)
            .unwrap_or_default();
        let code = code_name(status.code());
        let caller = self.caller.as_deref().unwrap_or_default();
        let pool = self
            .pool
            .as_ref()
            .map(UserPoolId::as_str)
            .unwrap_or_default();
        let request_id = match error {
            GatewayError::Backend(BackendError::Cognito(failure)) => failure.request_id.as_deref(),
            GatewayError::Backend(BackendError::BadResponse { request_id, .. }) => {
                request_id.as_deref()
            }
            _ => None,
        };
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let detail = match (error, request) {
            (GatewayError::Backend(BackendError::Cognito(failure)), _)
                if !message_is_aws_text(&failure.code) =>
            {
                format!(
                    "Cognito returned {} (HTTP {}); its message ({} characters) is not logged: it may quote the request",
                    failure.code,
                    failure.http_status,
                    failure.message.chars().count()
                )
            }
            // Backend errors are scrubbed where the call ran; this is for the rest, and belt and
            // braces.
            (_, Some(request)) => request.scrub(&error.to_string()),
            (_, None) => error.to_string(),
        };
        if let Some(attributes) = rejection_attributes(error) {
            metrics().rejections.add(1, &attributes);
        }
        let (trace_id, span_id) = current_ids().unwrap_or_default();
        if is_server_side(status.code()) {
            tracing::error!(
                code,
                trace_id,
                span_id,
                reason,
                caller,
                user_pool_id = pool,
                cognito_request_id = request_id.unwrap_or_default(),
                duration_ms,
                error = detail,
                "ResetUserPassword",
            );
        } else {
            tracing::info!(
                code,
                trace_id,
                span_id,
                reason,
                caller,
                user_pool_id = pool,
                cognito_request_id = request_id.unwrap_or_default(),
                duration_ms,
                "ResetUserPassword",
            );
        }
        status
    }
}
