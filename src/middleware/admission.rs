//! The admission rules, in the order `app::layers()` stacks them: shed load, authenticate, then
//! hold each caller to its rate.

use std::sync::Arc;

use http::request::Parts;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{check::Check, is_open_path, trace::CallerSlot};
use crate::{
    auth::{Access, Caller},
    status::{GatewayError, Limit},
};

/// A process-wide cap on calls in flight. Beyond it calls are refused at once (UNAVAILABLE
/// OVERLOADED, with RetryInfo), never queued: a queue would only turn overload into timeouts.
/// Health checks are exempt, so that an overloaded gateway is not also killed by its probes.
#[derive(Debug, Clone)]
pub struct LoadShed {
    permits: Arc<Semaphore>,
}

impl LoadShed {
    /// At most `max_in_flight` calls at once.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

impl Check for LoadShed {
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
pub struct Authenticate {
    access: Arc<Access>,
}

impl Authenticate {
    /// Authenticates against the live policy.
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

impl Check for Authenticate {
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
        if let Some(slot) = request.extensions.get::<CallerSlot>() {
            slot.set(&caller.name);
        }
        request.extensions.insert(caller);
        Ok(())
    }
}

/// Each caller's own rate (`callers[].rate_per_second`, `burst`; RESOURCE_EXHAUSTED) and share of
/// the places for calls in flight (`limits.max_in_flight_per_caller`; UNAVAILABLE OVERLOADED, like
/// the process-wide cap).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerRate;

impl Check for CallerRate {
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
