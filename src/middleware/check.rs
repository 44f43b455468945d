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

    /// Admits the call (and may add to its extensions), or says why not. It may wait (for a JWKS
    /// refetch, say); most rules answer at once.
    fn check(
        &self,
        request: &mut http::request::Parts,
    ) -> impl Future<Output = Result<Self::Guard, GatewayError>> + Send;
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
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Check,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; a clone stays for the next call
        // (tower's usual dance for services called after an await).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let check = self.check.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            match check.check(&mut parts).await {
                Ok(guard) => {
                    let response = inner.call(Request::from_parts(parts, body)).await;
                    drop(guard);
                    response
                }
                Err(error) => Ok(refuse(&error, parts.uri.path()).into_http()),
            }
        })
    }
}

/// The status for a refused call, counted and logged (one line, without credentials).
fn refuse(error: &GatewayError, path: &str) -> tonic::Status {
    if let Some(attributes) = rejection_attributes(error) {
        metrics().rejections.add(1, &attributes);
    }
    let status = to_status(error, None);
    tracing::info!(
        code = code_name(status.code()),
        reason = tonic_types::StatusExt::get_details_error_info(&status)
            .map(|i| i.reason)
            .unwrap_or_default(),
        path,
        %error,
        "call refused",
    );
    status
}
