//! One reset, one e-mail, across a fleet (docs/api.md §5, §6): several replicas (`App`s in this
//! process, and the real binary where a replica must die) share one real `redis-server` and one
//! wire-level fake Cognito that counts every send.

use std::time::Duration;

use cognito_gateway::proto::{ResetUserPasswordRequest, ResetUserPasswordResponse};
use cognito_gateway::{
    Config,
    config::{FleetSettings, OnUnavailable},
};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::{
    helpers::{details, error_info, eventually, with_deadline},
    kit::{
        app::{TestApp, request, sdk_backend, spawn_app_with, test_config, test_settings},
        binary::start_binary,
        fake_cognito::{cognito_error, cognito_ok, fake_cognito, fake_cognito_with_pool, sends},
        files::Files,
        redis::Redis,
    },
};

const POOL: &str = "us-east-1_Fleet1";
const SECRET: [u8; 32] = [42; 32];

/// A replica's config: the test defaults, a 30 s cooldown, and the fleet on `redis`.
fn fleet_config(redis: &Redis, on_unavailable: OnUnavailable) -> Config {
    let mut config = test_config();
    config.limits.user_cooldown = Duration::from_secs(30);
    config.fleet = Some(FleetSettings {
        redis_url: redis.url(),
        redis_password: None,
        redis_ca: None,
        key_prefix: "cognito-gateway".into(),
        user_key_secret: SECRET,
        // Generous: a loaded test machine must not trip it (the store-down tests say otherwise).
        timeout: Duration::from_secs(2),
        on_unavailable,
        replicas_hint: 3,
    });
    config
}

async fn replicas(n: usize, config: &Config, cognito: &str) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..n {
        let backend = sdk_backend(cognito, test_settings()).await;
        apps.push(spawn_app_with(config.clone(), backend).await);
    }
    apps
}

/// The calls at once, each on its replica: their answers, in order.
async fn at_once(
    calls: impl IntoIterator<Item = (&TestApp, ResetUserPasswordRequest)>,
) -> Vec<Result<ResetUserPasswordResponse, Status>> {
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(app, request)| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .reset_user_password(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn with_request_id(username: &str, id: &str) -> ResetUserPasswordRequest {
    let mut request = request(POOL, username);
    request.request_id = id.to_owned();
    request
}

#[tokio::test]
async fn one_user_called_through_every_replica_at_once_gets_one_send() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid-1").set_delay(Duration::from_millis(300))).await;
    let apps = replicas(
        3,
        &fleet_config(&redis, OnUnavailable::Deny),
        &cognito.uri(),
    )
    .await;
    let answers = at_once((0..30).map(|i| (&apps[i % 3], request(POOL, "alice")))).await;
    let mut deduplicated = 0;
    for answer in answers {
        let answer = answer.expect("every caller gets the outcome");
        assert_eq!(answer.cognito_request_id, "rid-1");
        deduplicated += usize::from(answer.deduplicated);
    }
    assert_eq!(sends(&cognito).await, 1);
    assert_eq!(deduplicated, 29);
    // A repeat on any replica, later, is answered from the fleet's memory.
    for app in &apps {
        let repeat = app.reset(POOL, "alice").await.unwrap();
        assert!(repeat.deduplicated);
        assert_eq!(repeat.cognito_request_id, "rid-1");
    }
    assert_eq!(sends(&cognito).await, 1);
    redis.assert_holds_no(&["alice"]);
}

#[tokio::test]
async fn an_unknown_outcome_is_never_sent_again_from_any_replica() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_error(
        500,
        "InternalErrorException",
        "Internal error",
        "rid-500",
    ))
    .await;
    let apps = replicas(
        3,
        &fleet_config(&redis, OnUnavailable::Deny),
        &cognito.uri(),
    )
    .await;
    let first = apps[0].reset(POOL, "bob").await.unwrap_err();
    assert_eq!(first.code(), Code::Unknown, "{first:?}");
    let info = error_info(&first);
    assert_eq!(info.reason, "RESET_OUTCOME_UNKNOWN");
    assert_eq!(info.metadata["exception"], "InternalErrorException");
    assert!(!info.metadata.contains_key("deduplicated"));
    let wait = details(&first).retry_info().unwrap().retry_delay.unwrap();
    assert_eq!(wait, Duration::from_secs(30), "the whole cooldown");
    for app in &apps[1..] {
        let repeat = app.reset(POOL, "bob").await.unwrap_err();
        assert_eq!(repeat.code(), Code::Unknown);
        let info = error_info(&repeat);
        assert_eq!(info.reason, "RESET_OUTCOME_UNKNOWN");
        assert_eq!(info.metadata["deduplicated"], "true");
        assert_eq!(info.metadata["awsRequestId"], "rid-500");
        let left = details(&repeat).retry_info().unwrap().retry_delay.unwrap();
        assert!(left <= wait && left > Duration::from_secs(25), "{left:?}");
    }
    assert_eq!(
        sends(&cognito).await,
        1,
        "the person may have a code: one send"
    );
    redis.assert_holds_no(&["bob"]);
}

#[tokio::test]
async fn a_request_id_retried_anywhere_gets_its_first_outcome_even_after_the_cooldown() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_error(
        500,
        "InternalErrorException",
        "Internal error",
        "rid-500",
    ))
    .await;
    let apps = replicas(
        2,
        &fleet_config(&redis, OnUnavailable::Deny),
        &cognito.uri(),
    )
    .await;
    const ID: &str = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f";
    let first = apps[0]
        .reset_request(with_request_id("carol", ID))
        .await
        .unwrap_err();
    assert_eq!(error_info(&first).reason, "RESET_OUTCOME_UNKNOWN");
    let retry = apps[1]
        .reset_request(with_request_id("carol", ID))
        .await
        .unwrap_err();
    assert_eq!(error_info(&retry).reason, "RESET_OUTCOME_UNKNOWN");
    assert_eq!(error_info(&retry).metadata["deduplicated"], "true");
    redis.end_cooldowns();
    let after = apps[0]
        .reset_request(with_request_id("CAROL-other", ID).clone())
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::FailedPrecondition, "{after:?}");
    assert_eq!(error_info(&after).reason, "REQUEST_ID_REUSED");
    let retry = apps[1]
        .reset_request(with_request_id("carol", ID))
        .await
        .unwrap_err();
    assert_eq!(error_info(&retry).reason, "RESET_OUTCOME_UNKNOWN");
    assert_eq!(error_info(&retry).metadata["deduplicated"], "true");
    assert_eq!(sends(&cognito).await, 1, "the id's retries sent nothing");
    // Without the id, a call after the cooldown is a new reset.
    let _ = apps[1].reset(POOL, "carol").await;
    assert_eq!(sends(&cognito).await, 2);
    redis.assert_holds_no(&["carol"]);
}

#[tokio::test]
async fn the_backend_budget_holds_for_the_whole_fleet() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let mut config = fleet_config(&redis, OnUnavailable::Deny);
    config.limits.backend_rps = 4;
    config.limits.backend_burst = 4;
    let apps = replicas(3, &config, &cognito.uri()).await;
    let started = Instant::now();
    let names: Vec<String> = (0..45).map(|i| format!("user-{i}")).collect();
    let answers = at_once(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| (&apps[i % 3], request(POOL, name))),
    )
    .await;
    let elapsed = started.elapsed();
    let sent = sends(&cognito).await;
    // The burst, and 4 a second after it: never what three replicas alone would allow (12).
    let allowed = 4 + (elapsed.as_secs_f64() * 4.0).ceil() as usize;
    assert!(sent >= 4 && sent <= allowed, "{sent} sends in {elapsed:?}");
    let refused: Vec<_> = answers.into_iter().filter_map(Result::err).collect();
    assert_eq!(refused.len(), 45 - sent);
    for status in refused {
        assert_eq!(error_info(&status).reason, "RATE_LIMITED");
        let details = details(&status);
        assert_eq!(
            details.quota_failure().unwrap().violations[0].subject,
            "backend"
        );
        let wait = details.retry_info().unwrap().retry_delay.unwrap();
        assert!(wait <= Duration::from_millis(250), "{wait:?}");
    }
}

#[tokio::test]
async fn a_store_that_dies_costs_one_timeout_then_replicas_decide_alone_until_it_returns() {
    let mut redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let mut config = fleet_config(&redis, OnUnavailable::Local);
    config.fleet.as_mut().unwrap().timeout = Duration::from_millis(200);
    let apps = replicas(2, &config, &cognito.uri()).await;
    apps[0].reset(POOL, "dave").await.unwrap();
    redis.kill();
    // Down: calls are answered by each replica alone, at once after the first.
    let started = Instant::now();
    let answer = apps[0].reset(POOL, "erin").await.unwrap();
    assert!(!answer.deduplicated);
    let first = started.elapsed();
    assert!(first < Duration::from_secs(1), "{first:?}");
    let started = Instant::now();
    let repeat = apps[0].reset(POOL, "erin").await.unwrap();
    assert!(repeat.deduplicated, "the replica's own memory");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(sends(&cognito).await, 2);
    // Back: once each replica's probe (or its next call) sees it, the fleet decides again (what
    // it held is gone with it). Each replica learns it on its own, so both are asked until a call
    // on one is seen by the other.
    redis.restart();
    let mut i = 0;
    eventually("the replicas decide through the store again", || {
        i += 1;
        let user = format!("frank-{i}");
        let apps = &apps;
        async move {
            let _ = apps[0].reset(POOL, &user).await;
            apps[1]
                .reset(POOL, &user)
                .await
                .is_ok_and(|answer| answer.deduplicated)
        }
    })
    .await;
    let before = sends(&cognito).await;
    apps[0].reset(POOL, "grace").await.unwrap();
    let shared = apps[1].reset(POOL, "grace").await.unwrap();
    assert!(shared.deduplicated, "decided by the fleet again");
    assert_eq!(sends(&cognito).await, before + 1);
}

#[tokio::test]
async fn with_deny_a_dead_store_refuses_calls_and_sends_nothing() {
    let mut redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let apps = replicas(
        1,
        &fleet_config(&redis, OnUnavailable::Deny),
        &cognito.uri(),
    )
    .await;
    redis.kill();
    for _ in 0..2 {
        let status = apps[0].reset(POOL, "heidi").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(error_info(&status).reason, "FLEET_STORE_UNAVAILABLE");
        assert!(details(&status).retry_info().is_some());
    }
    assert_eq!(sends(&cognito).await, 0);
}

#[tokio::test]
async fn a_replica_that_dies_holding_a_flight_blocks_the_user_no_longer_than_its_lease() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(20))).await;
    // Replica A is the real binary: it is killed while its Cognito call is in flight.
    let files = Files::new("fleet");
    let secret = files.write("secret", &"s".repeat(32));
    let toml = files.write(
        "gateway.toml",
        &format!(
            "[auth]\nmode = \"none\"\n[cognito]\noperation_timeout_ms = 1000\n[limits]\nuser_cooldown_secs = 30\n[fleet]\nredis_url = {:?}\nuser_key_secret_file = {:?}\n",
            redis.url(),
            secret.display().to_string()
        ),
    );
    let env = [
        ("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", cognito.uri()),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "secret".to_owned()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_owned()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_owned()),
    ];
    let mut replica_a = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_binary(&["--config", toml.to_str().unwrap()], &env)
    })
    .await
    .unwrap();
    let mut client =
        cognito_gateway::proto::user_admin_service_client::UserAdminServiceClient::connect(
            format!("http://{}", replica_a.addr),
        )
        .await
        .unwrap();
    let in_flight =
        tokio::spawn(async move { client.reset_user_password(request(POOL, "ivan")).await });
    eventually("replica A's call reaches Cognito", || async {
        sends(&cognito).await == 1
    })
    .await;
    replica_a.child.kill().unwrap();
    replica_a.child.wait().unwrap();
    assert!(in_flight.await.unwrap().is_err());
    // Replica B (same secret, same store) waits out A's lease (1 s operation + 1 s), then sends.
    let mut config = fleet_config(&redis, OnUnavailable::Deny);
    config.fleet.as_mut().unwrap().user_key_secret = sha256(&"s".repeat(32));
    config.cognito.operation_timeout = Duration::from_secs(1);
    cognito.reset().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(cognito_ok("rid-b"))
        .mount(&cognito)
        .await;
    let replica_b = replicas(1, &config, &cognito.uri()).await;
    let started = Instant::now();
    let answer = replica_b[0]
        .reset_request(with_deadline(
            request(POOL, "ivan"),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.cognito_request_id, "rid-b");
    assert!(
        waited < Duration::from_secs(3),
        "bounded by the lease: {waited:?}"
    );
    assert_eq!(sends(&cognito).await, 1);
    redis.assert_holds_no(&["ivan"]);
}

/// How the binary turns `fleet.user_key_secret_file` into its key.
fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).into()
}

#[tokio::test]
async fn spellings_of_one_user_are_one_user_where_the_pool_says_so() {
    for case_sensitive in [false, true] {
        let redis = Redis::start();
        let cognito = fake_cognito_with_pool(cognito_ok("rid"), case_sensitive).await;
        let apps = replicas(
            2,
            &fleet_config(&redis, OnUnavailable::Deny),
            &cognito.uri(),
        )
        .await;
        assert!(!apps[0].reset(POOL, "Judy").await.unwrap().deduplicated);
        let other_spelling = apps[1].reset(POOL, "jUDY").await.unwrap();
        let expected_sends = if case_sensitive { 2 } else { 1 };
        assert_eq!(
            other_spelling.deduplicated, !case_sensitive,
            "case-sensitive pool: {case_sensitive}"
        );
        assert_eq!(sends(&cognito).await, expected_sends);
        redis.assert_holds_no(&["judy"]);
    }
}

#[tokio::test]
async fn with_canonical_identity_an_alias_is_the_same_user() {
    use wiremock::{
        Mock, ResponseTemplate,
        matchers::{body_partial_json, header},
    };
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid")).await;
    for (username, sub) in [
        ("kim", "sub-kim"),
        ("kim@example.com", "sub-kim"),
        ("lee", "sub-lee"),
    ] {
        Mock::given(header(
            "x-amz-target",
            "AWSCognitoIdentityProviderService.AdminGetUser",
        ))
        .and(body_partial_json(
            serde_json::json!({ "Username": username }),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(
                serde_json::json!({
                    "Username": "kim",
                    "UserAttributes": [{ "Name": "sub", "Value": sub }],
                })
                .to_string(),
                "application/x-amz-json-1.1",
            ),
        )
        .mount(&cognito)
        .await;
    }
    Mock::given(header(
        "x-amz-target",
        "AWSCognitoIdentityProviderService.AdminGetUser",
    ))
    .respond_with(cognito_error(
        400,
        "UserNotFoundException",
        "User does not exist.",
        "rid-nf",
    ))
    .with_priority(10)
    .mount(&cognito)
    .await;
    let mut config = fleet_config(&redis, OnUnavailable::Deny);
    config.limits.user_identity = cognito_gateway::config::UserIdentity::Canonical;
    let apps = replicas(2, &config, &cognito.uri()).await;
    assert!(!apps[0].reset(POOL, "kim").await.unwrap().deduplicated);
    assert!(
        apps[1]
            .reset(POOL, "kim@example.com")
            .await
            .unwrap()
            .deduplicated
    );
    assert!(!apps[1].reset(POOL, "lee").await.unwrap().deduplicated);
    assert_eq!(sends(&cognito).await, 2);
    // A user AdminGetUser does not know: NOT_FOUND, and nothing sent.
    let unknown = apps[0].reset(POOL, "nobody").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(sends(&cognito).await, 2);
    redis.assert_holds_no(&["kim", "lee", "sub-"]);
}

/// A: its call in flight at Cognito; B asks meanwhile. Returns once A's call has reached Cognito.
async fn while_a_call_is_at_cognito(
    a: &TestApp,
    cognito: &wiremock::MockServer,
    username: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<ResetUserPasswordResponse>, Status>> {
    let mut client = a.client.clone();
    let request = request(POOL, username);
    let first = tokio::spawn(async move { client.reset_user_password(request).await });
    eventually("A's call reaches Cognito", || async {
        sends(cognito).await == 1
    })
    .await;
    first
}

#[tokio::test]
async fn a_replica_waiting_on_another_learns_the_outcome_within_its_deadline() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid-a").set_delay(Duration::from_millis(300))).await;
    let apps = replicas(
        2,
        &fleet_config(&redis, OnUnavailable::Deny),
        &cognito.uri(),
    )
    .await;
    let first = while_a_call_is_at_cognito(&apps[0], &cognito, "alice").await;
    // A's call ends within 300 ms: B, asking with 800 ms, learns it in time.
    let answer = apps[1]
        .reset_request(with_deadline(
            request(POOL, "alice"),
            Duration::from_millis(800),
        ))
        .await
        .expect("answered before its deadline");
    assert!(answer.deduplicated);
    assert_eq!(answer.cognito_request_id, "rid-a");
    first.await.unwrap().unwrap();
    assert_eq!(sends(&cognito).await, 1);
}

#[tokio::test]
async fn without_a_cooldown_replicas_still_share_a_call_in_flight() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid-a").set_delay(Duration::from_millis(300))).await;
    let mut config = fleet_config(&redis, OnUnavailable::Deny);
    config.limits.user_cooldown = Duration::ZERO;
    let apps = replicas(2, &config, &cognito.uri()).await;
    let first = while_a_call_is_at_cognito(&apps[0], &cognito, "alice").await;
    let shared = apps[1].reset(POOL, "alice").await.unwrap();
    assert!(shared.deduplicated);
    assert!(!first.await.unwrap().unwrap().into_inner().deduplicated);
    assert_eq!(sends(&cognito).await, 1);
}

#[tokio::test]
async fn an_outage_around_a_calls_end_loses_nothing_once_the_store_is_back() {
    let redis = Redis::start();
    let cognito = fake_cognito(cognito_ok("rid-a").set_delay(Duration::from_millis(500))).await;
    let mut config = fleet_config(&redis, OnUnavailable::Deny);
    config.fleet.as_mut().unwrap().timeout = Duration::from_millis(200);
    let apps = replicas(2, &config, &cognito.uri()).await;
    let first = while_a_call_is_at_cognito(&apps[0], &cognito, "alice").await;
    // The store refuses everyone while A's call ends: A cannot record its outcome then.
    redis.refuse_clients(true);
    first
        .await
        .unwrap()
        .expect("A's caller is answered all the same");
    redis.refuse_clients(false);
    // Once the store answers again, A tells it the outcome it missed, before it decides anything.
    eventually("A's outcome reaches the store", || async {
        redis.holds(":u:", "rid-a")
    })
    .await;
    let repeat = apps[1].reset(POOL, "alice").await.unwrap();
    assert!(repeat.deduplicated, "no second code");
    assert_eq!(sends(&cognito).await, 1);
}

#[tokio::test]
async fn a_call_that_waited_into_a_shutdown_sends_nothing_it_could_not_finish() {
    let redis = Redis::start();
    // A's call fails definitely (nothing to remember), 500 ms in.
    let cognito = fake_cognito(
        cognito_error(
            400,
            "UserNotFoundException",
            "User does not exist.",
            "rid-a",
        )
        .set_delay(Duration::from_millis(500)),
    )
    .await;
    let mut config = fleet_config(&redis, OnUnavailable::Deny);
    // A shutdown that must be over before a Cognito call could be.
    config.server.shutdown_grace = Duration::from_secs(2);
    config.cognito.operation_timeout = Duration::from_secs(5);
    let mut apps = replicas(2, &config, &cognito.uri()).await;
    let first = while_a_call_is_at_cognito(&apps[0], &cognito, "alice").await;
    // B asks meanwhile, and waits on A's call; then B's shutdown begins.
    let mut client = apps[1].client.clone();
    let waiting =
        tokio::spawn(async move { client.reset_user_password(request(POOL, "alice")).await });
    eventually("B waits on A's call", || async { redis.holds(":w:", "*") }).await;
    apps[1].begin_shutdown();
    // A's call ends with nothing sent: B could lead now, but its reset could be cut off.
    let failed = first.await.unwrap().unwrap_err();
    assert_eq!(failed.code(), Code::NotFound, "{failed:?}");
    let refused = waiting.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(error_info(&refused).reason, "OVERLOADED");
    assert_eq!(sends(&cognito).await, 1);
}
