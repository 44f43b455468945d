//! Admission: rules that admit or refuse a call before it reaches the service ([`Rule`], run by
//! [`AdmitLayer`]), and the rules themselves, in the order `app::layers()` stacks them: shed load,
//! authenticate, then hold each caller to its rate.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, request::Parts};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::{CallRecord, is_open_path, rescue::fail};
use crate::{
    auth::{Access, Caller},
    rate::Limit,
    status::GatewayError,
};

/// One admission rule.
pub(crate) trait Rule: Clone + Send + Sync + 'static {
    /// Held until the call's answer is ready (a concurrency permit, say).
    type Guard: Send + 'static;

    /// Admits the call (and may add to its extensions), or says why not. It may wait (for a JWKS
    /// refetch, say); most rules answer at once.
    fn check(
        &self,
        request: &mut http::request::Parts,
    ) -> impl Future<Output = Result<Self::Guard, GatewayError>> + Send;
}

/// Runs a [`Rule`] before the inner service.
#[derive(Debug, Clone)]
pub(crate) struct AdmitLayer<R> {
    rule: R,
}

impl<R> AdmitLayer<R> {
    /// A layer running `rule`.
    pub(crate) fn new(rule: R) -> Self {
        Self { rule }
    }
}

impl<S, R: Clone> Layer<S> for AdmitLayer<R> {
    type Service = Admit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            rule: self.rule.clone(),
        }
    }
}

/// See [`AdmitLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Admit<S, R> {
    inner: S,
    rule: R,
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for Admit<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Rule,
    ReqBody: http_body::Body + Unpin + Send + 'static,
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
        let rule = self.rule.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            match rule.check(&mut parts).await {
                Ok(guard) => {
                    let response = inner.call(Request::from_parts(parts, body)).await;
                    drop(guard);
                    response
                }
                Err(error) => {
                    read_to_end(body);
                    Ok(fail(error))
                }
            }
        })
    }
}

/// How long, at most, a refused call's request body is read after the answer.
const UNREAD_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// How much of it, at most.
const UNREAD_BODY_BYTES: usize = 64 * 1024;
/// Refused calls whose bodies are being read at once; past this, bodies are dropped unread.
const UNREAD_BODIES: usize = 1024;

/// Reads a refused call's request body to its end (bounded) instead of dropping it unread.
///
/// Dropped unread, HTTP/2 resets the stream, and the DATA frames the client sends after that count
/// against hyper's guard against reset floods (`server.max_local_error_reset_streams` over a
/// connection's whole life): a caller that bursts beyond its rate had its connection closed, its
/// calls in flight on it with it. The body is nearly always there already (a unary call's message
/// follows its headers); only when it is not does a bounded task wait for it.
fn read_to_end<B>(mut body: B)
where
    B: http_body::Body + Unpin + Send + 'static,
{
    static READING: Semaphore = Semaphore::const_new(UNREAD_BODIES);
    let mut read = 0;
    let mut now = std::task::Context::from_waker(std::task::Waker::noop());
    if read_some(&mut body, &mut now, &mut read).is_ready() {
        return;
    }
    let Ok(place) = READING.try_acquire() else {
        return;
    };
    tokio::spawn(async move {
        let _place = place;
        let rest = std::future::poll_fn(|cx| read_some(&mut body, cx, &mut read));
        let _ = tokio::time::timeout(UNREAD_BODY_TIME, rest).await;
    });
}

/// Reads `body`'s frames as far as they have arrived: ready once it has ended (or failed, or gone
/// past [`UNREAD_BODY_BYTES`], counted in `read`).
fn read_some<B>(
    body: &mut B,
    cx: &mut std::task::Context<'_>,
    read: &mut usize,
) -> std::task::Poll<()>
where
    B: http_body::Body + Unpin,
{
    use std::task::Poll;
    loop {
        if body.is_end_stream() {
            return Poll::Ready(());
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                if *read > UNREAD_BODY_BYTES {
                    return Poll::Ready(());
                }
            }
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// A process-wide cap on calls in flight. Beyond it calls are refused at once (UNAVAILABLE
/// OVERLOADED, with RetryInfo), never queued: a queue would only turn overload into timeouts.
/// Health checks are exempt, so that an overloaded gateway is not also killed by its probes.
#[derive(Debug, Clone)]
pub(crate) struct LoadShed {
    permits: Arc<Semaphore>,
}

impl LoadShed {
    /// At most `max_in_flight` calls at once.
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl Rule for LoadShed {
    type Guard = Option<OwnedSemaphorePermit>;

    async fn check(&self, request: &mut Parts) -> Result<Self::Guard, GatewayError> {
        if request.uri.path().starts_with("/grpc.health.v1.Health/") {
            return Ok(None);
        }
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| GatewayError::Overloaded)
    }
}

/// Who is calling: the caller the credentials prove goes into the request's extensions as an
/// `Arc<Caller>`; without one the call is UNAUTHENTICATED (open paths excepted).
#[derive(Debug, Clone)]
pub(crate) struct Authenticate {
    access: Arc<Access>,
}

impl Authenticate {
    /// Authenticates against the live policy.
    pub(crate) fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl Rule for Authenticate {
    type Guard = ();

    async fn check(&self, request: &mut Parts) -> Result<(), GatewayError> {
        if is_open_path(request.uri.path()) {
            return Ok(());
        }
        let header = request
            .headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let peer_certificates = request
            .extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let caller = self
            .access
            .authenticate(header, peer_certificates.as_deref().and_then(|c| c.first()))
            .await
            .map_err(GatewayError::Unauthenticated)?;
        // The call's span (see `trace`) is current here.
        tracing::Span::current().record("cognito_gateway.caller", &*caller.name);
        if let Some(record) = request.extensions.get::<Arc<CallRecord>>() {
            record.set_caller(&caller.name);
        }
        request.extensions.insert(caller);
        Ok(())
    }
}

/// Each caller's own rate (`callers[].rate_per_second`, `burst`; RESOURCE_EXHAUSTED) and share of
/// the places for calls in flight (`limits.max_in_flight_per_caller`; UNAVAILABLE OVERLOADED, like
/// the process-wide cap).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallerRate;

impl Rule for CallerRate {
    type Guard = Option<OwnedSemaphorePermit>;

    async fn check(&self, request: &mut Parts) -> Result<Self::Guard, GatewayError> {
        let Some(caller) = request.extensions.get::<Arc<Caller>>() else {
            return Ok(None);
        };
        caller
            .rate
            .check()
            .map_err(|wait| GatewayError::RateLimited {
                limit: Limit::Caller(Arc::clone(&caller.name)),
                wait,
            })?;
        Arc::clone(&caller.in_flight)
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| GatewayError::Overloaded)
    }
}
