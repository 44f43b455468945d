//! Cognito on the wire, faked with wiremock: replies in Cognito's own format (`__type`, `message`,
//! `x-amzn-ErrorType`, `x-amzn-RequestId`, HTTP 400/500), and a count of what the SDK sent.

use serde_json::json;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path},
};

/// The one operation the gateway calls, as the SDK names it on the wire.
pub const TARGET: &str = "AWSCognitoIdentityProviderService.AdminResetUserPassword";

/// How the gateway learns a pool's case sensitivity.
pub const DESCRIBE: &str = "AWSCognitoIdentityProviderService.DescribeUserPool";

/// A Cognito that answers every AdminResetUserPassword with `reply`, and describes its pools as
/// comparing usernames case-sensitively. Anything else gets wiremock's 404.
pub async fn fake_cognito(reply: ResponseTemplate) -> MockServer {
    fake_cognito_with_pool(reply, true).await
}

/// [`fake_cognito`], with pools whose usernames compare as `case_sensitive` says.
pub async fn fake_cognito_with_pool(reply: ResponseTemplate, case_sensitive: bool) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/"))
        .and(header("x-amz-target", TARGET))
        .respond_with(reply)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/"))
        .and(header("x-amz-target", DESCRIBE))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(
                json!({
                    "UserPool": {
                        "Id": "us-east-1_Fake",
                        "UsernameConfiguration": { "CaseSensitive": case_sensitive },
                    }
                })
                .to_string(),
                "application/x-amz-json-1.1",
            ),
        )
        .mount(&server)
        .await;
    server
}

/// Cognito's answer to a reset that worked: an empty JSON object.
pub fn cognito_ok(request_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("x-amzn-RequestId", request_id)
        .set_body_raw("{}", "application/x-amz-json-1.1")
}

/// A Cognito error reply, as Cognito sends it.
pub fn cognito_error(
    http: u16,
    exception: &str,
    message: &str,
    request_id: &str,
) -> ResponseTemplate {
    ResponseTemplate::new(http)
        .insert_header("x-amzn-RequestId", request_id)
        .insert_header(
            "x-amzn-ErrorType",
            format!(
                "{exception}:http://internal.amazon.com/coral/com.amazonaws.cognito.identity.idp.model/"
            ),
        )
        .set_body_raw(
            json!({ "__type": exception, "message": message }).to_string(),
            "application/x-amz-json-1.1",
        )
}

/// The resets the fake has received so far: the SDK's sends, retries included (lookups such as
/// DescribeUserPool are not sends: they e-mail nobody).
pub async fn sends(server: &MockServer) -> usize {
    resets(server).await.len()
}

/// The resets the fake has received so far, in order.
pub async fn resets(server: &MockServer) -> Vec<wiremock::Request> {
    let requests = server.received_requests().await.unwrap_or_default();
    requests
        .into_iter()
        .filter(|request| {
            request
                .headers
                .get("x-amz-target")
                .is_some_and(|target| target == TARGET)
        })
        .collect()
}
