//! The gateway's own limits, the ones that need the decoded request or the whole process:
//!
//! - [`RateLimit`]: a governor token bucket with an exact wait, for each caller and for the
//!   gateway-wide backend guard (Cognito's account-recovery quota is shared by every pool and
//!   replica, so the gateway keeps below it rather than queueing).
//! - [`PoolRateLimit`]: a bucket per user pool, so that one pool cannot take the whole backend
//!   guard.
//! - [`UserGate`]: at most one Cognito call per user per cooldown. Identical concurrent resets share
//!   one call (single-flight); a repeat after a success inside the window is answered without
//!   calling Cognito. A caller's retry therefore never sends the person a second code.

use std::{
    collections::HashMap,
    future::Future,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
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
use hmac::{KeyInit as _, Mac as _};
use tokio::{sync::watch, time::Instant};
use tokio_util::task::TaskTracker;

use crate::{
    cognito::{BackendError, ResetOutcome},
    domain::{UserPoolId, Username},
    status::GatewayError,
};

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

    /// Whether this bucket has the given shape (a reload keeps a bucket whose shape is unchanged).
    pub fn has_shape(&self, rate: u32, burst: u32) -> bool {
        self.rate == rate && self.burst == burst
    }
}

/// A token bucket per user pool (`limits.pool_rps`, `pool_burst`), for the calls that reach
/// Cognito: so that one pool's users cannot spend the whole backend guard.
pub struct PoolRateLimit<C: Clock = DefaultClock> {
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
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> PoolRateLimit<C> {
    /// Buckets on a given clock (governor's `FakeRelativeClock` in tests).
    pub fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        Self {
            limiter: RateLimiter::hashmap_with_clock(quota(rate, burst), clock.clone()),
            clock,
            checks: AtomicUsize::new(0),
        }
    }

    /// Takes one of `pool`'s tokens, or says exactly how long until one is free.
    pub fn check(&self, pool: &UserPoolId) -> Result<(), Duration> {
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
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no pool has a bucket.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// A user, as the gate knows them: a keyed hash of (pool, username), never the name itself.
pub type UserKey = [u8; 16];

/// The result one Cognito call gives everyone waiting on it.
type FlightResult = Result<ResetOutcome, GatewayError>;

enum Entry {
    /// A call is under way; its result will be sent here.
    InFlight(watch::Receiver<Option<FlightResult>>),
    /// A call succeeded; repeats until `until` are answered from `outcome`.
    Succeeded {
        until: Instant,
        outcome: ResetOutcome,
    },
}

struct GateState {
    entries: HashMap<UserKey, Entry>,
    /// Expired entries are swept when the map grows past this. The map is bounded anyway: each
    /// entry is a Cognito call, and those are limited by the backend guard (rate x cooldown) and
    /// the in-flight limit.
    sweep_above: usize,
}

/// What a reset through the gate gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatedReset {
    /// Cognito's answer (for a deduplicated reset, the answer to the call it shared).
    pub outcome: ResetOutcome,
    /// Whether this call was answered without a Cognito call of its own.
    pub deduplicated: bool,
}

/// At most one Cognito call per user per cooldown (see the module docs).
pub struct UserGate {
    hmac_key: [u8; 32],
    cooldown: Duration,
    state: Mutex<GateState>,
    /// The Cognito calls running, which outlive the callers that started them: shutdown waits
    /// for them (see [`UserGate::settled`]).
    calls: TaskTracker,
}

impl std::fmt::Debug for UserGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserGate")
            .field("cooldown", &self.cooldown)
            .finish_non_exhaustive()
    }
}

const MIN_SWEEP: usize = 1024;

impl UserGate {
    /// A gate with a fresh random key: the hashes mean nothing outside this process.
    pub fn new(cooldown: Duration) -> Self {
        let mut hmac_key = [0u8; 32];
        getrandom::fill(&mut hmac_key).expect("the OS random source is available");
        Self {
            hmac_key,
            cooldown,
            state: Mutex::new(GateState {
                entries: HashMap::new(),
                sweep_above: MIN_SWEEP,
            }),
            calls: TaskTracker::new(),
        }
    }

    /// Waits until the Cognito calls running now have ended: at shutdown, so that a reset whose
    /// callers have gone still ends (and is logged) rather than being cut off, outcome unknown.
    /// Calls started meanwhile are waited for too.
    pub async fn settled(&self) {
        self.calls.close();
        self.calls.wait().await;
    }

    /// The keyed hash of a user. HMAC-SHA-256, truncated to 128 bits: collisions (which would
    /// wrongly deduplicate two users) are out of reach.
    pub fn key(&self, pool: &UserPoolId, username: &Username) -> UserKey {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.hmac_key)
            .expect("HMAC accepts keys of any length");
        mac.update(pool.as_str().as_bytes());
        // A separator that can occur in neither field keeps ("a_b", "c") and ("a", "b_c") apart.
        mac.update(&[0]);
        mac.update(username.expose().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }

    /// How many users the gate currently remembers.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the gate remembers no one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // Every critical section leaves the map consistent; a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Resets through the gate, saying whether the answer was shared or remembered. `start` is called only when this call must reach Cognito: it may
    /// refuse (the backend guard) or return the call to make, which then runs in its own task, so
    /// that a caller hanging up cannot cancel a reset others are waiting on, nor leave its outcome
    /// unknown.
    pub async fn reset<F, Fut>(
        self: &Arc<Self>,
        key: UserKey,
        start: F,
    ) -> Result<GatedReset, GatewayError>
    where
        F: FnOnce() -> Result<Fut, GatewayError>,
        Fut: Future<Output = FlightResult> + Send + 'static,
    {
        let (mut receiver, deduplicated, call) = {
            let now = Instant::now();
            let mut state = self.lock();
            state.sweep(now);
            match state.entries.get(&key) {
                Some(Entry::Succeeded { until, outcome }) if now < *until => {
                    return Ok(GatedReset {
                        outcome: outcome.clone(),
                        deduplicated: true,
                    });
                }
                Some(Entry::InFlight(receiver)) => (receiver.clone(), true, None),
                _ => {
                    let call = start()?;
                    let (sender, receiver) = watch::channel(None);
                    state.entries.insert(key, Entry::InFlight(receiver.clone()));
                    (receiver, false, Some((call, sender)))
                }
            }
        };
        // Spawned with the lock released: a runtime shutting down drops the task at once, and the
        // drop takes the lock.
        if let Some((call, sender)) = call {
            let completion = Completion {
                gate: Arc::clone(self),
                key,
                done: false,
            };
            self.calls.spawn(async move {
                let result = call.await;
                completion.complete(&result);
                if sender.receiver_count() == 0 {
                    // Every caller hung up or ran out of time: the outcome is nobody's answer, so
                    // it is logged here, since the reset may well have happened.
                    log_unanswered(&result);
                }
                let _ = sender.send(Some(result));
            });
        }
        let result = match receiver.wait_for(Option::is_some).await {
            Ok(result) => result.clone().expect("waited for Some"),
            // The task ended without a result: it panicked (and its `Completion` removed the
            // entry, so the next call starts afresh).
            Err(_) => Err(GatewayError::Backend(BackendError::Misconfigured(
                "the reset task ended without a result".into(),
            ))),
        };
        result.map(|outcome| GatedReset {
            outcome,
            deduplicated,
        })
    }

    fn complete(&self, key: UserKey, result: &FlightResult) {
        let mut state = self.lock();
        match result {
            Ok(outcome) if !self.cooldown.is_zero() => {
                let until = Instant::now() + self.cooldown;
                let outcome = outcome.clone();
                state
                    .entries
                    .insert(key, Entry::Succeeded { until, outcome });
            }
            // A failure is not remembered: the reset did not happen (or its outcome is unknown and
            // the caller decides), so the next call may try again.
            _ => {
                state.entries.remove(&key);
            }
        }
    }
}

fn log_unanswered(result: &FlightResult) {
    let (outcome, request_id) = match result {
        Ok(outcome) => ("OK", outcome.request_id.as_deref()),
        Err(GatewayError::Backend(BackendError::Cognito(failure))) => {
            (failure.code.as_str(), failure.request_id.as_deref())
        }
        Err(_) => ("no answer from Cognito", None),
    };
    tracing::info!(
        outcome,
        cognito_request_id = request_id.unwrap_or_default(),
        "a reset ended after all its callers had gone"
    );
}

/// Settles a call's entry when the call ends, however it ends: with a result (remembered or
/// forgotten by [`UserGate::complete`]), or by a panic, when the entry is removed rather than left
/// in flight forever.
struct Completion {
    gate: Arc<UserGate>,
    key: UserKey,
    done: bool,
}

impl Completion {
    fn complete(mut self, result: &FlightResult) {
        self.gate.complete(self.key, result);
        self.done = true;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            self.gate.lock().entries.remove(&self.key);
        }
    }
}

impl GateState {
    fn sweep(&mut self, now: Instant) {
        if self.entries.len() <= self.sweep_above {
            return;
        }
        self.entries
            .retain(|_, entry| !matches!(entry, Entry::Succeeded { until, .. } if *until <= now));
        // Amortised: the next sweep waits until the map has doubled again.
        self.sweep_above = (self.entries.len() * 2).max(MIN_SWEEP);
    }
}

#[cfg(test)]
mod tests;
