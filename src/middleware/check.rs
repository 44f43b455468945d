//! A layer that admits or refuses a call before it reaches the service (see [`Check`]).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::{
    metrics::metrics,
    status::{GatewayError, code_name, rejection_attributes, to_status},
};

/// One admission rule.
pub trait Check: Clone + Send + Sync + 'static {
    /// Held until the call's answer is ready (a concurrency permit, say).
    type Guard: Send + 'static;

    /// Admits the call (and may add to its extensions), or says why not.
    fn check<B>(&self, request: &mut Request<B>) -> Result<Self::Guard, GatewayError>;
}

/// Runs a [`Check`] before the inner service.
#[derive(Debug, Clone)]
pub struct CheckLayer<C> {
    check: C,
}

impl<C> CheckLayer<C> {
    /// A layer running `check`.
    pub fn new(check: C) -> Self {
        Self { check }
    }
}

impl<S, C: Clone> Layer<S> for CheckLayer<C> {
    type Service = Checked<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            inner,
            check: self.check.clone(),
        }
    }
}

/// See [`CheckLayer`].
#[derive(Debug, Clone)]
pub struct Checked<S, C> {
    inner: S,
    check: C,
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for Checked<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Check,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(guard) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(guard);
                    response
                })
            }
            Err(error) => {
                if let Some(attributes) = rejection_attributes(&error) {
                    metrics().rejections.add(1, &attributes);
                }
                let status = to_status(&error, None);
                tracing::info!(
                    code = code_name(status.code()),
                    reason = tonic_types::StatusExt::get_details_error_info(&status)
                        .map(|i| i.reason)
                        .unwrap_or_default(),
                    path = request.uri().path(),
                    %error,
                    "call refused",
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
