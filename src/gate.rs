//! At most one Cognito call per user per cooldown (docs/api.md §5): identical resets in flight share
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

use crate::{
    domain::{RequestId, UserPoolId},
    rate::Limit,
};

mod memory;

pub use memory::MemoryStore;

/// A user, as the gate knows them: a keyed hash of (pool, username), never the name itself.
pub(crate) type UserKey = [u8; 16];

/// A caller's request id (AIP-155), as the gate knows it: a keyed hash of (caller, id).
pub(crate) type RequestKey = [u8; 16];

/// What the gate remembers of a call that ended, and repeats to whoever asks again within the
/// cooldown (and to a retry of its request id for longer). A fleet's store keeps it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Cognito accepted the reset.
    Sent {
        /// Cognito's `x-amzn-RequestId`, where it sent one.
        request_id: Option<String>,
    },
    /// The request may have reached Cognito, but no answer says whether it did (HTTP 500, a
    /// timeout or a connection lost after sending): the person may have a code, so nothing is
    /// sent again.
    Unknown {
        /// What happened (`InternalErrorException`, `Timeout`, ...).
        exception: String,
        /// Cognito's request id, where it sent one.
        request_id: Option<String>,
        /// Whether Cognito itself answered (else the gateway saw no answer).
        from_cognito: bool,
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

/// What one call asks of the store.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Who is to be reset.
    pub user: UserKey,
    /// The caller's request id, if it sent one.
    pub request: Option<RequestKey>,
    /// The pool, whose share of Cognito calls a call that goes to Cognito spends.
    pub pool: UserPoolId,
    /// The caller's own rate, where the store keeps it (a fleet); spent once per call, whatever
    /// the answer, and `None` after that.
    pub caller: Option<CallerRate>,
    /// This call's claim: a settle changes the user's entry only while the claim in it is still
    /// this one (a lapsed claim may have been granted to another call since). Set by the gate.
    pub claim: u64,
}

/// A caller's rate, as a fleet's store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerRate {
    /// The caller's name.
    pub name: Arc<str>,
    /// Calls per second.
    pub rate: u32,
    /// Calls at once.
    pub burst: u32,
}

/// What the store says about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The call may go to Cognito, and has spent its budgets: the user is this call's until it
    /// settles, or the lease ends.
    Granted,
    /// A call for the user is in flight elsewhere (its request id, if any, will learn the outcome).
    Busy,
    /// A call for the user ended within the cooldown, or the request id's call ended: this is its
    /// outcome, and `left` what remains of the cooldown.
    Remembered {
        /// The outcome.
        outcome: Outcome,
        /// What remains of the cooldown.
        left: Duration,
    },
    /// A budget said no; nothing was claimed.
    Limited {
        /// Which.
        limit: Limit,
        /// When it will say yes.
        wait: Duration,
    },
    /// The request id belongs to a call for another user.
    RequestReused,
}

/// The store could not be asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the gate's store is unavailable: {0}")]
pub struct StoreError(pub String);

/// A future a store returns (boxed, so that stores can be chosen at run time).
pub(crate) type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// How long the store keeps what: the same for every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// How long an outcome is repeated to whoever asks (`limits.user_cooldown_secs`).
    pub cooldown: Duration,
    /// How long a claim lasts unless settled: longer than any Cognito call, so that it lapses
    /// only when its holder died.
    pub lease: Duration,
    /// How long a request id is remembered (`limits.request_id_ttl_secs`).
    pub request_ttl: Duration,
}

/// Where the gate's decisions are kept: this process ([`MemoryStore`]) or a store shared by a
/// fleet. Each method is one atomic decision.
pub trait GateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Decides a call (see [`Claim`]). A claim not settled within the lease lapses, so that a
    /// holder that died cannot block the user for longer.
    fn claim<'a>(&'a self, ticket: &'a Ticket) -> StoreFuture<'a, Claim>;

    /// Ends a claim: remembers `outcome` for the cooldown (and for the request ids that waited on
    /// the call, for their time), or, with `None`, forgets the user and those request ids.
    fn settle<'a>(
        &'a self,
        ticket: &'a Ticket,
        outcome: Option<&'a Outcome>,
    ) -> StoreFuture<'a, ()>;
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
    /// From memory: a call for the user (or with this request id) ended.
    Remembered {
        /// Its outcome.
        outcome: Outcome,
        /// What remains of the cooldown.
        left: Duration,
    },
}

/// Why the gate answered without an outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GateError {
    /// A budget said no; nothing was sent.
    #[error("rate limited by {limit}; retry in {wait:?}")]
    Limited {
        /// Which.
        limit: Limit,
        /// When it will say yes.
        wait: Duration,
    },
    /// The request id belongs to a call for another user.
    #[error("the request id was used for another user or pool")]
    RequestReused,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task making the call ended without a result (it panicked).
    #[error("the reset task ended without a result")]
    Lost,
}

/// What local callers of one user wait on: the leader's answer.
type Shared<R> = Option<Result<Answer<R>, GateError>>;

type Flights<R> = HashMap<UserKey, watch::Receiver<Shared<R>>>;

/// How often a call asks the store again while the user's call is in flight elsewhere.
const BUSY_POLL: Duration = Duration::from_millis(20);

/// How long an outcome is kept at least when callers elsewhere waited for it, whatever the
/// cooldown (even 0): long enough for them to learn it rather than send again.
pub(crate) const FLIGHT_GRACE: Duration = Duration::from_secs(1);

/// How long a store keeps the user's outcome: the cooldown, or, if calls waited on this one from
/// elsewhere, at least [`FLIGHT_GRACE`].
pub(crate) fn kept_for(cooldown: Duration, waited_on: bool) -> Duration {
    if waited_on {
        cooldown.max(FLIGHT_GRACE)
    } else {
        cooldown
    }
}

/// At most one Cognito call per user per cooldown (see the module docs).
pub struct UserGate<R> {
    hmac_key: [u8; 32],
    store: Arc<dyn GateStore>,
    /// The calls of this process in progress, by user: later callers wait on the first.
    flights: Mutex<Flights<R>>,
    /// The Cognito calls running, which outlive the callers that started them: shutdown waits
    /// for them (see [`UserGate::settled`]).
    calls: TaskTracker,
}

impl<R> std::fmt::Debug for UserGate<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserGate")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A key for [`UserGate::new`] when no store is shared: random, so that the hashes mean nothing
/// outside this process.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random source is available");
    key
}

/// A claim token, unique to one call: a counter from a random start, so that no two calls (on any
/// replica) share one, without asking the OS for randomness on every call.
fn random_claim() -> u64 {
    static NEXT: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
        std::sync::LazyLock::new(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("the OS random source is available");
            std::sync::atomic::AtomicU64::new(u64::from_le_bytes(bytes))
        });
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl<R: FlightResult> UserGate<R> {
    /// A gate on `store`, hashing users and request ids with `hmac_key` (the same on every
    /// replica sharing the store).
    pub fn new(hmac_key: [u8; 32], store: Arc<dyn GateStore>) -> Self {
        Self {
            hmac_key,
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

    /// The keyed hash of a user: the pool and the user's identity (the username as the pool
    /// compares it, or the user's `sub`). HMAC-SHA-256, truncated to 128 bits: collisions (which
    /// would wrongly deduplicate two users) are out of reach.
    pub fn user_key(&self, pool: &UserPoolId, identity: &str) -> UserKey {
        self.hash(b'u', pool.as_str(), identity)
    }

    /// The keyed hash of a caller's request id: ids are the caller's own, so two callers' equal
    /// ids are different keys.
    pub fn request_key(&self, caller: &str, id: &RequestId) -> RequestKey {
        self.hash(b'r', caller, id.as_str())
    }

    fn hash(&self, kind: u8, first: &str, second: &str) -> [u8; 16] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.hmac_key)
            .expect("HMAC accepts keys of any length");
        mac.update(&[kind]);
        mac.update(first.as_bytes());
        // A separator that can occur in neither field keeps ("a_b", "c") and ("a", "b_c") apart.
        mac.update(&[0]);
        mac.update(second.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }

    /// How many users have a call of this process in progress.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flights<R>> {
        // Every critical section leaves the map consistent; a poisoned lock is still usable.
        self.flights
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Resets through the gate. `start` is called only when this call must reach Cognito, with
    /// its budgets spent; the call it returns runs to its end even if this caller stops waiting
    /// (it moves to a task of its own then), so that a caller hanging up cannot cancel a reset
    /// others are waiting on, nor leave its outcome unknown to the gate.
    ///
    /// A call with a request id neither leads nor joins another local caller's call: the store
    /// must tie the id to the user, and its answer is its own. Calls without one share.
    pub async fn reset<F, Fut>(
        self: &Arc<Self>,
        ticket: Ticket,
        start: F,
    ) -> Result<Answer<R>, GateError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.reset_noting(ticket, || {}, start).await
    }

    /// [`UserGate::reset`], calling `waits` whenever this call waits on another's call for the
    /// user (here or elsewhere), which may send the reset this caller asked for: a caller who
    /// stops waiting then cannot be told that nothing was sent.
    pub async fn reset_noting<W, F, Fut>(
        self: &Arc<Self>,
        mut ticket: Ticket,
        waits: W,
        start: F,
    ) -> Result<Answer<R>, GateError>
    where
        W: Fn(),
        F: FnOnce() -> Fut,
        Fut: Future<Output = R> + Send + 'static,
    {
        let key = ticket.user;
        ticket.claim = random_claim();
        let mut local = None;
        if ticket.request.is_none() {
            loop {
                let (sender, receiver) = {
                    let mut flights = self.lock();
                    match flights.get(&key) {
                        Some(receiver) => (None, Some(receiver.clone())),
                        None => {
                            let (sender, receiver) = watch::channel(None);
                            flights.insert(key, receiver);
                            (Some(sender), None)
                        }
                    }
                };
                if let Some(sender) = sender {
                    // This call leads; the local entry goes when it ends, however it ends.
                    local = Some(LocalFlight {
                        gate: Arc::clone(self),
                        key,
                        sender: Some(sender),
                    });
                    break;
                }
                let mut receiver = receiver.expect("a joiner has the leader's receiver");
                waits();
                match receiver.wait_for(Option::is_some).await {
                    Ok(shared) => {
                        return shared.clone().expect("waited for Some").map(Answer::shared);
                    }
                    // The leader went without an answer for everyone: it hung up before its call
                    // started, or its answer was its own (its caller's rate). This call asks
                    // again, and may lead.
                    Err(_) => continue,
                }
            }
        }
        let claim = loop {
            let claim = self.store.claim(&ticket).await;
            // The caller's rate is spent once per call, however often the store is asked.
            ticket.caller = None;
            match claim {
                Ok(Claim::Busy) => {
                    waits();
                    self.wait_elsewhere(key, local.is_some()).await;
                }
                Ok(claim) => break claim,
                Err(error) => return answer(local, Err(GateError::Store(error))),
            }
        };
        let outcome = match claim {
            Claim::Granted => None,
            Claim::Busy => unreachable!("waited for above"),
            Claim::Remembered { outcome, left } => Some(Ok(Answer::Remembered { outcome, left })),
            Claim::Limited { limit, wait } => Some(Err(GateError::Limited { limit, wait })),
            Claim::RequestReused => Some(Err(GateError::RequestReused)),
        };
        if let Some(outcome) = outcome {
            return answer(local, outcome);
        }
        // From here the reset may go out: its claim is settled whatever happens, even a panic.
        let settling = Settling {
            store: Arc::clone(&self.store),
            ticket,
            done: false,
        };
        let call = start();
        let (sender, mut receiver) = match local {
            Some(local) => {
                let receiver = local.subscribe();
                (Sender::Local(local), receiver)
            }
            None => {
                let (sender, receiver) = watch::channel(None);
                (Sender::Own(sender), receiver)
            }
        };
        // The call settles the claim and answers everyone waiting. It runs here, in the caller's
        // task, while the caller waits, and goes on in a task of its own if the caller stops
        // waiting (see `Flight`): a spawned task for every call cost a wake-up on another thread
        // on the way there and another on the way back.
        let flight = self.calls.track_future(async move {
            let result = call.await;
            settling.settle(result.remembered()).await;
            let flown = Ok(Answer::Flown {
                result: result.clone(),
                deduplicated: false,
            });
            if !sender.answer(flown) {
                result.unanswered();
            }
        });
        // A panic in the call ends it here as it would have ended its task: dropped (the claim is
        // settled as unknown by `Settling`), and the answer below is `Lost`.
        let _ = Flight(Some(Box::pin(flight))).await;
        match receiver.wait_for(Option::is_some).await {
            Ok(shared) => shared.clone().expect("waited for Some"),
            // The call ended without a result: it panicked, maybe after sending.
            Err(_) => Err(GateError::Lost),
        }
    }

    /// Waits while the user's call is in flight elsewhere: until this process's call for the user
    /// ends, if it has one that is not this call's own, or a short while.
    async fn wait_elsewhere(&self, key: UserKey, leading: bool) {
        let receiver = if leading {
            None
        } else {
            self.lock().get(&key).cloned()
        };
        match receiver {
            Some(mut receiver) => {
                let _ =
                    tokio::time::timeout(BUSY_POLL * 50, receiver.wait_for(Option::is_some)).await;
            }
            None => tokio::time::sleep(BUSY_POLL).await,
        }
    }
}

/// A Cognito call that runs to its end whoever waits for it: polled in the task that awaits this,
/// and, if that task drops it first (its caller hung up), handed to a task of its own. Boxed, so
/// that it can move to that task after being polled.
struct Flight(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

/// The call panicked.
struct Panicked;

impl Future for Flight {
    type Output = Result<(), Panicked>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let Some(call) = self.0.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.0 = None;
                Poll::Ready(Ok(()))
            }
            Err(_) => {
                // Dropped here, as tokio drops a task that panicked.
                self.0 = None;
                Poll::Ready(Err(Panicked))
            }
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            tokio::spawn(call);
        }
    }
}

/// Settles a claim once its reset may have gone out: with the call's outcome, or, if the call's
/// task ends without one (a panic), as an unknown outcome, since the reset may well have been sent.
struct Settling {
    store: Arc<dyn GateStore>,
    ticket: Ticket,
    done: bool,
}

impl Settling {
    async fn settle(mut self, outcome: Option<Outcome>) {
        self.done = true;
        if let Err(error) = self.store.settle(&self.ticket, outcome.as_ref()).await {
            tracing::warn!(%error, "cannot record a reset's outcome now; it is kept to be recorded when the store answers");
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let store = Arc::clone(&self.store);
        let ticket = self.ticket.clone();
        tokio::spawn(async move {
            let unknown = Outcome::Unknown {
                exception: "Panic".into(),
                request_id: None,
                from_cognito: false,
            };
            store.settle(&ticket, Some(&unknown)).await
        });
    }
}

/// Answers the callers of this process waiting on the leader, if this call leads.
fn answer<R: FlightResult>(
    local: Option<LocalFlight<R>>,
    answer: Result<Answer<R>, GateError>,
) -> Result<Answer<R>, GateError> {
    match local {
        Some(local) => local.answer(answer),
        None => answer,
    }
}

/// Who a call's task answers.
enum Sender<R: FlightResult> {
    /// Every local caller of the user.
    Local(LocalFlight<R>),
    /// Its own caller only.
    Own(watch::Sender<Shared<R>>),
}

impl<R: FlightResult> Sender<R> {
    /// Answers; says whether anyone was still waiting.
    fn answer(self, answer: Result<Answer<R>, GateError>) -> bool {
        match self {
            Self::Local(local) => {
                let waiting = local.has_waiters();
                let _ = local.answer(answer);
                waiting
            }
            Self::Own(sender) => sender.send(Some(answer)).is_ok(),
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
struct LocalFlight<R: FlightResult> {
    gate: Arc<UserGate<R>>,
    key: UserKey,
    sender: Option<watch::Sender<Shared<R>>>,
}

impl<R: FlightResult> LocalFlight<R> {
    fn subscribe(&self) -> watch::Receiver<Shared<R>> {
        self.sender
            .as_ref()
            .expect("a flight answers once")
            .subscribe()
    }

    /// Whether anyone still waits for the answer: the map holds one receiver, each caller another.
    fn has_waiters(&self) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| sender.receiver_count() > 1)
    }

    /// Removes the entry, then answers everyone waiting: a caller arriving in between asks the
    /// store, which already knows the outcome. An answer that is the leader's own (its caller's
    /// rate) is not shared: the others are let go, to ask for themselves.
    fn answer(mut self, answer: Result<Answer<R>, GateError>) -> Result<Answer<R>, GateError> {
        self.gate.lock().remove(&self.key);
        let own = matches!(
            &answer,
            Err(GateError::Limited {
                limit: Limit::Caller(_),
                ..
            } | GateError::RequestReused)
        );
        if let Some(sender) = self.sender.take()
            && !own
        {
            sender.send_replace(Some(answer.clone()));
        }
        answer
    }
}

impl<R: FlightResult> Drop for LocalFlight<R> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            // Ended without an answer (the leader hung up while asking the store, or the call's
            // task panicked): waiters see the channel close and ask again.
            self.gate.lock().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests;
