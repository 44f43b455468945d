//! Backend chaos: the real SDK against a Cognito that fails below HTTP (`kit::chaos_cognito`).
//!
//! For each fault: the caller's code and reason (docs/errors.md), the sends (never more than the
//! retry rules allow; exactly one where the outcome is unknown), what the gate remembers after the
//! fault (contract §5: an unknown outcome for the cooldown, a definite failure not at all), and
//! normal service once the fault stops. Timeouts are a few hundred milliseconds; nothing sleeps:
//! the fake signals what it read, and the tests await that.

use std::{sync::Arc, time::Duration};

use cognito_gateway::{Config, config::CognitoSettings};
use tonic::{Code, Status};

use crate::{
    helpers::{details, error_info, eventually, with_deadline},
    kit::{
        app::{TestApp, request, sdk_backend, spawn_app_with, test_config, test_settings},
        chaos_cognito::{ChaosCognito, Fault},
    },
};

const POOL: &str = "us-east-1_Chaos1";
const COOLDOWN: Duration = Duration::from_secs(30);
/// `cognito.operation_timeout_ms` where a test waits for it to run out: long enough for a loopback
/// call on a loaded machine, short enough that a hang costs the suite little.
const HANG_TIMEOUT: Duration = Duration::from_secs(1);

/// Three attempts, a short connect timeout, and `cooldown` for the gate. The operation timeout
/// stays long (5 s): a test that waits for it sets [`HANG_TIMEOUT`].
fn chaos_config(cooldown: Duration) -> Config {
    let mut config = test_config();
    config.limits.user_cooldown = cooldown;
    config.cognito = CognitoSettings {
        connect_timeout: Duration::from_millis(100),
        max_attempts: 3,
        ..test_settings()
    };
    config
}

/// [`chaos_config`] for a test that waits for the operation timeout.
fn hang_config(cooldown: Duration) -> Config {
    let mut config = chaos_config(cooldown);
    config.cognito.operation_timeout = HANG_TIMEOUT;
    config
}

async fn chaos_app(endpoint: &str, config: Config) -> TestApp {
    let backend = sdk_backend(endpoint, config.cognito.clone()).await;
    spawn_app_with(config, backend).await
}

/// A gateway in front of the fake, having served one call normally: the pool is described (and
/// cached), and the SDK holds an open connection, as in a gateway that has been running.
async fn warmed_up(cognito: &ChaosCognito, config: Config) -> TestApp {
    let app = chaos_app(&cognito.endpoint(), config).await;
    app.reset(POOL, "warm-up")
        .await
        .expect("the fake answers normally before any fault");
    app
}

fn assert_reason(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{:?} {status:?}", error_info(status));
    assert_eq!(error_info(status).reason, reason, "{status:?}");
}

/// RESET_OUTCOME_UNKNOWN for `exception`, raised by `domain`, with RetryInfo the rest of the
/// cooldown.
fn assert_unknown(status: &Status, exception: &str, domain: &str) {
    assert_reason(status, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
    let info = error_info(status);
    assert_eq!(info.metadata["exception"], exception, "{info:?}");
    assert_eq!(info.domain, domain, "{info:?}");
    let wait = details(status)
        .retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("an unknown outcome says when the cooldown ends");
    assert!(wait <= COOLDOWN && wait > COOLDOWN / 2, "{wait:?}");
}

/// The rules for a fault after which the reset may have happened: UNKNOWN, sent exactly once,
/// remembered for the cooldown (a repeat is answered from memory, during the fault and after it),
/// and normal service for everyone else once the fault stops.
async fn unknown_outcome(fault: Fault, exception: &str, domain: &str) {
    let cognito = ChaosCognito::start().await;
    let config = match exception {
        "Timeout" => hang_config(COOLDOWN),
        _ => chaos_config(COOLDOWN),
    };
    let app = warmed_up(&cognito, config).await;
    cognito.set(fault);

    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_unknown(&status, exception, domain);
    assert_eq!(
        cognito.sends_for("alice"),
        1,
        "may have happened: never re-sent"
    );

    let repeat = app.reset(POOL, "alice").await.unwrap_err();
    assert_reason(&repeat, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
    assert_eq!(error_info(&repeat).metadata["deduplicated"], "true");
    assert_eq!(cognito.sends_for("alice"), 1, "answered from memory");

    cognito.set(Fault::None);
    let bob = app.reset(POOL, "bob").await.expect("service is back");
    assert!(!bob.deduplicated);
    assert_eq!(cognito.sends_for("bob"), 1);
    let after = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(error_info(&after).metadata["deduplicated"], "true");
    assert_eq!(
        cognito.sends_for("alice"),
        1,
        "within the cooldown alice gets no second code, fault or not"
    );
}

#[tokio::test]
async fn silence_after_the_request_is_written_is_unknown_and_sent_once() {
    unknown_outcome(Fault::HangAfterRequest, "Timeout", "cognito-gateway").await;
}

#[tokio::test]
async fn a_reset_connection_mid_response_is_unknown_and_sent_once() {
    unknown_outcome(Fault::ResetMidResponse, "ConnectionLost", "cognito-gateway").await;
}

#[tokio::test]
async fn a_body_that_stalls_is_unknown_and_sent_once() {
    unknown_outcome(Fault::StallMidBody, "Timeout", "cognito-gateway").await;
}

#[tokio::test]
async fn a_reply_longer_than_any_cognito_sends_is_cut_off_unknown_and_sent_once() {
    // 8 MiB is read no further than its first MiB: unreadable, after a 200.
    unknown_outcome(Fault::HugeBody, "ConnectionLost", "cognito-gateway").await;
}

#[tokio::test]
async fn a_truncated_5xx_body_is_unknown_and_sent_once() {
    unknown_outcome(
        Fault::TruncatedJson { status: 500 },
        "HttpError",
        "cognito-idp.amazonaws.com",
    )
    .await;
}

#[tokio::test]
async fn a_503_without_a_known_exception_is_unknown_and_sent_once() {
    let fault = Fault::Error {
        status: 503,
        exception: "ServiceUnavailable",
    };
    unknown_outcome(fault, "ServiceUnavailable", "cognito-idp.amazonaws.com").await;
}

#[tokio::test]
async fn a_truncated_200_body_is_what_cognito_did_a_reset() {
    // Cognito answered 200: the reset happened, whatever became of the body.
    let cognito = ChaosCognito::start().await;
    let app = warmed_up(&cognito, chaos_config(COOLDOWN)).await;
    cognito.set(Fault::TruncatedJson { status: 200 });
    let answer = app.reset(POOL, "alice").await;
    // The outcome must be one that is remembered: OK, or an unknown outcome. A definite failure
    // would invite a retry, and the retry a second code.
    match &answer {
        Ok(_) => {}
        Err(status) => assert_reason(status, Code::Unknown, "RESET_OUTCOME_UNKNOWN"),
    }
    cognito.set(Fault::None);
    let _repeat = app.reset(POOL, "alice").await;
    assert_eq!(cognito.sends_for("alice"), 1, "{answer:?}");
}

#[tokio::test]
async fn without_a_cooldown_an_unknown_outcome_is_forgotten_once_answered() {
    // limits.user_cooldown_secs = 0 remembers nothing, and nobody else waited on the call (the
    // FLIGHT_GRACE of gate.rs applies only then): the next call after the fault is a new reset.
    let cognito = ChaosCognito::start().await;
    let app = warmed_up(&cognito, hang_config(Duration::ZERO)).await;
    cognito.set(Fault::HangAfterRequest);
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_reason(&status, Code::Unknown, "RESET_OUTCOME_UNKNOWN");
    assert!(
        details(&status).retry_info().is_none(),
        "no cooldown to wait for"
    );
    cognito.set(Fault::None);
    let again = app.reset(POOL, "alice").await.expect("service is back");
    assert!(!again.deduplicated);
    assert_eq!(cognito.sends_for("alice"), 2);
}

#[tokio::test]
async fn a_5xx_storm_sends_each_reset_once_and_remembers_each() {
    const USERS: usize = 16;
    let cognito = ChaosCognito::start().await;
    let app = Arc::new(warmed_up(&cognito, chaos_config(COOLDOWN)).await);
    cognito.set(Fault::Error {
        status: 500,
        exception: "InternalErrorException",
    });
    let storm = |app: Arc<TestApp>| async move {
        let calls: Vec<_> = (0..USERS)
            .map(|i| {
                let app = Arc::clone(&app);
                tokio::spawn(async move { app.reset(POOL, &format!("storm-{i}")).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for call in calls {
            statuses.push(call.await.unwrap().unwrap_err());
        }
        statuses
    };
    for status in storm(Arc::clone(&app)).await {
        assert_unknown(
            &status,
            "InternalErrorException",
            "cognito-idp.amazonaws.com",
        );
    }
    assert_eq!(
        cognito.sends(),
        1 + USERS,
        "the warm-up, then one send per user"
    );
    // The storm goes on; callers retry: every answer from memory, nothing sent.
    for status in storm(Arc::clone(&app)).await {
        assert_eq!(error_info(&status).metadata["deduplicated"], "true");
    }
    cognito.set(Fault::None);
    for status in storm(Arc::clone(&app)).await {
        assert_eq!(error_info(&status).metadata["deduplicated"], "true");
    }
    assert_eq!(cognito.sends(), 1 + USERS);
    assert!(app.reset(POOL, "after-the-storm").await.is_ok());
    assert_eq!(cognito.sends(), 2 + USERS);
}

#[tokio::test]
async fn a_throttling_storm_retries_within_max_attempts_and_is_forgotten() {
    const USERS: usize = 8;
    let cognito = ChaosCognito::start().await;
    let app = Arc::new(warmed_up(&cognito, chaos_config(COOLDOWN)).await);
    cognito.set(Fault::Error {
        status: 400,
        exception: "TooManyRequestsException",
    });
    let calls: Vec<_> = (0..USERS)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.reset(POOL, &format!("throttled-{i}")).await })
        })
        .collect();
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_reason(&status, Code::ResourceExhausted, "COGNITO_THROTTLED");
        assert!(details(&status).retry_info().is_some());
    }
    for i in 0..USERS {
        assert_eq!(
            cognito.sends_for(&format!("throttled-{i}")),
            3,
            "throttling certainly did not happen: retried up to cognito.max_attempts"
        );
    }
    // Throttling is a definite failure: not remembered, so the same people are reset at once
    // when Cognito recovers, each with one send.
    cognito.set(Fault::None);
    for i in 0..USERS {
        let user = format!("throttled-{i}");
        let ok = app.reset(POOL, &user).await.expect("service is back");
        assert!(!ok.deduplicated);
        assert_eq!(cognito.sends_for(&user), 4);
    }
}

#[tokio::test]
async fn a_dns_failure_is_unreachable_and_nothing_is_remembered() {
    // `.invalid` never resolves (RFC 6761).
    let app = chaos_app(
        "http://cognito-idp.chaos.invalid:443",
        chaos_config(COOLDOWN),
    )
    .await;
    for _ in 0..2 {
        let status = app.reset(POOL, "alice").await.unwrap_err();
        assert_reason(&status, Code::Unavailable, "BACKEND_UNREACHABLE");
        assert!(details(&status).retry_info().is_some());
        assert!(!error_info(&status).metadata.contains_key("deduplicated"));
    }
}

#[tokio::test]
async fn a_failed_tls_handshake_is_unreachable_retried_and_sends_nothing() {
    let cognito = ChaosCognito::start().await;
    cognito.set(Fault::Garbage);
    let app = chaos_app(&cognito.tls_endpoint(), chaos_config(COOLDOWN)).await;
    // The spare connection the gateway opens at start (cognito/connect.rs); it fails too, and is
    // tried again only after `connection_refresh`, long after this test.
    cognito.accepted(1).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_reason(&status, Code::Unavailable, "BACKEND_UNREACHABLE");
    // DescribeUserPool, then the reset: each tries max_attempts connections, no more (a failure to
    // connect is certain not to have reached Cognito, so it is retried).
    assert_eq!(cognito.connections(), 1 + 3 + 3);
    assert_eq!(cognito.sends(), 0);
    // Nothing was remembered: the repeat tries again, as the first call did (the pool's failed
    // description is not retried for a minute: the usernames are compared exactly meanwhile).
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_reason(&status, Code::Unavailable, "BACKEND_UNREACHABLE");
    assert_eq!(cognito.connections(), 1 + 3 + 3 + 3);
}

#[tokio::test]
async fn a_handshake_never_answered_times_out_connecting_and_is_unreachable() {
    // The timeout before the request is written: the server accepts the connection and never
    // answers the TLS hello. The connect timeout (100 ms) ends each attempt; three attempts fit
    // in the operation timeout, and nothing was sent.
    let cognito = ChaosCognito::start().await;
    cognito.set(Fault::Silent);
    let app = chaos_app(&cognito.tls_endpoint(), chaos_config(COOLDOWN)).await;
    // The spare the gateway opens at start: it times out too, and is tried again only after
    // `connection_refresh`.
    cognito.accepted(1).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_reason(&status, Code::Unavailable, "BACKEND_UNREACHABLE");
    assert_eq!(
        cognito.connections(),
        1 + 3 + 3,
        "the spare, DescribeUserPool's attempts, then the reset's"
    );
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_reason(&status, Code::Unavailable, "BACKEND_UNREACHABLE");
    assert_eq!(
        cognito.connections(),
        1 + 3 + 3 + 3,
        "nothing remembered: tried anew"
    );
}

#[tokio::test]
async fn an_endpoint_that_accepts_and_never_answers_is_unknown() {
    // Plain HTTP: the request sits in the socket buffer, unread. The gateway cannot tell that from
    // a Cognito that read it and went silent, so the outcome is unknown and nothing is re-sent.
    let cognito = ChaosCognito::start().await;
    cognito.set(Fault::Silent);
    let app = chaos_app(&cognito.endpoint(), hang_config(COOLDOWN)).await;
    cognito.accepted(1).await;
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_unknown(&status, "Timeout", "cognito-gateway");
    // DescribeUserPool took the spare opened at start, the reset its replacement, and a third
    // replaced that: neither call retried (a retry would be a connection more).
    cognito.accepted(3).await;
    assert_eq!(cognito.connections(), 3);
    cognito.set(Fault::None);
    assert!(app.reset(POOL, "bob").await.is_ok(), "service is back");
    assert_eq!(cognito.sends_for("bob"), 1);
}

#[tokio::test]
async fn a_hang_sheds_calls_beyond_max_in_flight_and_frees_every_place() {
    const PLACES: usize = 4;
    let cognito = ChaosCognito::start().await;
    let mut config = hang_config(COOLDOWN);
    config.limits.max_in_flight = PLACES;
    config.limits.max_in_flight_per_caller = PLACES;
    let app = Arc::new(warmed_up(&cognito, config).await);
    cognito.set(Fault::HangAfterRequest);
    let spawn = |user: String| {
        let app = Arc::clone(&app);
        tokio::spawn(async move { app.reset(POOL, &user).await })
    };
    let held: Vec<_> = (0..PLACES).map(|i| spawn(format!("held-{i}"))).collect();
    cognito.read_resets(1 + PLACES).await;
    // Every place is taken: more calls are refused at once, not queued behind the hang.
    for i in 0..3 * PLACES {
        let status = app.reset(POOL, &format!("shed-{i}")).await.unwrap_err();
        assert_reason(&status, Code::Unavailable, "OVERLOADED");
    }
    for call in held {
        let status = call.await.unwrap().unwrap_err();
        assert_unknown(&status, "Timeout", "cognito-gateway");
    }
    assert_eq!(cognito.sends(), 1 + PLACES, "the shed calls sent nothing");
    // The fault stops: every place is free again.
    cognito.set(Fault::None);
    let calls: Vec<_> = (0..PLACES).map(|i| spawn(format!("after-{i}"))).collect();
    for call in calls {
        assert!(call.await.unwrap().is_ok(), "a place was not returned");
    }
}

#[tokio::test]
async fn callers_giving_up_during_a_hang_cannot_pile_up_calls_beyond_the_backend_guard() {
    // A caller's deadline frees its place, but its reset runs on (its outcome decides whether the
    // person may get another code). What bounds those is the backend guard: a flood of callers
    // with short deadlines during a hang starts at most backend_burst resets, and the rest are
    // refused, not queued.
    const BURST: u32 = 6;
    let cognito = ChaosCognito::start().await;
    let mut config = hang_config(COOLDOWN);
    config.limits.backend_rps = 1;
    config.limits.backend_burst = BURST;
    config.limits.max_in_flight = 4;
    config.limits.max_in_flight_per_caller = 4;
    let app = Arc::new(warmed_up(&cognito, config).await);
    cognito.set(Fault::HangAfterRequest);
    let mut refused = 0;
    let mut gave_up = 0;
    for wave in 0..4 {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    let request = with_deadline(
                        request(POOL, &format!("flood-{wave}-{i}")),
                        Duration::from_millis(100),
                    );
                    app.reset_request(request).await
                })
            })
            .collect();
        for call in calls {
            let status = call.await.unwrap().unwrap_err();
            // tonic's client enforces the deadline too; on a loaded machine its timer may end the
            // call before the gateway's DEADLINE_EXCEEDED arrives.
            if status.code() == Code::Cancelled && status.message().contains("Timeout expired") {
                gave_up += 1;
                continue;
            }
            match error_info(&status).reason.as_str() {
                "DEADLINE_EXCEEDED" => gave_up += 1,
                "OVERLOADED" | "RATE_LIMITED" => refused += 1,
                other => panic!("unexpected {other}: {status:?}"),
            }
        }
    }
    let sent = cognito.sends() - 1;
    assert!(sent <= gave_up, "{sent} sends for {gave_up} calls admitted");
    // The warm-up spent one token; the refill over the test (1/s) may add one or two.
    assert!(sent < BURST as usize + 3, "{sent} resets hung at once");
    assert!(refused > 0, "the flood was refused, not queued");
    assert_eq!(refused + gave_up, 32);
    // The fault stops: once the guard has refilled, resets go out again, one send each.
    cognito.set(Fault::None);
    let before = cognito.sends();
    eventually("a reset after the flood", || async {
        app.reset(POOL, "after-the-flood").await.is_ok()
    })
    .await;
    assert_eq!(cognito.sends(), before + 1, "refusals sent nothing");
}
