//! `grpc.health.v1`, as tonic-health serves it, with two changes to `Watch`:
//! - a stream ends right after it reports NOT_SERVING. The gateway reports NOT_SERVING only when it
//!   shuts down, and an open `Watch` (clients with client-side health checking keep one) would
//!   otherwise hold its connection, and so the shutdown, for the whole grace period;
//! - streams are counted and bounded, [`MAX_WATCHES`] in all and [`MAX_WATCHES_PER_CONNECTION`] on
//!   one connection: health needs no credentials, and each stream is a task and a channel.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

use crate::{metrics::metrics, middleware::rescue::placeholder, status::GatewayError};

/// `Watch` streams open at once, on every listener together.
pub(crate) const MAX_WATCHES: usize = 256;
/// `Watch` streams open at once on one connection.
pub(crate) const MAX_WATCHES_PER_CONNECTION: usize = 4;

/// The reporter to set statuses with, and the service to serve.
pub(crate) fn health() -> (HealthReporter, HealthServer<DrainingHealth>) {
    let reporter = HealthReporter::new();
    let service = DrainingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        watches: Arc::new(Semaphore::new(MAX_WATCHES)),
        per_connection: Arc::default(),
    };
    (reporter, HealthServer::new(service))
}

/// tonic-health's service, with `Watch` streams that are bounded and end after NOT_SERVING.
#[derive(Debug)]
pub(crate) struct DrainingHealth {
    inner: HealthService,
    watches: Arc<Semaphore>,
    /// Streams open per connection (its peer address names it).
    per_connection: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = UntilNotServing<<HealthService as Health>::WatchStream>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Past either bound the stream is shed like any call over capacity: UNAVAILABLE
        // OVERLOADED, with a RetryInfo.
        let overloaded = || placeholder(GatewayError::Overloaded);
        let place = Arc::clone(&self.watches)
            .try_acquire_owned()
            .map_err(|_| overloaded())?;
        let connection = match request.remote_addr() {
            Some(peer) => {
                let mut open = self.lock();
                let count = open.entry(peer).or_default();
                if *count >= MAX_WATCHES_PER_CONNECTION {
                    return Err(overloaded());
                }
                *count += 1;
                Some(peer)
            }
            None => None,
        };
        // Counted from here: the place is given back (and uncounted) however the call ends.
        metrics().health_watches.add(1, &[]);
        let open = WatchPlace {
            per_connection: Arc::clone(&self.per_connection),
            connection,
            _place: place,
        };
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(UntilNotServing {
            inner: stream,
            ended: false,
            _open: open,
        }))
    }
}

impl DrainingHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
        lock(&self.per_connection)
    }
}

fn lock(
    map: &Mutex<HashMap<SocketAddr, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
    // Every critical section leaves the map consistent; a poisoned lock is still usable.
    map.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A `Watch` stream's place, given back when the stream ends.
#[derive(Debug)]
struct WatchPlace {
    per_connection: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    connection: Option<SocketAddr>,
    _place: OwnedSemaphorePermit,
}

impl Drop for WatchPlace {
    fn drop(&mut self) {
        metrics().health_watches.add(-1, &[]);
        let Some(peer) = self.connection else {
            return;
        };
        let mut open = lock(&self.per_connection);
        if let Some(count) = open.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// A stream of statuses that ends after the first NOT_SERVING.
#[derive(Debug)]
pub(crate) struct UntilNotServing<S> {
    inner: S,
    ended: bool,
    _open: WatchPlace,
}

impl<S> Stream for UntilNotServing<S>
where
    S: Stream<Item = Result<HealthCheckResponse, Status>> + Unpin,
{
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(response))) = &item
            && response.status() == ServingStatus::NotServing
        {
            self.ended = true;
        }
        item
    }
}
