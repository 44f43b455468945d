//! The Cognito backend: a narrow trait with one method per operation the gateway uses
//! (`AdminResetUserPassword`, and `DescribeUserPool` / `AdminGetUser` to know who a user is), the
//! failures it reports, and its implementation on the official AWS SDK.
//!
//! Two decisions live here:
//! - **Which region** (`cognito/sdk.rs`). A user pool lives in one region and its id says which (`<region>_<id>`).
//!   Asking another region answers a misleading `ResourceNotFoundException`, so the region comes from
//!   the pool id and the SDK's region (`AWS_REGION`) is only a fallback. One client per region is
//!   built on first use and reused.
//! - **Connections kept warm** (`cognito/connect.rs`): a connection to each region's endpoint is
//!   opened ahead of need and renewed before AWS would close it idle, so that a call rarely pays
//!   for DNS, TCP and TLS, and Cognito never sees a request that is not a call.
//! - **What may be retried** (`cognito/retry.rs`). Each send of `AdminResetUserPassword` may e-mail the user a new code,
//!   so [`SafeRetryClassifier`] retries only what certainly did not reach Cognito's business logic:
//!   throttling and failures to connect. Never HTTP 500, `LimitExceededException`, or a timeout
//!   after the request was written. A retry after throttling is another request against Cognito's
//!   quota, so it draws on the backend guard's budget like a call does, and is not made without it.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    domain::{ResetRequest, UserPoolId, Username},
    rate::RateLimit,
};

mod connect;
mod retry;
mod sdk;

pub use retry::SafeRetryClassifier;
pub use sdk::SdkBackend;

/// The exceptions `AdminResetUserPassword` is documented to return (the SDK's typed variants).
pub const RESET_EXCEPTIONS: &[&str] = &[
    "InternalErrorException",
    "InvalidEmailRoleAccessPolicyException",
    "InvalidLambdaResponseException",
    "InvalidParameterException",
    "InvalidSmsRoleAccessPolicyException",
    "InvalidSmsRoleTrustRelationshipException",
    "LimitExceededException",
    "NotAuthorizedException",
    "OperationNotEnabledException",
    "ResourceNotFoundException",
    "TooManyRequestsException",
    "UnexpectedLambdaException",
    "UserLambdaValidationException",
    "UserNotFoundException",
];

/// AWS's exceptions that mean the gateway's own credentials or IAM policy are wrong: any AWS API
/// may return them.
pub const CREDENTIAL_EXCEPTIONS: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "ExpiredTokenException",
    "ExpiredToken",
    "IncompleteSignature",
    "IncompleteSignatureException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
];

/// Whether the backend knows `exception` by name ([`RESET_EXCEPTIONS`], [`CREDENTIAL_EXCEPTIONS`]):
/// metrics label only these, since Cognito's reply, or whatever stands in its place, may name
/// anything.
pub fn is_known_exception(exception: &str) -> bool {
    RESET_EXCEPTIONS.contains(&exception) || CREDENTIAL_EXCEPTIONS.contains(&exception)
}

/// What a successful reset tells the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetOutcome {
    /// Cognito's `x-amzn-RequestId`, where it sent one.
    pub request_id: Option<String>,
}

/// An error Cognito itself returned: its exception name, message and request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CognitoFailure {
    /// The exception name, without namespace (`UserNotFoundException`); `""` when Cognito sent none.
    pub code: String,
    /// Cognito's message, which may quote the request; never logged at a level that leaks it.
    pub message: String,
    /// Cognito's `x-amzn-RequestId`.
    pub request_id: Option<String>,
    /// The HTTP status of the reply.
    pub http_status: u16,
}

/// Why a call to Cognito did not succeed. Sorting into these is the backend's job; turning them into
/// gRPC statuses is [`crate::status`]'s.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Cognito answered with an error.
    #[error("Cognito returned {} (HTTP {}): {}", .0.code, .0.http_status, .0.message)]
    Cognito(CognitoFailure),
    /// No answer in time. The request may have reached Cognito.
    #[error("no answer from Cognito within {0:?}")]
    Timeout(Duration),
    /// Cognito could not be reached (connect refused, DNS, TLS): nothing was sent.
    #[error("Cognito unreachable: {0}")]
    Unreachable(String),
    /// The connection failed after the request was written: the reset may have happened.
    #[error("connection to Cognito lost: {0}")]
    ConnectionLost(String),
    /// The request could not be built: no credentials, no region, bad endpoint.
    #[error("Cognito client misconfigured: {0}")]
    Misconfigured(String),
    /// Cognito's reply could not be understood.
    #[error("unparseable reply from Cognito: {detail}")]
    BadResponse {
        /// The request id, where the reply had one.
        request_id: Option<String>,
        /// What went wrong.
        detail: String,
    },
    /// The pool's region is not one this gateway serves.
    #[error("region {region:?} is not served by this gateway: {why}")]
    RegionNotAllowed {
        /// The region derived from the pool id.
        region: String,
        /// Which rule refused it.
        why: String,
    },
}

impl BackendError {
    /// Cognito's request id, where Cognito answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Cognito(CognitoFailure { request_id, .. })
            | Self::BadResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the request may have reached Cognito and the reset happened, though no answer
    /// says so: HTTP 5xx (above all `InternalErrorException`), a timeout, a connection lost after
    /// the request was written. Such a reset must not be sent again (docs/api.md §3, §5).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Cognito(failure) => failure.http_status >= 500,
            Self::Timeout(_) | Self::ConnectionLost(_) => true,
            _ => false,
        }
    }

    /// What metrics, spans and `ErrorInfo` call this failure: Cognito's exception name, or the
    /// gateway's name for what went wrong on the way.
    pub fn exception(&self) -> &str {
        match self {
            Self::Cognito(failure) if failure.code.is_empty() => "HttpError",
            Self::Cognito(failure) => &failure.code,
            Self::Timeout(_) => "Timeout",
            Self::Unreachable(_) => "Unreachable",
            Self::ConnectionLost(_) => "ConnectionLost",
            Self::Misconfigured(_) => "Misconfigured",
            Self::BadResponse { .. } => "BadResponse",
            Self::RegionNotAllowed { .. } => "RegionNotAllowed",
        }
    }

    /// The error with `request`'s username and metadata cut out of every text it carries. Applied
    /// where the call ran, with the request that was sent: callers sharing the call get (and log)
    /// this version, never another caller's metadata.
    #[must_use]
    pub fn scrubbed(self, request: &ResetRequest) -> Self {
        match self {
            Self::Cognito(failure) => Self::Cognito(CognitoFailure {
                message: request.scrub(&failure.message),
                ..failure
            }),
            Self::Unreachable(text) => Self::Unreachable(request.scrub(&text)),
            Self::ConnectionLost(text) => Self::ConnectionLost(request.scrub(&text)),
            Self::Misconfigured(text) => Self::Misconfigured(request.scrub(&text)),
            Self::BadResponse { request_id, detail } => Self::BadResponse {
                request_id,
                detail: request.scrub(&detail),
            },
            Self::Timeout(_) | Self::RegionNotAllowed { .. } => self,
        }
    }
}

/// The CLIENT span of one call to Cognito (`method`: `AdminResetUserPassword`, ...), under
/// OpenTelemetry's RPC conventions; the backend fills in the rest as it learns it.
pub fn client_span(method: &'static str) -> tracing::Span {
    tracing::info_span!(
        "cognito",
        otel.name = format!("CognitoIdentityProvider/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "aws-api",
        rpc.service = "CognitoIdentityProvider",
        rpc.method = method,
        cloud.region = tracing::field::Empty,
        aws.request_id = tracing::field::Empty,
        aws.exception = tracing::field::Empty,
        aws.attempts = tracing::field::Empty,
    )
}

/// What bounds one call to Cognito.
#[derive(Debug, Clone, Copy)]
pub struct CallBounds {
    /// The whole call, retries included: `cognito.operation_timeout_ms`. Not the caller's
    /// deadline: a call may be shared by several callers, and its outcome decides whether a retry
    /// sends the user a second code, so it runs to its end (each caller waits only as long as
    /// their own deadline allows).
    pub timeout: Duration,
    /// No retry is sent after this: the deadline of the caller whose request it is.
    pub retry_until: Option<Instant>,
}

/// The operations the gateway needs from Cognito. One method per operation used.
pub trait Backend: Send + Sync + 'static {
    /// `AdminResetUserPassword`, within `bounds`.
    fn reset_user_password(
        &self,
        request: &ResetRequest,
        bounds: CallBounds,
    ) -> impl Future<Output = Result<ResetOutcome, BackendError>> + Send;

    /// `DescribeUserPool`: whether the pool compares usernames case-sensitively
    /// (`UsernameConfiguration.CaseSensitive`; pools created without it are). A backend that cannot
    /// tell says they are, and usernames are then compared exactly.
    fn usernames_case_sensitive(
        &self,
        _pool: &UserPoolId,
        _timeout: Duration,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        std::future::ready(Ok(true))
    }

    /// `AdminGetUser`: the `sub` of the user a username or alias names.
    fn user_sub(
        &self,
        _pool: &UserPoolId,
        _username: &Username,
        _timeout: Duration,
    ) -> impl Future<Output = Result<String, BackendError>> + Send {
        std::future::ready(Err(BackendError::Misconfigured(
            "this backend cannot look users up (AdminGetUser)".into(),
        )))
    }

    /// Whether this backend can serve the pool at all, checked before a call spends the backend
    /// guard's budget: a call that cannot be sent must not crowd out one that can.
    fn serves(&self, _pool: &UserPoolId) -> Result<(), BackendError> {
        Ok(())
    }

    /// Gives the backend the gateway-wide budget of Cognito requests (the backend guard), for the
    /// requests it makes beyond a call's first: retries after throttling.
    #[must_use]
    fn with_send_budget(self, _budget: Arc<RateLimit>) -> Self
    where
        Self: Sized,
    {
        self
    }
}
