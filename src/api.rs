//! The gRPC service: authorize -> validate -> the user gate -> Cognito -> answer. Failures leave
//! as typed errors ([`GatewayError`]); the rescue layer turns them into statuses and writes the
//! call's log line from what the handler records in the call's [`CallRecord`].

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, field::Empty};

use crate::{
    cognito::{Backend, BackendError, CallBounds, ResetOutcome},
    domain::{ResetRequest, UserPoolId},
    gate::{Answer, FlightResult, GateError, Outcome, UserGate},
    middleware::{CallRecord, ResetRecord, deadline::CallerDeadline, rescue::placeholder},
    policy::Caller,
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_server::UserAdminService,
    },
    rate::{Limit, PoolRateLimit, RateLimit},
    status::GatewayError,
};

/// What one Cognito call gives everyone waiting on it.
pub type ResetResult = Result<ResetOutcome, GatewayError>;

/// The per-user gate, as the service uses it.
pub type ResetGate = UserGate<ResetResult, GatewayError>;

/// `cognitogateway.v1.UserAdminService`.
#[derive(Debug)]
pub struct UserAdmin<B> {
    backend: Arc<B>,
    gate: Arc<ResetGate>,
    backend_guard: Arc<RateLimit>,
    pool_limit: Option<Arc<PoolRateLimit>>,
    operation_timeout: Duration,
}

impl<B> UserAdmin<B> {
    /// A service calling `backend` through `gate` and `backend_guard`. Each Cognito call is bounded
    /// by `operation_timeout`; each caller's wait, by their own deadline as well.
    pub fn new(
        backend: Arc<B>,
        gate: Arc<ResetGate>,
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

#[tonic::async_trait]
impl<B: Backend> UserAdminService for UserAdmin<B> {
    async fn reset_user_password(
        &self,
        request: Request<ResetUserPasswordRequest>,
    ) -> Result<Response<ResetUserPasswordResponse>, Status> {
        let deadline = request.extensions().get::<CallerDeadline>().copied();
        let caller = request.extensions().get::<Arc<Caller>>().cloned();
        // Served without the layers (a test's bare server), the record goes nowhere.
        let record = request
            .extensions()
            .get::<Arc<CallRecord>>()
            .cloned()
            .unwrap_or_default();
        let message = request.into_inner();
        let reset = self.reset(deadline, caller, &record, message).await;
        match reset {
            Ok(reset) => {
                tracing::Span::current().record("cognito_gateway.deduplicated", reset.deduplicated);
                let response = ResetUserPasswordResponse {
                    cognito_request_id: reset.cognito_request_id.clone().unwrap_or_default(),
                    deduplicated: reset.deduplicated,
                };
                record.set_reset(reset);
                Ok(Response::new(response))
            }
            Err(error) => Err(placeholder(error)),
        }
    }
}

impl<B: Backend> UserAdmin<B> {
    async fn reset(
        &self,
        deadline: Option<CallerDeadline>,
        caller: Option<Arc<Caller>>,
        record: &CallRecord,
        message: ResetUserPasswordRequest,
    ) -> Result<ResetRecord, GatewayError> {
        // Fail closed: the authentication layer always sets a caller for this path.
        let Some(caller) = caller else {
            return Err(GatewayError::Unauthenticated(
                "no caller identity reached the service",
            ));
        };
        // Authorization comes before anything that could tell whether the pool exists.
        if !caller.may_reset_in(&message.user_pool_id) {
            if let Ok(pool) = UserPoolId::parse(message.user_pool_id) {
                record.set_pool(pool);
            }
            return Err(GatewayError::CallerNotAllowed {
                caller: Arc::clone(&caller.name),
            });
        }
        let pool_id = UserPoolId::parse(message.user_pool_id.clone());
        if let Ok(pool) = &pool_id {
            record.set_pool(pool.clone());
            tracing::Span::current().record("cognito.user_pool_id", pool.as_str());
        }
        let request = ResetRequest::parse(
            message.user_pool_id,
            message.username,
            message.client_metadata,
        )
        .map_err(GatewayError::InvalidRequest)?;

        // The caller's deadline bounds the caller's wait and the Cognito call's retries, not the
        // call itself: a call another caller may share, and whose outcome decides whether a retry
        // sends the user a second code, runs to its end (at most `operation_timeout`), so that a
        // success is remembered and the retry deduplicated. A call with no time left at all does
        // not start one.
        let remaining = deadline.map(|d| d.remaining());
        if remaining == Some(Duration::ZERO) {
            return Err(GatewayError::DeadlineExceededUnsent);
        }
        let retry_until = remaining.map(|remaining| Instant::now() + remaining);
        let gated = self.reset_once(Arc::new(request), retry_until);
        let answer = match remaining {
            Some(remaining) => tokio::time::timeout(remaining, gated)
                .await
                .unwrap_or(Err(GatewayError::DeadlineExceeded))?,
            None => gated.await?,
        };
        Ok(match answer {
            Answer::Flown {
                result,
                deduplicated,
            } => ResetRecord {
                cognito_request_id: result?.request_id,
                deduplicated,
            },
            Answer::Remembered(Outcome::Sent { request_id }) => ResetRecord {
                cognito_request_id: request_id,
                deduplicated: true,
            },
        })
    }

    /// The reset, through the user gate: only a call that must reach Cognito, and can, spends the
    /// backend guard's budget.
    async fn reset_once(
        &self,
        request: Arc<ResetRequest>,
        retry_until: Option<Instant>,
    ) -> Result<Answer<ResetResult>, GatewayError> {
        let bounds = CallBounds {
            timeout: self.operation_timeout,
            retry_until,
        };
        let key = self.gate.key(&request.user_pool_id, &request.username);
        let start = || {
            self.backend
                .serves(&request.user_pool_id)
                .map_err(GatewayError::Backend)?;
            if let Some(limit) = &self.pool_limit {
                limit.check(&request.user_pool_id).map_err(|wait| {
                    GatewayError::RateLimited {
                        limit: Limit::Pool(request.user_pool_id.clone()),
                        wait,
                    }
                })?;
            }
            self.backend_guard
                .check()
                .map_err(|wait| GatewayError::RateLimited {
                    limit: Limit::Backend,
                    wait,
                })?;
            // The CLIENT span is made here, in the caller's span, and goes with the call into its
            // own task.
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
            let backend = Arc::clone(&self.backend);
            let request = Arc::clone(&request);
            Ok(async move {
                backend
                    .reset_user_password(&request, bounds)
                    .await
                    .map_err(|error| GatewayError::Backend(error.scrubbed(&request)))
            }
            .instrument(span))
        };
        self.gate.reset(key, start).await.map_err(|error| match error {
            GateError::Refused(refusal) => refusal,
            GateError::Store(error) => GatewayError::StoreUnavailable(error),
            GateError::Lost => GatewayError::Backend(BackendError::Misconfigured(
                "the reset task ended without a result".into(),
            )),
        })
    }
}

impl FlightResult for ResetResult {
    fn remembered(&self) -> Option<Outcome> {
        // A failure is not remembered: the reset did not happen (or its outcome is unknown and
        // the caller decides), so the next call may try again.
        self.as_ref().ok().map(|outcome| Outcome::Sent {
            request_id: outcome.request_id.clone(),
        })
    }

    fn unanswered(&self) {
        let (outcome, request_id) = match self {
            Ok(outcome) => ("OK", outcome.request_id.as_deref()),
            Err(GatewayError::Backend(BackendError::Cognito(failure))) => {
                (failure.code.as_str(), failure.request_id.as_deref())
            }
            Err(_) => ("no answer from Cognito", None),
        };
        tracing::info!(
            outcome,
            cognito_request_id = request_id.unwrap_or_default(),
            "a reset ended after all its callers had gone"
        );
    }
}
