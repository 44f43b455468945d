//! Cognito's reply, whatever it is: an arbitrary HTTP status, headers and body, read by the real
//! AWS SDK (its deserializers and error parsing, behind an HTTP client that answers every request
//! with the fuzzed reply, no network), sorted by our backend, through the handler and its gate, and
//! turned into a status by the error table.
//!
//! Input: a first line `STATUS` (add ` canonical` for `limits.user_identity = "canonical"`,
//! which asks `AdminGetUser` first), header lines `name: value`, an empty line, the body. Every
//! Cognito request of the call (`DescribeUserPool` or `AdminGetUser`, then
//! `AdminResetUserPassword`) gets that reply.
#![no_main]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use aws_config::BehaviorVersion;
use aws_sdk_cognitoidentityprovider::config::{Credentials, Region};
use aws_smithy_runtime_api::client::{
    http::{HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn},
    orchestrator::{HttpRequest, HttpResponse},
    result::ConnectorError,
};
use aws_smithy_types::body::SdkBody;
use cognito_gateway::{
    MemoryStore, Policy, ResetGate, Times, UserAdmin,
    cognito::SdkBackend,
    config::{AccessConfig, CognitoSettings, LimitSettings, UserIdentity},
    domain::UserPoolId,
    fuzzing::{GatewayError, handler_error, to_status},
    proto::{ResetUserPasswordRequest, user_admin_service_server::UserAdminService as _},
};
use cognito_gateway_fuzz::{caller_texts, check_status, contains_ignore_ascii_case, runtime};
use libfuzzer_sys::fuzz_target;

const POOL: &str = "us-east-1_Fuzz1";
const USERNAME: &str = "Jane.Doe@example.com";
const METADATA_KEY: &str = "tenant_name";
const METADATA_VALUE: &str = "Tenant-42-secret";

/// The reply of the current input.
static REPLY: Mutex<Option<Reply>> = Mutex::new(None);

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// An HTTP connector that answers every request with [`REPLY`], converted as the SDK's own hyper
/// client converts a reply (`aws-smithy-http-client`: a reply it cannot take is a connector
/// error, "other").
#[derive(Debug)]
struct Replay;

impl HttpConnector for Replay {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let reply = REPLY
            .lock()
            .expect("one input at a time")
            .clone()
            .expect("set before the call");
        let mut builder = http::Response::builder().status(reply.status);
        for (name, value) in &reply.headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        let result = match builder.body(SdkBody::from(reply.body)) {
            Ok(response) => HttpResponse::try_from(response)
                .map_err(|err| ConnectorError::other(err.into(), None)),
            // `http` refused the status or a header: no such reply can come off the wire.
            Err(_) => {
                return HttpConnectorFuture::ready(Err(ConnectorError::io("unreadable".into())));
            }
        };
        HttpConnectorFuture::ready(result)
    }
}

fn backend() -> &'static Arc<SdkBackend> {
    static BACKEND: OnceLock<Arc<SdkBackend>> = OnceLock::new();
    BACKEND.get_or_init(|| {
        runtime().block_on(async {
            let base = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http_client_fn(|_, _| SharedHttpConnector::new(Replay)))
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("fuzz", "fuzz", None, None, "fuzz"))
                .load()
                .await;
            // One send per call: a retry would only repeat the same reply, after a backoff.
            let settings = CognitoSettings {
                max_attempts: 1,
                ..CognitoSettings::default()
            };
            Arc::new(SdkBackend::new(base, settings))
        })
    })
}

/// Parses the input; `None` for one that is not shaped like a reply. Header names and values are
/// bytes, as on the wire: not necessarily UTF-8.
fn parse(data: &[u8]) -> Option<(Reply, bool)> {
    let head_end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let body = data.get(head_end + 2..).unwrap_or_default().to_vec();
    let mut lines = data[..head_end].split(|&b| b == b'\n');
    let first = std::str::from_utf8(lines.next()?).ok()?;
    let (status, canonical) = match first.split_once(' ') {
        Some((status, "canonical")) => (status, true),
        Some(_) => return None,
        None => (first, false),
    };
    let status: u16 = status.parse().ok()?;
    let headers = lines
        .map(|line| {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            let name = String::from_utf8_lossy(line[..colon].trim_ascii()).into_owned();
            let value = line.get(colon + 1..).unwrap_or_default().trim_ascii_start();
            (name, value.to_vec())
        })
        .collect();
    Some((
        Reply {
            status,
            headers,
            body,
        },
        canonical,
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some((reply, canonical)) = parse(data) else {
        return;
    };
    *REPLY.lock().expect("one input at a time") = Some(reply.clone());
    let limits = LimitSettings::default();
    let operation_timeout = CognitoSettings::default().operation_timeout;
    let store = MemoryStore::new(
        Times {
            cooldown: limits.user_cooldown,
            lease: operation_timeout,
            request_ttl: limits.request_id_ttl,
        },
        (limits.backend_rps, limits.backend_burst),
        (limits.pool_rps, limits.pool_burst),
    );
    let gate = ResetGate::new([7; 32], Arc::new(store));
    let identity = if canonical {
        UserIdentity::Canonical
    } else {
        UserIdentity::Username
    };
    let admin = UserAdmin::new(
        Arc::clone(backend()),
        identity,
        Arc::new(gate),
        operation_timeout,
        limits.user_cooldown,
    );
    let caller = Policy::build(&AccessConfig::none(), &limits, None)
        .authenticate(None)
        .expect("without authentication everyone is `anonymous`");
    let mut request = tonic::Request::new(ResetUserPasswordRequest {
        user_pool_id: POOL.to_owned(),
        username: USERNAME.to_owned(),
        client_metadata: HashMap::from([(METADATA_KEY.to_owned(), METADATA_VALUE.to_owned())]),
        request_id: String::new(),
    });
    request.extensions_mut().insert(caller);
    let answer = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), admin.reset_user_password(request))
            .await
            .expect("a reply at hand is answered at once")
    });
    let status = match answer {
        Ok(_) => {
            assert!(
                (200..300).contains(&reply.status),
                "OK from an HTTP {} reply",
                reply.status
            );
            return;
        }
        Err(status) => status,
    };
    let error = handler_error(&status).expect("the handler fails with a GatewayError");
    if let GatewayError::OutcomeUnknown { exception, .. } = &error {
        // The gate's task ended without a result: a panic, caught by tokio and hidden otherwise.
        assert_ne!(exception, "Panic", "the call's task panicked");
    }
    let pool = UserPoolId::parse(POOL.to_owned()).expect("a valid pool id");
    let status = to_status(&error, Some(&pool));
    let details = check_status(&status);
    let reason = tonic_types::StatusExt::get_details_error_info(&status)
        .expect("checked above")
        .reason;
    // A reply came: it is never "nothing was sent" or "not configured".
    assert!(
        !["BACKEND_UNREACHABLE", "BACKEND_MISCONFIGURED"].contains(&reason.as_str()),
        "a reply (HTTP {}) was sorted as {reason}: {error}",
        reply.status
    );
    // Cognito's reply reaches the caller only as its parsed message, never whole.
    let message = status.message();
    // (A body with a brace cannot be mistaken for our own words; a header may repeat it where
    // the request id goes.)
    let body = String::from_utf8_lossy(&reply.body);
    let in_a_header = reply
        .headers
        .iter()
        .any(|(_, value)| String::from_utf8_lossy(value).contains(&*body));
    if body.contains('{') && !in_a_header {
        assert!(
            !message.contains(&*body),
            "the raw body reached the message: {message:?}"
        );
    }
    // Scrubbed: Cognito's message never gives the username or metadata back (unless the reply
    // put them where nothing is scrubbed and Cognito never does: a header, the exception name).
    let echoed_outside_messages = reply.headers.iter().any(|(name, value)| {
        contains_ignore_ascii_case(name, USERNAME)
            || contains_ignore_ascii_case(&String::from_utf8_lossy(value), USERNAME)
            || contains_ignore_ascii_case(name, METADATA_VALUE)
            || contains_ignore_ascii_case(&String::from_utf8_lossy(value), METADATA_VALUE)
    }) || exception_of(&error).is_some_and(|code| {
        contains_ignore_ascii_case(code, USERNAME)
            || contains_ignore_ascii_case(code, METADATA_VALUE)
    });
    if !echoed_outside_messages {
        let texts = caller_texts(&status, &details);
        assert!(
            !contains_ignore_ascii_case(&texts, USERNAME),
            "the username reached the caller: {texts}"
        );
        assert!(
            !contains_ignore_ascii_case(&texts, METADATA_VALUE),
            "metadata reached the caller: {texts}"
        );
    }
});

/// Cognito's exception name, as the SDK read it.
fn exception_of(error: &GatewayError) -> Option<&str> {
    match error {
        GatewayError::Backend(cognito_gateway::cognito::BackendError::Cognito(failure))
        | GatewayError::Lookup(cognito_gateway::cognito::BackendError::Cognito(failure)) => {
            Some(&failure.code)
        }
        GatewayError::OutcomeUnknown { exception, .. } => Some(exception),
        _ => None,
    }
}
