//! The real SDK against wire-level fakes: wiremock answers in Cognito's own format (`__type`,
//! `message`, `x-amzn-ErrorType`, `x-amzn-RequestId`, HTTP 400/500) and counts every send, which is
//! what proves the retry rules.

use std::{collections::HashMap, time::Duration};

use cognito_gateway::{config::CognitoSettings, domain::Region};
use serde_json::{Value, json};
use tonic::Code;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method},
};

use crate::{
    helpers::{details, error_info, eventually, raw, with_deadline},
    kit::{
        app::{request, sdk_backend, spawn_app, spawn_app_with, test_config, test_settings},
        binary::start_binary_against,
        fake_cognito::{TARGET, cognito_error, cognito_ok, fake_cognito, sends},
    },
};

const POOL: &str = "us-east-1_Wire1";
const RESET_PATH: &str = "/cognitogateway.v1.UserAdminService/ResetUserPassword";

/// One row of the error table, end to end.
async fn row(
    http: u16,
    exception: &str,
    message: &str,
    code: Code,
    reason: &str,
    expected_sends: usize,
) {
    let server = fake_cognito(cognito_error(http, exception, message, "rid-row")).await;
    let app = spawn_app(&server.uri()).await;
    let status = app.reset(POOL, "someone").await.unwrap_err();
    assert_eq!(status.code(), code, "{exception}: {status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, reason, "{exception}");
    assert_eq!(info.domain, "cognito-idp.amazonaws.com");
    assert_eq!(info.metadata["exception"], exception);
    assert_eq!(info.metadata["awsRequestId"], "rid-row");
    assert_eq!(info.metadata["userPoolId"], POOL);
    assert!(
        !info.metadata.values().any(|v| v.contains("someone")),
        "no username in metadata"
    );
    assert_eq!(
        details(&status).request_info().unwrap().request_id,
        "rid-row"
    );
    assert_eq!(sends(&server).await, expected_sends, "{exception}: sends");
}

macro_rules! rows {
    ($($name:ident: $http:expr, $exception:expr, $message:expr => $code:ident, $reason:expr, sends $sends:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                row($http, $exception, $message, Code::$code, $reason, $sends).await;
            }
        )*
    };
}

rows! {
    row_no_verified_contact: 400, "InvalidParameterException",
        "Cannot reset password for the user as there is no registered/verified email or phone_number"
        => FailedPrecondition, "NO_VERIFIED_CONTACT", sends 1;
    row_invalid_parameter: 400, "InvalidParameterException", "1 validation error detected"
        => InvalidArgument, "INVALID_PARAMETER", sends 1;
    row_resource_not_found: 400, "ResourceNotFoundException", "User pool us-east-1_Wire1 does not exist."
        => NotFound, "USER_POOL_NOT_FOUND", sends 1;
    row_user_not_found: 400, "UserNotFoundException", "User does not exist."
        => NotFound, "USER_NOT_FOUND", sends 1;
    row_not_authorized: 400, "NotAuthorizedException", "User is disabled."
        => FailedPrecondition, "USER_NOT_RESETTABLE", sends 1;
    // Throttling certainly did not reset anyone: it is retried, up to max_attempts (3) sends.
    row_too_many_requests: 400, "TooManyRequestsException", "Rate exceeded"
        => ResourceExhausted, "COGNITO_THROTTLED", sends 3;
    // The SDK's default would retry this; a retry could send the user another code.
    row_limit_exceeded: 400, "LimitExceededException", "Attempt limit exceeded, please try after some time."
        => ResourceExhausted, "ATTEMPT_LIMIT_EXCEEDED", sends 1;
    row_user_lambda_validation: 400, "UserLambdaValidationException", "CustomMessage failed"
        => FailedPrecondition, "LAMBDA_VALIDATION_FAILED", sends 1;
    row_unexpected_lambda: 400, "UnexpectedLambdaException", "boom"
        => Internal, "LAMBDA_FAILED", sends 1;
    row_invalid_lambda_response: 400, "InvalidLambdaResponseException", "bad"
        => Internal, "LAMBDA_INVALID_RESPONSE", sends 1;
    row_sms_role_access_policy: 400, "InvalidSmsRoleAccessPolicyException", "m"
        => FailedPrecondition, "SMS_ROLE_MISCONFIGURED", sends 1;
    row_sms_role_trust: 400, "InvalidSmsRoleTrustRelationshipException", "m"
        => FailedPrecondition, "SMS_ROLE_MISCONFIGURED", sends 1;
    row_email_role_access_policy: 400, "InvalidEmailRoleAccessPolicyException", "m"
        => FailedPrecondition, "EMAIL_ROLE_MISCONFIGURED", sends 1;
    row_operation_not_enabled: 400, "OperationNotEnabledException", "m"
        => Unimplemented, "OPERATION_NOT_ENABLED", sends 1;
    // HTTP 500: the outcome is unknown, so it is never re-sent (the SDK's default sends 3 times).
    row_internal_error: 500, "InternalErrorException", "Internal error"
        => Unknown, "RESET_OUTCOME_UNKNOWN", sends 1;
    row_unrecognized_client: 400, "UnrecognizedClientException", "The security token included in the request is invalid."
        => Internal, "BACKEND_REJECTED_CREDENTIALS", sends 1;
    row_access_denied: 400, "AccessDeniedException", "not authorized to perform cognito-idp:AdminResetUserPassword"
        => Internal, "BACKEND_REJECTED_CREDENTIALS", sends 1;
    row_unknown_code: 400, "SomethingNewException", "m"
        => Internal, "UNKNOWN_COGNITO_ERROR", sends 1;
}

#[tokio::test]
async fn success_returns_cognitos_request_id() {
    let server = fake_cognito(cognito_ok("rid-ok-1")).await;
    let app = spawn_app(&server.uri()).await;
    let response = app.reset(POOL, "zoë").await.unwrap();
    assert_eq!(response.cognito_request_id, "rid-ok-1");

    let sent = crate::kit::fake_cognito::resets(&server).await;
    assert_eq!(sent.len(), 1);
    let body: Value = sent[0].body_json().unwrap();
    assert_eq!(body["UserPoolId"], POOL);
    assert_eq!(body["Username"], "zoë");
    assert!(
        body.get("ClientMetadata").is_none(),
        "no metadata, no field: {body}"
    );
    assert_eq!(
        sent[0].headers["content-type"].to_str().unwrap(),
        "application/x-amz-json-1.1"
    );
}

#[tokio::test]
async fn client_metadata_reaches_cognito() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;
    let mut req = request(POOL, "alice");
    req.client_metadata = HashMap::from([("tenant".to_owned(), "acme".to_owned())]);
    app.reset_request(req).await.unwrap();
    let sent = crate::kit::fake_cognito::resets(&server).await;
    let body: Value = sent[0].body_json().unwrap();
    assert_eq!(body["ClientMetadata"], json!({ "tenant": "acme" }));
}

#[tokio::test]
async fn error_type_header_wins_and_namespaces_are_stripped() {
    // Cognito's body may carry a namespaced __type; the header, with its ":http..." suffix, wins.
    let reply = ResponseTemplate::new(400)
        .insert_header("x-amzn-RequestId", "rid-ns")
        .insert_header("x-amzn-ErrorType", "UserNotFoundException:http://internal.amazon.com/x/")
        .set_body_raw(
            r#"{"__type":"com.amazonaws.cognito#ResourceNotFoundException","message":"User does not exist."}"#,
            "application/x-amz-json-1.1",
        );
    let server = fake_cognito(reply).await;
    let app = spawn_app(&server.uri()).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(error_info(&status).reason, "USER_NOT_FOUND");
}

#[tokio::test]
async fn throttling_then_success_is_retried_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("x-amz-target", TARGET))
        .respond_with(cognito_error(
            400,
            "TooManyRequestsException",
            "Rate exceeded",
            "rid-t",
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(header("x-amz-target", TARGET))
        .respond_with(cognito_ok("rid-second"))
        .with_priority(2)
        .mount(&server)
        .await;
    let app = spawn_app(&server.uri()).await;
    let response = app.reset(POOL, "alice").await.unwrap();
    assert_eq!(response.cognito_request_id, "rid-second");
    assert_eq!(sends(&server).await, 2);
}

#[tokio::test]
async fn throttling_retries_draw_on_the_backend_guard() {
    let server = fake_cognito(cognito_error(
        400,
        "TooManyRequestsException",
        "Rate exceeded",
        "rid-t",
    ))
    .await;
    let mut config = test_config();
    // Room for two requests (refilled at 1/s, far slower than this test): the call's own send and
    // one retry. max_attempts (3) would allow a third send.
    config.limits.backend_rps = 1;
    config.limits.backend_burst = 2;
    let backend = sdk_backend(&server.uri(), config.cognito.clone()).await;
    let app = spawn_app_with(config, backend).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "COGNITO_THROTTLED");
    assert_eq!(
        sends(&server).await,
        2,
        "the retry without budget was not sent"
    );
    // And the next call finds the budget spent: refused before sending.
    let status = app.reset(POOL, "bob").await.unwrap_err();
    assert_eq!(error_info(&status).reason, "RATE_LIMITED");
    assert_eq!(sends(&server).await, 2);
}

#[tokio::test]
async fn a_slow_cognito_is_an_unknown_outcome_sent_once() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(30))).await;
    let mut config = test_config();
    config.cognito = CognitoSettings {
        operation_timeout: Duration::from_millis(300),
        ..test_settings()
    };
    let backend = sdk_backend(&server.uri(), config.cognito.clone()).await;
    let app = spawn_app_with(config, backend).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "RESET_OUTCOME_UNKNOWN");
    assert_eq!(info.domain, "cognito-gateway");
    assert_eq!(info.metadata["exception"], "Timeout");
    assert_eq!(
        sends(&server).await,
        1,
        "a timed-out reset may have happened: never re-sent"
    );
}

#[tokio::test]
async fn the_callers_deadline_gives_deadline_exceeded_not_cancelled() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(30))).await;
    let app = spawn_app(&server.uri()).await;
    // A raw client, so that what is asserted is the server's answer, not the client's own timer.
    let message = prost::Message::encode_to_vec(&request(POOL, "alice"));
    let reply = raw::call(app.addr, RESET_PATH, &message, &[("grpc-timeout", "300m")]).await;
    let status = reply.status.expect("a gRPC status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "DEADLINE_EXCEEDED");
    assert_eq!(
        info.metadata["userPoolId"], POOL,
        "the handler, not the layer, ended the call"
    );
    assert_eq!(sends(&server).await, 1);
}

#[tokio::test]
async fn a_caller_that_joined_a_reset_is_not_told_nothing_was_sent() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(30))).await;
    let app = spawn_app(&server.uri()).await;
    let mut first = app.client.clone();
    let leader =
        tokio::spawn(async move { first.reset_user_password(request(POOL, "alice")).await });
    eventually("the first call reaches Cognito", || async {
        sends(&server).await == 1
    })
    .await;
    // The second caller shares that reset, and its deadline runs out first.
    let message = prost::Message::encode_to_vec(&request(POOL, "alice"));
    let reply = raw::call(app.addr, RESET_PATH, &message, &[("grpc-timeout", "300m")]).await;
    let status = reply.status.expect("a gRPC status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        !status.message().contains("no reset happened"),
        "the shared reset may go out: {status:?}"
    );
    assert_eq!(sends(&server).await, 1);
    leader.abort();
}

#[tokio::test]
async fn no_retry_is_sent_after_the_callers_deadline() {
    // Throttled, after 1 s: by then the caller's 200 ms are long gone, so the retry max_attempts
    // would allow (two more sends) is not made.
    let throttled = cognito_error(400, "TooManyRequestsException", "Rate exceeded", "rid-t")
        .set_delay(Duration::from_secs(1));
    let server = fake_cognito(throttled).await;
    let app = spawn_app(&server.uri()).await;
    let status = app
        .reset_request(with_deadline(
            request(POOL, "alice"),
            Duration::from_millis(200),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // A second caller for the same user joins the call still in flight and gets its outcome:
    // the throttling, after the one send.
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(
        error_info(&status).reason,
        "COGNITO_THROTTLED",
        "{status:?}"
    );
    assert!(!error_info(&status).metadata.is_empty());
    assert_eq!(sends(&server).await, 1);
}

#[tokio::test]
async fn a_tonic_client_with_a_deadline_sees_deadline_exceeded() {
    // tonic's client enforces the deadline itself (reporting CANCELLED if its timer wins); the
    // server answers early enough for its DEADLINE_EXCEEDED to arrive first: 100 ms early for a
    // 2 s deadline, room enough on a loaded machine.
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(30))).await;
    let app = spawn_app(&server.uri()).await;
    let status = app
        .reset_request(with_deadline(
            request(POOL, "alice"),
            Duration::from_secs(2),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn a_deadline_too_short_for_any_work_is_still_deadline_exceeded() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(30))).await;
    let app = spawn_app(&server.uri()).await;
    let message = prost::Message::encode_to_vec(&request(POOL, "alice"));
    // A raw client: tonic's own would enforce the deadline itself and report its own CANCELLED
    // before the server could answer. This asks what the server says.
    for timeout in ["1n", "1u", "1m", "3m", "5m", "20m"] {
        let reply = raw::call(app.addr, RESET_PATH, &message, &[("grpc-timeout", timeout)]).await;
        let status = reply.status.expect("a gRPC status");
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "{timeout}: {status:?}"
        );
        assert_eq!(error_info(&status).reason, "DEADLINE_EXCEEDED", "{timeout}");
    }
}

#[tokio::test]
async fn invalid_requests_never_reach_cognito() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;
    let mut req = request("not a pool", "");
    req.client_metadata = HashMap::from([(String::new(), "v".to_owned())]);
    let status = app.reset_request(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let info = error_info(&status);
    assert_eq!(info.reason, "INVALID_PARAMETER");
    assert_eq!(info.domain, "cognito-gateway");
    let fields: Vec<_> = details(&status)
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["user_pool_id", "username", "client_metadata"]);

    let too_long = "x".repeat(129);
    let status = app.reset(POOL, &too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        error_info(&status).metadata["userPoolId"],
        POOL,
        "the valid pool id is kept"
    );
    assert_eq!(sends(&server).await, 0);
}

#[tokio::test]
async fn the_region_comes_from_the_pool_id() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;
    app.reset("eu-west-1_Pool1", "alice").await.unwrap();
    app.reset("ap-southeast-2_Pool2", "alice").await.unwrap();
    let sent = crate::kit::fake_cognito::resets(&server).await;
    let scopes: Vec<_> = sent
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        scopes[0].contains("/eu-west-1/cognito-idp/aws4_request"),
        "{}",
        scopes[0]
    );
    assert!(
        scopes[1].contains("/ap-southeast-2/cognito-idp/aws4_request"),
        "{}",
        scopes[1]
    );
}

#[tokio::test]
async fn regions_outside_the_allow_list_are_refused_before_sending() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.cognito = CognitoSettings {
        allowed_regions: Some([Region::parse("eu-west-1".to_owned()).unwrap()].into()),
        ..test_settings()
    };
    // One Cognito call's worth of budget: refused calls must not spend it.
    config.limits.backend_rps = 1;
    config.limits.backend_burst = 1;
    let backend = sdk_backend(&server.uri(), config.cognito.clone()).await;
    let app = spawn_app_with(config, backend).await;
    for user in ["alice", "bob", "carol"] {
        let status = app.reset("us-east-1_Pool1", user).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(error_info(&status).reason, "REGION_NOT_ALLOWED");
    }
    assert_eq!(sends(&server).await, 0);
    app.reset("eu-west-1_Pool1", "alice").await.unwrap();
    assert_eq!(sends(&server).await, 1);
}

#[tokio::test]
async fn an_unparseable_error_reply_is_unknown_and_sent_once() {
    let reply = ResponseTemplate::new(400)
        .insert_header("x-amzn-RequestId", "rid-garbage")
        .set_body_raw("<html>proxy error</html>", "text/html");
    let server = fake_cognito(reply).await;
    let app = spawn_app(&server.uri()).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let info = error_info(&status);
    assert!(
        ["BACKEND_BAD_RESPONSE", "UNKNOWN_COGNITO_ERROR"].contains(&info.reason.as_str()),
        "{info:?}"
    );
    assert_eq!(sends(&server).await, 1);
}

#[tokio::test]
async fn concurrent_resets_each_reach_cognito_exactly_once() {
    const CALLS: usize = 64;
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;
    let calls = (0..CALLS).map(|i| {
        let app = &app;
        async move { app.reset(POOL, &format!("user-{i}")).await }
    });
    let results = futures_join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let sent = crate::kit::fake_cognito::resets(&server).await;
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for request in &sent {
        let body: Value = request.body_json().unwrap();
        *per_user
            .entry(body["Username"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_user.len(), CALLS);
    assert!(per_user.values().all(|&n| n == 1), "{per_user:?}");
}

/// `join_all` without the futures crate: spawn nothing, poll all in one task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("all ready")).collect()
}

/// A TCP server that accepts connections, reads what is sent, and closes without answering: the
/// request was written, its outcome unknown. Counts the connections it saw.
async fn black_hole() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Read the request head, then hang up mid-exchange. Only resets are counted
                // (lookups such as DescribeUserPool send nobody anything).
                let read = socket.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..read]).contains(TARGET) {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn a_connection_lost_after_sending_is_an_unknown_outcome_not_retried() {
    let (endpoint, accepted) = black_hole().await;
    let app = spawn_app(&endpoint).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(error_info(&status).reason, "RESET_OUTCOME_UNKNOWN");
    assert_eq!(error_info(&status).metadata["exception"], "ConnectionLost");
    assert!(
        details(&status).retry_info().is_none(),
        "no cooldown in these tests: nothing to wait for, and no invitation to retry at once"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the request may have reached Cognito: sent once"
    );
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_with_retry_info() {
    // A port that was free a moment ago: connecting is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app(&format!("http://127.0.0.1:{port}")).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).reason, "BACKEND_UNREACHABLE");
    assert!(details(&status).retry_info().is_some());
    assert!(
        !status.message().contains(&port.to_string()),
        "opaque: {}",
        status.message()
    );
}

#[tokio::test]
async fn no_credentials_is_backend_misconfigured_and_nothing_is_sent() {
    use aws_config::BehaviorVersion;
    use cognito_gateway::cognito::SdkBackend;
    let server = fake_cognito(cognito_ok("rid")).await;
    let base = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(server.uri())
        .no_credentials()
        .load()
        .await;
    let app = spawn_app_with(test_config(), SdkBackend::new(base, test_settings())).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(error_info(&status).reason, "BACKEND_MISCONFIGURED");
    assert_eq!(sends(&server).await, 0);
}

/// A Lambda whose error (of the exception named) quotes everything it was given, as a careless one
/// might.
/// Cognito's error `.0` with HTTP status `.1`, whose message quotes the username and metadata.
struct EchoingLambda(&'static str, u16);

impl wiremock::Respond for EchoingLambda {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let quoted = format!(
            "CustomMessage failed for {} with {}",
            body["Username"], body["ClientMetadata"]
        );
        cognito_error(self.1, self.0, &quoted, "rid-lambda").set_delay(Duration::from_millis(300))
    }
}

#[tokio::test]
async fn a_shared_call_never_hands_one_callers_metadata_to_another() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("x-amz-target", TARGET))
        .respond_with(EchoingLambda("UserLambdaValidationException", 400))
        .mount(&server)
        .await;
    let app = spawn_app(&server.uri()).await;
    let with_metadata = |value: &str| {
        let mut r = request(POOL, "Jane.Doe@example.com");
        r.client_metadata = HashMap::from([("tenant".to_owned(), value.to_owned())]);
        r
    };
    // Both calls are for the same user, so they share one send (the reply takes 300 ms): one
    // caller's metadata goes to Cognito, and the Lambda quotes it to both.
    let (mut a, mut b) = (app.client.clone(), app.client.clone());
    let (first, second) = tokio::join!(
        a.reset_user_password(with_metadata("first-secret")),
        b.reset_user_password(with_metadata("second-secret")),
    );
    assert_eq!(sends(&server).await, 1);
    for status in [first.unwrap_err(), second.unwrap_err()] {
        assert_eq!(error_info(&status).reason, "LAMBDA_VALIDATION_FAILED");
        let everything = format!("{} {:?}", status.message(), details(&status));
        assert!(everything.contains("<metadata>"), "{everything}");
        for secret in ["first-secret", "second-secret", "Jane.Doe", "jane.doe"] {
            assert!(!everything.contains(secret), "{secret} in {everything}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_lambda_says_stays_out_of_the_log() {
    // A Lambda's failure, and a server error Cognito might send some day: its outcome is
    // unknown, and its message as likely to quote the request.
    for (exception, http, reason, code) in [
        (
            "UnexpectedLambdaException",
            400,
            "LAMBDA_FAILED",
            Code::Internal,
        ),
        (
            "SomeFutureException",
            503,
            "RESET_OUTCOME_UNKNOWN",
            Code::Unknown,
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(header("x-amz-target", TARGET))
            .respond_with(EchoingLambda(exception, http))
            .mount(&server)
            .await;
        let (mut gateway, _files) =
            start_binary_against(&server.uri(), &[("RUST_LOG", "trace")]).await;
        let mut client =
            cognito_gateway::proto::user_admin_service_client::UserAdminServiceClient::connect(
                format!("http://{}", gateway.addr),
            )
            .await
            .unwrap();
        let mut sent = request(POOL, "Zoë.Doe");
        // A short value and a key: scrubbing lets both through, the log must not.
        sent.client_metadata = HashMap::from([("tenantKey".to_owned(), "q7".to_owned())]);
        let status = client.reset_user_password(sent).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(error_info(&status).reason, reason);
        let log = tokio::task::spawn_blocking(move || {
            assert_eq!(gateway.terminate(), Some(0));
            gateway.rest_of_log()
        })
        .await
        .unwrap();
        let line = log
            .iter()
            .find(|l| l.contains(reason))
            .unwrap_or_else(|| panic!("the call's log line: {log:?}"));
        assert!(line.contains("is not logged"), "{line}");
        for secret in ["Doe", "tenantKey", "q7"] {
            assert!(
                !log.iter().any(|l| l.contains(secret)),
                "{exception}: {secret} logged: {log:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_mid_reset_is_logged_and_so_is_the_reset() {
    let server = fake_cognito(cognito_ok("rid-orphan").set_delay(Duration::from_secs(1))).await;
    let (mut gateway, _files) = start_binary_against(&server.uri(), &[]).await;
    let mut client =
        cognito_gateway::proto::user_admin_service_client::UserAdminServiceClient::connect(
            format!("http://{}", gateway.addr),
        )
        .await
        .unwrap();
    {
        // The caller hangs up once Cognito has the request (it answers a second later).
        let call = client.reset_user_password(request(POOL, "alice"));
        tokio::pin!(call);
        while sends(&server).await == 0 {
            tokio::select! {
                answer = &mut call => panic!("answered before Cognito did: {answer:?}"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
    // Shutdown waits for the reset, which nobody is waiting for any more, to end.
    let log = tokio::task::spawn_blocking(move || {
        assert_eq!(gateway.terminate(), Some(0));
        gateway.rest_of_log()
    })
    .await
    .unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("\"code\":\"CANCELLED\"") && l.contains("ResetUserPassword")),
        "the abandoned call's line: {log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("after all its callers had gone")
                && l.contains("\"outcome\":\"OK\"")
                && l.contains("rid-orphan")),
        "the reset's outcome: {log:?}"
    );
    assert_eq!(sends(&server).await, 1);
}
