//! Who is "the same person" (docs/api.md §5): what the user gate keys on, so that another spelling of
//! one user is not another user.
//!
//! - `limits.user_identity = "username"`: the username as the pool compares it. Cognito pools
//!   created since 2020 compare usernames case-insensitively, so "Alice" and "alice" are one user
//!   there and two elsewhere. Each pool's `UsernameConfiguration.CaseSensitive` is learned with
//!   `DescribeUserPool` once (it cannot change after the pool is created); a pool that cannot be
//!   described is compared exactly (never guessed), with one warning and a metric, and asked
//!   again after [`RETRY_AFTER`].
//! - `"canonical"`: the user's `sub`, resolved with `AdminGetUser`, so that the username and every
//!   alias (e-mail, phone) of one user are one person. One read call per reset; reads have a quota
//!   of their own, apart from account recovery's.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::{
    cognito::{Backend, BackendError, client_span, is_known_exception},
    config::UserIdentity,
    domain::{UserPoolId, Username},
    metrics::metrics,
};

/// How long a pool that could not be described is compared exactly before it is asked again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest a lookup may take (the caller's deadline may cut it shorter).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pools remembered at most: pool ids come from callers.
const MAX_POOLS: usize = 10_000;

/// One pool's case sensitivity, as last learned: `None` until asked.
type Slot = Arc<PoolSlot>;

/// One pool's case sensitivity: once described, read without waiting (the path of every call);
/// until then, one caller at a time asks Cognito.
#[derive(Debug, Default)]
struct PoolSlot {
    described: std::sync::OnceLock<bool>,
    asking: tokio::sync::Mutex<Option<Known>>,
}

/// What a pool that could not be described is taken for, and until when.
#[derive(Debug, Clone, Copy)]
struct Known {
    case_sensitive: bool,
    until: Instant,
}

/// Resolves callers' usernames to the identity the gate keys on.
#[derive(Debug)]
pub(crate) struct Identities<B> {
    backend: Arc<B>,
    mode: UserIdentity,
    pools: Mutex<HashMap<UserPoolId, Slot>>,
}

impl<B: Backend> Identities<B> {
    /// Identities in `mode`, looked up through `backend`.
    pub(crate) fn new(backend: Arc<B>, mode: UserIdentity) -> Self {
        Self {
            backend,
            mode,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The identity of `username` in `pool`: a text the gate hashes, never logged. A lookup that
    /// fails fails the call (nothing was sent).
    /// `asking` is called before anything is asked of Cognito.
    pub(crate) async fn resolve(
        &self,
        pool: &UserPoolId,
        username: &Username,
        asking: &(dyn Fn() + Sync),
    ) -> Result<String, BackendError> {
        match self.mode {
            UserIdentity::Canonical => {
                asking();
                let sub = self
                    .backend
                    .user_sub(pool, username, LOOKUP_TIMEOUT)
                    .instrument(client_span("AdminGetUser"))
                    .await?;
                Ok(format!("sub:{sub}"))
            }
            UserIdentity::Username => {
                let name = username.expose();
                Ok(if self.case_sensitive(pool, asking).await {
                    format!("name:{name}")
                } else {
                    format!("name:{}", name.to_lowercase())
                })
            }
        }
    }

    /// Whether `pool` compares usernames case-sensitively: as described once (a pool's
    /// `UsernameConfiguration` cannot change after it is created, so the answer is kept for good),
    /// or described now. Concurrent calls for one pool wait for one `DescribeUserPool`.
    async fn case_sensitive(&self, pool: &UserPoolId, asking: &(dyn Fn() + Sync)) -> bool {
        let slot = {
            let mut pools = self
                .pools
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some(slot) = pools.get(pool)
                && let Some(case_sensitive) = slot.described.get()
            {
                return *case_sensitive;
            }
            if pools.len() >= MAX_POOLS && !pools.contains_key(pool) {
                // Pool ids come from callers: made-up ones (never described) go first, and must
                // never push out a real one.
                pools.retain(|_, slot| slot.described.get().is_some());
            }
            if pools.len() >= MAX_POOLS && !pools.contains_key(pool) {
                Slot::default()
            } else {
                Arc::clone(pools.entry(pool.clone()).or_default())
            }
        };
        let mut known = slot.asking.lock().await;
        if let Some(case_sensitive) = slot.described.get() {
            return *case_sensitive;
        }
        let now = Instant::now();
        if let Some(known) = *known
            && known.until > now
        {
            return known.case_sensitive;
        }
        asking();
        let described = self
            .backend
            .usernames_case_sensitive(pool, LOOKUP_TIMEOUT)
            .instrument(client_span("DescribeUserPool"))
            .await;
        let first_failure = known.is_none();
        let answer = match described {
            Ok(case_sensitive) => {
                let _ = slot.described.set(case_sensitive);
                return case_sensitive;
            }
            Err(error) => {
                // A label of bounded values: what Cognito may name is not.
                let exception = match &error {
                    BackendError::Cognito(_) if !is_known_exception(error.exception()) => "_OTHER",
                    _ => error.exception(),
                };
                metrics().pools_not_described.add(
                    1,
                    &[opentelemetry::KeyValue::new(
                        "exception",
                        exception.to_owned(),
                    )],
                );
                if first_failure {
                    tracing::warn!(
                        user_pool_id = pool.as_str(),
                        %error,
                        "cannot describe the user pool: its usernames are compared exactly (case-sensitively) until it can be"
                    );
                }
                Known {
                    case_sensitive: true,
                    until: now + RETRY_AFTER,
                }
            }
        };
        *known = Some(answer);
        answer.case_sensitive
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        cognito::{CallBounds, ResetOutcome},
        domain::ResetRequest,
    };

    /// A Cognito whose pools are case-insensitive, or cannot be described; counts descriptions.
    #[derive(Debug, Default)]
    struct Pools {
        described: AtomicUsize,
        broken: bool,
    }

    impl Backend for Pools {
        async fn reset_user_password(
            &self,
            _: &ResetRequest,
            _: CallBounds,
        ) -> Result<ResetOutcome, BackendError> {
            Ok(ResetOutcome::default())
        }

        async fn usernames_case_sensitive(
            &self,
            _: &UserPoolId,
            _: Duration,
        ) -> Result<bool, BackendError> {
            self.described.fetch_add(1, Ordering::SeqCst);
            if self.broken {
                Err(BackendError::Unreachable("down".into()))
            } else {
                Ok(false)
            }
        }

        async fn user_sub(
            &self,
            _: &UserPoolId,
            username: &Username,
            _: Duration,
        ) -> Result<String, BackendError> {
            Ok(match username.expose() {
                "alice" | "Alice@Example.com" => "sub-1".into(),
                _ => "sub-2".into(),
            })
        }
    }

    fn pool() -> UserPoolId {
        UserPoolId::parse("us-east-1_Ids".into()).unwrap()
    }

    impl<B: Backend> Identities<B> {
        async fn resolve_for_test(
            &self,
            pool: &UserPoolId,
            username: &Username,
        ) -> Result<String, BackendError> {
            self.resolve(pool, username, &|| {}).await
        }
    }

    fn name(name: &str) -> Username {
        Username::parse(name.into()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_case_insensitive_pool_folds_case_and_is_described_once() {
        let backend = Arc::new(Pools::default());
        let ids = Identities::new(Arc::clone(&backend), UserIdentity::Username);
        let a = ids.resolve_for_test(&pool(), &name("Alice")).await.unwrap();
        let b = ids.resolve_for_test(&pool(), &name("aLICE")).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            ids.resolve_for_test(&pool(), &name("bob")).await.unwrap()
        );
        assert_eq!(backend.described.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(86_400)).await;
        ids.resolve_for_test(&pool(), &name("alice")).await.unwrap();
        assert_eq!(backend.described.load(Ordering::SeqCst), 1, "for good");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_that_cannot_be_described_is_compared_exactly_and_asked_again_later() {
        let backend = Arc::new(Pools {
            broken: true,
            ..Pools::default()
        });
        let ids = Identities::new(Arc::clone(&backend), UserIdentity::Username);
        let a = ids.resolve_for_test(&pool(), &name("Alice")).await.unwrap();
        let b = ids.resolve_for_test(&pool(), &name("alice")).await.unwrap();
        assert_ne!(a, b, "never guessed");
        assert_eq!(backend.described.load(Ordering::SeqCst), 1);
        tokio::time::advance(RETRY_AFTER).await;
        ids.resolve_for_test(&pool(), &name("alice")).await.unwrap();
        assert_eq!(backend.described.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn canonical_identity_is_the_sub_whatever_the_spelling() {
        let ids = Identities::new(Arc::new(Pools::default()), UserIdentity::Canonical);
        let by_name = ids.resolve_for_test(&pool(), &name("alice")).await.unwrap();
        let by_alias = ids
            .resolve_for_test(&pool(), &name("Alice@Example.com"))
            .await
            .unwrap();
        assert_eq!(by_name, by_alias);
        assert_ne!(
            by_name,
            ids.resolve_for_test(&pool(), &name("bob")).await.unwrap()
        );
        // A sub and a username that happen to read alike are still two identities.
        let as_username = Identities::new(Arc::new(Pools::default()), UserIdentity::Username)
            .resolve_for_test(&pool(), &name("sub-1"))
            .await
            .unwrap();
        assert_ne!(as_username, by_name);
    }
}
