//! Cognito on the wire, faked with wiremock: replies in Cognito's own format (`__type`, `message`,
//! `x-amzn-ErrorType`, `x-amzn-RequestId`, HTTP 400/500), and a count of what the SDK sent.

use serde_json::json;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method, path},
};

/// The one operation the gateway calls, as the SDK names it on the wire.
pub const TARGET: &str = "AWSCognitoIdentityProviderService.AdminResetUserPassword";

/// A Cognito that answers every AdminResetUserPassword with `reply`. Anything else gets wiremock's
/// 404, so a gateway that ever sent another request would fail the test.
pub async fn fake_cognito(reply: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/"))
        .and(header("x-amz-target", TARGET))
        .respond_with(reply)
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

/// Requests the fake has received so far: the SDK's sends, retries included.
pub async fn sends(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}
