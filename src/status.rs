//! THE error table (docs/api.md §3): every way a call can fail, turned into one gRPC status with its
//! `ErrorInfo` and the other details. Nothing else in the crate builds an error status.
//!
//! Caller-side statuses may repeat Cognito's message. Server-side ones ([`is_server_side`]) carry an
//! opaque message; the full error goes to the log once, where the call ends.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    cognito::{BackendError, CREDENTIAL_EXCEPTIONS, CognitoFailure},
    domain::{FieldViolation, UserPoolId},
    gate::StoreError,
    rate::Limit,
};

/// `ErrorInfo.domain` of errors Cognito returned.
pub(crate) const COGNITO_DOMAIN: &str = "cognito-idp.amazonaws.com";
/// `ErrorInfo.domain` of errors the gateway raises itself.
pub(crate) const GATEWAY_DOMAIN: &str = "cognito-gateway";

/// How long a caller should wait before retrying what a retry can fix. Cognito's quotas are per
/// second, so a second is the shortest wait that can see a fresh budget.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Whether Cognito's message for `exception` is AWS's own text, fit for the log. A Lambda error's
/// message is whatever the pool's Lambda said, and an unknown exception's anything at all: either
/// may quote the request (username, metadata, even in forms scrubbing cannot recognise), so their
/// text stays out of the logs; the caller-side rows' messages are not logged at all.
pub(crate) fn message_is_aws_text(exception: &str) -> bool {
    matches!(
        exception,
        "InternalErrorException" | "OperationNotEnabledException"
    ) || CREDENTIAL_EXCEPTIONS.contains(&exception)
}

/// The reason of every reset whose outcome is unknown.
const OUTCOME_UNKNOWN: &str = "RESET_OUTCOME_UNKNOWN";

/// How long an overloaded gateway asks callers to wait: load comes and goes in well under a second.
const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(250);

/// Why a call ended without success. Each variant is one or more rows of the table.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No credentials, or credentials that prove nothing. The detail (which check failed) is for the
    /// log only: the caller is never told.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The authenticated caller may not reset users in this pool.
    #[error("caller {caller:?} may not reset users in this pool")]
    CallerNotAllowed {
        /// Who asked.
        caller: Arc<str>,
    },
    /// One of the gateway's limits said no.
    #[error("rate limited by {limit}; retry in {wait:?}")]
    RateLimited {
        /// Which limit.
        limit: Limit,
        /// When a retry can pass it.
        wait: Duration,
    },
    /// Too many calls in flight: shed, not queued.
    #[error("overloaded: too many calls in flight")]
    Overloaded,
    /// The gateway is shutting down, and a reset started now might not end before it stops:
    /// nothing was sent, and another replica (or this one, restarted) will take the retry.
    #[error("shutting down: no reset is started that could be cut off")]
    Draining,
    /// The request broke Cognito's own limits (docs/api.md §2); nothing was sent.
    #[error("invalid request ({} field(s))", .0.len())]
    InvalidRequest(Vec<FieldViolation>),
    /// The caller's `grpc-timeout` ran out.
    #[error("the caller's deadline ran out")]
    DeadlineExceeded,
    /// The caller's `grpc-timeout` had run out before anything was sent to Cognito.
    #[error("the caller's deadline ran out before anything was sent")]
    DeadlineExceededUnsent,
    /// Cognito, or the way to it, failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The reset may or may not have happened (HTTP 5xx, a timeout or a connection lost after the
    /// request was written). It is remembered for the cooldown and never sent again meanwhile
    /// (docs/api.md §5), so the caller is told UNKNOWN, which meshes do not retry, and how long
    /// until a new reset can go out.
    #[error("the reset's outcome is unknown ({exception}){}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    OutcomeUnknown {
        /// What happened: Cognito's exception, or `Timeout`, `ConnectionLost`.
        exception: String,
        /// Cognito's request id, where it sent one.
        request_id: Option<String>,
        /// Whether Cognito answered (else the gateway saw no answer).
        from_cognito: bool,
        /// What remains of the cooldown: no new reset goes out before.
        retry_after: Duration,
        /// Whether this call was answered from another's (or from memory).
        deduplicated: bool,
        /// The failure itself, for the log; `None` when answered from memory.
        cause: Option<BackendError>,
    },
    /// Looking the user up failed (`DescribeUserPool`, `AdminGetUser`): no reset was sent.
    #[error("looking the user up failed: {0}")]
    Lookup(BackendError),
    /// The request id was used before, for another pool or username.
    #[error("request_id was used for another pool or username")]
    RequestIdReused,
    /// The store shared by the fleet could not be asked, and `fleet.on_unavailable = "deny"`.
    #[error(transparent)]
    StoreUnavailable(StoreError),
    /// tonic refused the call before our handler saw it: an undecodable or oversized message, an
    /// unknown method. `code` and `message` are tonic's.
    #[error("refused by the gRPC layer: {message}")]
    Protocol {
        /// tonic's code.
        code: Code,
        /// tonic's message.
        message: String,
    },
}

impl GatewayError {
    /// Cognito's request id, where Cognito answered.
    pub fn cognito_request_id(&self) -> Option<&str> {
        match self {
            Self::Backend(backend) | Self::Lookup(backend) => backend.request_id(),
            Self::OutcomeUnknown { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// The `cognito_gateway.rejections` metric's attributes for calls the gateway refused itself (`None`
/// for everything else): the reason, and for rate limits which one.
pub(crate) fn rejection_attributes(
    error: &GatewayError,
) -> Option<(opentelemetry::KeyValue, Option<opentelemetry::KeyValue>)> {
    use opentelemetry::KeyValue;
    let reason = KeyValue::new("reason", gateway_row(error).reason);
    match error {
        GatewayError::RateLimited { limit, .. } => {
            // Callers are few and configured; pool ids are whatever callers send.
            let label = match limit {
                Limit::Pool(_) => "pool".to_owned(),
                other => other.to_string(),
            };
            Some((reason, Some(KeyValue::new("limit", label))))
        }
        GatewayError::Unauthenticated(_)
        | GatewayError::CallerNotAllowed { .. }
        | GatewayError::Overloaded => Some((reason, None)),
        _ => None,
    }
}

/// Whether `error` refuses the call at the door (the caller's credentials, rights, rate or request,
/// or the gateway's load): anyone can send a flood of these, so they are logged within a quota
/// and their spans are not exported. Failures on the way to Cognito are not refusals.
pub(crate) fn is_refusal(error: &GatewayError) -> bool {
    match error {
        GatewayError::Unauthenticated(_)
        | GatewayError::CallerNotAllowed { .. }
        | GatewayError::RateLimited { .. }
        | GatewayError::Overloaded
        | GatewayError::InvalidRequest(_) => true,
        // What tonic refuses before the handler: an unknown method, an undecodable message.
        GatewayError::Protocol { code, .. } => {
            matches!(code, Code::InvalidArgument | Code::Unimplemented)
        }
        _ => false,
    }
}

/// The `ErrorInfo.reason` of `error`.
pub(crate) fn reason(error: &GatewayError) -> &'static str {
    gateway_row(error).reason
}

/// Whether a status is a server-class failure: opaque to the caller, logged in full, and an error on
/// the span (OpenTelemetry's RPC conventions use the same list).
pub(crate) fn is_server_side(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The extra detail a row carries beside `ErrorInfo` and `RequestInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    NoVerifiedContact,
    FieldsFromMessage,
    PoolResource,
    UserResource,
    Throttled,
    AttemptLimit,
    Retry,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
struct Row {
    code: Code,
    reason: &'static str,
    extra: Extra,
}

const fn row(code: Code, reason: &'static str, extra: Extra) -> Row {
    Row {
        code,
        reason,
        extra,
    }
}

/// The Cognito half of the table, by exception name.
fn cognito_row(failure: &CognitoFailure) -> Row {
    match exception_row(&failure.code, &failure.message) {
        // Any HTTP 5xx, whatever it names: the request reached Cognito's side, and the reset may
        // have happened.
        row if failure.http_status >= 500 => Row {
            code: Code::Unknown,
            reason: OUTCOME_UNKNOWN,
            ..row
        },
        row => row,
    }
}

fn exception_row(exception: &str, message: &str) -> Row {
    use Code::*;
    match exception {
        "InvalidParameterException" if says_no_verified_contact(message) => row(
            FailedPrecondition,
            "NO_VERIFIED_CONTACT",
            Extra::NoVerifiedContact,
        ),
        "InvalidParameterException" => row(
            InvalidArgument,
            "INVALID_PARAMETER",
            Extra::FieldsFromMessage,
        ),
        "ResourceNotFoundException" => row(NotFound, "USER_POOL_NOT_FOUND", Extra::PoolResource),
        "UserNotFoundException" => row(NotFound, "USER_NOT_FOUND", Extra::UserResource),
        "NotAuthorizedException" => row(FailedPrecondition, "USER_NOT_RESETTABLE", Extra::None),
        "TooManyRequestsException" => row(ResourceExhausted, "COGNITO_THROTTLED", Extra::Throttled),
        "LimitExceededException" => row(
            ResourceExhausted,
            "ATTEMPT_LIMIT_EXCEEDED",
            Extra::AttemptLimit,
        ),
        "UserLambdaValidationException" => {
            row(FailedPrecondition, "LAMBDA_VALIDATION_FAILED", Extra::None)
        }
        "UnexpectedLambdaException" => row(Internal, "LAMBDA_FAILED", Extra::None),
        "InvalidLambdaResponseException" => row(Internal, "LAMBDA_INVALID_RESPONSE", Extra::None),
        "InvalidSmsRoleAccessPolicyException" | "InvalidSmsRoleTrustRelationshipException" => {
            row(FailedPrecondition, "SMS_ROLE_MISCONFIGURED", Extra::None)
        }
        "InvalidEmailRoleAccessPolicyException" => {
            row(FailedPrecondition, "EMAIL_ROLE_MISCONFIGURED", Extra::None)
        }
        "OperationNotEnabledException" => row(Unimplemented, "OPERATION_NOT_ENABLED", Extra::None),
        // HTTP 500: the reset may have happened (see `GatewayError::OutcomeUnknown`).
        "InternalErrorException" => row(Unknown, OUTCOME_UNKNOWN, Extra::None),
        code if CREDENTIAL_EXCEPTIONS.contains(&code) => {
            row(Internal, "BACKEND_REJECTED_CREDENTIALS", Extra::None)
        }
        _ => row(Internal, "UNKNOWN_COGNITO_ERROR", Extra::None),
    }
}

/// The gateway half of the table.
fn gateway_row(error: &GatewayError) -> Row {
    use Code::*;
    match error {
        GatewayError::Unauthenticated(_) => row(Unauthenticated, "UNAUTHENTICATED", Extra::None),
        GatewayError::CallerNotAllowed { .. } => {
            row(PermissionDenied, "CALLER_NOT_ALLOWED", Extra::None)
        }
        GatewayError::RateLimited { .. } => row(ResourceExhausted, "RATE_LIMITED", Extra::None),
        GatewayError::Overloaded | GatewayError::Draining => {
            row(Unavailable, "OVERLOADED", Extra::None)
        }
        GatewayError::InvalidRequest(_) => row(InvalidArgument, "INVALID_PARAMETER", Extra::None),
        GatewayError::DeadlineExceeded | GatewayError::DeadlineExceededUnsent => {
            row(DeadlineExceeded, "DEADLINE_EXCEEDED", Extra::None)
        }
        GatewayError::OutcomeUnknown { .. } => row(Unknown, OUTCOME_UNKNOWN, Extra::None),
        // Whatever went wrong, no reset was sent: Cognito's own answers keep their rows, and what
        // would leave a reset's outcome unknown only means Cognito was not reached.
        GatewayError::Lookup(error) if error.outcome_unknown() => {
            row(Unavailable, "BACKEND_UNREACHABLE", Extra::Retry)
        }
        GatewayError::Lookup(error) => gateway_row(&GatewayError::Backend(error.clone())),
        GatewayError::RequestIdReused => row(FailedPrecondition, "REQUEST_ID_REUSED", Extra::None),
        GatewayError::StoreUnavailable(_) => {
            row(Unavailable, "FLEET_STORE_UNAVAILABLE", Extra::Retry)
        }
        GatewayError::Protocol { code, message } => protocol_row(*code, message),
        GatewayError::Backend(backend) => match backend {
            BackendError::Cognito(failure) => cognito_row(failure),
            // After the request was written: the reset may have happened.
            BackendError::Timeout(_) | BackendError::ConnectionLost(_) => {
                row(Unknown, OUTCOME_UNKNOWN, Extra::None)
            }
            BackendError::Unreachable(_) => row(Unavailable, "BACKEND_UNREACHABLE", Extra::Retry),
            BackendError::Misconfigured(_) => row(Internal, "BACKEND_MISCONFIGURED", Extra::None),
            BackendError::BadResponse { .. } => row(Internal, "BACKEND_BAD_RESPONSE", Extra::None),
            BackendError::RegionNotAllowed { .. } => {
                row(InvalidArgument, "REGION_NOT_ALLOWED", Extra::None)
            }
        },
    }
}

/// tonic's own refusals. An undecodable message is the caller's bug, so it is INVALID_ARGUMENT
/// (tonic says INTERNAL, which would send the caller looking at the server); an oversized one is
/// RESOURCE_EXHAUSTED, as gRPC's own status-code guide has it (tonic says OUT_OF_RANGE).
fn protocol_row(code: Code, message: &str) -> Row {
    use Code::*;
    match code {
        Unimplemented => row(Unimplemented, "UNKNOWN_METHOD", Extra::None),
        _ if message.contains("too large") => {
            row(ResourceExhausted, "MESSAGE_TOO_LARGE", Extra::None)
        }
        // An undecodable message, or none at all: the caller's bug.
        Internal if message.contains("decode") || message.contains("Missing request message") => {
            row(InvalidArgument, "MALFORMED_REQUEST", Extra::None)
        }
        _ => row(code, "PROTOCOL_ERROR", Extra::None),
    }
}

/// Cognito says "no registered/verified email or phone_number" with an InvalidParameterException;
/// that is a state of the user, not a bad parameter.
fn says_no_verified_contact(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("verified email") || message.contains("verified phone")
}

/// The status for `error`. `pool` is the validated pool id, where validation got that far.
pub(crate) fn to_status(error: &GatewayError, pool: Option<&UserPoolId>) -> Status {
    let ids = crate::telemetry::current_ids();
    to_status_with(
        error,
        pool,
        ids.as_ref().map(|(trace_id, _)| trace_id.as_str()),
    )
}

/// [`to_status`], given the call's trace id if it is traced.
pub(crate) fn to_status_with(
    error: &GatewayError,
    pool: Option<&UserPoolId>,
    trace_id: Option<&str>,
) -> Status {
    let row = gateway_row(error);
    let cognito = match error {
        // A lookup's answer is Cognito's too (its request id, its exception).
        GatewayError::Backend(BackendError::Cognito(failure))
        | GatewayError::Lookup(BackendError::Cognito(failure)) => Some(failure),
        _ => None,
    };
    let request_id = error.cognito_request_id();

    let mut metadata = HashMap::new();
    if let Some(pool) = pool {
        metadata.insert("userPoolId".to_owned(), pool.as_str().to_owned());
    }
    if let Some(failure) = cognito {
        metadata.insert("exception".to_owned(), failure.code.clone());
    }
    if let GatewayError::CallerNotAllowed { caller } = error {
        metadata.insert("caller".to_owned(), caller.to_string());
    }
    if let Some(id) = request_id {
        metadata.insert("awsRequestId".to_owned(), id.to_owned());
    }
    if let GatewayError::OutcomeUnknown {
        exception,
        deduplicated,
        ..
    } = error
    {
        metadata.insert("exception".to_owned(), exception.clone());
        if *deduplicated {
            metadata.insert("deduplicated".to_owned(), "true".to_owned());
        }
    }
    let from_cognito = match error {
        GatewayError::OutcomeUnknown { from_cognito, .. } => *from_cognito,
        _ => cognito.is_some(),
    };
    let domain = if from_cognito {
        COGNITO_DOMAIN
    } else {
        GATEWAY_DOMAIN
    };
    let mut details = ErrorDetails::with_error_info(row.reason, domain, metadata);
    // RequestInfo whenever there is an id to give: Cognito's request id, else the trace id (when
    // the call is traced), so that support can find the call either way.
    let serving_data = trace_id
        .map(|id| format!("trace_id={id}"))
        .unwrap_or_default();
    if let Some(id) = request_id.or(trace_id) {
        details.set_request_info(id, serving_data);
    }
    if let GatewayError::InvalidRequest(violations) = error {
        for violation in violations {
            details.add_bad_request_violation(violation.field, &violation.description);
        }
    }
    match error {
        GatewayError::Backend(BackendError::RegionNotAllowed { .. }) => {
            details
                .add_bad_request_violation("user_pool_id", "the pool's region is not served here");
        }
        GatewayError::RateLimited { limit, wait } => {
            details.set_retry_info(Some(*wait));
            details.add_quota_failure_violation(limit.to_string(), limit.description());
        }
        GatewayError::Overloaded | GatewayError::Draining => {
            details.set_retry_info(Some(OVERLOAD_RETRY_DELAY));
        }
        // No new reset can go out before the cooldown ends: retrying sooner only repeats this.
        GatewayError::OutcomeUnknown { retry_after, .. } if !retry_after.is_zero() => {
            details.set_retry_info(Some(*retry_after));
        }
        _ => {}
    }
    let cognito_message = cognito.map(|f| f.message.as_str()).unwrap_or_default();
    add_extra(&mut details, row.extra, pool, cognito_message);

    let message = if let GatewayError::Draining = error {
        "the gateway is shutting down; nothing was sent: retry shortly".to_owned()
    } else if let GatewayError::Protocol { message, .. } = error {
        // tonic's messages describe the call's framing, never its contents: safe to pass on.
        message.clone()
    } else if let GatewayError::DeadlineExceededUnsent = error {
        "the call's deadline ran out before anything was sent to Cognito: no reset happened"
            .to_owned()
    } else if is_server_side(row.code) {
        opaque_message(row.reason, request_id)
    } else {
        caller_message(error)
    };
    Status::with_error_details(row.code, message, details)
}

/// The answer [`to_status_with`] would give, built once, for an error whose status is the same
/// every time: a flood of refusals then costs a copy of its headers each, not a status, its
/// details' encoding and their headers (issue 11). These are the refusals made before the request
/// is decoded: UNAUTHENTICATED, and OVERLOADED from load shedding or the request-bytes budget, for
/// a call with no pool and no trace id (a traced call's RequestInfo names its trace). `None` for
/// everything else.
pub(crate) fn fixed_answer(
    error: &GatewayError,
    pool: Option<&UserPoolId>,
    trace_id: Option<&str>,
) -> Option<&'static FixedAnswer> {
    static UNAUTHENTICATED: OnceLock<FixedAnswer> = OnceLock::new();
    static OVERLOADED: OnceLock<FixedAnswer> = OnceLock::new();
    if pool.is_some() || trace_id.is_some() {
        return None;
    }
    let answer = match error {
        // Which check failed is for the log alone: the caller is told the same each time.
        GatewayError::Unauthenticated(_) => &UNAUTHENTICATED,
        GatewayError::Overloaded => &OVERLOADED,
        _ => return None,
    };
    Some(answer.get_or_init(|| FixedAnswer::of(to_status_with(error, None, None))))
}

/// See [`fixed_answer`].
#[derive(Debug)]
pub(crate) struct FixedAnswer {
    /// The status's code.
    pub(crate) code: Code,
    /// The status as `Status::into_http` writes it (trailers-only).
    headers: http::HeaderMap,
}

impl FixedAnswer {
    fn of(status: Status) -> Self {
        Self {
            code: status.code(),
            headers: status.into_http::<()>().into_parts().0.headers,
        }
    }

    /// A response that carries the status (its header values are shared, not copied).
    pub(crate) fn response<B: Default>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::default());
        *response.headers_mut() = self.headers.clone();
        response
    }
}

fn add_extra(details: &mut ErrorDetails, extra: Extra, pool: Option<&UserPoolId>, message: &str) {
    let pool = pool.map(UserPoolId::as_str).unwrap_or_default();
    match extra {
        Extra::None => {}
        Extra::NoVerifiedContact => {
            details.add_precondition_failure_violation(
                "USER_CONTACT",
                "user",
                "the user has no verified email address or phone number to send the code to",
            );
        }
        Extra::FieldsFromMessage => {
            // Cognito's validation messages name the field ("Value at 'username' failed ...").
            let lower = message.to_ascii_lowercase();
            for (wire, field) in [
                ("userpoolid", "user_pool_id"),
                ("username", "username"),
                ("clientmetadata", "client_metadata"),
            ] {
                if lower.contains(wire) {
                    details.add_bad_request_violation(field, message);
                }
            }
        }
        Extra::PoolResource => {
            details.set_resource_info("cognito-idp.amazonaws.com/UserPool", pool, "", message);
        }
        Extra::UserResource => {
            // The username is sensitive: the resource is named by its pool only.
            details.set_resource_info("cognito-idp.amazonaws.com/User", "", pool, message);
        }
        Extra::Throttled => {
            details.set_retry_info(Some(RETRY_DELAY));
            details.add_quota_failure_violation(
                "cognito-idp:AdminResetUserPassword",
                "Cognito's request rate quota (account recovery) was exceeded",
            );
        }
        Extra::AttemptLimit => {
            // Cognito does not say when the per-user limit lifts, and it is minutes, not seconds:
            // no short RetryInfo.
            details.add_quota_failure_violation(
                "user",
                "Cognito's limit on password reset attempts for this user was reached",
            );
        }
        Extra::Retry => {
            details.set_retry_info(Some(RETRY_DELAY));
        }
    }
}

/// The canonical gRPC name, as in the error table (and `rpc.response.status_code`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn caller_message(error: &GatewayError) -> String {
    match error {
        // Never which check failed: that would help whoever is guessing.
        GatewayError::Unauthenticated(_) => "missing or invalid credentials".to_owned(),
        GatewayError::InvalidRequest(violations) => {
            let fields: Vec<_> = violations.iter().map(|v| v.field).collect();
            format!("invalid request: {}", fields.join(", "))
        }
        GatewayError::Backend(BackendError::Cognito(failure))
        | GatewayError::Lookup(BackendError::Cognito(failure))
            if !failure.message.is_empty() =>
        {
            failure.message.clone()
        }
        other => other.to_string(),
    }
}

fn opaque_message(reason: &str, request_id: Option<&str>) -> String {
    let what = match reason {
        "DEADLINE_EXCEEDED" => {
            "the call's deadline ran out before Cognito answered; the reset may or may not have happened"
        }
        OUTCOME_UNKNOWN => {
            "the reset may or may not have happened (Cognito failed, or did not answer, after the request was sent); no new reset goes out for this user before RetryInfo's delay, so do not retry sooner"
        }
        "BACKEND_UNREACHABLE" => "Cognito could not be reached; nothing was sent",
        "OPERATION_NOT_ENABLED" => "Cognito does not allow this operation for this pool or region",
        "LAMBDA_FAILED" | "LAMBDA_INVALID_RESPONSE" => "a Lambda trigger of the user pool failed",
        "OVERLOADED" => "the gateway has too many calls in flight; retry shortly",
        _ => "the gateway could not complete the call",
    };
    match request_id {
        Some(id) => format!("{what} (Cognito request id {id}); details are in the gateway's log"),
        None => format!("{what}; details are in the gateway's log"),
    }
}

#[cfg(test)]
mod tests;
