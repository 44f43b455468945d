//! At most one Cognito call per user per cooldown (contract §5): identical resets in flight share
//! one call (single flight), and a repeat inside the cooldown is answered from memory. A caller's
//! retry therefore never sends the person a second code.
//!
//! Two levels:
//! - **In this process**, concurrent calls for one user share one [`UserGate::reset`]: the first
//!   leads, the others wait for its answer. They cost the store nothing.
//! - **The store** ([`GateStore`]) decides for everyone who uses it: whether a call may go to
//!   Cognito (it claims the user for a bounded lease), is in flight somewhere else, or has an
//!   outcome to repeat. [`MemoryStore`] keeps that in this process.
//!
//! The gate knows users only by a keyed hash ([`UserKey`]) and remembers an [`Outcome`] of its
//! own, never a backend error or a username.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use hmac::{KeyInit as _, Mac as _};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::domain::{UserPoolId, Username};

mod memory;

pub use memory::MemoryStore;

/// A user, as the gate knows them: a keyed hash of (pool, username), never the name itself.
pub type UserKey = [u8; 16];

/// What the gate remembers of a call that ended, and repeats to whoever asks again within the
/// cooldown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cognito accepted the reset.
    Sent {
        /// Cognito's `x-amzn-RequestId`, where it sent one.
        request_id: Option<String>,
    },
}

/// The result of a call through the gate, as the service sees it: whether it is remembered, and
/// how it is logged when every caller has gone.
pub trait FlightResult: Clone + Send + Sync + 'static {
    /// What to remember for the cooldown; `None`: nothing happened that a repeat must not redo.
    fn remembered(&self) -> Option<Outcome>;

    /// Called when the call ended after every caller waiting for it had gone: the outcome is
    /// nobody's answer, so it is logged here, since the reset may well have happened.
    fn unanswered(&self);
}

/// What the store says about a user a call wants to reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The call may go to Cognito: the user is this caller's until it settles, or `lease` ends.
    Granted,
    /// A call for the user is in flight elsewhere.
    Busy,
    /// A call ended within the cooldown: this is its outcome.
    Remembered(Outcome),
}

/// The store could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the gate's store is unavailable: {0}")]
pub struct StoreError(pub String);

/// A future a store returns (boxed, so that stores can be chosen at run time).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where the gate's decisions are kept: this process ([`MemoryStore`]) or a store shared by a
/// fleet. Every method is one atomic decision.
pub trait GateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `key` for one call (see [`Claim`]). A claim not settled within `lease` lapses, so
    /// that a holder that died cannot block the user for longer.
    fn claim(&self, key: UserKey, lease: Duration) -> StoreFuture<'_, Claim>;

    /// Ends a claim: remembers `outcome` for `cooldown`, or, with `None`, forgets the user.
    fn settle(
        &self,
        key: UserKey,
        outcome: Option<Outcome>,
        cooldown: Duration,
    ) -> StoreFuture<'_, ()>;
}

/// How a call through the gate was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<R> {
    /// By a Cognito call: this caller's own, or, `deduplicated`, one it shared.
    Flown {
        /// The call's result.
        result: R,
        /// Whether the call was another caller's.
        deduplicated: bool,
    },
    /// From memory: a call for the user ended within the cooldown.
    Remembered(Outcome),
}

/// Why the gate could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError<E> {
    /// The call was refused before it was sent (a limit): the caller's `start` said why.
    #[error(transparent)]
    Refused(E),
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task making the call ended without a result (it panicked).
    #[error("the reset task ended without a result")]
    Lost,
}

/// What local callers of one user wait on: the leader's answer.
type Shared<R, E> = Option<Result<Answer<R>, GateError<E>>>;

/// How often a call waits to ask the store again while the user's call is in flight elsewhere.
const BUSY_POLL: Duration = Duration::from_millis(20);

/// At most one Cognito call per user per cooldown (see the module docs).
pub struct UserGate<R, E> {
    hmac_key: [u8; 32],
    cooldown: Duration,
    lease: Duration,
    store: Arc<dyn GateStore>,
    /// The calls of this process in progress, by user: later callers wait on the first.
    flights: Mutex<HashMap<UserKey, watch::Receiver<Shared<R, E>>>>,
    /// The Cognito calls running, which outlive the callers that started them: shutdown waits
    /// for them (see [`UserGate::settled`]).
    calls: TaskTracker,
}

impl<R, E> std::fmt::Debug for UserGate<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserGate")
            .field("cooldown", &self.cooldown)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<R, E> UserGate<R, E>
where
    R: FlightResult,
    E: Clone + Send + Sync + 'static,
{
    /// A gate in this process, with a fresh random key: the hashes mean nothing outside it. A
    /// claim lapses after `lease` (the longest a call can take).
    pub fn in_process(cooldown: Duration, lease: Duration) -> Self {
        let mut hmac_key = [0u8; 32];
        getrandom::fill(&mut hmac_key).expect("the OS random source is available");
        Self::new(hmac_key, cooldown, lease, Arc::new(MemoryStore::default()))
    }

    /// A gate on `store`, hashing users with `hmac_key` (the same on every replica sharing it).
    pub fn new(
        hmac_key: [u8; 32],
        cooldown: Duration,
        lease: Duration,
        store: Arc<dyn GateStore>,
    ) -> Self {
        Self {
            hmac_key,
            cooldown,
            lease,
            store,
            flights: Mutex::new(HashMap::new()),
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

    /// How many users have a call of this process in progress.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserKey, watch::Receiver<Shared<R, E>>>> {
        // Every critical section leaves the map consistent; a poisoned lock is still usable.
        self.flights
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Resets through the gate. `start` is called only when this call must reach Cognito: it may
    /// refuse (a limit) or return the call to make, which then runs in its own task, so that a
    /// caller hanging up cannot cancel a reset others are waiting on, nor leave its outcome
    /// unknown to the gate.
    pub async fn reset<F, Fut>(
        self: &Arc<Self>,
        key: UserKey,
        start: F,
    ) -> Result<Answer<R>, GateError<E>>
    where
        F: FnOnce() -> Result<Fut, E>,
        Fut: Future<Output = R> + Send + 'static,
    {
        let (mut local, mut receiver) = loop {
            let (sender, mut receiver) = {
                let mut flights = self.lock();
                match flights.get(&key) {
                    Some(receiver) => (None, receiver.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        flights.insert(key, receiver.clone());
                        (Some(sender), receiver)
                    }
                }
            };
            if let Some(sender) = sender {
                // This call leads; the local entry goes when it ends, however it ends.
                let local = LocalFlight {
                    gate: Arc::clone(self),
                    key,
                    sender: Some(sender),
                    claimed: false,
                };
                break (local, receiver);
            }
            match receiver.wait_for(Option::is_some).await {
                Ok(shared) => {
                    return shared
                        .clone()
                        .expect("waited for Some")
                        .map(Answer::shared);
                }
                // The leader went without an answer: it hung up before its call started (or its
                // task panicked). This call asks again, and may lead.
                Err(_) => continue,
            }
        };
        let claim = loop {
            match self.store.claim(key, self.lease).await {
                Ok(Claim::Busy) => tokio::time::sleep(BUSY_POLL).await,
                Ok(claim) => break claim,
                Err(error) => return local.answer(Err(GateError::Store(error))),
            }
        };
        if let Claim::Remembered(outcome) = claim {
            return local.answer(Ok(Answer::Remembered(outcome)));
        }
        local.claimed = true;
        let call = match start() {
            Ok(call) => call,
            Err(refusal) => {
                // Nothing was sent: the claim is given back for the next call.
                local.release().await;
                return local.answer(Err(GateError::Refused(refusal)));
            }
        };
        // The call runs in its own task, which answers everyone waiting, the leader included.
        let gate = Arc::clone(self);
        self.calls.spawn(async move {
            let result = call.await;
            let settled = gate
                .store
                .settle(key, result.remembered(), gate.cooldown)
                .await;
            if let Err(error) = settled {
                tracing::warn!(%error, "cannot record a reset's outcome; the claim lapses with its lease");
            }
            let answered = local.has_waiters();
            let _ = local.answer(Ok(Answer::Flown {
                result: result.clone(),
                deduplicated: false,
            }));
            if !answered {
                result.unanswered();
            }
        });
        match receiver.wait_for(Option::is_some).await {
            Ok(shared) => shared.clone().expect("waited for Some"),
            Err(_) => Err(GateError::Lost),
        }
    }
}

impl<R> Answer<R> {
    /// The answer as a caller who joined another's call sees it.
    fn shared(self) -> Self {
        match self {
            Self::Flown { result, .. } => Self::Flown {
                result,
                deduplicated: true,
            },
            remembered => remembered,
        }
    }
}

/// The local entry of a call that leads: answers the callers waiting on it, and goes when the
/// call ends (or is dropped), so that the next call asks the store afresh.
struct LocalFlight<R: FlightResult, E: Clone + Send + Sync + 'static> {
    gate: Arc<UserGate<R, E>>,
    key: UserKey,
    sender: Option<watch::Sender<Shared<R, E>>>,
    /// Whether the store granted this call the user.
    claimed: bool,
}

impl<R: FlightResult, E: Clone + Send + Sync + 'static> LocalFlight<R, E> {
    /// Whether anyone still waits for the answer: the map holds one receiver, each caller another.
    fn has_waiters(&self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| sender.receiver_count() > 1)
    }

    /// Gives the store's claim back: nothing was sent.
    async fn release(&mut self) {
        self.claimed = false;
        if let Err(error) = self.gate.store.settle(self.key, None, Duration::ZERO).await {
            tracing::warn!(%error, "cannot release a claim; it lapses with its lease");
        }
    }

    /// Removes the entry, then answers everyone waiting: a caller arriving in between asks the
    /// store, which already knows the outcome.
    fn answer(
        mut self,
        answer: Result<Answer<R>, GateError<E>>,
    ) -> Result<Answer<R>, GateError<E>> {
        self.claimed = false;
        self.gate.lock().remove(&self.key);
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(answer.clone()));
        }
        answer
    }
}

impl<R: FlightResult, E: Clone + Send + Sync + 'static> Drop for LocalFlight<R, E> {
    fn drop(&mut self) {
        if self.sender.is_none() {
            return;
        }
        // Ended without an answer: the leader hung up while asking the store, or the call's task
        // panicked. Waiters see the channel close and ask again; the claim, if any, is given back
        // rather than left to lapse, so the user is not blocked for a whole lease.
        self.gate.lock().remove(&self.key);
        if self.claimed {
            let store = Arc::clone(&self.gate.store);
            let key = self.key;
            tokio::spawn(async move { store.settle(key, None, Duration::ZERO).await });
        }
    }
}

#[cfg(test)]
mod tests;
