//! Rate limits on governor's token buckets, each with the exact wait a refused call is told:
//!
//! - [`RateLimit`]: one bucket, for each caller and for the gateway-wide backend guard (Cognito's
//!   account-recovery quota is shared by every pool and replica, so the gateway keeps below it
//!   rather than queueing).
//! - [`PoolRateLimit`]: a bucket per user pool, so that one pool cannot take the whole backend
//!   guard.

use std::{
    fmt,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed, keyed::HashMapStateStore},
};

use crate::domain::UserPoolId;

/// Which of the gateway's limits rejected a call (`QuotaFailure.subject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// The caller's own rate (`callers[].rate_per_second`, `burst`).
    Caller(Arc<str>),
    /// The pool's share of Cognito calls (`limits.pool_rps`, `pool_burst`).
    Pool(UserPoolId),
    /// The gateway-wide budget for Cognito calls (`limits.backend_rps`).
    Backend,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Caller(name) => write!(f, "caller:{name}"),
            Self::Pool(pool) => write!(f, "pool:{}", pool.as_str()),
            Self::Backend => f.write_str("backend"),
        }
    }
}

impl Limit {
    /// What the limit is, for `QuotaFailure.description`.
    pub fn description(&self) -> &'static str {
        match self {
            Self::Caller(_) => "the caller's request rate (callers[].rate_per_second and burst)",
            Self::Pool(_) => "the pool's share of Cognito calls (limits.pool_rps and pool_burst)",
            Self::Backend => {
                "the gateway-wide budget for Cognito calls (limits.backend_rps), below Cognito's account quota"
            }
        }
    }
}

/// A token bucket: `rate` per second, up to `burst` at once.
pub struct RateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    rate: u32,
    burst: u32,
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimit {
    /// A bucket on the real clock.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// A bucket on a given clock (governor's `FakeRelativeClock` in tests).
    pub fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        Self {
            limiter: RateLimiter::direct_with_clock(quota(rate, burst), clock.clone()),
            clock,
            rate,
            burst,
        }
    }

    /// Takes one token, or says exactly how long until one is free.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Its sustained rate, per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Its burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Whether this bucket has the given shape (a reload keeps a bucket whose shape is unchanged).
    pub fn has_shape(&self, rate: u32, burst: u32) -> bool {
        self.rate == rate && self.burst == burst
    }
}

/// A token bucket per user pool (`limits.pool_rps`, `pool_burst`), for the calls that reach
/// Cognito: so that one pool's users cannot spend the whole backend guard.
pub(crate) struct PoolRateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<UserPoolId, HashMapStateStore<UserPoolId>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    checks: AtomicUsize,
}

impl<C: Clock> std::fmt::Debug for PoolRateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRateLimit").finish_non_exhaustive()
    }
}

/// Buckets kept before the full ones (idle long enough to be back at their burst) are dropped:
/// pool ids come from callers, and memory must stay bounded (to this, plus [`CLEANUP_EVERY`]).
const POOL_BUCKETS_BEFORE_CLEANUP: usize = 10_000;

/// How many checks go by between looks at the number of buckets.
const CLEANUP_EVERY: usize = 256;

/// `rate` per second, up to `burst` at once (0 counts as 1).
fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl PoolRateLimit {
    /// Buckets on the real clock.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> PoolRateLimit<C> {
    /// Buckets on a given clock (governor's `FakeRelativeClock` in tests).
    pub(crate) fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        Self {
            limiter: RateLimiter::hashmap_with_clock(quota(rate, burst), clock.clone()),
            clock,
            checks: AtomicUsize::new(0),
        }
    }

    /// Takes one of `pool`'s tokens, or says exactly how long until one is free.
    pub(crate) fn check(&self, pool: &UserPoolId) -> Result<(), Duration> {
        // The size is looked at now and then, not on every call: it takes the map's lock too.
        let checks = self.checks.fetch_add(1, Ordering::Relaxed);
        if checks.is_multiple_of(CLEANUP_EVERY) && self.limiter.len() > POOL_BUCKETS_BEFORE_CLEANUP
        {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(pool)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// How many pools have a bucket.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_exactly_when() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(5, 10, clock.clone());
        for _ in 0..10 {
            limit.check().unwrap();
        }
        // 5 per second: the next token is 200 ms away.
        assert_eq!(limit.check(), Err(Duration::from_millis(200)));
        clock.advance(Duration::from_millis(150));
        assert_eq!(limit.check(), Err(Duration::from_millis(50)));
        clock.advance(Duration::from_millis(50));
        limit.check().unwrap();
        assert!(limit.check().is_err());
        // A full second refills five tokens, not more.
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            limit.check().unwrap();
        }
        assert!(limit.check().is_err());
    }

    #[test]
    fn the_backend_guard_default_holds_25_per_second() {
        let clock = FakeRelativeClock::default();
        let guard = RateLimit::with_clock(25, 25, clock.clone());
        let mut admitted = 0;
        // Ten seconds of a caller hammering every millisecond.
        for _ in 0..10_000 {
            if guard.check().is_ok() {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        // The burst, then 25 per second: never above Cognito's 30 per second.
        assert!((250..=275).contains(&admitted), "{admitted}");
    }

    #[test]
    fn each_pool_has_its_own_bucket_and_memory_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let limit = PoolRateLimit::with_clock(2, 2, clock.clone());
        let (a, b) = (pool(), UserPoolId::parse("us-east-1_Other".into()).unwrap());
        limit.check(&a).unwrap();
        limit.check(&a).unwrap();
        assert_eq!(limit.check(&a), Err(Duration::from_millis(500)));
        limit.check(&b).unwrap();
        clock.advance(Duration::from_millis(500));
        limit.check(&a).unwrap();
        // Made-up pools, each used once: the buckets of those long idle are dropped.
        for i in 0..3 * POOL_BUCKETS_BEFORE_CLEANUP {
            let pool = UserPoolId::parse(format!("us-east-1_P{i}")).unwrap();
            limit.check(&pool).unwrap();
            clock.advance(Duration::from_secs(1));
        }
        assert!(
            limit.len() <= POOL_BUCKETS_BEFORE_CLEANUP + CLEANUP_EVERY,
            "{}",
            limit.len()
        );
    }

    fn pool() -> UserPoolId {
        UserPoolId::parse("us-east-1_Gate".into()).unwrap()
    }
}
