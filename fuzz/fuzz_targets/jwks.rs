//! JWKS documents: an arbitrary document read by the verifier's real loader (from its file, as the
//! periodic refresh reads it), the selection of usable keys, and tokens checked against what was
//! loaded.
//!
//! Input: the JWKS document.
#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use cognito_gateway::fuzzing::JwtVerifier;
use cognito_gateway_fuzz::{
    jwt::{AUDIENCE, ISSUER, JWKS, sign, verifier},
    runtime,
};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct Setup {
    path: PathBuf,
    verifier: JwtVerifier,
    /// Tokens signed with the test keys: (token, the key's public number that must be in a JWKS
    /// that verifies it).
    tokens: Vec<(String, String)>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "cognito-gateway-fuzz-jwks-{}.json",
            std::process::id()
        ));
        std::fs::write(&path, JWKS).expect("the temporary directory is writable");
        let verifier = runtime().block_on(verifier(&path));
        let keys: Value = serde_json::from_str(JWKS).expect("the test JWKS is JSON");
        let ec_x = keys["keys"][0]["x"].as_str().expect("an EC key").to_owned();
        let rsa_n = keys["keys"][1]["n"]
            .as_str()
            .expect("an RSA key")
            .to_owned();
        let claims =
            format!(r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"billing","exp":4102444800}}"#);
        let tokens = vec![
            (
                sign(
                    br#"{"alg":"ES256","kid":"ec-1"}"#,
                    claims.as_bytes(),
                    Algorithm::ES256,
                ),
                ec_x.clone(),
            ),
            (
                sign(br#"{"alg":"ES256"}"#, claims.as_bytes(), Algorithm::ES256),
                ec_x,
            ),
            (
                sign(
                    br#"{"alg":"RS256","kid":"rsa-1"}"#,
                    claims.as_bytes(),
                    Algorithm::RS256,
                ),
                rsa_n,
            ),
        ];
        Setup {
            path,
            verifier,
            tokens,
        }
    })
}

/// Whether `document` holds `number` as a string anywhere.
fn holds(document: &Value, number: &str) -> bool {
    match document {
        Value::String(s) => s == number,
        Value::Array(items) => items.iter().any(|v| holds(v, number)),
        Value::Object(members) => members.values().any(|v| holds(v, number)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    runtime().block_on(async {
        // Every input starts from the test keys.
        std::fs::write(&setup.path, JWKS).expect("the temporary directory is writable");
        setup.verifier.reload().await.expect("the test JWKS loads");
        std::fs::write(&setup.path, data).expect("the temporary directory is writable");
        let loaded = setup.verifier.reload().await;
        for (token, number) in &setup.tokens {
            let verified = setup.verifier.verify(token).await;
            match &loaded {
                // A document with no usable key never replaces the keys in use.
                Err(_) => assert_eq!(
                    verified.as_deref(),
                    Ok("billing"),
                    "the keys in use were dropped"
                ),
                // A key verifies only if the document published it.
                Ok(()) if verified.is_ok() => {
                    let document: Value =
                        serde_json::from_slice(data).expect("a loaded JWKS is JSON");
                    assert!(
                        holds(&document, number),
                        "verified by a key the JWKS does not hold"
                    );
                }
                Ok(()) => {}
            }
        }
    });
});
