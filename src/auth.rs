//! Authentication and authorization: who calls, and what for. The [`Policy`] is built from the
//! validated `[auth]` and `[[callers]]` configuration and swapped atomically when the files change
//! or on SIGHUP: calls in flight keep the policy they started with, and a bad file is refused with
//! the old policy kept. How a caller proves who it is: a bearer token (here), a JWT ([`jwt`]) or a
//! client certificate ([`tls`]).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

use self::{
    jwt::{JwtError, JwtVerifier},
    tls::Tls,
};
use crate::{
    config::{AccessConfig, AuthMode, CallerConfig, Config, ConfigError, LimitSettings, invalid},
    metrics::metrics,
    rate::RateLimit,
};

pub(crate) mod jwt;
pub(crate) mod tls;

/// The name of every call when `auth.mode = "none"`.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// An authenticated caller and what it may do.
pub struct Caller {
    /// Its name, as configured: the identity in logs and the policy.
    pub name: Arc<str>,
    token_sha256: Option<[u8; 32]>,
    /// `None`: every pool.
    user_pools: Option<HashSet<String>>,
    /// Its own rate.
    pub rate: Arc<RateLimit>,
    /// Its places for calls in flight (`limits.max_in_flight_per_caller`).
    pub in_flight: Arc<Semaphore>,
    in_flight_cap: usize,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token hash stays out of every printout.
        f.debug_struct("Caller")
            .field("name", &self.name)
            .field("user_pools", &self.user_pools)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// Whether this caller may reset users in `pool` (deny by default: only listed pools, or `*`).
    pub fn may_reset_in(&self, pool: &str) -> bool {
        self.user_pools
            .as_ref()
            .is_none_or(|pools| pools.contains(pool))
    }
}

/// Why authentication failed, for the log only (the caller is told nothing more than
/// UNAUTHENTICATED).
pub(crate) type AuthFailure = &'static str;

/// The callers and how they authenticate.
#[derive(Debug)]
pub struct Policy {
    mode: AuthMode,
    callers: Vec<Arc<Caller>>,
}

impl Policy {
    /// Builds the policy. Callers whose rate is unchanged keep their bucket from `previous`, so a
    /// reload neither refills nor empties anyone's budget.
    pub fn build(access: &AccessConfig, limits: &LimitSettings, previous: Option<&Policy>) -> Self {
        let mut callers: Vec<Arc<Caller>> = access
            .callers
            .iter()
            .map(|config| Arc::new(caller(config, limits.max_in_flight_per_caller, previous)))
            .collect();
        if access.mode == AuthMode::None && !callers.iter().any(|c| &*c.name == ANONYMOUS) {
            // Without authentication everyone is `anonymous`; unless configured otherwise, it may
            // reset in every pool at the default rate.
            callers.push(Arc::new(caller(
                &CallerConfig {
                    name: ANONYMOUS.to_owned(),
                    token_sha256: None,
                    user_pools: None,
                    rate_per_second: limits.default_rate_per_second,
                    burst: limits.default_burst,
                },
                // Everyone is `anonymous`: its share is the whole process's.
                limits.max_in_flight,
                previous,
            )));
        }
        Self {
            mode: access.mode,
            callers,
        }
    }

    /// The caller a request's `authorization` header proves, if any.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<Caller>, AuthFailure> {
        match self.mode {
            AuthMode::None => self
                .named(ANONYMOUS)
                .ok_or("no anonymous caller configured"),
            AuthMode::Token => {
                let header = authorization.ok_or("no authorization header")?;
                let token = bearer_token(header).ok_or("authorization is not a bearer token")?;
                let presented: [u8; 32] = Sha256::digest(token).into();
                // Every configured hash is compared, each in constant time, whichever matches.
                let mut found = None;
                for caller in &self.callers {
                    if let Some(hash) = &caller.token_sha256
                        && bool::from(hash.ct_eq(&presented))
                    {
                        found = Some(Arc::clone(caller));
                    }
                }
                found.ok_or("unknown token")
            }
            // JWTs need the verifier, which lives in `Access`.
            AuthMode::Jwt | AuthMode::Mtls => Err("authentication mode not handled here"),
        }
    }

    fn named(&self, name: &str) -> Option<Arc<Caller>> {
        self.callers.iter().find(|c| &*c.name == name).cloned()
    }

    /// The callers' names, for the start-up log.
    pub fn caller_names(&self) -> Vec<&str> {
        self.callers.iter().map(|c| &*c.name).collect()
    }
}

fn caller(config: &CallerConfig, in_flight_cap: usize, previous: Option<&Policy>) -> Caller {
    let old = previous.and_then(|p| p.named(&config.name));
    let rate = old
        .as_ref()
        .map(|old| Arc::clone(&old.rate))
        .filter(|rate| rate.has_shape(config.rate_per_second, config.burst))
        .unwrap_or_else(|| Arc::new(RateLimit::new(config.rate_per_second, config.burst)));
    let in_flight = old
        .filter(|old| old.in_flight_cap == in_flight_cap)
        .map(|old| Arc::clone(&old.in_flight))
        .unwrap_or_else(|| Arc::new(Semaphore::new(in_flight_cap)));
    Caller {
        name: config.name.as_str().into(),
        token_sha256: config.token_sha256,
        user_pools: config
            .user_pools
            .as_ref()
            .map(|pools| pools.iter().cloned().collect()),
        rate,
        in_flight,
        in_flight_cap,
    }
}

/// `Bearer <token>`, scheme case-insensitive (RFC 7235), token non-empty.
pub(crate) fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The live policy, and how to reload it.
#[derive(Debug)]
pub(crate) struct Access {
    current: ArcSwap<Policy>,
    /// With `auth.mode = "jwt"`: its settings need a restart to change; the callers reload.
    jwt: Option<Arc<JwtVerifier>>,
    /// With `auth.mode = "mtls"`: the server's TLS, reloaded with the files.
    tls: Option<Arc<Tls>>,
    /// The configuration as started: a reload may change the callers, nothing else.
    running: Config,
    /// The config file and the token file, re-read on change.
    sources: Vec<PathBuf>,
    /// What the files held when the policy in force was read.
    loaded: Vec<Vec<u8>>,
    /// When the policy in force was read (Unix seconds), for `cognito_gateway.config.reloaded_at`.
    reloaded_at: Arc<AtomicU64>,
}

impl Access {
    /// The policy of a validated configuration (without JWT verification).
    pub(crate) fn new(config: &Config) -> Self {
        let access = &config.access;
        let sources: Vec<PathBuf> = config
            .path
            .iter()
            .chain(access.token_file.iter())
            .cloned()
            .collect();
        Self {
            // Taken now, not when the watcher starts: an edit in between is then still a change.
            loaded: fingerprint(&sources),
            current: ArcSwap::from_pointee(Policy::build(access, &config.limits, None)),
            jwt: None,
            tls: None,
            running: config.clone(),
            sources,
            reloaded_at: Arc::new(AtomicU64::new(unix_now())),
        }
    }

    /// The policy of a validated configuration; with `auth.mode = "jwt"`, loads the keys first.
    pub(crate) async fn load(config: &Config) -> Result<Self, String> {
        let mut loaded = Self::new(config);
        let access = &config.access;
        if let Some(jwt) = &access.jwt {
            loaded.jwt = Some(Arc::new(JwtVerifier::new(jwt.clone()).await?));
        }
        if let Some(mtls) = &access.mtls {
            let tls = Tls::load(mtls.clone())?;
            loaded
                .sources
                .extend(tls.files().into_iter().map(Path::to_path_buf));
            loaded.tls = Some(Arc::new(tls));
        }
        Ok(loaded)
    }

    /// When the policy in force was read, in Unix seconds.
    pub(crate) fn reloaded_at(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reloaded_at)
    }

    /// The server's TLS, with `auth.mode = "mtls"`.
    pub(crate) fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// The policy in force now.
    pub(crate) fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    /// The caller a request's credentials prove, if any: its `authorization` header, or with mTLS
    /// the client certificate of its connection.
    pub(crate) async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer_certificate: Option<&CertificateDer<'static>>,
    ) -> Result<Arc<Caller>, AuthFailure> {
        if self.tls.is_some() {
            // The handshake verified the chain; the identity is the certificate's SPIFFE ID.
            let certificate = peer_certificate.ok_or("no client certificate")?;
            let name = tls::spiffe_id(certificate)?;
            return self
                .policy()
                .named(&name)
                .ok_or("the certificate's SPIFFE ID is not in [[callers]]");
        }
        let Some(verifier) = &self.jwt else {
            return self.policy().authenticate(authorization);
        };
        let header = authorization.ok_or("no authorization header")?;
        let token = bearer_token(header).ok_or("authorization is not a bearer token")?;
        let token = std::str::from_utf8(token).map_err(|_| "malformed JWT")?;
        let name = verifier.verify(token).await.map_err(JwtError::message)?;
        // Deny by default: a valid token for a caller not in the policy proves nothing here.
        self.policy()
            .named(&name)
            .ok_or("the token's caller is not in [[callers]]")
    }

    /// Keeps the JWKS fresh while the server runs (nothing to do without JWT).
    pub(crate) async fn refresh_keys(self: Arc<Self>) {
        if let Some(verifier) = self.jwt.clone() {
            verifier.refresh_periodically().await;
        }
    }

    /// Re-reads the files; on success swaps the policy, on failure keeps the old one and says why.
    pub(crate) fn reload(&self) -> Result<(), ConfigError> {
        // Certificates first: a failure leaves the old ones in use, and the reload is reported
        // refused (the callers below still reload), since the next start would refuse them.
        let tls = match &self.tls {
            Some(tls) => tls.reload().map_err(|error| {
                tracing::error!(%error, "TLS certificates NOT reloaded; the previous ones stay in use");
                invalid("auth.mtls", format!("certificates not reloaded: {error}"))
            }),
            None => Ok(()),
        };
        if self.running.path.is_none() {
            return tls;
        }
        // The whole file, checked exactly as at start: a file the next start would refuse is
        // refused now, rather than admitted until a restart crash-loops the pod.
        let new = self.running.reread()?;
        // What startup checks beyond the file's own keys, without connecting to anything.
        if let Some(fleet) = &new.fleet {
            crate::fleet::check(fleet)
                .map_err(|error| invalid("fleet.redis_url", error.to_string()))?;
        }
        let restart = self.running.restart_needed(&new);
        // Switching authentication off (or to another kind) on a file change would be silent and
        // total: it takes a restart, which logs what it does.
        if restart.contains(&"auth") {
            return Err(invalid(
                "auth",
                "auth.mode, [auth.jwt], [auth.mtls], auth.token_file and auth.reload_interval_secs change only with a restart; the callers were not reloaded either",
            ));
        }
        if !restart.is_empty() {
            tracing::warn!(
                sections = ?restart,
                "settings changed that take effect only after a restart; the callers were reloaded"
            );
        }
        let policy = Policy::build(
            &new.access,
            &self.running.limits,
            Some(&self.current.load()),
        );
        tracing::info!(callers = ?policy.caller_names(), "caller policy reloaded");
        self.current.store(Arc::new(policy));
        tls
    }

    /// Watches the files: re-reads them when their contents change (checked every
    /// `auth.reload_interval_secs`) or when `reload_now` fires (SIGHUP). Runs until dropped.
    pub(crate) async fn watch(self: Arc<Self>, mut reload_now: tokio::sync::mpsc::Receiver<()>) {
        if self.sources.is_empty() {
            return;
        }
        let mut seen = self.loaded.clone();
        let mut tick = tokio::time::interval(self.running.access.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signals_open = true;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                signal = reload_now.recv(), if signals_open => match signal {
                    Some(()) => true,
                    // No more signals can come (or none could be registered); the files are still
                    // watched.
                    None => {
                        signals_open = false;
                        continue;
                    }
                },
            };
            let now = fingerprint(&self.sources);
            if !forced && now == seen {
                continue;
            }
            seen = now;
            let reloaded = self.reload();
            if reloaded.is_ok() {
                self.reloaded_at.store(unix_now(), Ordering::Relaxed);
            }
            // Counted before it is logged: whoever reads the line finds the count.
            let outcome = if reloaded.is_ok() { "ok" } else { "refused" };
            metrics()
                .config_reloads
                .add(1, &[opentelemetry::KeyValue::new("outcome", outcome)]);
            if let Err(error) = reloaded {
                tracing::error!(%error, "reload refused: what it concerns stays as it was");
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What the files hold now (a missing file counts as empty): reloading on content, not on mtime,
/// follows Kubernetes' atomic symlink swaps of mounted ConfigMaps and Secrets.
fn fingerprint(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|path: &PathBuf| std::fs::read(Path::new(path)).unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests;
