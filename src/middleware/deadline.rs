//! The caller's deadline (`grpc-timeout`), made visible to the handler and answered with
//! DEADLINE_EXCEEDED.
//!
//! tonic enforces `grpc-timeout` itself, outside every layer of ours, by dropping the call; the
//! caller then sees CANCELLED ("Timeout expired"), which tells it nothing. So this layer parses the
//! header (tonic has no public accessor), hands the handler a [`CallerDeadline`], and answers
//! DEADLINE_EXCEEDED itself a little before tonic's timer would fire. The handler bounds its own work
//! a little earlier still, so that it normally ends the call itself and logs it.
//!
//! Answering a few milliseconds early also lets the answer reach a client that enforces the same
//! deadline itself (tonic's client does, and reports its own CANCELLED if its timer wins). A call
//! with so little time left could not have completed a Cognito round trip anyway.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::rescue::fail;
use crate::status::GatewayError;

/// How much earlier than the deadline this layer answers: a twentieth of the caller's timeout,
/// within these bounds. The answer must reach the client before the client's own timer fires (or it
/// sees CANCELLED, not DEADLINE_EXCEEDED), and on a loaded node a fixed 10 ms was often not enough:
/// scheduling, the write and the client's read all come out of it.
const LAYER_MARGIN_MIN: Duration = Duration::from_millis(10);
const LAYER_MARGIN_MAX: Duration = Duration::from_millis(100);
/// How much earlier still the handler stops waiting on Cognito, to end the call itself (with its
/// log line and the pool id in the details) before the layer has to.
const HANDLER_LEAD: Duration = Duration::from_millis(10);

/// When the caller stops waiting (the arrival time plus its `grpc-timeout`), and how much earlier
/// the gateway answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallerDeadline {
    at: Instant,
    margin: Duration,
}

impl CallerDeadline {
    /// A deadline `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            margin: (timeout / 20)
                .clamp(LAYER_MARGIN_MIN, LAYER_MARGIN_MAX)
                .min(timeout),
        }
    }

    /// When this layer answers DEADLINE_EXCEEDED.
    fn answer_at(&self) -> Instant {
        self.at - self.margin
    }

    /// How long the handler may still wait for Cognito.
    pub(crate) fn remaining(&self) -> Duration {
        self.answer_at()
            .saturating_duration_since(Instant::now() + HANDLER_LEAD)
    }
}

/// Adds [`Deadline`]. Calls without a `grpc-timeout`, or with a longer one, get `max`: a
/// call is never open-ended, so a client that sends headers and then nothing cannot hold a
/// load-shedding permit forever.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    /// Deadlines of at most `max`.
    pub(crate) fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            max: self.max,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
    max: Duration,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let timeout = grpc_timeout(request.headers()).map_or(self.max, |t| t.min(self.max));
        let deadline = CallerDeadline::after(timeout);
        request.extensions_mut().insert(deadline);
        let call = self.inner.call(request);
        Box::pin(async move {
            tokio::select! {
                // The call's own answer wins a tie.
                biased;
                response = call => response,
                () = tokio::time::sleep_until(deadline.answer_at()) => {
                    Ok(fail(GatewayError::DeadlineExceeded))
                }
            }
        })
    }
}

/// Parses `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit). A malformed value is
/// ignored, as tonic ignores it.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    // Exactly as tonic reads it (at most 8 characters, then `u64::from_str`, which takes a leading
    // `+`): a value tonic enforces but this layer ignored would let tonic's timer answer first,
    // with a bare CANCELLED.
    if digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        // As tonic reads it too, so that this layer answers before tonic's own timer.
        assert_eq!(parse("+50m"), Some(Duration::from_millis(50)));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "m",
            "5",
            "5s",
            "123456789m",
            "-5m",
            "+-5m",
            "5 m",
            "1.5S",
            "😀m",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_leaves_the_handler_margin() {
        let deadline = CallerDeadline::after(Duration::from_millis(100));
        assert_eq!(deadline.remaining(), Duration::from_millis(80));
        tokio::time::advance(Duration::from_millis(81)).await;
        assert_eq!(deadline.remaining(), Duration::ZERO);
        // Longer deadlines keep a twentieth, up to 100 ms.
        let deadline = CallerDeadline::after(Duration::from_secs(1));
        assert_eq!(deadline.remaining(), Duration::from_millis(940));
        let deadline = CallerDeadline::after(Duration::from_secs(30));
        assert_eq!(deadline.remaining(), Duration::from_millis(29_890));
    }
}
