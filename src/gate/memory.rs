//! The gate's store in this process: what one replica alone knows. The fleet's store in Redis
//! makes the same decisions (`fleet/claim.lua`); the tests of both hold them to one another.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::{Claim, GateStore, Outcome, RequestKey, StoreFuture, Ticket, Times, UserKey, kept_for};
use crate::{
    metrics::metrics,
    rate::{Limit, PoolRateLimit, RateLimit},
};

/// The gate's decisions and the budgets for Cognito calls, kept in this process.
#[derive(Debug)]
pub struct MemoryStore {
    times: Times,
    backend: Arc<RateLimit>,
    pools: Option<PoolRateLimit>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserKey, User>,
    requests: HashMap<RequestKey, Request>,
    /// Lapsed entries are swept when a map grows past its mark. The maps are bounded anyway: each
    /// entry is a Cognito call or a caller's request, limited by the backend guard and the
    /// callers' rates over the cooldown and the request ids' lifetime.
    sweep_users_above: usize,
    sweep_requests_above: usize,
}

#[derive(Debug)]
enum User {
    /// Claimed by a call (`claim`), until it settles or `until`; the request ids waiting on it,
    /// whether any call waited on it from elsewhere, and an outcome a late settle left for it to
    /// keep, until when.
    Claimed {
        claim: u64,
        until: Instant,
        waiting: Vec<RequestKey>,
        waited_on: bool,
        late: Option<(Outcome, Instant)>,
    },
    /// Ended with `outcome`, which repeats are told until `until`.
    Remembered { outcome: Outcome, until: Instant },
}

#[derive(Debug)]
struct Request {
    user: UserKey,
    /// `None` while the call is in flight.
    outcome: Option<Outcome>,
    until: Instant,
}

impl Request {
    /// The id of a call for `user` with `outcome` (`None` while in flight), kept until `until`.
    fn new(user: UserKey, outcome: Option<Outcome>, until: Instant) -> Self {
        Self {
            user,
            outcome,
            until,
        }
    }
}

impl User {
    fn until(&self) -> Instant {
        match self {
            Self::Claimed { until, .. } | Self::Remembered { until, .. } => *until,
        }
    }
}

const MIN_SWEEP: usize = 1024;

/// Request ids kept at most in one process (about 15 MiB): past it the oldest go first, counted
/// (`cognito_gateway.request_ids_evicted`), since retries come soon after the call they repeat.
const MAX_REQUEST_IDS: usize = 100_000;

impl MemoryStore {
    /// A store keeping `times`, with the backend guard (`backend_rps`, `backend_burst`) and, where
    /// `pool_rps` is not 0, a budget per pool.
    pub fn new(times: Times, backend: (u32, u32), pools: (u32, u32)) -> Self {
        Self {
            times,
            backend: Arc::new(RateLimit::new(backend.0, backend.1)),
            pools: (pools.0 > 0).then(|| PoolRateLimit::new(pools.0, pools.1)),
            state: Mutex::new(State::default()),
        }
    }

    /// How many users and request ids the store remembers, lapsed ones included until swept.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.users.len() + state.requests.len()
    }

    /// Whether the store remembers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend guard, which the backend's retries after throttling draw on too.
    pub fn backend_guard(&self) -> Arc<RateLimit> {
        Arc::clone(&self.backend)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent; a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The decision of [`GateStore::claim`], made at once.
    pub fn claim_now(&self, ticket: &Ticket) -> Claim {
        let now = Instant::now();
        let mut state = self.lock();
        state.sweep(now);
        let State {
            users, requests, ..
        } = &mut *state;
        let user = users
            .get_mut(&ticket.user)
            .filter(|user| user.until() > now);
        let left = match &user {
            Some(User::Remembered { until, .. }) => until.saturating_duration_since(now),
            _ => Duration::ZERO,
        };
        if let Some(key) = ticket.request
            && let Some(request) = requests.get(&key).filter(|request| request.until > now)
        {
            if request.user != ticket.user {
                return Claim::RequestReused;
            }
            if let Some(outcome) = &request.outcome {
                return Claim::Remembered {
                    outcome: outcome.clone(),
                    left,
                };
            }
        }
        let request_until = now + self.times.request_ttl;
        match user {
            Some(User::Remembered { outcome, .. }) => {
                let outcome = outcome.clone();
                if let Some(key) = ticket.request {
                    requests.insert(
                        key,
                        Request::new(ticket.user, Some(outcome.clone()), request_until),
                    );
                }
                return Claim::Remembered { outcome, left };
            }
            Some(User::Claimed {
                waiting, waited_on, ..
            }) => {
                *waited_on = true;
                if let Some(key) = ticket.request
                    && !waiting.contains(&key)
                {
                    waiting.push(key);
                    requests.insert(key, Request::new(ticket.user, None, request_until));
                }
                return Claim::Busy;
            }
            None => {}
        }
        if let Some(pools) = &self.pools
            && let Err(wait) = pools.check(&ticket.pool)
        {
            return Claim::Limited {
                limit: Limit::Pool(ticket.pool.clone()),
                wait,
            };
        }
        if let Err(wait) = self.backend.check() {
            return Claim::Limited {
                limit: Limit::Backend,
                wait,
            };
        }
        users.insert(
            ticket.user,
            User::Claimed {
                claim: ticket.claim,
                until: now + self.times.lease,
                waiting: ticket.request.into_iter().collect(),
                waited_on: false,
                late: None,
            },
        );
        if let Some(key) = ticket.request {
            requests.insert(key, Request::new(ticket.user, None, request_until));
        }
        Claim::Granted
    }

    /// What [`GateStore::settle`] does, at once.
    pub(crate) fn settle_now(&self, ticket: &Ticket, outcome: Option<&Outcome>) {
        let now = Instant::now();
        let mut state = self.lock();
        // Settled entries must not pile up when nothing claims here (a fleet's fallback, while
        // the fleet's store answers).
        state.sweep(now);
        // The user's entry is this call's to change only while it holds this call's claim, or
        // nobody holds the user: a lapsed claim may have gone to another call since, whose
        // outcome (remembered, or in flight) is not this call's to replace. What has lapsed
        // counts as nothing, as in Redis, where it has expired.
        let ours = match state.users.get(&ticket.user) {
            None => true,
            Some(User::Claimed { claim, until, .. }) => *claim == ticket.claim || *until <= now,
            Some(User::Remembered { until, .. }) => *until <= now,
        };
        let mut waiting = Vec::new();
        if ours {
            let (mut waited_on, mut late) = (false, None);
            // The request ids waiting on a claim lapse with it (in Redis, their set expires).
            if let Some(User::Claimed {
                waiting: w,
                waited_on: watched,
                until,
                late: left,
                ..
            }) = state.users.remove(&ticket.user)
                && until > now
            {
                (waiting, waited_on, late) = (w, watched, left);
            }
            let (mut remembered, mut cooldown) = (outcome.cloned(), self.times.cooldown);
            // An outcome a late settle left in this claim: remembered if this call sent nothing,
            // and its cooldown holds either way.
            if let Some((late, until)) = late
                && until > now
            {
                if remembered.is_none() {
                    (remembered, cooldown) = (Some(late), until - now);
                } else {
                    cooldown = cooldown.max(until - now);
                }
            }
            let kept = kept_for(cooldown, waited_on);
            if let Some(outcome) = remembered
                && !kept.is_zero()
            {
                state.users.insert(
                    ticket.user,
                    User::Remembered {
                        outcome,
                        until: now + kept,
                    },
                );
            }
        } else if let Some(outcome) = outcome {
            let cooldown_ends = now + self.times.cooldown;
            match state.users.get_mut(&ticket.user) {
                // Another call's outcome stays, but no reset goes out within the cooldown of this
                // one's either.
                Some(User::Remembered { until, .. }) => *until = (*until).max(cooldown_ends),
                // Another call is in flight: this outcome is left in its claim, whose settle
                // keeps it (should that call send nothing, a reset may still have gone out).
                Some(User::Claimed { late, .. })
                    if !self.times.cooldown.is_zero()
                        && late
                            .as_ref()
                            .is_none_or(|(_, until)| *until < cooldown_ends) =>
                {
                    *late = Some((outcome.clone(), cooldown_ends));
                }
                _ => {}
            }
        }
        if let Some(key) = ticket.request
            && !waiting.contains(&key)
        {
            waiting.push(key);
        }
        for key in waiting {
            // A request id's entry is this call's only while it is absent or names this user
            // with no outcome yet: an outcome told late must not replace what a retry of the id
            // recorded since, nor an entry the id has since been given for another user.
            let mine = state.requests.get(&key).is_none_or(|request| {
                request.until <= now || (request.user == ticket.user && request.outcome.is_none())
            });
            if !mine {
                continue;
            }
            match outcome {
                Some(outcome) => {
                    state.requests.insert(
                        key,
                        Request::new(
                            ticket.user,
                            Some(outcome.clone()),
                            now + self.times.request_ttl,
                        ),
                    );
                }
                // Nothing happened: a retry of the id is processed anew.
                None => {
                    state.requests.remove(&key);
                }
            }
        }
    }
}

impl GateStore for MemoryStore {
    fn claim<'a>(&'a self, ticket: &'a Ticket) -> StoreFuture<'a, Claim> {
        Box::pin(std::future::ready(Ok(self.claim_now(ticket))))
    }

    fn settle<'a>(
        &'a self,
        ticket: &'a Ticket,
        outcome: Option<&'a Outcome>,
    ) -> StoreFuture<'a, ()> {
        self.settle_now(ticket, outcome);
        Box::pin(std::future::ready(Ok(())))
    }
}

impl State {
    /// Past [`MAX_REQUEST_IDS`], drops the oldest tenth, so that this runs rarely.
    fn evict_oldest_requests(&mut self) {
        if self.requests.len() <= MAX_REQUEST_IDS {
            return;
        }
        let keep = MAX_REQUEST_IDS * 9 / 10;
        let mut ends: Vec<Instant> = self.requests.values().map(|r| r.until).collect();
        let cut = ends.len() - keep;
        let (_, oldest_kept, _) = ends.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        let before = self.requests.len();
        self.requests
            .retain(|_, request| request.until >= oldest_kept);
        let evicted = before - self.requests.len();
        metrics().request_ids_evicted.add(evicted as u64, &[]);
        tracing::warn!(
            evicted,
            kept = self.requests.len(),
            "too many request ids in memory: the oldest were forgotten before their time"
        );
    }

    fn sweep(&mut self, now: Instant) {
        // Amortised: a map is swept when it has doubled since it was last.
        if self.users.len() > self.sweep_users_above.max(MIN_SWEEP) {
            self.users.retain(|_, user| user.until() > now);
            self.sweep_users_above = self.users.len() * 2;
        }
        if self.requests.len() > self.sweep_requests_above.clamp(MIN_SWEEP, MAX_REQUEST_IDS) {
            self.requests.retain(|_, request| request.until > now);
            self.evict_oldest_requests();
            self.sweep_requests_above = self.requests.len() * 2;
        }
    }
}
