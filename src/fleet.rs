//! The gate's store shared by a fleet (docs/api.md §6): Redis, or anything that speaks its protocol
//! (Valkey, ElastiCache, MemoryDB). Each decision is one Lua script, so one atomic round trip:
//! `fleet/claim.lua` decides a call (the caller's rate, the request id, the user, the pool's and
//! the backend's budgets, GCRA on Redis' clock), `fleet/settle.lua` records its outcome.
//!
//! Keys and values hold keyed hashes (the gate's [`UserKey`] and [`RequestKey`]), counters and
//! outcomes, never a username. Every key starts `<key_prefix>:{g}:`; the hash tag puts them all in
//! one Redis Cluster slot, as a script's keys must be.
//!
//! **A store that does not answer** costs one call at most `fleet.timeout_ms`: the store is then
//! marked down, and calls no longer wait on it until a probe in the background sees it answer
//! again. Meanwhile, with `on_unavailable = "local"` each replica decides alone, in a
//! [`MemoryStore`] holding `1 / replicas_hint` of the budgets; with `"deny"` calls are refused.
//! Each change is logged once, and counted.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use tokio::time::Instant;

use crate::{
    config::{FleetSettings, OnUnavailable},
    gate::{
        Claim, FLIGHT_GRACE, GateStore, MemoryStore, Outcome, RequestKey, StoreError, StoreFuture,
        Ticket, Times, UserKey,
    },
    metrics::{self, metrics},
    rate::Limit,
};

/// How often a store marked down is asked whether it answers again.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The budgets for Cognito calls, as the fleet shares them: (rate per second, burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budgets {
    /// The backend guard (`limits.backend_rps`, `backend_burst`).
    pub backend: (u32, u32),
    /// Each pool's share (`limits.pool_rps`, `pool_burst`); a rate of 0: none.
    pub pool: (u32, u32),
}

/// The gate's store in Redis, with what a replica does when Redis does not answer.
pub(crate) struct FleetStore {
    shared: Arc<Shared>,
    budgets: Budgets,
    on_unavailable: OnUnavailable,
    /// With `on_unavailable = "local"`: this replica's own decisions while the store is down.
    fallback: Option<MemoryStore>,
    claim: Script,
    probe: tokio::task::JoinHandle<()>,
}

/// What the calls and the probe share.
struct Shared {
    redis: ConnectionManager,
    keys: Keys,
    times: Times,
    timeout: Duration,
    up: Arc<AtomicBool>,
    settle: Script,
    /// Outcomes the store could not be told yet: the probe tells it before it is used again, so
    /// that an outage around a call's end does not make the fleet forget that call.
    unsettled: Mutex<VecDeque<Unsettled>>,
}

/// A settle that waits for the store.
struct Unsettled {
    ticket: Ticket,
    outcome: Option<Outcome>,
    at: Instant,
}

/// Settles kept at most while the store is down (the oldest go first, and are logged).
const MAX_UNSETTLED: usize = 10_000;

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("prefix", &self.shared.keys.prefix)
            .field("up", &self.is_up())
            .field("on_unavailable", &self.on_unavailable)
            .finish_non_exhaustive()
    }
}

impl Drop for FleetStore {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

/// Where things live in Redis.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn user(&self, user: &UserKey) -> String {
        format!("{}u:{}", self.prefix, hex::encode(user))
    }

    fn waiting(&self, user: &UserKey) -> String {
        format!("{}w:{}", self.prefix, hex::encode(user))
    }

    fn requests(&self) -> String {
        format!("{}r:", self.prefix)
    }

    fn request(&self, request: Option<&RequestKey>) -> String {
        match request {
            Some(request) => format!("{}r:{}", self.prefix, hex::encode(request)),
            // Named for the script's KEYS, never written.
            None => format!("{}r:-", self.prefix),
        }
    }

    fn rate(&self, what: &str) -> String {
        format!("{}rate:{what}", self.prefix)
    }
}

/// A fleet whose settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("fleet.redis_url: {0}")]
pub(crate) struct FleetError(String);

impl FleetStore {
    /// A store on `settings`' Redis. Nothing is asked of Redis yet: the first call connects, and
    /// the gateway starts (and is ready) whether Redis answers or not.
    pub(crate) fn new(
        settings: &FleetSettings,
        times: Times,
        budgets: Budgets,
    ) -> Result<Self, FleetError> {
        let client = client(settings)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            // Reconnecting is the probe's business: a call never waits on it.
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| FleetError(error.to_string()))?;
        let up = Arc::new(AtomicBool::new(true));
        let fallback = (settings.on_unavailable == OnUnavailable::Local).then(|| {
            let share = |(rate, burst): (u32, u32)| {
                (
                    (rate / settings.replicas_hint).max(u32::from(rate > 0)),
                    (burst / settings.replicas_hint).max(1),
                )
            };
            MemoryStore::new(times, share(budgets.backend), share(budgets.pool))
        });
        metrics::observe_store_up(Arc::clone(&up));
        let shared = Arc::new(Shared {
            redis,
            keys: Keys {
                prefix: format!("{}:{{g}}:", settings.key_prefix),
            },
            times,
            timeout: settings.timeout,
            up,
            settle: Script::new(concat!(
                include_str!("fleet/read.lua"),
                include_str!("fleet/settle.lua")
            )),
            unsettled: Mutex::default(),
        });
        let probe = tokio::spawn(probe(Arc::clone(&shared)));
        Ok(Self {
            shared,
            budgets,
            on_unavailable: settings.on_unavailable,
            fallback,
            claim: Script::new(concat!(
                include_str!("fleet/read.lua"),
                include_str!("fleet/claim.lua")
            )),
            probe,
        })
    }

    /// Whether the store answered last time it was asked.
    pub(crate) fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    async fn claim_in_redis(&self, ticket: &Ticket) -> Result<Claim, StoreError> {
        let keys = &self.shared.keys;
        let (caller, rate, burst) = match &ticket.caller {
            Some(caller) => (&*caller.name, caller.rate, caller.burst),
            None => ("", 0, 0),
        };
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(keys.user(&ticket.user))
            .key(keys.waiting(&ticket.user))
            .key(keys.request(ticket.request.as_ref()))
            .key(keys.rate(&format!("caller:{caller}")))
            .key(keys.rate(&format!("pool:{}", ticket.pool.as_str())))
            .key(keys.rate("backend"))
            .arg(hex::encode(ticket.user))
            .arg(ticket.request.map(hex::encode).unwrap_or_default())
            .arg(millis(self.shared.times.lease))
            .arg(millis(self.shared.times.request_ttl))
            .arg(rate)
            .arg(burst)
            .arg(self.budgets.pool.0)
            .arg(if self.budgets.pool.0 > 0 {
                self.budgets.pool.1
            } else {
                0
            })
            .arg(self.budgets.backend.0)
            .arg(self.budgets.backend.1)
            .arg(ticket.claim.to_string());
        let mut redis = self.shared.redis.clone();
        let reply: Vec<redis::Value> = self
            .shared
            .round_trip("claim", invocation.invoke_async(&mut redis))
            .await?;
        parse_claim(&reply, ticket)
    }

    /// What a call gets while the store is down.
    fn without_store(&self, ticket: &Ticket, error: StoreError) -> Result<Claim, StoreError> {
        match &self.fallback {
            Some(fallback) => {
                metrics().fleet_fallbacks.add(1, &[]);
                Ok(fallback.claim_now(ticket))
            }
            None => Err(error),
        }
    }
}

impl Shared {
    /// Tells the store a call's outcome, `elapsed` after it ended (the times are shortened by it).
    async fn settle(
        &self,
        ticket: &Ticket,
        outcome: Option<&Outcome>,
        elapsed: Duration,
    ) -> Result<(), StoreError> {
        let outcome = match outcome {
            Some(outcome) => serde_json::to_string(outcome)
                .map_err(|error| StoreError(format!("cannot encode an outcome: {error}")))?,
            None => String::new(),
        };
        let left = |time: Duration| millis(time.saturating_sub(elapsed));
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(self.keys.user(&ticket.user))
            .key(self.keys.waiting(&ticket.user))
            .arg(hex::encode(ticket.user))
            .arg(ticket.request.map(hex::encode).unwrap_or_default())
            .arg(outcome)
            .arg(left(self.times.cooldown))
            .arg(left(self.times.request_ttl))
            .arg(self.keys.requests())
            .arg(ticket.claim.to_string())
            .arg(left(FLIGHT_GRACE));
        let mut redis = self.redis.clone();
        let _: i64 = self
            .round_trip("settle", invocation.invoke_async(&mut redis))
            .await?;
        Ok(())
    }

    /// Keeps a settle for when the store answers again.
    fn keep(&self, ticket: &Ticket, outcome: Option<&Outcome>) {
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if unsettled.len() >= MAX_UNSETTLED {
            unsettled.pop_front();
            tracing::warn!(
                max = MAX_UNSETTLED,
                "too many outcomes wait for the fleet store: the oldest is dropped"
            );
        }
        unsettled.push_back(Unsettled {
            ticket: ticket.clone(),
            outcome: outcome.cloned(),
            at: Instant::now(),
        });
    }

    /// Tells the store every kept settle, oldest first; stops at the first failure. A settle is
    /// never dropped for failing: the script takes whatever it finds (`fleet/settle.lua`), so
    /// what fails is the store, and an outcome dropped then could be a second code later.
    async fn flush(&self) -> Result<(), StoreError> {
        loop {
            let next = self
                .unsettled
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .pop_front();
            let Some(kept) = next else {
                return Ok(());
            };
            if let Err(error) = self
                .settle(&kept.ticket, kept.outcome.as_ref(), kept.at.elapsed())
                .await
            {
                self.unsettled
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .push_front(kept);
                return Err(error);
            }
        }
    }

    /// One round trip, bounded by `fleet.timeout_ms`; a failure marks the store down.
    async fn round_trip<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError(error.to_string())),
            Err(_) => Err(StoreError(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        metrics::record_round_trip(operation, started.elapsed(), result.is_ok());
        if let Err(error) = &result
            && self.up.swap(false, Ordering::Relaxed)
        {
            tracing::error!(%error, "fleet store DOWN: calls no longer wait on it until it answers again");
        }
        result
    }
}

impl GateStore for FleetStore {
    fn claim<'a>(&'a self, ticket: &'a Ticket) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            if !self.is_up() {
                return self.without_store(ticket, StoreError("marked down".into()));
            }
            match self.claim_in_redis(ticket).await {
                Ok(claim) => Ok(claim),
                Err(error) => self.without_store(ticket, error),
            }
        })
    }

    fn settle<'a>(
        &'a self,
        ticket: &'a Ticket,
        outcome: Option<&'a Outcome>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // The claim may have been this replica's own (made while the store was down): it is
            // settled here too, which costs nothing, and this replica remembers its own calls
            // should the store go down later.
            if let Some(fallback) = &self.fallback {
                fallback.settle_now(ticket, outcome);
            }
            let settled = if self.is_up() {
                self.shared.settle(ticket, outcome, Duration::ZERO).await
            } else {
                Err(StoreError("marked down".into()))
            };
            if let Err(error) = settled {
                // Kept for the probe to tell the store before anyone asks it again: not lost.
                tracing::debug!(%error, "outcome kept until the fleet store answers");
                self.shared.keep(ticket, outcome);
            }
            Ok(())
        })
    }
}

/// Asks a store marked down whether it answers again, twice a second; when it does, tells it the
/// outcomes it missed, and only then marks it up.
async fn probe(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.up.load(Ordering::Relaxed) {
            continue;
        }
        let mut redis = shared.redis.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut redis);
        let answered = tokio::time::timeout(shared.timeout.max(Duration::from_millis(200)), ping)
            .await
            .is_ok_and(|pong| pong.is_ok());
        if !answered {
            continue;
        }
        // Still marked down meanwhile: no call is decided by a store that has not learnt yet.
        match shared.flush().await {
            Ok(()) => {
                shared.up.store(true, Ordering::Relaxed);
                tracing::warn!("fleet store UP again: calls are decided by the fleet again");
            }
            Err(error) => {
                tracing::warn!(%error, "fleet store answers PING but not yet the missed outcomes");
            }
        }
    }
}

/// Checks that `settings` name a Redis the client can use (the URL, the CA), without connecting.
pub(crate) fn check(settings: &FleetSettings) -> Result<(), FleetError> {
    client(settings).map(drop)
}

fn client(settings: &FleetSettings) -> Result<redis::Client, FleetError> {
    use redis::IntoConnectionInfo as _;
    let error = |error: redis::RedisError| FleetError(error.to_string());
    let mut info = settings
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(error)?;
    if let Some(password) = &settings.redis_password {
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    match &settings.redis_ca {
        None => redis::Client::open(info).map_err(error),
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        )
        .map_err(error),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The claim script's answer.
fn parse_claim(reply: &[redis::Value], ticket: &Ticket) -> Result<Claim, StoreError> {
    use redis::Value;
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let number = |value: &Value| match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let bad = || {
        StoreError(format!(
            "unexpected answer from the claim script: {reply:?}"
        ))
    };
    let kind = reply.first().and_then(text).ok_or_else(bad)?;
    Ok(match kind.as_str() {
        "granted" => Claim::Granted,
        "busy" => Claim::Busy,
        "reused" => Claim::RequestReused,
        "remembered" => {
            let outcome = reply.get(1).and_then(text).ok_or_else(bad)?;
            let outcome: Outcome = serde_json::from_str(&outcome).map_err(|_| bad())?;
            let left = reply.get(2).and_then(number).unwrap_or(0);
            Claim::Remembered {
                outcome,
                left: Duration::from_millis(left),
            }
        }
        "limited" => {
            let limit = match reply.get(1).and_then(text).as_deref() {
                Some("caller") => Limit::Caller(
                    ticket
                        .caller
                        .as_ref()
                        .map(|caller| Arc::clone(&caller.name))
                        .unwrap_or_default(),
                ),
                Some("pool") => Limit::Pool(ticket.pool.clone()),
                Some("backend") => Limit::Backend,
                _ => return Err(bad()),
            };
            let wait = reply.get(2).and_then(number).ok_or_else(bad)?;
            Claim::Limited {
                limit,
                wait: Duration::from_micros(wait),
            }
        }
        _ => return Err(bad()),
    })
}

#[cfg(test)]
mod tests;
