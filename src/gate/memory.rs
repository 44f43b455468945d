//! The gate's store in this process: what one replica alone knows.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::{Claim, GateStore, Outcome, StoreFuture, UserKey};

/// The gate's decisions, kept in a map in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<UserKey, Entry>,
    /// Lapsed entries are swept when the map grows past this. The map is bounded anyway: each
    /// entry is a Cognito call, and those are limited by the backend guard (rate x cooldown) and
    /// the in-flight limit.
    sweep_above: usize,
}

#[derive(Debug)]
enum Entry {
    /// Claimed by a call, until it settles or `until`.
    Claimed { until: Instant },
    /// Ended with `outcome`, which repeats are told until `until`.
    Remembered { outcome: Outcome, until: Instant },
}

impl Entry {
    fn until(&self) -> Instant {
        match self {
            Self::Claimed { until } | Self::Remembered { until, .. } => *until,
        }
    }
}

const MIN_SWEEP: usize = 1024;

impl MemoryStore {
    /// How many users the store remembers (claimed or with an outcome), lapsed ones included until
    /// they are swept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store remembers no one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the map consistent; a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn claim_now(&self, key: UserKey, lease: Duration) -> Claim {
        let now = Instant::now();
        let mut state = self.lock();
        state.sweep(now);
        match state.entries.get(&key) {
            Some(entry) if entry.until() > now => match entry {
                Entry::Claimed { .. } => return Claim::Busy,
                Entry::Remembered { outcome, .. } => return Claim::Remembered(outcome.clone()),
            },
            _ => {}
        }
        state.entries.insert(
            key,
            Entry::Claimed {
                until: now + lease,
            },
        );
        Claim::Granted
    }

    fn settle_now(&self, key: UserKey, outcome: Option<Outcome>, cooldown: Duration) {
        let mut state = self.lock();
        match outcome {
            Some(outcome) if !cooldown.is_zero() => {
                let until = Instant::now() + cooldown;
                state
                    .entries
                    .insert(key, Entry::Remembered { outcome, until });
            }
            _ => {
                state.entries.remove(&key);
            }
        }
    }
}

impl GateStore for MemoryStore {
    fn claim(&self, key: UserKey, lease: Duration) -> StoreFuture<'_, Claim> {
        let claim = self.claim_now(key, lease);
        Box::pin(std::future::ready(Ok(claim)))
    }

    fn settle(
        &self,
        key: UserKey,
        outcome: Option<Outcome>,
        cooldown: Duration,
    ) -> StoreFuture<'_, ()> {
        self.settle_now(key, outcome, cooldown);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl State {
    fn sweep(&mut self, now: Instant) {
        if self.entries.len() <= self.sweep_above.max(MIN_SWEEP) {
            return;
        }
        self.entries.retain(|_, entry| entry.until() > now);
        // Amortised: the next sweep waits until the map has doubled again.
        self.sweep_above = (self.entries.len() * 2).max(MIN_SWEEP);
    }
}
