//! The gRPC service: authorize -> validate -> the user gate -> Cognito -> answer. Failures leave
//! as typed errors ([`GatewayError`]); the rescue layer turns them into statuses and writes the
//! call's log line from what the handler records in the call's [`CallRecord`].

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    auth::Caller,
    cognito::{Backend, BackendError, CallBounds, ResetOutcome, client_span},
    config::UserIdentity,
    domain::{ResetRequest, UserPoolId},
    gate::{Answer, CallerRate, FlightResult, GateError, Outcome, Ticket, UserGate},
    identity::Identities,
    middleware::{CallRecord, ResetRecord, deadline::CallerDeadline, rescue::placeholder},
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_server::UserAdminService,
    },
    status::GatewayError,
};

/// What one Cognito call gives everyone waiting on it.
pub(crate) type ResetResult = Result<ResetOutcome, GatewayError>;

/// The per-user gate, as the service uses it.
pub type ResetGate = UserGate<ResetResult>;

/// `cognitogateway.v1.UserAdminService`.
#[derive(Debug)]
pub struct UserAdmin<B> {
    backend: Arc<B>,
    identities: Identities<B>,
    gate: Arc<ResetGate>,
    operation_timeout: Duration,
    cooldown: Duration,
    /// Whether the gate's store keeps each caller's rate (a fleet's does; in one process the
    /// admission layer is the whole of it).
    store_keeps_caller_rates: bool,
    draining: Arc<Draining>,
}

/// When a shutdown must be over, once one has begun: a reset that could not end before then is
/// not started (a reset cut off mid-call leaves its outcome unknown and unrecorded).
#[derive(Debug, Default)]
pub(crate) struct Draining(std::sync::OnceLock<Instant>);

impl Draining {
    /// The shutdown has begun, and must be over by `until`.
    pub(crate) fn begin(&self, until: Instant) {
        let _ = self.0.set(until);
    }

    /// Whether a call that may take `longest` can still end in time.
    fn admits(&self, longest: Duration) -> bool {
        self.0
            .get()
            .is_none_or(|until| Instant::now() + longest <= *until)
    }
}

impl<B: Backend> UserAdmin<B> {
    /// A service calling `backend` through `gate`, which knows users by their identity in
    /// `user_identity`'s sense. Each Cognito call is bounded by `operation_timeout`; each caller's
    /// wait, by their own deadline as well. An outcome is remembered for `cooldown`.
    pub fn new(
        backend: Arc<B>,
        user_identity: UserIdentity,
        gate: Arc<ResetGate>,
        operation_timeout: Duration,
        cooldown: Duration,
    ) -> Self {
        Self {
            identities: Identities::new(Arc::clone(&backend), user_identity),
            backend,
            gate,
            operation_timeout,
            cooldown,
            store_keeps_caller_rates: false,
            draining: Arc::default(),
        }
    }

    /// Starts no reset that could not end before a shutdown must be over.
    #[must_use]
    pub(crate) fn with_draining(mut self, draining: Arc<Draining>) -> Self {
        self.draining = draining;
        self
    }

    /// Hands each caller's rate to the gate's store as well (a fleet shares it).
    #[must_use]
    pub fn with_shared_caller_rates(mut self) -> Self {
        self.store_keeps_caller_rates = true;
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
        // The pool id is checked once, with the rest of the request; only a request refused for
        // another field has it checked again, for its record.
        let pool_id = message.user_pool_id.clone();
        let request = match ResetRequest::parse(
            message.user_pool_id,
            message.username,
            message.client_metadata,
            message.request_id,
        ) {
            Ok(request) => request,
            Err(violations) => {
                if let Ok(pool) = UserPoolId::parse(pool_id) {
                    tracing::Span::current().record("cognito.user_pool_id", pool.as_str());
                    record.set_pool(pool);
                }
                return Err(GatewayError::InvalidRequest(violations));
            }
        };
        tracing::Span::current().record("cognito.user_pool_id", request.user_pool_id.as_str());
        record.set_pool(request.user_pool_id.clone());
        // A pool the backend cannot serve (its region) is refused before anything is spent.
        self.backend
            .serves(&request.user_pool_id)
            .map_err(GatewayError::Backend)?;

        // The caller's deadline bounds the caller's wait and the Cognito call's retries, not the
        // call itself: a call another caller may share, and whose outcome decides whether a retry
        // sends the user a second code, runs to its end (at most `operation_timeout`), so that its
        // outcome is remembered and the retry deduplicated. A call with no time left at all does
        // not start one.
        let remaining = deadline.map(|d| d.remaining());
        if remaining == Some(Duration::ZERO) {
            return Err(GatewayError::DeadlineExceededUnsent);
        }
        let retry_until = remaining.map(|remaining| Instant::now() + remaining);
        let gated = self.reset_once(&caller, record, Arc::new(request), retry_until);
        let answer = match remaining {
            Some(remaining) => tokio::time::timeout(remaining, gated)
                .await
                .unwrap_or(Err(GatewayError::DeadlineExceeded))?,
            None => gated.await?,
        };
        // How a deduplicated answer came, for the metric.
        let kind = match &answer {
            Answer::Flown { deduplicated, .. } => deduplicated.then_some("in_flight"),
            Answer::Remembered {
                outcome: Outcome::Sent { .. },
                ..
            } => Some("cooldown"),
            Answer::Remembered { .. } => Some("unknown_outcome"),
        };
        if let Some(kind) = kind {
            record.set_deduplicated(kind);
        }
        match answer {
            Answer::Flown {
                result,
                deduplicated,
            } => match (result.remembered(), result) {
                (_, Ok(outcome)) => Ok(ResetRecord {
                    cognito_request_id: outcome.request_id,
                    deduplicated,
                }),
                (
                    Some(Outcome::Unknown {
                        exception,
                        request_id,
                        from_cognito,
                    }),
                    Err(GatewayError::Backend(cause)),
                ) => Err(GatewayError::OutcomeUnknown {
                    exception,
                    request_id,
                    from_cognito,
                    retry_after: self.cooldown,
                    deduplicated,
                    cause: Some(cause),
                }),
                (_, Err(error)) => Err(error),
            },
            Answer::Remembered {
                outcome: Outcome::Sent { request_id },
                ..
            } => Ok(ResetRecord {
                cognito_request_id: request_id,
                deduplicated: true,
            }),
            Answer::Remembered {
                outcome:
                    Outcome::Unknown {
                        exception,
                        request_id,
                        from_cognito,
                    },
                left,
            } => Err(GatewayError::OutcomeUnknown {
                exception,
                request_id,
                from_cognito,
                retry_after: left,
                deduplicated: true,
                cause: None,
            }),
        }
    }

    /// The reset, through the user gate: only a call that must reach Cognito, and can, spends the
    /// budgets for Cognito calls.
    async fn reset_once(
        &self,
        caller: &Caller,
        record: &CallRecord,
        request: Arc<ResetRequest>,
        retry_until: Option<Instant>,
    ) -> Result<Answer<ResetResult>, GatewayError> {
        let bounds = CallBounds {
            timeout: self.operation_timeout,
            retry_until,
        };
        let identity = self
            .identities
            .resolve(&request.user_pool_id, &request.username, &|| {
                record.set_reached_cognito();
            })
            .await
            .map_err(|error| GatewayError::Lookup(error.scrubbed(&request)))?;
        // A shutdown that could cut a reset off starts nothing: no claim, no budget spent.
        if !self.draining.admits(self.operation_timeout) {
            return Err(GatewayError::Draining);
        }
        let ticket = Ticket {
            user: self.gate.user_key(&request.user_pool_id, &identity),
            request: request
                .request_id
                .as_ref()
                .map(|id| self.gate.request_key(&caller.name, id)),
            pool: request.user_pool_id.clone(),
            caller: self.store_keeps_caller_rates.then(|| CallerRate {
                name: Arc::clone(&caller.name),
                rate: caller.rate.rate(),
                burst: caller.rate.burst(),
            }),
            // The gate makes this call's own.
            claim: 0,
        };
        let start = || {
            // Asked again where the reset would go out: a call that waited on another's may lead
            // only now, and its reset must still end before the shutdown's grace does. Refused,
            // it sent nothing, and its claim is released.
            let send = self.draining.admits(self.operation_timeout).then(|| {
                record.set_reached_cognito();
                // The CLIENT span is made here, in the caller's span, and goes with the call (into
                // a task of its own, if the caller stops waiting).
                let span = client_span("AdminResetUserPassword");
                let backend = Arc::clone(&self.backend);
                let request = Arc::clone(&request);
                async move {
                    backend
                        .reset_user_password(&request, bounds)
                        .await
                        .map_err(|error| GatewayError::Backend(error.scrubbed(&request)))
                }
                .instrument(span)
            });
            async move {
                match send {
                    Some(send) => send.await,
                    None => Err(GatewayError::Draining),
                }
            }
        };
        // A call waiting on another's may see the reset it asked for go out: its caller, should
        // its deadline run out, is not told that nothing was sent.
        let waits = || record.set_reached_cognito();
        self.gate
            .reset_noting(ticket, waits, start)
            .await
            .map_err(|error| match error {
                GateError::Limited { limit, wait } => GatewayError::RateLimited { limit, wait },
                GateError::RequestReused => GatewayError::RequestIdReused,
                GateError::Store(error) => GatewayError::StoreUnavailable(error),
                // The task making the call ended without a result, maybe after sending: the gate
                // remembers it as unknown, and so is it told.
                GateError::Lost => GatewayError::OutcomeUnknown {
                    exception: "Panic".into(),
                    request_id: None,
                    from_cognito: false,
                    retry_after: self.cooldown,
                    deduplicated: false,
                    cause: None,
                },
            })
    }
}

impl FlightResult for ResetResult {
    fn remembered(&self) -> Option<Outcome> {
        match self {
            Ok(outcome) => Some(Outcome::Sent {
                request_id: outcome.request_id.clone(),
            }),
            // The reset may have happened: repeats must not send another.
            Err(GatewayError::Backend(error)) if error.outcome_unknown() => {
                Some(Outcome::Unknown {
                    exception: error.exception().to_owned(),
                    request_id: error.request_id().map(str::to_owned),
                    from_cognito: matches!(error, BackendError::Cognito(_)),
                })
            }
            // A definite failure is not remembered: nothing happened, so the next call may try
            // again.
            Err(_) => None,
        }
    }

    fn unanswered(&self) {
        let (outcome, request_id) = match self {
            Ok(outcome) => ("OK", outcome.request_id.as_deref()),
            Err(GatewayError::Backend(error)) => (error.exception(), error.request_id()),
            Err(_) => ("no answer from Cognito", None),
        };
        tracing::info!(
            outcome,
            cognito_request_id = request_id.unwrap_or_default(),
            "a reset ended after all its callers had gone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_admits_only_resets_that_can_end_before_it_must_be_over() {
        let draining = Draining::default();
        assert!(
            draining.admits(Duration::from_secs(3600)),
            "no shutdown yet"
        );
        draining.begin(Instant::now() + Duration::from_secs(10));
        assert!(draining.admits(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            !draining.admits(Duration::from_secs(5)),
            "it could be cut off"
        );
    }
}
