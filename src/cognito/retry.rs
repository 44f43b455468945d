//! What may be retried. Each send of `AdminResetUserPassword` may e-mail the user a new code, so
//! only what certainly did not reach Cognito's business logic is retried: throttling and failures to
//! connect, within the caller's deadline and the backend guard's budget.

use std::{
    cell::Cell,
    sync::{Arc, OnceLock},
};

use aws_sdk_cognitoidentityprovider::{
    config::retry::{ClassifyRetry, RetryAction, RetryConfig},
    error::ProvideErrorMetadata,
    operation::admin_reset_user_password::AdminResetUserPasswordError,
};
use aws_smithy_runtime_api::client::{
    dns::ResolveDnsError,
    interceptors::context::{
        Error as InterceptorError, FinalizerInterceptorContextMut, InterceptorContext,
    },
    orchestrator::OrchestratorError,
    retries::{RequestAttempts, classifiers::RetryClassifierPriority},
};
use tokio::time::Instant;

use crate::rate::RateLimit;

tokio::task_local! {
    /// The call being made: its retry window, and whether its last attempt may be retried. Set by
    /// [`RetryGate`] once per attempt; read by [`SafeRetryClassifier`], which the SDK runs more
    /// than once per attempt and which therefore only reads.
    pub(super) static RETRY: RetryState;
}

pub(super) struct RetryState {
    pub(super) until: Option<Instant>,
    pub(super) refused: Cell<bool>,
}

/// Decides, once per failed attempt that could be retried, whether the retry may go out:
/// - only if it can be sent before the caller's deadline (`CallBounds::retry_until`), counting the
///   longest backoff the SDK could wait first;
/// - after throttling, only if the backend guard has room: the retry is one more request against
///   the quota that just refused one.
#[derive(Debug, Clone)]
pub(super) struct RetryGate {
    /// Set once the gateway hands the backend its budget, which may be after the region's client
    /// was built (regions are connected at start); unset, retries are bounded by `max_attempts`.
    pub(super) budget: Arc<OnceLock<Arc<RateLimit>>>,
}

impl aws_sdk_cognitoidentityprovider::config::Intercept for RetryGate {
    fn name(&self) -> &'static str {
        "cognito-gateway: retries within the caller's deadline and the backend guard"
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _runtime_components: &aws_sdk_cognitoidentityprovider::config::RuntimeComponents,
        cfg: &mut aws_sdk_cognitoidentityprovider::config::ConfigBag,
    ) -> Result<(), aws_sdk_cognitoidentityprovider::error::BoxError> {
        let Some(Err(error)) = context.output_or_error() else {
            return Ok(());
        };
        let throttled = is_throttling(error);
        if !throttled && !is_connect_failure_error(error) {
            return Ok(());
        }
        let attempts = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let Some(retry) = cfg.load::<RetryConfig>() else {
            return Ok(());
        };
        // The last attempt has no retry to decide on, or to pay for.
        if attempts >= retry.max_attempts() {
            return Ok(());
        }
        // The SDK waits up to initial_backoff * 2^(attempts - 1), at most max_backoff.
        let backoff = retry
            .initial_backoff()
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(retry.max_backoff());
        let _outside_a_call = RETRY.try_with(|state| {
            let too_late = state
                .until
                .is_some_and(|until| Instant::now() + backoff >= until);
            let no_budget = || throttled && self.budget.get().is_some_and(|b| b.check().is_err());
            state.refused.set(too_late || no_budget());
        });
        Ok(())
    }
}

/// Whether the attempt failed to connect (see [`is_connect_failure`]).
fn is_connect_failure_error(error: &OrchestratorError<InterceptorError>) -> bool {
    error
        .as_connector_error()
        .is_some_and(|connector| is_connect_failure(connector))
}

fn is_throttling(error: &OrchestratorError<InterceptorError>) -> bool {
    error
        .as_operation_error()
        .and_then(|e| e.downcast_ref::<AdminResetUserPasswordError>())
        .and_then(|e| e.code())
        == Some("TooManyRequestsException")
}

/// Whether a connector error happened before the request could be written: connection refused,
/// DNS, TLS handshake, connect timeout. Only these are certain not to have reached Cognito.
pub(super) fn is_connect_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<ResolveDnsError>() {
            return true;
        }
        if error
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The SDK's retry decision, replaced. It runs after the SDK's own classifiers and has the last word:
/// retry throttling and connect failures, forbid everything else. The SDK's defaults would also
/// retry HTTP 500, `LimitExceededException` and timeouts, each of which may send the user another
/// code.
///
/// A retry is not made when [`RetryGate`] refused it (too late for the caller, or no budget).
///
/// The SDK runs its classifiers more than once per attempt (connection poisoning asks too), so this
/// one decides from what it is shown and changes nothing.
#[derive(Debug, Clone, Copy)]
pub struct SafeRetryClassifier;

impl ClassifyRetry for SafeRetryClassifier {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let throttled = is_throttling(error);
        if !throttled && !is_connect_failure_error(error) {
            return RetryAction::RetryForbidden;
        }
        if RETRY.try_with(|state| state.refused.get()).unwrap_or(false) {
            RetryAction::RetryForbidden
        } else if throttled {
            RetryAction::throttling_error()
        } else {
            RetryAction::transient_error()
        }
    }

    fn name(&self) -> &'static str {
        "cognito-gateway: retry only what certainly did not happen"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}
