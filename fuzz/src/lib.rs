//! What the fuzz targets share: the properties every error status must have, and a runtime.

use cognito_gateway::fuzzing::is_server_side;
use tonic::Status;
use tonic_types::{ErrorDetail, StatusExt as _};

/// A single-threaded runtime for the async parts (the SDK, the JWT verifier), made once per
/// process: the targets run one input at a time.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// Contract §3: every non-OK status carries exactly one `ErrorInfo`, with an UPPER_SNAKE_CASE
/// reason and one of the two domains, and survives the trip through HTTP headers (what the caller
/// really receives). Server-side statuses carry an opaque message.
pub fn check_status(status: &Status) -> Vec<ErrorDetail> {
    assert_ne!(
        status.code(),
        tonic::Code::Ok,
        "an error status is never OK"
    );
    let details = status
        .check_error_details_vec()
        .expect("the details decode as google.rpc.Status");
    let infos: Vec<_> = details
        .iter()
        .filter_map(|detail| match detail {
            ErrorDetail::ErrorInfo(info) => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(infos.len(), 1, "exactly one ErrorInfo: {details:?}");
    let info = infos[0];
    assert!(
        !info.reason.is_empty()
            && info
                .reason
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'),
        "reason {:?} is UPPER_SNAKE_CASE",
        info.reason
    );
    assert!(
        ["cognito-idp.amazonaws.com", "cognito-gateway"].contains(&info.domain.as_str()),
        "domain {:?}",
        info.domain
    );
    if is_server_side(status.code()) {
        let message = status.message();
        assert!(
            message.contains("details are in the gateway's log")
                || message.starts_with("the gateway is shutting down")
                || message.starts_with("the call's deadline ran out before anything"),
            "a server-side message is opaque: {message:?}"
        );
    }
    // What the caller receives: the status written into headers and read back.
    let sent = status.clone().into_http::<tonic::body::Body>();
    let received = Status::from_header_map(sent.headers()).expect("the headers hold a status");
    assert_eq!(received.code(), status.code());
    assert_eq!(received.message(), status.message());
    assert_eq!(received.details(), status.details());
    details
}

/// Every text of the status the caller can read: its message and the details' strings.
pub fn caller_texts(status: &Status, details: &[ErrorDetail]) -> String {
    format!("{}\n{details:?}", status.message())
}

/// Whether `needle` occurs in `haystack`, ignoring ASCII case (as Cognito might echo a name).
pub fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// JWT verification against the committed test keys (`fuzz/keys/`).
pub mod jwt {
    use std::{path::Path, time::Duration};

    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use cognito_gateway::{
        config::{JwksSource, JwtConfig},
        fuzzing::JwtVerifier,
    };
    use jsonwebtoken::{Algorithm, EncodingKey};

    /// The issuer and audience the verifier requires.
    pub const ISSUER: &str = "https://issuer.example";
    /// See [`ISSUER`].
    pub const AUDIENCE: &str = "cognito-gateway";
    /// The public half of the keys below.
    pub const JWKS: &str = include_str!("../keys/jwks.json");

    /// A verifier reading its keys from `jwks_file`, refetching for unknown keys at most hourly
    /// (so that a run reads the file only when told to).
    pub async fn verifier(jwks_file: &Path) -> JwtVerifier {
        JwtVerifier::new(JwtConfig {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            jwks: JwksSource::File(jwks_file.to_owned()),
            caller_claim: "sub".to_owned(),
            leeway: Duration::from_secs(30),
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(3600),
        })
        .await
        .expect("the test JWKS loads")
    }

    /// `header.claims.signature`, signed with the test key of `alg` (ES256 for anything else,
    /// whose signature then cannot fit).
    pub fn sign(header: &[u8], claims: &[u8], alg: Algorithm) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let (key, alg) = match alg {
            Algorithm::RS256 => (
                EncodingKey::from_rsa_der(include_bytes!("../keys/rsa.pk1")),
                alg,
            ),
            _ => (
                EncodingKey::from_ec_der(include_bytes!("../keys/ec.pk8")),
                Algorithm::ES256,
            ),
        };
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("the test keys sign");
        format!("{message}.{signature}")
    }
}
