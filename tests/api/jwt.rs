//! JWT authentication with keys generated here: RS256 and ES256, every way a token can be wrong,
//! and key rotation through a JWKS URL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    encoding::AsDer as _,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use cognito_gateway::config::{AccessConfig, AuthMode, CallerConfig, JwksSource, JwtConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::{Code, Request};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

use crate::{
    helpers::{error_info, eventually},
    kit::{
        app::{TestApp, request, sdk_backend, spawn_app_with, test_config, test_settings},
        fake_cognito::{cognito_ok, fake_cognito},
        files::Files,
    },
};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "cognito-gateway";
const POOL: &str = "us-east-1_Jwt1";

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 document (what jsonwebtoken signs with): the content
/// of the third element, an OCTET STRING, of the outer SEQUENCE.
fn pkcs1_of(pkcs8: &[u8]) -> &[u8] {
    fn tlv(input: &[u8]) -> (&[u8], &[u8]) {
        let (len, header) = match input[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(input[2]), 3),
            0x82 => (usize::from(input[2]) << 8 | usize::from(input[3]), 4),
            other => panic!("unexpected DER length byte {other:#x}"),
        };
        (&input[header..header + len], &input[header + len..])
    }
    let (sequence, _) = tlv(pkcs8);
    let (_version, rest) = tlv(sequence);
    let (_algorithm, rest) = tlv(rest);
    let (private_key, _) = tlv(rest);
    private_key
}

fn rsa_signer(kid: &str) -> Signer {
    let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    let public = pair.public_key();
    Signer {
        kid: kid.into(),
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(pkcs1_of(pkcs8.as_ref())),
        jwk: json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        }),
    }
}

fn ec_signer(kid: &str) -> Signer {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims a Kubernetes projected token for the caller `billing` would carry.
fn claims() -> Value {
    json!({ "iss": ISSUER, "aud": [AUDIENCE], "sub": "billing", "iat": now(), "nbf": now() - 5, "exp": now() + 600 })
}

fn sign(signer: &Signer, claims: &Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

/// A token whose header names no key (`kid` absent).
fn sign_without_kid(signer: &Signer, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(signer.alg), claims, &signer.key).unwrap()
}

/// The same signer, its JWK edited: `null` removes a member.
fn published_as(mut signer: Signer, edits: &[(&str, Value)]) -> Signer {
    let jwk = signer.jwk.as_object_mut().unwrap();
    for (key, value) in edits {
        match value {
            Value::Null => jwk.remove(*key),
            value => jwk.insert((*key).to_owned(), value.clone()),
        };
    }
    signer
}

fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn jwt_config(jwks: JwksSource, min_refetch: Duration) -> cognito_gateway::Config {
    jwt_config_refreshed(jwks, min_refetch, Duration::from_secs(3600))
}

fn jwt_config_refreshed(
    jwks: JwksSource,
    min_refetch: Duration,
    refresh: Duration,
) -> cognito_gateway::Config {
    let mut config = test_config();
    config.access = AccessConfig {
        mode: AuthMode::Jwt,
        callers: vec![CallerConfig {
            name: "billing".into(),
            token_sha256: None,
            user_pools: Some(vec![POOL.into()]),
            rate_per_second: 10_000,
            burst: 10_000,
        }],
        jwt: Some(JwtConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks,
            caller_claim: "sub".into(),
            leeway: Duration::from_secs(30),
            refresh,
            min_refetch,
        }),
        ..AccessConfig::none()
    };
    config
}

async fn call(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    let mut req = Request::new(request(POOL, "alice"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    app.reset_request(req).await.map(drop)
}

#[tokio::test]
async fn valid_tokens_pass_and_every_flaw_is_unauthenticated() {
    let rsa = rsa_signer("rsa-1");
    let ec = ec_signer("ec-1");
    let files = Files::new("jwks");
    let jwks_file = files.write("jwks.json", &jwks(&[&rsa, &ec]));
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(
        jwt_config(JwksSource::File(jwks_file), Duration::from_secs(3600)),
        backend,
    )
    .await;

    call(&app, &sign(&rsa, &claims())).await.expect("RS256");
    call(&app, &sign(&ec, &claims())).await.expect("ES256");

    let with = |key: &str, value: Value| {
        let mut c = claims();
        c[key] = value;
        c
    };
    let other_rsa = rsa_signer("rsa-1"); // same kid, another key: a forged signature
    let unknown = rsa_signer("nobody-knows-me");
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    // HS256 keyed with the public key: the classic algorithm confusion.
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &claims(),
        &EncodingKey::from_secret(rsa.jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let flaws = [
        ("expired", sign(&rsa, &with("exp", json!(now() - 120)))),
        (
            "not yet valid",
            sign(&rsa, &with("nbf", json!(now() + 120))),
        ),
        (
            "wrong audience",
            sign(&rsa, &with("aud", json!(["someone-else"]))),
        ),
        (
            "wrong issuer",
            sign(&rsa, &with("iss", json!("https://evil.example"))),
        ),
        ("no exp", {
            let mut c = claims();
            c.as_object_mut().unwrap().remove("exp");
            sign(&rsa, &c)
        }),
        ("bad signature", sign(&other_rsa, &claims())),
        ("unknown kid", sign(&unknown, &claims())),
        ("alg none", none),
        ("HS256 with the public key", confused),
        (
            "caller not in the policy",
            sign(&rsa, &with("sub", json!("stranger"))),
        ),
        ("garbage", "not.a.jwt".into()),
    ];
    for (what, token) in flaws {
        let status = call(&app, &token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(error_info(&status).reason, "UNAUTHENTICATED", "{what}");
    }
    // Within the leeway, a token just expired still passes (clocks drift).
    call(&app, &sign(&rsa, &with("exp", json!(now() - 10))))
        .await
        .expect("leeway");
    // And the caller is still held to its pools.
    let mut req = Request::new(request("us-east-1_Other", "alice"));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", sign(&ec, &claims())).parse().unwrap(),
    );
    assert_eq!(
        app.reset_request(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(crate::kit::fake_cognito::sends(&server).await, 3);
}

async fn jwks_server(body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    server
}

async fn fetches(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let old = ec_signer("2026-old");
    let new = rsa_signer("2026-new");
    let keys = jwks_server(jwks(&[&old])).await;
    let url = format!("{}/openid/v1/jwks", keys.uri());
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(
        jwt_config(JwksSource::Url { url, ca_file: None }, Duration::ZERO),
        backend,
    )
    .await;
    call(&app, &sign(&old, &claims())).await.unwrap();
    assert_eq!(fetches(&keys).await, 1, "loaded once at start");

    // The issuer rotates: the JWKS now has both keys, and a token signed with the new one arrives.
    keys.reset().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(jwks(&[&old, &new]), "application/json"),
        )
        .mount(&keys)
        .await;
    call(&app, &sign(&new, &claims()))
        .await
        .expect("the new key is fetched on demand");
    assert_eq!(fetches(&keys).await, 1, "one refetch");
    call(&app, &sign(&new, &claims())).await.unwrap();
    assert_eq!(fetches(&keys).await, 1, "and then cached");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_no_key_in_hand_verifies_a_token_without_kid() {
    let old = published_as(rsa_signer("old"), &[("kid", Value::Null)]);
    let new = published_as(rsa_signer("new"), &[("kid", Value::Null)]);
    let keys = jwks_server(jwks(&[&old])).await;
    let url = format!("{}/keys", keys.uri());
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(
        jwt_config(JwksSource::Url { url, ca_file: None }, Duration::ZERO),
        backend,
    )
    .await;
    call(&app, &sign_without_kid(&old, &claims()))
        .await
        .unwrap();
    assert_eq!(fetches(&keys).await, 1, "loaded once at start");

    // The issuer rotates; its tokens name no key, so only the failed signature tells.
    keys.reset().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(jwks(&[&old, &new]), "application/json"),
        )
        .mount(&keys)
        .await;
    call(&app, &sign_without_kid(&new, &claims()))
        .await
        .expect("the new key is fetched on demand");
    assert_eq!(fetches(&keys).await, 1, "one refetch");
    call(&app, &sign_without_kid(&new, &claims()))
        .await
        .unwrap();
    assert_eq!(fetches(&keys).await, 1, "and then cached");
}

#[tokio::test]
async fn unknown_kids_cannot_make_the_gateway_hammer_the_jwks_endpoint() {
    let known = ec_signer("known");
    let keys = jwks_server(jwks(&[&known])).await;
    let url = format!("{}/keys", keys.uri());
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(
        jwt_config(
            JwksSource::Url { url, ca_file: None },
            Duration::from_secs(3600),
        ),
        backend,
    )
    .await;
    for i in 0..20 {
        let stranger = ec_signer(&format!("random-{i}"));
        // Naming an unknown key, or none that verifies it: both would ask for a refetch.
        for token in [
            sign(&stranger, &claims()),
            sign_without_kid(&stranger, &claims()),
        ] {
            let status = call(&app, &token).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
        }
    }
    assert_eq!(
        fetches(&keys).await,
        1,
        "only the start-up fetch: refetches are rate-limited"
    );
    call(&app, &sign(&known, &claims())).await.unwrap();
}

#[tokio::test]
async fn a_jwks_file_that_cannot_be_read_or_holds_no_usable_key_stops_the_start() {
    let files = Files::new("jwks-start");
    let encryption_only = published_as(rsa_signer("enc"), &[("use", json!("enc"))]);
    for (what, path) in [
        ("missing", "/nonexistent/jwks.json".into()),
        ("empty", files.write("empty.json", r#"{"keys":[]}"#)),
        (
            "only an encryption key",
            files.write("enc.json", &jwks(&[&encryption_only])),
        ),
    ] {
        let server = fake_cognito(cognito_ok("rid")).await;
        let backend = sdk_backend(&server.uri(), test_settings()).await;
        let config = jwt_config(JwksSource::File(path), Duration::from_secs(10));
        let error = cognito_gateway::App::build(config, backend)
            .await
            .map(drop)
            .expect_err(what);
        assert!(
            error.to_string().contains("auth.jwt.jwks_file"),
            "{what}: {error}"
        );
    }
}

#[tokio::test]
async fn tokens_without_a_kid_are_tried_against_every_key_of_their_algorithm() {
    // An issuer that names no keys, mid-rotation: the old key and the new one, neither with a
    // kid (the old one without `use` or `alg` either: both are optional), beside a named EC key.
    let old = published_as(
        rsa_signer("old"),
        &[
            ("kid", Value::Null),
            ("use", Value::Null),
            ("alg", Value::Null),
        ],
    );
    let new = published_as(rsa_signer("new"), &[("kid", Value::Null)]);
    let ec = ec_signer("ec-1");
    let files = Files::new("jwks-no-kid");
    let jwks_file = files.write("jwks.json", &jwks(&[&old, &new, &ec]));
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(
        jwt_config(JwksSource::File(jwks_file), Duration::from_secs(3600)),
        backend,
    )
    .await;

    for (what, signer) in [("new key", &new), ("old key", &old), ("named EC key", &ec)] {
        call(&app, &sign_without_kid(signer, &claims()))
            .await
            .expect(what);
    }
    let stranger = rsa_signer("stranger");
    let status = call(&app, &sign_without_kid(&stranger, &claims()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(crate::kit::fake_cognito::sends(&server).await, 3);
}

#[tokio::test]
async fn keys_for_encryption_or_another_algorithm_never_verify() {
    let good = ec_signer("good");
    let unusable = [
        (
            "use enc",
            published_as(rsa_signer("enc"), &[("use", json!("enc"))]),
        ),
        (
            "RSA key for RS384",
            published_as(rsa_signer("rs384"), &[("alg", json!("RS384"))]),
        ),
        (
            "RSA key for RSA-OAEP",
            published_as(rsa_signer("oaep"), &[("alg", json!("RSA-OAEP"))]),
        ),
        (
            "EC key labelled RS256",
            published_as(ec_signer("ec-as-rs"), &[("alg", json!("RS256"))]),
        ),
    ];
    let mut published: Vec<&Signer> = unusable.iter().map(|(_, signer)| signer).collect();
    published.push(&good);
    let files = Files::new("jwks-unusable");
    let jwks_file = files.write("jwks.json", &jwks(&published));
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(
        jwt_config(JwksSource::File(jwks_file), Duration::from_secs(3600)),
        backend,
    )
    .await;

    call(&app, &sign(&good, &claims())).await.expect("good key");
    for (what, signer) in &unusable {
        for token in [sign(signer, &claims()), sign_without_kid(signer, &claims())] {
            let status = call(&app, &token).await.expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        }
    }
    assert_eq!(crate::kit::fake_cognito::sends(&server).await, 1);
}

#[tokio::test]
async fn a_jwks_file_emptied_or_left_with_unusable_keys_never_replaces_the_keys_in_use() {
    let current = rsa_signer("current");
    let files = Files::new("jwks-refresh");
    let jwks_file = files.write("jwks.json", &jwks(&[&current]));
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    // Every unknown kid re-reads the file at once: the refresh runs when the test says.
    let app = spawn_app_with(
        jwt_config(JwksSource::File(jwks_file), Duration::ZERO),
        backend,
    )
    .await;
    call(&app, &sign(&current, &claims())).await.unwrap();

    let encryption_only = published_as(rsa_signer("enc"), &[("use", json!("enc"))]);
    for (what, document) in [
        ("no keys", r#"{"keys":[]}"#.to_owned()),
        ("only an encryption key", jwks(&[&encryption_only])),
    ] {
        files.write("jwks.json", &document);
        let unknown = rsa_signer(&format!("unknown-{what}"));
        call(&app, &sign(&unknown, &claims()))
            .await
            .expect_err("its kid makes the gateway re-read the file");
        call(&app, &sign(&current, &claims())).await.expect(what);
    }
    // The re-reads did happen: a good file is taken the same way.
    let next = rsa_signer("next");
    files.write("jwks.json", &jwks(&[&next]));
    call(&app, &sign(&next, &claims()))
        .await
        .expect("read on its unknown kid");
    call(&app, &sign(&current, &claims()))
        .await
        .expect_err("a good set replaces the old one");
}

#[tokio::test]
async fn a_jwks_url_without_usable_keys_refuses_tokens_until_one_serves_keys_and_never_empties_them()
 {
    let current = ec_signer("current");
    let keys = jwks_server(r#"{"keys":[]}"#.into()).await;
    let url = format!("{}/keys", keys.uri());
    let server = fake_cognito(cognito_ok("rid")).await;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    // A short refresh: the periodic path is the one under test; refetches for unknown kids are
    // kept out of it.
    let app = spawn_app_with(
        jwt_config_refreshed(
            JwksSource::Url { url, ca_file: None },
            Duration::from_secs(3600),
            Duration::from_millis(20),
        ),
        backend,
    )
    .await;
    // At start an empty answer is no reason not to start; tokens wait for keys.
    let status = call(&app, &sign(&current, &claims())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let serve = |body: String| {
        let keys = &keys;
        async move {
            keys.reset().await;
            Mock::given(method("GET"))
                .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
                .mount(keys)
                .await;
        }
    };
    serve(jwks(&[&current])).await;
    eventually("a refresh to load the keys", || async {
        call(&app, &sign(&current, &claims())).await.is_ok()
    })
    .await;

    let encryption_only = published_as(rsa_signer("enc"), &[("use", json!("enc"))]);
    for (what, document) in [
        ("no keys", r#"{"keys":[]}"#.to_owned()),
        ("only an encryption key", jwks(&[&encryption_only])),
    ] {
        serve(document).await;
        // Refreshes run one after another: once a third request has come, the second (made after
        // the new answer was mounted) has been read and judged.
        eventually("two refreshes", || async { fetches(&keys).await >= 3 }).await;
        call(&app, &sign(&current, &claims())).await.expect(what);
    }
}
