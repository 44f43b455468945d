//! `serve --local`: the embedded Cognito, through the same SDK path as production.

use cognito_gateway::local::{DEMO_POOL_ID, DEMO_USERS, LocalCognito, UserStatus};
use tonic::Code;

use crate::{
    helpers::error_info,
    kit::app::{TestApp, sdk_backend, spawn_app_with, test_config, test_settings},
};

async fn local_app() -> (LocalCognito, TestApp) {
    let local = LocalCognito::start().await.unwrap();
    let backend = sdk_backend(&local.endpoint_url(), test_settings()).await;
    let app = spawn_app_with(test_config(), backend).await;
    (local, app)
}

#[tokio::test]
async fn the_resettable_demo_user_is_reset_and_a_repeat_changes_nothing() {
    let (local, app) = local_app().await;
    assert_eq!(
        local.user_status(DEMO_POOL_ID, "alice"),
        Some(UserStatus::Confirmed)
    );
    let first = app.reset(DEMO_POOL_ID, "alice").await.unwrap();
    assert!(
        first.cognito_request_id.starts_with("local-"),
        "{}",
        first.cognito_request_id
    );
    assert_eq!(
        local.user_status(DEMO_POOL_ID, "alice"),
        Some(UserStatus::ResetRequired)
    );
    let second = app.reset(DEMO_POOL_ID, "alice").await.unwrap();
    assert_ne!(first.cognito_request_id, second.cognito_request_id);
    assert_eq!(local.resets(), 2);
}

#[tokio::test]
async fn the_other_demo_users_fail_as_announced() {
    let (local, app) = local_app().await;
    let expected = [
        (
            "bob-disabled",
            Code::FailedPrecondition,
            "USER_NOT_RESETTABLE",
        ),
        (
            "carol-unconfirmed",
            Code::FailedPrecondition,
            "USER_NOT_RESETTABLE",
        ),
        (
            "dave-no-contact",
            Code::FailedPrecondition,
            "NO_VERIFIED_CONTACT",
        ),
        ("nobody", Code::NotFound, "USER_NOT_FOUND"),
    ];
    for (user, code, reason) in expected {
        let status = app.reset(DEMO_POOL_ID, user).await.unwrap_err();
        assert_eq!(status.code(), code, "{user}: {status:?}");
        assert_eq!(error_info(&status).reason, reason, "{user}");
        // What the start-up banner promises must be what happens.
        if let Some(demo) = DEMO_USERS.iter().find(|d| d.username == user) {
            assert!(
                demo.expected.contains(reason),
                "{user}: banner says {:?}",
                demo.expected
            );
        }
        // Failed resets change nothing.
        assert_ne!(
            local.user_status(DEMO_POOL_ID, user),
            Some(UserStatus::ResetRequired)
        );
    }
    let status = app.reset("local-1_NoSuchPool", "alice").await.unwrap_err();
    assert_eq!(error_info(&status).reason, "USER_POOL_NOT_FOUND");
}
