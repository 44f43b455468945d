//! One test per row of the table (docs/api.md §3).

use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

use super::*;
use crate::domain::FieldViolation;

fn pool() -> UserPoolId {
    UserPoolId::parse("eu-west-1_AbC123".into()).unwrap()
}

fn cognito(code: &str, message: &str) -> GatewayError {
    GatewayError::Backend(BackendError::Cognito(CognitoFailure {
        code: code.into(),
        message: message.into(),
        request_id: Some("req-1".into()),
        http_status: if code == "InternalErrorException" {
            500
        } else {
            400
        },
    }))
}

/// Converts and checks what every status must have: exactly one ErrorInfo, the domain, the metadata.
fn check(error: &GatewayError, code: Code, reason: &str) -> (Status, ErrorDetails) {
    let status = to_status(error, Some(&pool()));
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("every status has an ErrorInfo");
    assert_eq!(info.reason, reason);
    assert_eq!(
        info.metadata.get("userPoolId").map(String::as_str),
        Some("eu-west-1_AbC123")
    );
    let from_cognito = matches!(error, GatewayError::Backend(BackendError::Cognito(_)));
    if from_cognito {
        assert_eq!(info.domain, COGNITO_DOMAIN);
        assert_eq!(
            info.metadata.get("awsRequestId").map(String::as_str),
            Some("req-1")
        );
        assert_eq!(
            details.request_info().map(|r| r.request_id.as_str()),
            Some("req-1")
        );
        assert!(info.metadata.contains_key("exception"));
    } else {
        assert_eq!(info.domain, GATEWAY_DOMAIN);
    }
    assert!(
        info.reason
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_'),
        "reason {} is UPPER_SNAKE_CASE",
        info.reason
    );
    for key in info.metadata.keys() {
        assert!(
            key.chars().next().is_some_and(|c| c.is_ascii_lowercase()),
            "{key} is lowerCamelCase"
        );
        assert!(!key.contains('_'), "{key} is lowerCamelCase");
    }
    (status, details)
}

#[test]
fn invalid_parameter_without_verified_contact_is_a_precondition() {
    let error = cognito(
        "InvalidParameterException",
        "Cannot reset password for the user as there is no registered/verified email or phone_number",
    );
    let (status, details) = check(&error, Code::FailedPrecondition, "NO_VERIFIED_CONTACT");
    assert!(
        status.message().contains("verified email"),
        "caller-side: Cognito's message"
    );
    let violation = &details.precondition_failure().unwrap().violations[0];
    assert_eq!(violation.r#type, "USER_CONTACT");
}

#[test]
fn other_invalid_parameter_is_invalid_argument_with_the_field() {
    let error = cognito(
        "InvalidParameterException",
        "1 validation error detected: Value at 'clientMetadata' failed to satisfy constraint",
    );
    let (_, details) = check(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["client_metadata"]);
    // Where the field cannot be told, there is no BadRequest rather than a guess.
    let (_, details) = check(
        &cognito("InvalidParameterException", "something odd"),
        Code::InvalidArgument,
        "INVALID_PARAMETER",
    );
    assert!(details.bad_request().is_none());
}

#[test]
fn resource_not_found_is_the_pool() {
    let (_, details) = check(
        &cognito(
            "ResourceNotFoundException",
            "User pool eu-west-1_AbC123 does not exist.",
        ),
        Code::NotFound,
        "USER_POOL_NOT_FOUND",
    );
    let resource = details.resource_info().unwrap();
    assert_eq!(resource.resource_name, "eu-west-1_AbC123");
    assert!(resource.resource_type.ends_with("UserPool"));
}

#[test]
fn user_not_found_names_no_user() {
    let (_, details) = check(
        &cognito("UserNotFoundException", "User does not exist."),
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    let resource = details.resource_info().unwrap();
    assert_eq!(
        resource.resource_name, "",
        "the username is never in a status"
    );
    assert!(resource.resource_type.ends_with("User"));
}

#[test]
fn not_authorized_is_a_user_state() {
    check(
        &cognito("NotAuthorizedException", "User is disabled."),
        Code::FailedPrecondition,
        "USER_NOT_RESETTABLE",
    );
}

#[test]
fn too_many_requests_is_throttling_with_retry_and_quota() {
    let (_, details) = check(
        &cognito("TooManyRequestsException", "Rate exceeded"),
        Code::ResourceExhausted,
        "COGNITO_THROTTLED",
    );
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(1))
    );
    assert!(details.quota_failure().is_some());
}

#[test]
fn limit_exceeded_has_quota_but_no_short_retry() {
    let (_, details) = check(
        &cognito(
            "LimitExceededException",
            "Attempt limit exceeded, please try after some time.",
        ),
        Code::ResourceExhausted,
        "ATTEMPT_LIMIT_EXCEEDED",
    );
    assert!(details.quota_failure().is_some());
    assert!(details.retry_info().is_none());
}

#[test]
fn user_lambda_validation_is_a_precondition() {
    check(
        &cognito("UserLambdaValidationException", "PreX failed"),
        Code::FailedPrecondition,
        "LAMBDA_VALIDATION_FAILED",
    );
}

#[test]
fn unexpected_lambda_is_internal_and_opaque() {
    let (status, _) = check(
        &cognito("UnexpectedLambdaException", "secret stack trace"),
        Code::Internal,
        "LAMBDA_FAILED",
    );
    assert!(
        !status.message().contains("secret"),
        "server-side messages are opaque"
    );
    assert!(
        status.message().contains("req-1"),
        "but carry the request id"
    );
}

#[test]
fn invalid_lambda_response_is_internal() {
    let (status, _) = check(
        &cognito("InvalidLambdaResponseException", "secret"),
        Code::Internal,
        "LAMBDA_INVALID_RESPONSE",
    );
    assert!(!status.message().contains("secret"));
}

#[test]
fn sms_role_access_policy_is_misconfiguration() {
    check(
        &cognito("InvalidSmsRoleAccessPolicyException", "m"),
        Code::FailedPrecondition,
        "SMS_ROLE_MISCONFIGURED",
    );
}

#[test]
fn sms_role_trust_relationship_is_misconfiguration() {
    check(
        &cognito("InvalidSmsRoleTrustRelationshipException", "m"),
        Code::FailedPrecondition,
        "SMS_ROLE_MISCONFIGURED",
    );
}

#[test]
fn email_role_access_policy_is_misconfiguration() {
    check(
        &cognito("InvalidEmailRoleAccessPolicyException", "m"),
        Code::FailedPrecondition,
        "EMAIL_ROLE_MISCONFIGURED",
    );
}

#[test]
fn operation_not_enabled_is_unimplemented() {
    check(
        &cognito("OperationNotEnabledException", "m"),
        Code::Unimplemented,
        "OPERATION_NOT_ENABLED",
    );
}

#[test]
fn internal_error_is_an_unknown_outcome() {
    let (status, _) = check(
        &cognito("InternalErrorException", "secret"),
        Code::Unknown,
        "RESET_OUTCOME_UNKNOWN",
    );
    assert!(!status.message().contains("secret"));
    // Any HTTP 5xx is, whatever it names.
    let mut other = cognito("ServiceUnavailable", "m");
    if let GatewayError::Backend(BackendError::Cognito(failure)) = &mut other {
        failure.http_status = 503;
    }
    check(&other, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
}

#[test]
fn an_unknown_outcome_says_until_when_nothing_is_sent_and_whether_it_was_shared() {
    let first = GatewayError::OutcomeUnknown {
        exception: "InternalErrorException".into(),
        request_id: Some("req-1".into()),
        from_cognito: true,
        retry_after: Duration::from_secs(30),
        deduplicated: false,
        cause: None,
    };
    let status = to_status(&first, Some(&pool()));
    assert_eq!(status.code(), Code::Unknown);
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("RESET_OUTCOME_UNKNOWN", COGNITO_DOMAIN)
    );
    assert_eq!(info.metadata["exception"], "InternalErrorException");
    assert_eq!(info.metadata["awsRequestId"], "req-1");
    assert!(!info.metadata.contains_key("deduplicated"));
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(30))
    );
    assert_eq!(details.request_info().unwrap().request_id, "req-1");

    let repeat = GatewayError::OutcomeUnknown {
        exception: "Timeout".into(),
        request_id: None,
        from_cognito: false,
        retry_after: Duration::from_secs(12),
        deduplicated: true,
        cause: None,
    };
    let (_, details) = check(&repeat, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
    let info = details.error_info().unwrap();
    assert_eq!(info.metadata["deduplicated"], "true");
    assert_eq!(info.metadata["exception"], "Timeout");
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(12))
    );
}

#[test]
fn a_reused_request_id_is_a_failed_precondition() {
    check(
        &GatewayError::RequestIdReused,
        Code::FailedPrecondition,
        "REQUEST_ID_REUSED",
    );
}

#[test]
fn credential_codes_are_backend_rejected_credentials() {
    for code in [
        "AccessDeniedException",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
    ] {
        let (_, details) = check(
            &cognito(code, "m"),
            Code::Internal,
            "BACKEND_REJECTED_CREDENTIALS",
        );
        assert_eq!(
            details
                .error_info()
                .unwrap()
                .metadata
                .get("exception")
                .map(String::as_str),
            Some(code)
        );
    }
}

#[test]
fn any_other_code_is_unknown_with_its_name() {
    let (_, details) = check(
        &cognito("BrandNewException", "m"),
        Code::Internal,
        "UNKNOWN_COGNITO_ERROR",
    );
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("exception")
            .map(String::as_str),
        Some("BrandNewException")
    );
}

#[test]
fn backend_timeout_is_an_unknown_outcome() {
    let error = GatewayError::Backend(BackendError::Timeout(Duration::from_secs(5)));
    let (status, _) = check(&error, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
    assert!(
        status.message().contains("may or may not"),
        "{}",
        status.message()
    );
}

#[test]
fn caller_deadline_is_deadline_exceeded() {
    check(
        &GatewayError::DeadlineExceeded,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
    );
    let (unsent, _) = check(
        &GatewayError::DeadlineExceededUnsent,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
    );
    assert!(unsent.message().contains("no reset happened"), "{unsent:?}");
}

#[test]
fn dispatch_failure_is_unreachable_with_retry() {
    let error = GatewayError::Backend(BackendError::Unreachable(
        "connection refused (10.0.0.1)".into(),
    ));
    let (status, details) = check(&error, Code::Unavailable, "BACKEND_UNREACHABLE");
    assert!(details.retry_info().is_some());
    assert!(!status.message().contains("10.0.0.1"), "opaque");
}

#[test]
fn construction_failure_is_misconfigured() {
    let error = GatewayError::Backend(BackendError::Misconfigured("no credentials".into()));
    let (status, _) = check(&error, Code::Internal, "BACKEND_MISCONFIGURED");
    assert!(!status.message().contains("credentials"), "opaque");
}

#[test]
fn response_error_is_bad_response_with_request_id() {
    let error = GatewayError::Backend(BackendError::BadResponse {
        request_id: Some("req-9".into()),
        detail: "expected '{'".into(),
    });
    let (_, details) = check(&error, Code::Internal, "BACKEND_BAD_RESPONSE");
    assert_eq!(details.request_info().unwrap().request_id, "req-9");
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("awsRequestId")
            .map(String::as_str),
        Some("req-9")
    );
}

#[test]
fn edge_validation_lists_every_field() {
    let error = GatewayError::InvalidRequest(vec![
        FieldViolation {
            field: "username",
            description: "must not be empty".into(),
        },
        FieldViolation {
            field: "client_metadata",
            description: "keys must not be empty".into(),
        },
    ]);
    let (_, details) = check(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["username", "client_metadata"]);
}

#[test]
fn region_not_allowed_points_at_the_pool_id() {
    let error = GatewayError::Backend(BackendError::RegionNotAllowed {
        region: "eu-west-1".into(),
        why: "x".into(),
    });
    let (_, details) = check(&error, Code::InvalidArgument, "REGION_NOT_ALLOWED");
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "user_pool_id"
    );
}

#[test]
fn server_side_codes_follow_the_otel_list() {
    for code in [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ] {
        assert!(is_server_side(code), "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::FailedPrecondition,
        Code::ResourceExhausted,
        Code::PermissionDenied,
        Code::Unauthenticated,
    ] {
        assert!(!is_server_side(code), "{code:?}");
    }
}

#[test]
fn no_credentials_is_unauthenticated_and_says_nothing_more() {
    let (status, _) = check(
        &GatewayError::Unauthenticated("unknown token"),
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert!(
        !status.message().contains("token"),
        "which check failed is for the log only"
    );
}

#[test]
fn a_caller_outside_its_pools_is_denied_and_named() {
    let error = GatewayError::CallerNotAllowed {
        caller: "billing".into(),
    };
    let (_, details) = check(&error, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("caller")
            .map(String::as_str),
        Some("billing")
    );
}

#[test]
fn a_gateway_limit_says_which_and_exactly_when() {
    let error = GatewayError::RateLimited {
        limit: Limit::Caller("billing".into()),
        wait: Duration::from_millis(137),
    };
    let (_, details) = check(&error, Code::ResourceExhausted, "RATE_LIMITED");
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(Duration::from_millis(137))
    );
    assert_eq!(
        details.quota_failure().unwrap().violations[0].subject,
        "caller:billing"
    );
    let error = GatewayError::RateLimited {
        limit: Limit::Backend,
        wait: Duration::from_millis(40),
    };
    let (_, details) = check(&error, Code::ResourceExhausted, "RATE_LIMITED");
    assert_eq!(
        details.quota_failure().unwrap().violations[0].subject,
        "backend"
    );
}

#[test]
fn overload_is_unavailable_with_a_short_retry() {
    let (_, details) = check(&GatewayError::Overloaded, Code::Unavailable, "OVERLOADED");
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(OVERLOAD_RETRY_DELAY)
    );
}

#[test]
fn a_connection_lost_after_sending_is_an_unknown_outcome() {
    let error = GatewayError::Backend(BackendError::ConnectionLost("reset by peer".into()));
    let (status, details) = check(&error, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
    assert!(details.retry_info().is_none());
    assert!(status.message().contains("may or may not"));
}

#[test]
fn tonics_own_refusals_get_a_row_too() {
    let protocol = |code, message: &str| GatewayError::Protocol {
        code,
        message: message.into(),
    };
    check(
        &protocol(Code::Internal, "failed to decode Protobuf message"),
        Code::InvalidArgument,
        "MALFORMED_REQUEST",
    );
    check(
        &protocol(Code::OutOfRange, "Error, decoded message length too large"),
        Code::ResourceExhausted,
        "MESSAGE_TOO_LARGE",
    );
    check(
        &protocol(Code::Unimplemented, ""),
        Code::Unimplemented,
        "UNKNOWN_METHOD",
    );
    check(
        &protocol(Code::NotFound, "service not found"),
        Code::NotFound,
        "PROTOCOL_ERROR",
    );
}

#[test]
fn every_exception_the_backend_knows_has_a_row_of_its_own() {
    for exception in crate::cognito::RESET_EXCEPTIONS
        .iter()
        .chain(crate::cognito::CREDENTIAL_EXCEPTIONS)
    {
        let status = to_status(&cognito(exception, "m"), Some(&pool()));
        let reason = status
            .get_error_details()
            .error_info()
            .unwrap()
            .reason
            .clone();
        assert_ne!(reason, "UNKNOWN_COGNITO_ERROR", "{exception}");
    }
}

#[test]
fn an_unavailable_fleet_store_is_unavailable_with_retry() {
    let error = GatewayError::StoreUnavailable(crate::gate::StoreError("timed out".into()));
    let (status, details) = check(&error, Code::Unavailable, "FLEET_STORE_UNAVAILABLE");
    assert!(details.retry_info().is_some());
    assert!(
        !status.message().contains("timed out"),
        "opaque: {status:?}"
    );
}

/// A refusal answered from [`fixed_answer`] reads exactly as the status built for it each time
/// would (the same headers, so the same code, message and details), whichever check failed: the
/// answer is built once, for the first error of its kind, and compared with each one's own.
#[test]
fn fixed_answers_are_the_statuses_they_stand_for() {
    for error in [
        GatewayError::Unauthenticated("no credentials"),
        GatewayError::Unauthenticated("unknown token"),
        GatewayError::Unauthenticated("token for another audience"),
        GatewayError::Overloaded,
    ] {
        let answer = fixed_answer(&error, None, None).expect("a fixed answer");
        // With a pool or a trace id to name, the status is the call's own.
        assert!(fixed_answer(&error, Some(&pool()), None).is_none());
        assert!(fixed_answer(&error, None, Some("4bf92f3577b34da6a3ce929d0e0e4736")).is_none());
        let built = to_status(&error, None);
        assert_eq!(answer.code, built.code(), "{error:?}");
        let fixed = answer.response::<()>();
        assert_eq!(
            fixed.headers(),
            built.clone().into_http::<()>().headers(),
            "{error:?}"
        );
        let decoded = Status::from_header_map(fixed.headers()).expect("a status in the headers");
        assert_eq!(decoded.message(), built.message());
    }
    // Statuses that name the caller, the limit or the wait are built each time; so is the
    // shutdown's, which a reset meets after its pool is known.
    for error in [
        GatewayError::CallerNotAllowed {
            caller: "web".into(),
        },
        GatewayError::Draining,
        GatewayError::RateLimited {
            limit: Limit::Backend,
            wait: Duration::from_millis(200),
        },
        GatewayError::DeadlineExceeded,
    ] {
        assert!(fixed_answer(&error, None, None).is_none(), "{error:?}");
    }
}
