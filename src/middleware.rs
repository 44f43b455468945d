//! Tower layers, one per concern. The order they run in is decided in one place:
//! [`crate::app`]'s `layers()`.
//!
//! The admission checks (load shedding, authentication, per-caller rate) share one shape,
//! [`admission::AdmitLayer`]: look at the request, then either pass it on (holding a guard until
//! the answer is ready) or fail it with a typed error. Every failure, theirs, the handler's or tonic's,
//! becomes a status in one place: [`rescue`].

use std::sync::{Arc, OnceLock};

use crate::domain::UserPoolId;

pub(crate) mod admission;
pub(crate) mod deadline;
pub(crate) mod request_bytes;
pub(crate) mod rescue;
pub(crate) mod trace;

/// Paths open to everyone: health (Kubernetes probes carry no credentials) and reflection (it serves
/// the API's schema, which is public, and no data).
pub(crate) fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// What a call's layers and handler learn about it as it goes, for its log line and metrics: the
/// outermost layer puts one in the request's extensions (as `Arc<CallRecord>`), the others fill it
/// in. Each fact is set once.
#[derive(Debug, Default)]
pub(crate) struct CallRecord {
    caller: OnceLock<Arc<str>>,
    pool: OnceLock<UserPoolId>,
    reset: OnceLock<ResetRecord>,
    deduplicated: OnceLock<&'static str>,
    reached_cognito: OnceLock<()>,
}

/// What a successful reset adds to its call's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResetRecord {
    /// Cognito's request id of the call that answered, where it sent one.
    pub cognito_request_id: Option<String>,
    /// Whether the answer came without a Cognito call of this call's own.
    pub deduplicated: bool,
}

impl CallRecord {
    /// Records who called (authentication).
    pub(crate) fn set_caller(&self, caller: &Arc<str>) {
        let _ = self.caller.set(Arc::clone(caller));
    }

    /// Records the (validated) pool the call is about.
    pub(crate) fn set_pool(&self, pool: UserPoolId) {
        let _ = self.pool.set(pool);
    }

    /// Records a successful reset.
    pub(crate) fn set_reset(&self, reset: ResetRecord) {
        let _ = self.reset.set(reset);
    }

    /// Records that the call was answered without a Cognito call of its own, and how: `in_flight`
    /// (it shared one), `cooldown` (a success remembered), `unknown_outcome` (an unknown outcome
    /// remembered or shared).
    pub(crate) fn set_deduplicated(&self, kind: &'static str) {
        let _ = self.deduplicated.set(kind);
    }

    /// How the call was deduplicated, if it was.
    pub(crate) fn deduplicated(&self) -> Option<&'static str> {
        self.deduplicated.get().copied()
    }

    /// Records that the call is about to ask Cognito something (a lookup or the reset), or to
    /// wait on another call's reset: from here its line is an audit trail, never held back, and
    /// its outcome may be unknown.
    pub(crate) fn set_reached_cognito(&self) {
        let _ = self.reached_cognito.set(());
    }

    /// Whether the call asked Cognito anything.
    pub(crate) fn reached_cognito(&self) -> bool {
        self.reached_cognito.get().is_some()
    }

    /// Who called, or `""` before authentication: the name refusals are counted under.
    pub(crate) fn caller_or_none(&self) -> &Arc<str> {
        static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
        self.caller.get().unwrap_or(&NONE)
    }

    /// Who called; `""` before authentication (or without it).
    pub(crate) fn caller_name(&self) -> &str {
        self.caller.get().map_or("", |caller| caller)
    }

    /// The pool, once validated.
    pub(crate) fn pool(&self) -> Option<&UserPoolId> {
        self.pool.get()
    }

    /// The reset, if one succeeded.
    pub(crate) fn reset(&self) -> Option<&ResetRecord> {
        self.reset.get()
    }
}
