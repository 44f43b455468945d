//! The request metadata the gateway reads itself: `grpc-timeout` (the deadline layer, checked
//! against tonic's own parser, which it must agree with), `authorization` (the bearer token, and
//! the token policy that hashes and compares it), the request path (the method the trace layer and
//! the log name), and the request id (AIP-155).
//!
//! Input: the header value's or path's bytes.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use cognito_gateway::{
    Policy,
    config::{AccessConfig, AuthMode, CallerConfig, LimitSettings},
    domain::RequestId,
    fuzzing::{bearer_token, grpc_timeout, known_method},
};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

const TOKEN: &[u8] = b"s3cret-token";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let access = AccessConfig {
            mode: AuthMode::Token,
            callers: vec![CallerConfig {
                name: "billing".to_owned(),
                token_sha256: Some(Sha256::digest(TOKEN).into()),
                user_pools: None,
                rate_per_second: 10,
                burst: 10,
            }],
            ..AccessConfig::none()
        };
        Policy::build(&access, &LimitSettings::default(), None)
    })
}

/// tonic 0.14.9's `try_parse_grpc_timeout` (`tonic/src/transport/service/grpc_timeout.rs`, MIT),
/// as tonic enforces the deadline: the oracle.
fn tonic_grpc_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ()> {
    let Some(val) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let (timeout_value, timeout_unit) = val
        .to_str()
        .map_err(|_| ())
        .and_then(|s| if s.is_empty() { Err(()) } else { Ok(s) })?
        .split_at(val.len() - 1);
    if timeout_value.len() > 8 {
        return Err(());
    }
    let timeout_value: u64 = timeout_value.parse().map_err(|_| ())?;
    Ok(Some(match timeout_unit {
        "H" => Duration::from_secs(timeout_value * 60 * 60),
        "M" => Duration::from_secs(timeout_value * 60),
        "S" => Duration::from_secs(timeout_value),
        "m" => Duration::from_millis(timeout_value),
        "u" => Duration::from_micros(timeout_value),
        "n" => Duration::from_nanos(timeout_value),
        _ => return Err(()),
    }))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.clone());
        // Every deadline tonic enforces, this layer sees, and reads the same.
        assert_eq!(
            grpc_timeout(&headers),
            tonic_grpc_timeout(&headers).ok().flatten()
        );
    }

    let token = bearer_token(data);
    if let Some(token) = token {
        assert!(data[..7].eq_ignore_ascii_case(b"bearer "));
        assert!(!token.is_empty());
        assert_eq!(
            token,
            data[7..].trim_ascii(),
            "the token is the rest, trimmed"
        );
    }
    // Exactly the configured token authenticates, and as its caller.
    match policy().authenticate(Some(data)) {
        Ok(caller) => {
            assert_eq!(token, Some(TOKEN));
            assert_eq!(&*caller.name, "billing");
        }
        Err(_) => assert_ne!(token, Some(TOKEN)),
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let (service, method) = known_method(text);
        // A made-up path never becomes a label of its own.
        if service != "_OTHER" {
            assert_eq!(format!("{service}/{method}"), text);
        }
        if let Ok(Some(id)) = RequestId::parse(text.to_owned()) {
            assert_eq!(id.as_str(), text.to_ascii_lowercase());
            assert_eq!(id.as_str().len(), 36);
        }
    }
});
