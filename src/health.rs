//! `grpc.health.v1`, as tonic-health serves it, with one change: a `Watch` stream ends right after
//! it reports NOT_SERVING. The gateway reports NOT_SERVING only when it shuts down, and an open
//! `Watch` (clients with client-side health checking keep one) would otherwise hold its connection,
//! and so the shutdown, for the whole grace period.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

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

/// The reporter to set statuses with, and the service to serve.
pub(crate) fn health() -> (HealthReporter, HealthServer<DrainingHealth>) {
    let reporter = HealthReporter::new();
    let service = DrainingHealth(HealthService::from_health_reporter(reporter.clone()));
    (reporter, HealthServer::new(service))
}

/// tonic-health's service, with `Watch` streams that end after NOT_SERVING.
#[derive(Debug)]
pub(crate) struct DrainingHealth(HealthService);

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.check(request).await
    }

    type WatchStream = UntilNotServing<<HealthService as Health>::WatchStream>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.0.watch(request).await?.into_inner();
        Ok(Response::new(UntilNotServing {
            inner: stream,
            ended: false,
        }))
    }
}

/// A stream of statuses that ends after the first NOT_SERVING.
#[derive(Debug)]
pub(crate) struct UntilNotServing<S> {
    inner: S,
    ended: bool,
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
