//! Every non-OK status carries an `ErrorInfo` (contract §3), including the ones tonic writes itself
//! before our handler runs: an undecodable or oversized message, an unknown method. This layer finds
//! those (a `grpc-status` header without `grpc-status-details-bin`) and rewrites them through the
//! error table. Our own statuses already have details and pass untouched.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::status::{GatewayError, to_status};

/// Adds [`ErrorDetailsService`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorDetailsLayer;

impl<S> Layer<S> for ErrorDetailsLayer {
    type Service = ErrorDetailsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorDetailsService { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ErrorDetailsService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ErrorDetailsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            add_missing_details(&mut response);
            Ok(response)
        })
    }
}

fn add_missing_details<B>(response: &mut Response<B>) {
    let headers = response.headers();
    // Trailers-only replies carry the status in the headers; a normal OK carries it in trailers.
    if headers.contains_key("grpc-status-details-bin") {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::Ok {
        return;
    }
    tracing::info!(code = ?status.code(), message = status.message(), "call refused by the gRPC layer");
    let error = GatewayError::Protocol {
        code: status.code(),
        message: status.message().to_owned(),
    };
    let headers = response.headers_mut();
    if let Err(error) = to_status(&error, None).add_header(headers) {
        tracing::error!(%error, "cannot write error details");
    }
}
