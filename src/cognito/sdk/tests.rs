use std::{collections::HashMap, sync::atomic::AtomicUsize};

use axum::{Router, routing::post, serve::ListenerExt as _};
use tokio::sync::watch;

use super::*;
use crate::domain::Region;

#[tokio::test]
async fn metrics_name_at_most_max_regions_regions() {
    let settings = CognitoSettings {
        max_regions: 2,
        ..CognitoSettings::default()
    };
    let backend = SdkBackend::with_endpoint("http://127.0.0.1:1", "us-east-1", settings).await;
    assert_eq!(backend.region_label("us-east-1"), "us-east-1");
    assert_eq!(backend.region_label("eu-west-1"), "eu-west-1");
    assert_eq!(backend.region_label("xx-made-up-1"), "_OTHER");
    assert_eq!(backend.region_label("us-east-1"), "us-east-1");
}

#[tokio::test]
async fn made_up_regions_neither_pile_up_nor_push_out_the_region_in_use() {
    let settings = CognitoSettings {
        max_regions: 2,
        ..CognitoSettings::default()
    };
    // No endpoint set: each region has its own, as on AWS (the made-up ones resolve nowhere).
    let base = SdkConfig::builder()
        .region(aws_sdk_cognitoidentityprovider::config::Region::new(
            "us-east-1",
        ))
        .behavior_version(BehaviorVersion::latest())
        .build();
    let backend = SdkBackend::new(base, settings);
    let pool = |region: &str| UserPoolId::parse(format!("{region}_Pool")).expect("a pool id");
    for i in 0..20 {
        backend.regional(&pool("us-east-1")).expect("served");
        let made_up = format!("xx-made-up-{i}");
        backend
            .regional(&pool(&made_up))
            .expect("region-shaped, and no allow-list");
        assert!(
            backend.read_clients().contains_key("us-east-1"),
            "the region in use was dropped for {made_up}"
        );
        kept_until(&backend.http, |kept| {
            kept.iter().any(|endpoint| endpoint.contains(&made_up))
        })
        .await;
    }
    assert_eq!(backend.read_clients().len(), 2);
    // The dropped regions' spares went with their tasks.
    kept_until(&backend.http, |kept| kept.len() <= 2).await;
}

/// Waits until `check` holds of the endpoints kept warm.
async fn kept_until(http: &WarmHttp, check: impl Fn(&[String]) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check(&http.endpoints_kept()) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("kept: {:?}", http.endpoints_kept()));
}

/// A wire fake of Cognito that answers every call OK and counts the TCP connections it accepts.
struct CountingCognito {
    url: String,
    accepted: watch::Receiver<usize>,
    calls: Arc<AtomicUsize>,
}

impl CountingCognito {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port 0 binds");
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        );
        let (count, accepted) = watch::channel(0_usize);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let app = Router::new().route(
            "/",
            post(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    (
                        [
                            ("content-type", "application/x-amz-json-1.1"),
                            ("x-amzn-requestid", "warm"),
                        ],
                        "{}",
                    )
                }
            }),
        );
        let listener = listener.tap_io(move |_| count.send_modify(|n| *n += 1));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            accepted,
            calls,
        }
    }

    /// Waits until `n` connections in all have been accepted.
    async fn accepted(&mut self, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), self.accepted.wait_for(|&a| a >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} connections accepted within 10 s"))
            .expect("the fake runs");
    }

    fn count(&self) -> usize {
        *self.accepted.borrow()
    }
}

async fn warm_backend(fake: &CountingCognito, refresh: Duration) -> SdkBackend {
    let settings = CognitoSettings {
        allowed_regions: Some([Region::parse("local-1".to_owned()).expect("a region")].into()),
        connection_refresh: refresh,
        ..CognitoSettings::default()
    };
    SdkBackend::with_endpoint(&fake.url, "local-1", settings).await
}

async fn reset(backend: &SdkBackend) {
    let request = ResetRequest::parse(
        "local-1_Pool".to_owned(),
        "alice".to_owned(),
        HashMap::new(),
        String::new(),
    )
    .expect("a valid request");
    let bounds = CallBounds {
        timeout: Duration::from_secs(10),
        retry_until: None,
    };
    let outcome = backend
        .reset_user_password(&request, bounds)
        .await
        .expect("the fake answers OK");
    assert_eq!(outcome.request_id.as_deref(), Some("warm"));
}

#[tokio::test]
async fn an_allowed_region_is_connected_at_start_and_its_first_call_opens_no_connection() {
    let mut fake = CountingCognito::start().await;
    let backend = warm_backend(&fake, Duration::from_secs(3600)).await;
    let endpoint: http::Uri = fake.url.parse().expect("a URI");

    // Before any call: one connection, opened in the background, no request.
    backend.http.spares_opened(&endpoint, 1).await;
    fake.accepted(1).await;
    assert_eq!(backend.http.spare_counts(&endpoint), (1, 0));
    assert_eq!(fake.count(), 1);
    assert_eq!(fake.calls.load(std::sync::atomic::Ordering::SeqCst), 0);

    reset(&backend).await;
    // The call took the spare (and so opened no connection itself), and a new spare replaces it.
    assert_eq!(backend.http.spare_counts(&endpoint).1, 1);
    backend.http.spares_opened(&endpoint, 2).await;
    fake.accepted(2).await;
    assert_eq!(backend.http.spare_counts(&endpoint), (2, 1));
    assert_eq!(fake.count(), 2, "every connection was opened ahead of need");
    assert_eq!(fake.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_call_after_the_idle_period_finds_a_fresh_connection_opened_ahead() {
    let fake = CountingCognito::start().await;
    let refresh = Duration::from_millis(200);
    let backend = warm_backend(&fake, refresh).await;
    let endpoint: http::Uri = fake.url.parse().expect("a URI");
    backend.http.spares_opened(&endpoint, 1).await;
    reset(&backend).await;
    assert_eq!(backend.http.spare_counts(&endpoint).1, 1);

    // Two renewals later the first call's connection has idled past `refresh` (hyper's pool drops
    // it) and the spare is one renewed on time (it was never taken).
    backend.http.spares_opened(&endpoint, 4).await;
    assert_eq!(backend.http.spare_counts(&endpoint).1, 1);

    reset(&backend).await;
    assert_eq!(
        backend.http.spare_counts(&endpoint).1,
        2,
        "the call after the idle period took a spare, not the stale pooled connection"
    );
    assert_eq!(fake.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(fake.count() >= 4);
}

/// Accepts connections for axum, but closes the first one at once, as a server closes an idle
/// connection: the spare opened at start.
struct ClosesTheFirst {
    inner: tokio::net::TcpListener,
    accepted: watch::Sender<usize>,
}

impl axum::serve::Listener for ClosesTheFirst {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let first = *self.accepted.borrow() == 0;
            self.accepted.send_modify(|n| *n += 1);
            if !first {
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[tokio::test]
async fn a_spare_the_server_closed_is_never_handed_to_a_call() {
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 binds");
    let url = format!("http://{}", inner.local_addr().expect("bound"));
    let (accepted, mut seen) = watch::channel(0_usize);
    let app = Router::new().route(
        "/",
        post(|| async {
            (
                [
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amzn-requestid", "warm"),
                ],
                "{}",
            )
        }),
    );
    tokio::spawn(async move { axum::serve(ClosesTheFirst { inner, accepted }, app).await });
    let fake = CountingCognito {
        url,
        accepted: seen.clone(),
        calls: Arc::default(),
    };
    let backend = warm_backend(&fake, Duration::from_secs(3600)).await;
    let endpoint: http::Uri = fake.url.parse().expect("a URI");
    backend.http.spares_opened(&endpoint, 1).await;
    // The server has closed it (its FIN is on loopback, long there when the call looks).
    seen.wait_for(|&n| n >= 1).await.expect("the fake runs");

    // Sent on the closed spare, the reset would fail after it was written: an unknown outcome.
    reset(&backend).await;
    assert_eq!(
        backend.http.spare_counts(&endpoint).1,
        0,
        "the closed spare was not taken"
    );
    assert!(fake.count() >= 2, "the call connected anew");
}
