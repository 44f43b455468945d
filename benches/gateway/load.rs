//! The load drivers: what one call is (whom it resets, which answer it expects) and how calls are
//! sent, one after another or many in flight.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cognito_gateway::{
    local::DEMO_POOL_ID,
    proto::{ResetUserPasswordRequest, user_admin_service_client::UserAdminServiceClient},
};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

use crate::kit;

/// Whom a load resets, and so which answer it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// `alice` of the demo pool: OK (after the first reset, an OK no-op).
    Alice,
    /// Another unknown user each call (`nobody-<n>`): NOT_FOUND from Cognito. Distinct names keep
    /// the gateway's single-flight from sharing one Cognito call between concurrent calls.
    Nobody,
    /// An empty username: INVALID_ARGUMENT from the gateway, which never calls Cognito.
    Invalid,
}

impl Who {
    pub(crate) fn username(self) -> String {
        // One sequence for the whole run: no unknown name is ever used twice.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        match self {
            Self::Alice => "alice".to_owned(),
            Self::Nobody => format!("nobody-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            Self::Invalid => String::new(),
        }
    }
}

/// Gateway answers marked `deduplicated` (answered without a Cognito call of their own).
pub(crate) type Counter = Arc<AtomicUsize>;

/// One call; resolves to whether the outcome was the expected one.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Makes one call each time it is called; shared by the tasks of a concurrent load.
pub(crate) type Call = Arc<dyn Fn() -> CallFuture + Send + Sync>;

/// One ResetUserPassword through the gateway.
pub(crate) fn gateway_call(
    client: &UserAdminServiceClient<Channel>,
    who: Who,
    deduplicated: &Counter,
) -> Call {
    let client = client.clone();
    let deduplicated = Arc::clone(deduplicated);
    Arc::new(move || {
        // Clones share the one HTTP/2 connection; a clone per call is what tonic expects.
        let mut client = client.clone();
        let deduplicated = Arc::clone(&deduplicated);
        let request = ResetUserPasswordRequest {
            user_pool_id: DEMO_POOL_ID.to_owned(),
            username: who.username(),
            client_metadata: Default::default(),
            request_id: String::new(),
        };
        Box::pin(async move {
            match (client.reset_user_password(request).await, who) {
                (Ok(reply), Who::Alice) => {
                    if reply.get_ref().deduplicated {
                        deduplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
                (Err(status), Who::Nobody) => status.code() == Code::NotFound,
                (Err(status), Who::Invalid) => status.code() == Code::InvalidArgument,
                _ => false,
            }
        })
    })
}

/// `n` calls one after another; panics if any outcome is not the expected one.
pub(crate) async fn sequential(n: usize, call: &Call, label: &str) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let expected = call().await;
        latencies.push(started.elapsed());
        assert!(expected, "unexpected outcome: {label}");
    }
    latencies
}

/// Like [`sequential`], with the first call's latency apart (it is the cold one).
pub(crate) async fn sequential_with_first(n: usize, call: &Call) -> (Duration, Vec<Duration>) {
    let mut latencies = sequential(n, call, "sequential").await;
    let first = latencies.remove(0);
    (first, latencies)
}

/// One concurrent load: how long it took, and each call's latency.
pub(crate) struct Load {
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

/// `total` calls with `in_flight` of them outstanding at all times (until the tail), each of
/// `in_flight` tasks making its calls one after another.
pub(crate) async fn concurrent(total: usize, in_flight: usize, call: &Call, label: &str) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let call = Arc::clone(call);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut unexpected = 0_usize;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let started = Instant::now();
                if !call().await {
                    unexpected += 1;
                }
                latencies.push(started.elapsed());
            }
            (latencies, unexpected)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut unexpected = 0;
    while let Some(worker) = workers.join_next().await {
        let (mine, bad) = worker.expect("a load worker does not panic");
        latencies.extend(mine);
        unexpected += bad;
    }
    let elapsed = started.elapsed();
    assert_eq!(unexpected, 0, "unexpected outcomes under load: {label}");
    Load { elapsed, latencies }
}

/// A client of the gateway at `addr` (in process or a child), on one HTTP/2 connection that its
/// clones share.
pub(crate) async fn connect(addr: SocketAddr) -> UserAdminServiceClient<Channel> {
    UserAdminServiceClient::new(kit::app::connect(addr).await)
}
