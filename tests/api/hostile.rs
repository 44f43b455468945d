//! Hostile clients: connections that never speak, more connections than the gateway keeps, TLS
//! handshakes that never end. Real sockets against the real server.

use std::time::Duration;

use tokio::{io::AsyncReadExt as _, net::TcpStream, time::Instant};

use cognito_gateway::proto::user_admin_service_client::UserAdminServiceClient;

use crate::kit::{
    app::{request, sdk_backend, spawn_app_with, test_config, test_settings},
    fake_cognito::{cognito_ok, fake_cognito},
};

const POOL: &str = "us-east-1_Hostile1";

/// Reads until the server closes the socket (EOF or a reset): how long that took, or `None` if it
/// was still open after `limit`.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout_at(started + limit, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // The server's SETTINGS: it spoke first, as HTTP/2 servers may; keep waiting.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_deadline_and_past_the_cap_at_once() {
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.server.max_connections = 8;
    config.server.handshake_timeout = Duration::from_secs(2);
    let app = spawn_app_with(config, sdk_backend(&cognito.uri(), test_settings()).await).await;
    // The test's own client holds one place; it spoke HTTP/2, so no deadline applies to it.
    app.reset(POOL, "alice").await.unwrap();

    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..7 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // Every place is taken: the next connection is closed as it comes, long before any deadline.
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    let refused = closed_within(&mut over, Duration::from_secs(1)).await;
    assert!(refused.is_some(), "past the cap, closed at once");

    // The silent ones go at the deadline, not before.
    for socket in &mut silent {
        let left = Duration::from_secs(5).saturating_sub(opened.elapsed());
        assert!(
            closed_within(socket, left).await.is_some(),
            "a silent connection was closed"
        );
    }
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");

    // The caller that spoke in time is still served, on its own connection, and new callers are
    // admitted again.
    app.reset(POOL, "bob").await.unwrap();
    let fresh = crate::kit::app::connect(app.addr).await;
    UserAdminServiceClient::new(fresh)
        .reset_user_password(request(POOL, "carol"))
        .await
        .unwrap();
    assert_eq!(crate::kit::fake_cognito::sends(&cognito).await, 3);
}

#[tokio::test]
async fn one_address_cannot_take_every_place() {
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.server.max_connections = 8;
    config.server.max_connections_per_peer = 2;
    let app = spawn_app_with(config, sdk_backend(&cognito.uri(), test_settings()).await).await;
    // From 127.0.0.1: the test's own client, and one silent socket. That address's share is taken.
    app.reset(POOL, "alice").await.unwrap();
    let _silent = TcpStream::connect(app.addr).await.unwrap();
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(1))
            .await
            .is_some(),
        "past its address's share, closed at once"
    );

    // Another address on the same host still gets a place and is served.
    let other = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .connect()
        .await
        .unwrap();
    UserAdminServiceClient::new(other)
        .reset_user_password(request(POOL, "bob"))
        .await
        .unwrap();
    assert_eq!(crate::kit::fake_cognito::sends(&cognito).await, 2);
}

#[tokio::test]
async fn request_bytes_held_by_calls_are_bounded_together() {
    // A "Cognito" that accepts and never answers: a call that reached it holds its request.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", stalled.local_addr().unwrap());
    let mut config = test_config();
    config.server.max_decoding_message_size = 64 * 1024;
    config.server.max_request_bytes_in_flight = 100 * 1024;
    let settings = cognito_gateway::config::CognitoSettings {
        operation_timeout: Duration::from_secs(1),
        ..test_settings()
    };
    let app = spawn_app_with(config, sdk_backend(&endpoint, settings).await).await;
    let large = |user: &str| {
        let mut request = request(POOL, user);
        request
            .client_metadata
            .insert("note".to_owned(), "x".repeat(60 * 1024));
        request
    };

    let mut first = app.client.clone();
    let holding = tokio::spawn(async move { first.reset_user_password(large("alice")).await });
    // Its message was read (and charged) before anything is asked of Cognito: the gateway's spare
    // connection, opened at start, is taken by that call, and its replacement is the second
    // connection accepted.
    let (_spare, _) = stalled.accept().await.unwrap();
    let (_replacement, _) = stalled.accept().await.unwrap();

    let refused = app
        .client
        .clone()
        .reset_user_password(large("bob"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(crate::helpers::error_info(&refused).reason, "OVERLOADED");
    // A small call fits beside the held one.
    let mut client = app.client.clone();
    let small = client.reset_user_password(request(POOL, "carol"));
    let (small, first) = tokio::join!(small, holding);
    assert_ne!(
        crate::helpers::error_info(&small.unwrap_err()).reason,
        "OVERLOADED"
    );
    first.unwrap().unwrap_err();

    // Once the first call has answered, its bytes are free again.
    let again = app
        .client
        .clone()
        .reset_user_password(large("dave"))
        .await
        .unwrap_err();
    assert_ne!(crate::helpers::error_info(&again).reason, "OVERLOADED");
}

#[tokio::test]
async fn a_flood_of_refused_calls_writes_a_bounded_log_and_a_summary() {
    use sha2::Digest as _;
    let files = crate::kit::files::Files::new("log-flood");
    let config = files.write(
        "gateway.toml",
        &format!(
            "[auth]\nmode = \"token\"\n[[callers]]\nname = \"billing\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\nrate_per_second = 1\nburst = 1\n",
            hex::encode(sha2::Sha256::digest(b"good-token"))
        ),
    );
    let config = config.display().to_string();
    let mut gateway = tokio::task::spawn_blocking(move || {
        crate::kit::binary::start_binary(&["--local", "--config", &config], &[])
    })
    .await
    .unwrap();
    let channel = crate::kit::app::connect(gateway.addr.parse().unwrap()).await;
    const CALLS: usize = 2_000;
    let mut refused = 0;
    let flood = Instant::now();
    for token in ["bad-token", "good-token"] {
        let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let calls = (0..CALLS).map(|i| {
            let mut client = UserAdminServiceClient::new(channel.clone());
            let mut call = tonic::Request::new(request("local-1_DemoPool", &format!("user-{i}")));
            call.metadata_mut().insert("authorization", header.clone());
            tokio::spawn(async move { client.reset_user_password(call).await })
        });
        for call in calls.collect::<Vec<_>>() {
            refused += u64::from(call.await.unwrap().is_err_and(|status| {
                matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
                )
            }));
        }
    }
    // Open paths need no credentials: a flood of failures there is held to the quota too.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..CALLS {
        let unknown = tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        };
        assert!(health.check(unknown).await.is_err());
        refused += 1;
    }
    // 10 lines per reason and caller in each 10-second window the flood touched (one, unless the
    // machine is slow).
    let quota = 10 * (flood.elapsed().as_secs() as usize / 10 + 2);
    assert_eq!(gateway.terminate(), Some(0));
    let log = gateway.rest_of_log();
    let health_lines = log
        .iter()
        .filter(|l| l.contains("\"code\":\"NOT_FOUND\"") && l.contains("\"message\":\"Check\""))
        .count();
    assert!(health_lines <= quota, "{health_lines}");
    let lines = |code: &str| {
        log.iter()
            .filter(|l| l.contains(&format!("\"code\":\"{code}\"")))
            .count()
    };
    // 4,000 refusals: a few lines per reason and caller, and one summary per window.
    assert!(
        lines("UNAUTHENTICATED") <= quota,
        "{}",
        lines("UNAUTHENTICATED")
    );
    assert!(
        lines("RESOURCE_EXHAUSTED") <= quota,
        "{}",
        lines("RESOURCE_EXHAUSTED")
    );
    let suppressed: u64 = log
        .iter()
        .filter(|l| l.contains("refused calls not logged one by one"))
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["suppressed"].as_u64().unwrap()
        })
        .sum();
    let logged = (lines("UNAUTHENTICATED") + lines("RESOURCE_EXHAUSTED") + health_lines) as u64;
    // All but the few the caller's rate let through (a second each) were refused.
    assert!(refused >= 3 * CALLS as u64 - 20, "{refused}");
    assert_eq!(
        suppressed + logged,
        refused,
        "every refusal is accounted for"
    );
    assert!(log.len() < 100, "{} log lines", log.len());
    assert!(
        log.iter().all(|l| !l.contains("\"level\":\"ERROR\"")),
        "a caller's flood is nobody's server error"
    );
}

#[tokio::test]
async fn health_watch_streams_are_bounded_per_connection() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app_with(
        test_config(),
        sdk_backend(&cognito.uri(), test_settings()).await,
    )
    .await;
    // One connection: every stream below shares it.
    let mut health = HealthClient::new(app.channel.clone());
    let watch = || HealthCheckRequest {
        service: String::new(),
    };
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(health.watch(watch()).await.unwrap().into_inner());
    }
    let refused = health.watch(watch()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(crate::helpers::error_info(&refused).reason, "OVERLOADED");
    // Another connection has places of its own.
    let other = crate::kit::app::connect(app.addr).await;
    HealthClient::new(other).watch(watch()).await.unwrap();
    // A stream that ends gives its place back.
    drop(open.pop());
    crate::helpers::eventually("the place to be given back", || {
        let mut health = health.clone();
        async move { health.watch(watch()).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn a_silent_connection_does_not_hold_a_shutdown() {
    let cognito = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.server.max_connections = 2;
    config.server.handshake_timeout = Duration::from_secs(60);
    config.server.shutdown_grace = Duration::from_secs(60);
    let mut app = spawn_app_with(config, sdk_backend(&cognito.uri(), test_settings()).await).await;
    // The test's client holds one place, the silent socket the other: the next connection is
    // closed at once, which also shows that the silent one was accepted (accepts are in order).
    app.reset(POOL, "alice").await.unwrap();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(5))
            .await
            .is_some(),
        "past the cap, closed at once"
    );

    app.begin_shutdown();
    // Neither its 60 s handshake deadline nor the 60 s grace: it has made no call to finish.
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "the silent connection is closed at shutdown"
    );
    tokio::time::timeout(Duration::from_secs(5), app.handle)
        .await
        .expect("the shutdown did not wait for the silent connection")
        .unwrap()
        .unwrap();
}
