//! Callers: authentication, per-pool authorization, the gateway's limits, de-duplication and load
//! shedding, through the real server.

use std::{sync::Arc, time::Duration};

use clap::Parser as _;
use cognito_gateway::{
    Config,
    cli::{Cli, Command},
    config::{AccessConfig, AuthMode, CallerConfig},
    proto::ResetUserPasswordRequest,
};
use sha2::{Digest as _, Sha256};
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wiremock::MockServer;

use crate::{
    helpers::{details, error_info, eventually},
    kit::{
        app::{TestApp, request, sdk_backend, spawn_app_with, test_config, test_settings},
        fake_cognito::{cognito_ok, fake_cognito, sends},
        files::Files,
    },
};

const POOL: &str = "us-east-1_Callers1";
const OTHER_POOL: &str = "us-east-1_Callers2";

fn sha_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn caller(name: &str, token: &str, pools: Option<&[&str]>) -> CallerConfig {
    CallerConfig {
        name: name.into(),
        token_sha256: Some(Sha256::digest(token.as_bytes()).into()),
        user_pools: pools.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        rate_per_second: 10_000,
        burst: 10_000,
    }
}

fn token_config(callers: Vec<CallerConfig>) -> Config {
    let mut config = test_config();
    config.access = AccessConfig {
        mode: AuthMode::Token,
        callers,
        ..AccessConfig::none()
    };
    config
}

async fn app_for(config: Config, server: &MockServer) -> TestApp {
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    spawn_app_with(config, backend).await
}

fn with_token(message: ResetUserPasswordRequest, token: &str) -> Request<ResetUserPasswordRequest> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn the_right_token_passes_and_others_are_unauthenticated_alike() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = app_for(
        token_config(vec![caller("billing", "s3cret-billing", None)]),
        &server,
    )
    .await;
    app.reset_request(with_token(request(POOL, "alice"), "s3cret-billing"))
        .await
        .unwrap();

    let mut messages = Vec::new();
    for attempt in [
        Request::new(request(POOL, "alice")),
        with_token(request(POOL, "alice"), "wrong"),
        with_token(request(POOL, "alice"), ""),
        {
            let mut r = Request::new(request(POOL, "alice"));
            r.metadata_mut()
                .insert("authorization", "Basic czNjcmV0".parse().unwrap());
            r
        },
    ] {
        let status = app.reset_request(attempt).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let info = error_info(&status);
        assert_eq!(info.reason, "UNAUTHENTICATED");
        assert_eq!(info.domain, "cognito-gateway");
        messages.push(status.message().to_owned());
    }
    // The reply never says which check failed.
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    assert_eq!(sends(&server).await, 1);
}

/// A refusal whose status never varies is answered from one built once, unless the call is
/// traced: then its RequestInfo names the trace, as any other failed call's does.
#[tokio::test]
async fn a_traced_refusal_names_its_trace_and_an_untraced_one_is_the_same_each_time() {
    // The binary installs this propagator at start; tests in process have none otherwise.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = app_for(
        token_config(vec![caller("billing", "s3cret-billing", None)]),
        &server,
    )
    .await;
    let mut traced = with_token(request(POOL, "alice"), "wrong");
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let traced = app.reset_request(traced).await.unwrap_err();
    assert_eq!(traced.code(), Code::Unauthenticated);
    let info = details(&traced).request_info().cloned();
    assert_eq!(info.map(|info| info.request_id).as_deref(), Some(TRACE_ID));

    let mut untraced = Vec::new();
    for _ in 0..2 {
        let status = app
            .reset_request(with_token(request(POOL, "alice"), "wrong"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(details(&status).request_info().is_none(), "{status:?}");
        assert_eq!(error_info(&status).reason, "UNAUTHENTICATED");
        assert_eq!(status.message(), traced.message());
        untraced.push(status.details().to_vec());
    }
    assert_eq!(untraced[0], untraced[1]);
    assert_eq!(sends(&server).await, 0);
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = app_for(token_config(vec![caller("billing", "t", None)]), &server).await;
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    let status = app.reset(POOL, "alice").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn callers_reach_only_their_pools() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = app_for(
        token_config(vec![
            caller("billing", "tb", Some(&[POOL])),
            caller("ops", "to", None),
        ]),
        &server,
    )
    .await;
    app.reset_request(with_token(request(POOL, "alice"), "tb"))
        .await
        .unwrap();
    let status = app
        .reset_request(with_token(request(OTHER_POOL, "alice"), "tb"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = error_info(&status);
    assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
    assert_eq!(info.metadata["caller"], "billing");
    // Denied before anything about the pool is looked at: even an invalid id is just "not allowed".
    let status = app
        .reset_request(with_token(request("garbage", "alice"), "tb"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(sends(&server).await, 1);
    // "*" reaches every pool.
    app.reset_request(with_token(request(OTHER_POOL, "alice"), "to"))
        .await
        .unwrap();
    assert_eq!(sends(&server).await, 2);
}

#[tokio::test]
async fn a_callers_own_rate_limits_it_alone_with_the_exact_wait() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut slow = caller("slow", "ts", None);
    slow.rate_per_second = 1;
    slow.burst = 2;
    let app = app_for(
        token_config(vec![slow, caller("fast", "tf", None)]),
        &server,
    )
    .await;
    for user in ["a", "b"] {
        app.reset_request(with_token(request(POOL, user), "ts"))
            .await
            .unwrap();
    }
    let status = app
        .reset_request(with_token(request(POOL, "c"), "ts"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "RATE_LIMITED");
    let details = details(&status);
    let wait = details.retry_info().unwrap().retry_delay.unwrap();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    assert_eq!(
        details.quota_failure().unwrap().violations[0].subject,
        "caller:slow"
    );
    // Another caller is not affected.
    app.reset_request(with_token(request(POOL, "d"), "tf"))
        .await
        .unwrap();
    assert_eq!(sends(&server).await, 3);
}

#[tokio::test]
async fn the_backend_guard_caps_cognito_calls_across_callers() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.limits.backend_rps = 1;
    config.limits.backend_burst = 2;
    let app = app_for(config, &server).await;
    app.reset(POOL, "a").await.unwrap();
    app.reset(POOL, "b").await.unwrap();
    let status = app.reset(POOL, "c").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "RATE_LIMITED");
    let details = details(&status);
    assert!(details.retry_info().unwrap().retry_delay.unwrap() > Duration::ZERO);
    assert_eq!(
        details.quota_failure().unwrap().violations[0].subject,
        "backend"
    );
    assert_eq!(sends(&server).await, 2, "the rejected call was not sent");
}

#[tokio::test]
async fn a_pool_limit_keeps_one_pool_from_taking_the_backend_budget() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.limits.pool_rps = 1;
    config.limits.pool_burst = 2;
    let app = app_for(config, &server).await;
    app.reset(POOL, "a").await.unwrap();
    app.reset(POOL, "b").await.unwrap();
    let status = app.reset(POOL, "c").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status).reason, "RATE_LIMITED");
    let details = details(&status);
    assert!(details.retry_info().unwrap().retry_delay.unwrap() > Duration::ZERO);
    assert_eq!(
        details.quota_failure().unwrap().violations[0].subject,
        format!("pool:{POOL}")
    );
    // Another pool has its own share.
    app.reset("us-east-1_Callers2", "a").await.unwrap();
    assert_eq!(sends(&server).await, 3, "the refused call was not sent");
}

#[tokio::test]
async fn fifty_identical_calls_make_one_send_and_a_repeat_makes_none() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_millis(200))).await;
    let mut config = test_config();
    config.limits.user_cooldown = Duration::from_secs(1);
    let app = app_for(config, &server).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move { client.reset_user_password(request(POOL, "alice")).await })
        })
        .collect();
    let mut deduplicated = 0;
    for call in calls {
        let response = call.await.unwrap().unwrap().into_inner();
        assert_eq!(response.cognito_request_id, "rid");
        deduplicated += usize::from(response.deduplicated);
    }
    assert_eq!(sends(&server).await, 1);
    assert_eq!(deduplicated, 49);

    let repeat = app.reset(POOL, "alice").await.unwrap();
    assert!(repeat.deduplicated);
    assert_eq!(sends(&server).await, 1);

    // Once the window has passed, the next call reaches Cognito again (and only that one).
    eventually("the cooldown to pass", || async {
        !app.reset(POOL, "alice").await.unwrap().deduplicated
    })
    .await;
    assert_eq!(sends(&server).await, 2);
}

#[tokio::test]
async fn beyond_max_in_flight_calls_are_shed_not_queued() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(2))).await;
    let mut config = test_config();
    config.limits.max_in_flight = 2;
    let app = Arc::new(app_for(config, &server).await);
    let held: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|user| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.reset(POOL, user).await })
        })
        .collect();
    eventually("two calls in flight", || async {
        sends(&server).await == 2
    })
    .await;
    let status = app.reset(POOL, "c").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).reason, "OVERLOADED");
    assert!(details(&status).retry_info().is_some());
    // Probes still get through.
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    for call in held {
        call.await.unwrap().unwrap();
    }
    assert_eq!(sends(&server).await, 2);
    app.reset(POOL, "c").await.unwrap();
}

#[tokio::test]
async fn one_caller_cannot_take_every_place_in_flight() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(2))).await;
    let mut config = token_config(vec![
        caller("billing", "tok-billing", None),
        caller("support", "tok-support", None),
    ]);
    config.limits.max_in_flight = 4;
    config.limits.max_in_flight_per_caller = 2;
    let app = Arc::new(app_for(config, &server).await);
    let held: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|user| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                app.reset_request(with_token(request(POOL, user), "tok-billing"))
                    .await
            })
        })
        .collect();
    eventually("billing's two calls in flight", || async {
        sends(&server).await == 2
    })
    .await;
    let status = app
        .reset_request(with_token(request(POOL, "c"), "tok-billing"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).reason, "OVERLOADED");
    // Another caller still has places.
    app.reset_request(with_token(request(POOL, "d"), "tok-support"))
        .await
        .unwrap();
    for call in held {
        call.await.unwrap().unwrap();
    }
    assert_eq!(sends(&server).await, 3);
}

/// A config file on disk, as an operator writes it, for the reload tests.
struct ConfigFile(Files);

impl ConfigFile {
    const NAME: &str = "gateway.toml";

    fn new(name: &str) -> Self {
        Self(Files::new(name))
    }

    fn write(&self, callers: &[(&str, &str, &str)]) {
        let mut text = String::from("[auth]\nmode = \"token\"\nreload_interval_secs = 1\n");
        for (name, token, pools) in callers {
            text += &format!(
                "[[callers]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nuser_pools = [{pools}]\nrate_per_second = 1000\nburst = 1000\n",
                sha_hex(token)
            );
        }
        // Written as Kubernetes swaps mounted files: never a half-written file.
        self.0.write(Self::NAME, &text);
    }

    fn load(&self) -> Config {
        let cli = Cli::try_parse_from(
            [
                "cognito-gateway",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
            ]
            .into_iter()
            .map(String::from)
            .chain([self.0.path(Self::NAME).display().to_string()]),
        )
        .unwrap();
        let Command::Serve(args) = cli.command else {
            unreachable!("parsed serve")
        };
        Config::load(&args).unwrap()
    }
}

#[tokio::test]
async fn tokens_and_pools_reload_without_a_restart() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let file = ConfigFile::new("reload");
    file.write(&[("billing", "old-token", &format!("\"{POOL}\""))]);
    let app = app_for(file.load(), &server).await;
    app.reset_request(with_token(request(POOL, "a"), "old-token"))
        .await
        .unwrap();

    // Rotate the token and widen the pools.
    file.write(&[("billing", "new-token", "\"*\"")]);
    eventually("the new token to be accepted", || async {
        app.reset_request(with_token(request(OTHER_POOL, "b"), "new-token"))
            .await
            .is_ok()
    })
    .await;
    let old = app
        .reset_request(with_token(request(POOL, "c"), "old-token"))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated);
}
