//! A request as the caller sends it: arbitrary bytes decoded as a `ResetUserPasswordRequest`, the
//! validators (contract §2), the status of a refusal, and the scrubbing of Cognito's messages by
//! the request that was sent.
#![no_main]

use std::collections::HashMap;

use cognito_gateway::{
    cognito::{BackendError, CognitoFailure},
    domain::ResetRequest,
    fuzzing::{GatewayError, to_status},
    proto::ResetUserPasswordRequest,
};
use cognito_gateway_fuzz::{caller_texts, check_status, contains_ignore_ascii_case};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

/// What scrubbing puts in place of what it cuts out.
const MASKS: [&str; 3] = ["<username>", "<metadata>", "<metadata-key>"];

/// Exceptions whose rows use Cognito's message in their details.
const EXCEPTIONS: [&str; 4] = [
    "InvalidParameterException",
    "UserNotFoundException",
    "ResourceNotFoundException",
    "UserLambdaValidationException",
];

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ResetUserPasswordRequest::decode(data) else {
        return;
    };
    let username = message.username.clone();
    let metadata = message.client_metadata.clone();
    match ResetRequest::parse(
        message.user_pool_id,
        message.username,
        message.client_metadata,
        message.request_id,
    ) {
        Err(violations) => {
            assert!(!violations.is_empty());
            let status = to_status(&GatewayError::InvalidRequest(violations), None);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let details = check_status(&status);
            // A refusal names the fields, never their values. An e-mail-like name cannot be
            // mistaken for the words of the refusal itself.
            if username.contains('@') && username.len() >= 6 {
                assert!(
                    !contains_ignore_ascii_case(&caller_texts(&status, &details), &username),
                    "a refusal echoes the username"
                );
            }
        }
        Ok(request) => {
            // A Cognito message that quotes the request: the fuzzed bytes, with the name and the
            // metadata spliced in as Cognito might echo them.
            let mut text = String::from_utf8_lossy(data).into_owned();
            text.push_str(&format!(
                " Value '{}' at 'username'",
                username.to_ascii_uppercase()
            ));
            for (key, value) in &metadata {
                text.push_str(&format!(" {key}={value};"));
            }
            let scrubbed = request.scrub(&text);
            assert_no_secret(&scrubbed, &username, &metadata);

            let exception = EXCEPTIONS[data.len() % EXCEPTIONS.len()];
            let failure = BackendError::Cognito(CognitoFailure {
                code: exception.to_owned(),
                message: text,
                request_id: None,
                http_status: 400,
            })
            .scrubbed(&request);
            let status = to_status(&GatewayError::Backend(failure), Some(&request.user_pool_id));
            let details = check_status(&status);
            // (As above: a name that cannot be mistaken for the table's own words.)
            if username.contains('@') && username.len() >= 6 {
                let texts = caller_texts(&status, &details);
                for fragment in fragments(&texts) {
                    assert!(
                        !contains_ignore_ascii_case(fragment, &username),
                        "the status echoes the username"
                    );
                }
            }
        }
    }
});

/// The pieces of `text` between the masks: the text of Cognito's message that scrubbing kept.
fn fragments(text: &str) -> Vec<&str> {
    let mut pieces = vec![text];
    for mask in MASKS {
        pieces = pieces.into_iter().flat_map(|p| p.split(mask)).collect();
    }
    pieces
}

/// What scrubbing kept holds neither the username nor any metadata key or value it masks (those
/// of at least 4 characters), in any ASCII case.
fn assert_no_secret(scrubbed: &str, username: &str, metadata: &HashMap<String, String>) {
    for fragment in fragments(scrubbed) {
        assert!(
            !contains_ignore_ascii_case(fragment, username),
            "the username survived scrubbing: {scrubbed:?}"
        );
        for (key, value) in metadata {
            for secret in [key, value] {
                if secret.chars().count() >= 4 {
                    assert!(
                        !contains_ignore_ascii_case(fragment, secret),
                        "metadata survived scrubbing: {scrubbed:?}"
                    );
                }
            }
        }
    }
}
