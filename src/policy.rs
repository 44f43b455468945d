//! Who may call, and what for. The [`Policy`] is built from the validated `[auth]` and
//! `[[callers]]` configuration and swapped atomically when the files change or on SIGHUP: calls in
//! flight keep the policy they started with, and a bad file is refused with the old policy kept.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::sync::Semaphore;

use arc_swap::ArcSwap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use rustls_pki_types::CertificateDer;

use crate::{
    config::{AccessConfig, AuthMode, CallerConfig, JwtConfig, LimitSettings, MtlsConfig},
    jwt::JwtVerifier,
    limits::RateLimit,
    tls::Tls,
};

/// The name of every call when `auth.mode = "none"`.
pub const ANONYMOUS: &str = "anonymous";

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
pub type AuthFailure = &'static str;

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
pub struct Access {
    current: ArcSwap<Policy>,
    /// With `auth.mode = "jwt"`: its settings need a restart to change; the callers reload.
    jwt: Option<Arc<JwtVerifier>>,
    /// With `auth.mode = "mtls"`: the server's TLS, reloaded with the files.
    tls: Option<Arc<Tls>>,
    /// How callers authenticate, as started: a reload may change the callers, not this.
    authentication: (AuthMode, Option<JwtConfig>, Option<MtlsConfig>),
    limits: LimitSettings,
    /// The config file and the token file, re-read on change.
    sources: Vec<PathBuf>,
    /// What the files held when the policy in force was read.
    loaded: Vec<Vec<u8>>,
    config_path: Option<PathBuf>,
    local: bool,
    reload_interval: Duration,
}

impl Access {
    /// The policy of a validated configuration (without JWT verification).
    pub fn new(
        access: &AccessConfig,
        limits: &LimitSettings,
        config_path: Option<PathBuf>,
        local: bool,
    ) -> Self {
        let sources: Vec<PathBuf> = config_path
            .iter()
            .chain(access.token_file.iter())
            .cloned()
            .collect();
        Self {
            // Taken now, not when the watcher starts: an edit in between is then still a change.
            loaded: fingerprint(&sources),
            current: ArcSwap::from_pointee(Policy::build(access, limits, None)),
            jwt: None,
            tls: None,
            authentication: (access.mode, access.jwt.clone(), access.mtls.clone()),
            limits: limits.clone(),
            sources,
            config_path,
            local,
            reload_interval: access.reload_interval,
        }
    }

    /// The policy of a validated configuration; with `auth.mode = "jwt"`, loads the keys first.
    pub async fn load(
        access: &AccessConfig,
        limits: &LimitSettings,
        config_path: Option<PathBuf>,
        local: bool,
    ) -> Result<Self, String> {
        let mut loaded = Self::new(access, limits, config_path, local);
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

    /// The server's TLS, with `auth.mode = "mtls"`.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// The policy in force now.
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    /// The caller a request's credentials prove, if any: its `authorization` header, or with mTLS
    /// the client certificate of its connection.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer_certificate: Option<&CertificateDer<'static>>,
    ) -> Result<Arc<Caller>, AuthFailure> {
        if self.tls.is_some() {
            // The handshake verified the chain; the identity is the certificate's SPIFFE ID.
            let certificate = peer_certificate.ok_or("no client certificate")?;
            let name =
                crate::tls::spiffe_id(certificate).ok_or("client certificate has no SPIFFE ID")?;
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
        let name = verifier.verify(token).await?;
        // Deny by default: a valid token for a caller not in the policy proves nothing here.
        self.policy()
            .named(&name)
            .ok_or("the token's caller is not in [[callers]]")
    }

    /// Keeps the JWKS fresh while the server runs (nothing to do without JWT).
    pub async fn refresh_keys(self: Arc<Self>) {
        if let Some(verifier) = self.jwt.clone() {
            verifier.refresh_periodically().await;
        }
    }

    /// Re-reads the files; on success swaps the policy, on failure keeps the old one and says why.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        if let Some(tls) = &self.tls
            && let Err(error) = tls.reload()
        {
            tracing::error!(%error, "TLS certificates NOT reloaded; the previous ones stay in use");
        }
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let access = AccessConfig::reload(path, self.local)?;
        // Switching authentication off (or to another kind) on a file change would be silent and
        // total: it takes a restart, which logs what it does.
        if (access.mode, &access.jwt, &access.mtls)
            != (
                self.authentication.0,
                &self.authentication.1,
                &self.authentication.2,
            )
        {
            return Err(crate::config::invalid(
                "auth",
                "auth.mode, [auth.jwt] and [auth.mtls] change only with a restart; the callers were not reloaded either",
            ));
        }
        let policy = Policy::build(&access, &self.limits, Some(&self.current.load()));
        tracing::info!(callers = ?policy.caller_names(), "caller policy reloaded");
        self.current.store(Arc::new(policy));
        Ok(())
    }

    /// Watches the files: re-reads them when their contents change (checked every
    /// `auth.reload_interval_secs`) or when `reload_now` fires (SIGHUP). Runs until dropped.
    pub async fn watch(self: Arc<Self>, mut reload_now: tokio::sync::mpsc::Receiver<()>) {
        if self.sources.is_empty() {
            return;
        }
        let mut seen = self.loaded.clone();
        let mut tick = tokio::time::interval(self.reload_interval);
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
            if let Err(error) = self.reload() {
                tracing::error!(%error, "caller policy NOT reloaded; the previous one stays in force");
            }
        }
    }
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
mod tests {
    use super::*;

    fn sha(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn access(callers: Vec<CallerConfig>) -> AccessConfig {
        AccessConfig {
            mode: AuthMode::Token,
            callers,
            ..AccessConfig::none()
        }
    }

    fn caller_config(name: &str, token: &str, pools: Option<&[&str]>) -> CallerConfig {
        CallerConfig {
            name: name.into(),
            token_sha256: Some(sha(token)),
            user_pools: pools.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
            rate_per_second: 5,
            burst: 10,
        }
    }

    fn policy() -> Policy {
        Policy::build(
            &access(vec![
                caller_config("billing", "tok-billing", Some(&["us-east-1_A"])),
                caller_config("ops", "tok-ops", None),
            ]),
            &LimitSettings::default(),
            None,
        )
    }

    #[test]
    fn tokens_identify_their_caller() {
        let policy = policy();
        let billing = policy.authenticate(Some(b"Bearer tok-billing")).unwrap();
        assert_eq!(&*billing.name, "billing");
        assert_eq!(
            &*policy.authenticate(Some(b"bearer  tok-ops ")).unwrap().name,
            "ops"
        );
    }

    #[test]
    fn wrong_missing_and_malformed_tokens_fail() {
        let policy = policy();
        assert_eq!(
            policy.authenticate(None).unwrap_err(),
            "no authorization header"
        );
        assert_eq!(
            policy.authenticate(Some(b"Bearer nope")).unwrap_err(),
            "unknown token"
        );
        assert_eq!(
            policy.authenticate(Some(b"Basic dG9r")).unwrap_err(),
            "authorization is not a bearer token"
        );
        assert_eq!(
            policy.authenticate(Some(b"Bearer ")).unwrap_err(),
            "authorization is not a bearer token"
        );
        assert_eq!(
            policy.authenticate(Some(b"tok-ops")).unwrap_err(),
            "authorization is not a bearer token"
        );
    }

    #[test]
    fn pools_are_deny_by_default() {
        let policy = policy();
        let billing = policy.authenticate(Some(b"Bearer tok-billing")).unwrap();
        assert!(billing.may_reset_in("us-east-1_A"));
        assert!(!billing.may_reset_in("us-east-1_B"));
        let ops = policy.authenticate(Some(b"Bearer tok-ops")).unwrap();
        assert!(ops.may_reset_in("anything_x"));
    }

    #[test]
    fn without_auth_everyone_is_anonymous() {
        let policy = Policy::build(&AccessConfig::none(), &LimitSettings::default(), None);
        let caller = policy.authenticate(None).unwrap();
        assert_eq!(&*caller.name, ANONYMOUS);
        assert!(caller.may_reset_in("us-east-1_A"));
    }

    #[test]
    fn a_rebuild_keeps_unchanged_buckets_and_replaces_changed_ones() {
        let old = policy();
        let mut changed = caller_config("ops", "tok-ops", None);
        changed.rate_per_second = 1;
        let new = Policy::build(
            &access(vec![
                caller_config("billing", "tok-billing", Some(&["us-east-1_A"])),
                changed,
            ]),
            &LimitSettings::default(),
            Some(&old),
        );
        let rate = |p: &Policy, n: &str| Arc::clone(&p.named(n).unwrap().rate);
        assert!(Arc::ptr_eq(&rate(&old, "billing"), &rate(&new, "billing")));
        assert!(!Arc::ptr_eq(&rate(&old, "ops"), &rate(&new, "ops")));
    }

    #[tokio::test]
    async fn files_are_still_watched_when_no_signal_can_come() {
        let dir = std::env::temp_dir().join(format!("cg-policy-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        let with_token = |token: &str| {
            format!(
                "[auth]\nmode = \"token\"\nreload_interval_secs = 1\n[[callers]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\n",
                hex::encode(sha(token))
            )
        };
        std::fs::write(&path, with_token("tok-old")).unwrap();
        let config = AccessConfig::reload(&path, false).unwrap();
        let access = Arc::new(Access::new(
            &config,
            &LimitSettings::default(),
            Some(path.clone()),
            false,
        ));
        // The SIGHUP side is gone (as when the signal cannot be registered).
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        drop(sender);
        tokio::spawn(Arc::clone(&access).watch(receiver));
        // Twice: the watcher must go on after it has seen the signals end.
        for token in ["tok-new", "tok-newer"] {
            std::fs::write(&path, with_token(token)).unwrap();
            let header = format!("Bearer {token}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while access
                .policy()
                .authenticate(Some(header.as_bytes()))
                .is_err()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the file with {token} was never read"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_file_is_refused_and_the_old_policy_stays() {
        let dir = std::env::temp_dir().join(format!("cg-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        let good = format!(
            "[auth]\nmode = \"token\"\n[[callers]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\n",
            hex::encode(sha("tok-ops"))
        );
        std::fs::write(&path, &good).unwrap();
        let config = AccessConfig::reload(&path, false).unwrap();
        let access = Access::new(
            &config,
            &LimitSettings::default(),
            Some(path.clone()),
            false,
        );
        assert!(
            access
                .policy()
                .authenticate(Some(b"Bearer tok-ops"))
                .is_ok()
        );

        std::fs::write(
            &path,
            "[auth]\nmode = \"token\"\n[[callers]]\nname = \"ops\"\n",
        )
        .unwrap();
        let error = access.reload().unwrap_err().to_string();
        assert!(error.contains("callers[ops].token_sha256"), "{error}");
        assert!(
            access
                .policy()
                .authenticate(Some(b"Bearer tok-ops"))
                .is_ok(),
            "old policy kept"
        );

        std::fs::write(&path, "[auth]\nmode = \"none\"\n").unwrap();
        let error = access.reload().unwrap_err().to_string();
        assert!(error.contains("restart"), "{error}");
        assert!(
            access.policy().authenticate(None).is_err(),
            "authentication stays on"
        );

        std::fs::write(
            &path,
            good.replace(&hex::encode(sha("tok-ops")), &hex::encode(sha("tok-new"))),
        )
        .unwrap();
        access.reload().unwrap();
        assert!(
            access
                .policy()
                .authenticate(Some(b"Bearer tok-ops"))
                .is_err()
        );
        assert!(
            access
                .policy()
                .authenticate(Some(b"Bearer tok-new"))
                .is_ok()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_no_token_hash() {
        let policy = policy();
        let printed = format!("{policy:?}");
        assert!(!printed.contains("token"), "{printed}");
    }
}
