//! JSON Web Token authentication: Kubernetes projected service-account tokens or any OIDC issuer.
//!
//! Signatures are RS256 or ES256 only, verified against a JWKS read from a file or fetched over
//! HTTPS. `alg: none` does not parse, and an HMAC algorithm is refused before any key is looked at,
//! so a public key can never be used as an HMAC secret. A key verifies only what its publisher
//! meant it for: `use` absent or `sig`, `alg` absent or the one algorithm of its type. A token
//! with a `kid` is checked against that key; one without, against every key of its algorithm (an
//! issuer that names no keys still rotates them). `iss`, `aud`, `exp` and `nbf` are checked with a
//! small leeway. The JWKS is cached, refreshed periodically, and refetched when a token names an
//! unknown `kid` or, naming none, no key verifies it (a key rotation), at most once per
//! `jwks_refetch_min_secs`. A JWKS with no usable key never replaces the keys in use.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Empty, Limited};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use tokio::time::Instant;

use crate::config::{JwksSource, JwtConfig};

/// The largest JWKS document accepted, in bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long fetching the JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was refused. For the log only: the caller is told nothing more than
/// UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    /// Not three base64 parts with a JSON header.
    Malformed,
    /// Neither RS256 nor ES256 (`none` and the HMAC algorithms above all).
    AlgorithmNotAllowed,
    /// No key of the JWKS has the token's `kid` and algorithm, even after a refetch.
    UnknownKey,
    /// Past `exp` (and the leeway).
    Expired,
    /// Before `nbf` (and the leeway).
    NotYetValid,
    /// `aud` is not the gateway's audience.
    WrongAudience,
    /// `iss` is not the configured issuer.
    UntrustedIssuer,
    /// No key that may have signed it verifies the signature.
    BadSignature,
    /// `exp`, `iss` or `aud` is missing.
    MissingClaim,
    /// Any other reason to refuse it.
    Invalid,
    /// The caller claim is missing, empty or not a string.
    NoCallerClaim,
}

/// A key of the JWKS that may verify signatures, and the one algorithm it serves.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The usable keys of the last JWKS that had any.
#[derive(Default)]
struct Keys(Vec<Key>);

/// What a token says, unchecked beyond being JSON.
type Claims = serde_json::Map<String, serde_json::Value>;

/// Verifies tokens and keeps the keys fresh.
pub(crate) struct JwtVerifier {
    config: JwtConfig,
    keys: ArcSwap<Keys>,
    /// Serialises fetches and remembers when the last one was.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    client: HttpsClient,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<bytes::Bytes>,
>;

impl JwtError {
    /// The reason, in words, for the log line.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Malformed => "malformed JWT",
            Self::AlgorithmNotAllowed => "JWT algorithm not allowed",
            Self::UnknownKey => "JWT signed with an unknown key",
            Self::Expired => "JWT expired",
            Self::NotYetValid => "JWT not valid yet",
            Self::WrongAudience => "JWT audience is not this gateway",
            Self::UntrustedIssuer => "JWT issuer not trusted",
            Self::BadSignature => "JWT signature invalid",
            Self::MissingClaim => "JWT lacks exp, iss or aud",
            Self::Invalid => "JWT invalid",
            Self::NoCallerClaim => "JWT lacks the caller claim",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for JwtError {}

impl JwtVerifier {
    /// Loads the keys once. A file that cannot be read, or holds no usable key, is an error (the
    /// configuration is wrong); a URL that cannot be reached, or answers no usable key, is not:
    /// the gateway starts, refuses JWTs, and keeps trying.
    pub(crate) async fn new(config: JwtConfig) -> Result<Self, String> {
        let client = https_client(&config.jwks)?;
        let verifier = Self {
            config,
            keys: ArcSwap::from_pointee(Keys::default()),
            last_fetch: tokio::sync::Mutex::new(None),
            client,
        };
        match (&verifier.config.jwks, verifier.fetch().await) {
            (_, Ok(())) => {}
            (JwksSource::File(path), Err(error)) => {
                return Err(format!("auth.jwt.jwks_file {}: {error}", path.display()));
            }
            (JwksSource::Url { url, .. }, Err(error)) => {
                tracing::error!(%url, %error, "JWKS not loaded yet; JWTs are refused until it is");
            }
        }
        Ok(verifier)
    }

    /// The caller a bearer token names, after full verification.
    pub(crate) async fn verify(&self, token: &str) -> Result<String, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref();
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud"].map(String::from).into();

        let mut decoded = self.decode(token, kid, header.alg, &validation);
        // Perhaps the issuer rotated its keys: look again, at most so often. A token that names
        // no key can show a new one only as a signature that no key in hand verifies.
        let maybe_rotated = match decoded {
            Err(JwtError::UnknownKey) => true,
            Err(JwtError::BadSignature) => kid.is_none(),
            _ => false,
        };
        if maybe_rotated && self.refetch_for_unknown_key().await {
            decoded = self.decode(token, kid, header.alg, &validation);
        }
        match decoded?.get(&self.config.caller_claim) {
            Some(serde_json::Value::String(name)) if !name.is_empty() => Ok(name.clone()),
            _ => Err(JwtError::NoCallerClaim),
        }
    }

    /// Checks the token against each key that may have signed it: with a `kid`, the keys of that
    /// id; without, every key. Either way only keys of the token's algorithm, so an RSA key never
    /// checks an ES256 token. The first key whose signature holds decides.
    fn decode(
        &self,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
        validation: &Validation,
    ) -> Result<Claims, JwtError> {
        let keys = self.keys.load();
        let candidates = keys
            .0
            .iter()
            .filter(|key| key.alg == alg && kid.is_none_or(|kid| key.kid.as_deref() == Some(kid)));
        let mut outcome = Err(JwtError::UnknownKey);
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Err(error) if *error.kind() == ErrorKind::InvalidSignature => {
                    outcome = Err(JwtError::BadSignature);
                }
                decided => return decided.map(|data| data.claims).map_err(refusal),
            }
        }
        outcome
    }

    /// Re-reads the keys for a token no key in hand verifies; whether a new set was loaded. One
    /// fetch at a time, and a token never waits for another's: while a fetch runs (or within
    /// `min_refetch` of the last), an unknown key is simply unknown.
    async fn refetch_for_unknown_key(&self) -> bool {
        let Ok(mut last) = self.last_fetch.try_lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < self.config.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        let loaded = self.load().await;
        crate::metrics::record_jwks_refresh(loaded.is_ok());
        match loaded {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "JWKS refetch (unknown key) failed; the previous keys stay in use");
                false
            }
        }
    }

    /// Re-reads the keys now, after any fetch under way (so that an older set never lands last).
    pub(crate) async fn fetch(&self) -> Result<(), String> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        let loaded = self.load().await;
        crate::metrics::record_jwks_refresh(loaded.is_ok());
        loaded
    }

    async fn load(&self) -> Result<(), String> {
        let document = match &self.config.jwks {
            JwksSource::File(path) => tokio::fs::read(path).await.map_err(|e| e.to_string())?,
            JwksSource::Url { url, .. } => {
                tokio::time::timeout(FETCH_TIMEOUT, get(&self.client, url))
                    .await
                    .map_err(|_| "timed out".to_owned())??
            }
        };
        let set: JwkSet =
            serde_json::from_slice(&document).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = keys_of(&set);
        if keys.0.is_empty() {
            // An issuer that publishes nothing usable, for a while or by mistake, would otherwise
            // have every token refused until the next good answer.
            return Err(format!(
                "no key to verify RS256 or ES256 signatures with among its {} keys",
                set.keys.len()
            ));
        }
        tracing::info!(
            keys = keys.0.len(),
            ignored = set.keys.len() - keys.0.len(),
            "JWKS loaded"
        );
        crate::metrics::record_jwks_loaded(keys.0.len());
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Refreshes the keys every `refresh` until dropped; a failed refresh keeps the old keys.
    pub(crate) async fn refresh_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = self.fetch().await {
                tracing::warn!(%error, "JWKS refresh failed; the previous keys stay in use");
            }
        }
    }
}

/// The usable keys of a set: RSA for RS256, P-256 EC for ES256, each only if published for
/// signatures (`use` absent or `sig`) and, if it names an algorithm (`alg`), for that one. The
/// others (HMAC `oct` keys above all, encryption keys, keys for another algorithm) are ignored: a
/// key never verifies what its publisher did not mean it for.
fn keys_of(set: &JwkSet) -> Keys {
    let usable = set.keys.iter().filter_map(|jwk| {
        let (alg, named) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                (Algorithm::ES256, KeyAlgorithm::ES256)
            }
            _ => return None,
        };
        let for_signatures = matches!(
            jwk.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        );
        let for_this_algorithm = jwk
            .common
            .key_algorithm
            .is_none_or(|named_by| named_by == named);
        if !(for_signatures && for_this_algorithm) {
            return None;
        }
        Some(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key: DecodingKey::from_jwk(jwk).ok()?,
        })
    });
    Keys(usable.collect())
}

/// Why `jsonwebtoken` refused a token, in our terms.
fn refusal(error: jsonwebtoken::errors::Error) -> JwtError {
    match error.kind() {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidIssuer => JwtError::UntrustedIssuer,
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
        _ => JwtError::Invalid,
    }
}

fn https_client(source: &JwksSource) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let JwksSource::Url {
        ca_file: Some(path),
        ..
    } = source
    {
        add_pem_file(&mut roots, path)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        // Plain HTTP only for tests on loopback; config validation refuses it elsewhere.
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

fn add_pem_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("auth.jwt.jwks_ca_file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("auth.jwt.jwks_ca_file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("auth.jwt.jwks_ca_file {}: {e}", path.display()))?;
    }
    Ok(())
}

async fn get(client: &HttpsClient, url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}
