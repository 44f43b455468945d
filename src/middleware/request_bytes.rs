//! One budget, process-wide, for the request bytes that calls hold: what bounds the memory callers
//! can make the gateway buffer, rather than `max_decoding_message_size × max_in_flight` (4 MiB ×
//! 256 by default: a gigabyte). A call's bytes are charged as its body is read and given back when
//! its answer is ready; a call whose next bytes do not fit is refused (UNAVAILABLE OVERLOADED, with
//! RetryInfo), never queued. Real requests are a few hundred bytes, so the budget is spent only by
//! many large messages at once.
//!
//! Bytes not yet read wait in HTTP/2's flow-control window (hyper's 1 MiB per connection), only
//! while the call is being admitted: an admitted call reads its body at once, a refused one drops
//! it. hyper's windows stay as they are: with a 128 KiB connection window, a flood of refused calls
//! on one connection tripped hyper's reset-flood guard and closed it for the well-behaved calls on
//! it too.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

use super::rescue::fail;
use crate::status::GatewayError;

/// Adds [`RequestBytes`].
#[derive(Debug, Clone)]
pub(crate) struct RequestBytesLayer {
    budget: Arc<Semaphore>,
}

impl RequestBytesLayer {
    /// At most `bytes` of request bodies held at once, by all calls together.
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(bytes)),
        }
    }
}

impl<S> Layer<S> for RequestBytesLayer {
    type Service = RequestBytes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBytes {
            inner,
            budget: Arc::clone(&self.budget),
        }
    }
}

/// See [`RequestBytesLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequestBytes<S> {
    inner: S,
    budget: Arc<Semaphore>,
}

impl<S> Service<Request<Body>> for RequestBytes<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let charge = Arc::new(Charge {
            budget: Arc::clone(&self.budget),
            held: Mutex::new(None),
            refused: AtomicBool::new(false),
        });
        let request = request.map(|body| {
            Body::new(Metered {
                inner: body,
                charge: Arc::clone(&charge),
            })
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            // The handler saw a failed read; the caller is told why, as the other refusals are.
            if charge.refused.load(Ordering::Relaxed) {
                return Ok(fail(GatewayError::Overloaded));
            }
            // The bytes are given back here, with the answer, not when the body was read: the
            // decoded message lived as long as the call.
            drop(charge);
            Ok(response)
        })
    }
}

/// What one call holds of the budget.
#[derive(Debug)]
struct Charge {
    budget: Arc<Semaphore>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
    refused: AtomicBool,
}

impl Charge {
    /// Takes `bytes` more, or refuses them (and remembers that it did).
    fn take(&self, bytes: usize) -> bool {
        let taken = u32::try_from(bytes)
            .ok()
            .and_then(|n| Arc::clone(&self.budget).try_acquire_many_owned(n).ok());
        let Some(taken) = taken else {
            self.refused.store(true, Ordering::Relaxed);
            return false;
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(permit) => permit.merge(taken),
            None => *held = Some(taken),
        }
        true
    }
}

/// A request body whose bytes are charged to the budget as they are read.
struct Metered {
    inner: Body,
    charge: Arc<Charge>,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && !self.charge.take(data.len())
        {
            // Replaced by the layer with the status the caller gets.
            return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                "request bytes over budget",
            ))));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_holds_what_it_read_until_it_is_dropped() {
        let budget = Arc::new(Semaphore::new(100));
        let charge = Charge {
            budget: Arc::clone(&budget),
            held: Mutex::new(None),
            refused: AtomicBool::new(false),
        };
        assert!(charge.take(60));
        assert!(charge.take(30));
        assert_eq!(budget.available_permits(), 10);
        assert!(!charge.take(11), "past the budget");
        assert!(charge.refused.load(Ordering::Relaxed));
        drop(charge);
        assert_eq!(budget.available_permits(), 100, "all given back");
    }
}
