//! mTLS: certificates generated here (rcgen); the caller is the client certificate's SPIFFE ID.

use std::time::Duration;

use cognito_gateway::{
    config::{AccessConfig, AuthMode, CallerConfig, MtlsConfig},
    proto::user_admin_service_client::UserAdminServiceClient,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use wiremock::MockServer;

use crate::{
    helpers::{Ca, error_info, eventually},
    kit::{
        app::{TestApp, request, sdk_backend, spawn_app_with, test_config, test_settings},
        fake_cognito::{cognito_ok, fake_cognito},
        files::Files,
    },
};

const POOL: &str = "us-east-1_Mtls1";
const BILLING: &str = "spiffe://cluster.local/ns/billing/sa/api";

/// A gateway in mTLS mode whose server certificate and client CA are `server_ca`'s and
/// `client_ca`'s, with the callers `billing` (SPIFFE ID) allowed in POOL.
async fn mtls_app(
    files: &Files,
    server_ca: &Ca,
    client_ca_pem: &str,
    cognito: &MockServer,
) -> TestApp {
    let (cert, key) = server_ca.issue(&["localhost"], None);
    let mut config = test_config();
    config.access = AccessConfig {
        mode: AuthMode::Mtls,
        callers: vec![CallerConfig {
            name: BILLING.into(),
            token_sha256: None,
            user_pools: Some(vec![POOL.into()]),
            rate_per_second: 10_000,
            burst: 10_000,
        }],
        mtls: Some(MtlsConfig {
            cert_file: files.write("server.pem", &cert),
            key_file: files.write("server.key", &key),
            client_ca_file: files.write("clients-ca.pem", client_ca_pem),
            handshake_timeout: Duration::from_secs(5),
        }),
        reload_interval: Duration::from_secs(1),
        ..AccessConfig::none()
    };
    let backend = sdk_backend(&cognito.uri(), test_settings()).await;
    // The helper's own plaintext client is of no use here; the tests make TLS clients.
    spawn_app_with(config, backend).await
}

async fn client(
    app: &TestApp,
    server_ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<UserAdminServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server_ca.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(UserAdminServiceClient::new(channel))
}

async fn reset(
    client: Result<UserAdminServiceClient<Channel>, tonic::transport::Error>,
) -> Result<(), tonic::Status> {
    let mut client =
        client.map_err(|e| tonic::Status::unavailable(format!("no connection: {e}")))?;
    client
        .reset_user_password(request(POOL, "alice"))
        .await
        .map(drop)
}

#[tokio::test]
async fn a_client_certificate_names_the_caller_and_others_are_refused() {
    let files = Files::new("callers");
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let strangers = Ca::new("another CA");
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let app = mtls_app(&files, &server_ca, &clients.pem, &cognito).await;

    reset(client(&app, &server_ca, Some(clients.issue(&[], Some(BILLING)))).await)
        .await
        .expect("a valid client");

    // No client certificate, or one from another CA: the handshake fails (the client sees a
    // transport error; with TLS 1.3 it learns at its first request), and nothing is sent.
    let none = reset(client(&app, &server_ca, None).await)
        .await
        .unwrap_err();
    assert!(
        matches!(none.code(), Code::Unavailable | Code::Unknown),
        "{none:?}"
    );
    let other = reset(client(&app, &server_ca, Some(strangers.issue(&[], Some(BILLING)))).await)
        .await
        .unwrap_err();
    assert!(
        matches!(other.code(), Code::Unavailable | Code::Unknown),
        "{other:?}"
    );

    // A valid certificate for someone not in the policy, or without a SPIFFE ID: UNAUTHENTICATED.
    for identity in [
        clients.issue(&[], Some("spiffe://cluster.local/ns/other/sa/x")),
        clients.issue(&["client.example"], None),
    ] {
        let status = reset(client(&app, &server_ca, Some(identity)).await)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(error_info(&status).reason, "UNAUTHENTICATED");
    }
    assert_eq!(crate::kit::fake_cognito::sends(&cognito).await, 1);
}

#[tokio::test]
async fn a_certificate_must_name_exactly_one_spiffe_id() {
    let files = Files::new("one-id");
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let app = mtls_app(&files, &server_ca, &clients.pem, &cognito).await;
    reset(client(&app, &server_ca, Some(clients.issue(&[], Some(BILLING)))).await)
        .await
        .expect("one SPIFFE ID");

    // An X.509-SVID holds exactly one SPIFFE ID: a certificate with two names no one, whichever
    // comes first (and a scheme in capitals is still a SPIFFE ID for the count).
    const OTHER: &str = "spiffe://cluster.local/ns/other/sa/x";
    for uris in [
        [BILLING, OTHER],
        [OTHER, BILLING],
        [BILLING, "SPIFFE://cluster.local/ns/other/sa/x"],
    ] {
        let status =
            reset(client(&app, &server_ca, Some(clients.issue_with_uris(&[], &uris))).await)
                .await
                .expect_err(&format!("{uris:?}"));
        assert_eq!(status.code(), Code::Unauthenticated, "{uris:?}: {status:?}");
        assert_eq!(error_info(&status).reason, "UNAUTHENTICATED");
    }
    assert_eq!(crate::kit::fake_cognito::sends(&cognito).await, 1);
}

#[tokio::test]
async fn a_rotated_client_ca_is_picked_up_without_a_restart() {
    let files = Files::new("rotate");
    let server_ca = Ca::new("server CA");
    let old = Ca::new("clients CA 2025");
    let new = Ca::new("clients CA 2026");
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let app = mtls_app(&files, &server_ca, &old.pem, &cognito).await;
    reset(client(&app, &server_ca, Some(old.issue(&[], Some(BILLING)))).await)
        .await
        .unwrap();
    assert!(
        reset(client(&app, &server_ca, Some(new.issue(&[], Some(BILLING)))).await)
            .await
            .is_err()
    );

    // The CA bundle is rotated on disk, as cert-manager or a Secret update does.
    files.write("clients-ca.pem", &new.pem);
    let identity = new.issue(&[], Some(BILLING));
    eventually("the new CA to be trusted", || {
        let identity = identity.clone();
        let app = &app;
        let server_ca = &server_ca;
        async move {
            reset(client(app, server_ca, Some(identity)).await)
                .await
                .is_ok()
        }
    })
    .await;
    assert!(
        reset(client(&app, &server_ca, Some(old.issue(&[], Some(BILLING)))).await)
            .await
            .is_err(),
        "the old CA is gone"
    );
}

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_keep_a_caller_from_its_handshake() {
    let files = Files::new("flood");
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("clients CA");
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let app = mtls_app(&files, &server_ca, &clients.pem, &cognito).await;
    // More silent sockets than the old handshake slots (256): each holds a place, none the loop.
    // From two other addresses, each within its share of places (256).
    let mut silent = Vec::new();
    for i in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        let from = if i % 2 == 0 {
            "127.0.0.3:0"
        } else {
            "127.0.0.4:0"
        };
        socket.bind(from.parse().unwrap()).unwrap();
        silent.push(socket.connect(app.addr).await.unwrap());
    }
    let started = tokio::time::Instant::now();
    reset(client(&app, &server_ca, Some(clients.issue(&[], Some(BILLING)))).await)
        .await
        .expect("served beside the flood");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not made to wait for the silent ones: {:?}",
        started.elapsed()
    );
    assert_eq!(crate::kit::fake_cognito::sends(&cognito).await, 1);
}
