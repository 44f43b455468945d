//! JWT verification (`auth.mode = "jwt"`) with arbitrary tokens: as `authorization` headers,
//! through the bearer-token parsing, and as arbitrary headers and claims signed with a key the
//! verifier trusts, so that the checks after the signature are reached as well.
//!
//! Input: `T` then the `authorization` header's bytes; or `S`, the header JSON, a newline, and
//! the claims JSON (the target signs them with the test key the header's `alg` names).
#![no_main]

use std::sync::OnceLock;

use cognito_gateway::fuzzing::{JwtVerifier, bearer_token};
use cognito_gateway_fuzz::{
    jwt::{AUDIENCE, ISSUER, JWKS, sign, verifier},
    runtime,
};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn the_verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "cognito-gateway-fuzz-jwt-{}.json",
            std::process::id()
        ));
        std::fs::write(&path, JWKS).expect("the temporary directory is writable");
        runtime().block_on(verifier(&path))
    })
}

fuzz_target!(|data: &[u8]| {
    let verifier = the_verifier();
    match data.split_first() {
        Some((b'S', rest)) => {
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
            let named: Option<Value> = serde_json::from_slice(header).ok();
            let alg = match named
                .as_ref()
                .and_then(|h| h.get("alg"))
                .and_then(Value::as_str)
            {
                Some("RS256") => Algorithm::RS256,
                _ => Algorithm::ES256,
            };
            let token = sign(header, claims, alg);
            let verified = runtime().block_on(verifier.verify(&token));
            if let Ok(name) = verified {
                // Only what the verifier checks can have passed.
                let header = named.expect("a verified token's header is JSON");
                assert!(
                    matches!(
                        header.get("alg").and_then(Value::as_str),
                        Some("RS256" | "ES256")
                    ),
                    "verified with alg {:?}",
                    header.get("alg")
                );
                let claims: Value =
                    serde_json::from_slice(claims).expect("verified claims are JSON");
                assert_eq!(
                    claims.get("sub").and_then(Value::as_str),
                    Some(name.as_str())
                );
                assert!(!name.is_empty());
                assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
                let audience_ok = match claims.get("aud") {
                    Some(Value::String(aud)) => aud == AUDIENCE,
                    Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(AUDIENCE)),
                    _ => false,
                };
                assert!(audience_ok, "verified with aud {:?}", claims.get("aud"));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs();
                let exp = claims
                    .get("exp")
                    .and_then(Value::as_f64)
                    .expect("exp is required");
                assert!(exp + 30.0 >= now as f64, "verified after exp {exp}");
            }
        }
        Some((_, header)) => {
            // As `Access::authenticate` reads the header.
            let Some(token) = bearer_token(header) else {
                return;
            };
            let Ok(token) = std::str::from_utf8(token) else {
                return;
            };
            // Whatever it is, it was never signed by a trusted key unless it came from one.
            let _ = runtime().block_on(verifier.verify(token));
        }
        None => {}
    }
});
