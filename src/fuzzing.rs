//! Entry points for the fuzz targets in `fuzz/` (docs/fuzzing.md): the private parsers and the
//! error table, reached from outside the crate. Hidden, and not part of the API: nothing but the
//! fuzz targets may use it. Each item is the crate's own code, never a copy, so that what is fuzzed
//! is what runs.
//!
//! Compiled always rather than under `cfg(fuzzing)`, so that the ordinary build, clippy and the
//! tests check it too, and the fuzz crate builds with plain `cargo build` (CI's check).

use std::time::Duration;

use tonic::Status;

use crate::{auth::jwt, config::JwtConfig, domain::UserPoolId};

pub use crate::status::GatewayError;

/// The status the rescue layer makes of `error` ([`crate::status`], THE error table).
pub fn to_status(error: &GatewayError, pool: Option<&UserPoolId>) -> Status {
    crate::status::to_status(error, pool)
}

/// Whether `code` is a server-side status, whose message is opaque.
pub fn is_server_side(code: tonic::Code) -> bool {
    crate::status::is_server_side(code)
}

/// The error a handler's `Err` carries up to the rescue layer, as that layer reads it.
pub fn handler_error(status: &Status) -> Option<GatewayError> {
    std::error::Error::source(status)
        .and_then(|source| source.downcast_ref::<GatewayError>())
        .cloned()
}

/// The deadline layer's reading of `grpc-timeout`.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    crate::middleware::deadline::grpc_timeout(headers)
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    crate::auth::bearer_token(header)
}

/// The (service, method) the trace layer and the log name a request path by.
pub fn known_method(name: &str) -> (&'static str, &'static str) {
    let (service, method, _) = crate::middleware::trace::known_method(name);
    (service, method)
}

/// JWT verification as `auth.mode = "jwt"` does it.
#[derive(Debug)]
pub struct JwtVerifier(jwt::JwtVerifier);

impl JwtVerifier {
    /// Loads the keys once, as at start.
    pub async fn new(config: JwtConfig) -> Result<Self, String> {
        jwt::JwtVerifier::new(config).await.map(Self)
    }

    /// The caller a token names, after full verification; else why not, in words.
    pub async fn verify(&self, token: &str) -> Result<String, &'static str> {
        self.0.verify(token).await.map_err(jwt::JwtError::message)
    }

    /// Re-reads the JWKS, as the periodic refresh does.
    pub async fn reload(&self) -> Result<(), String> {
        self.0.fetch().await
    }
}
