//! How many refusals are logged: a caller that floods the gateway with calls it refuses must not
//! flood the node's disk too. Each (reason, caller) gets [`LINES_PER_WINDOW`] lines a
//! [`WINDOW`]; the rest are counted, and each window that suppressed any ends with one summary line.
//! Metrics count every call regardless.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

/// Lines each (reason, caller) may write per window.
pub(crate) const LINES_PER_WINDOW: u32 = 10;
/// The window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

type Key = (&'static str, Arc<str>);

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// The refusal log's quota, shared by every call.
#[derive(Debug, Default)]
pub(crate) struct LogQuota {
    windows: Mutex<HashMap<Key, Window>>,
}

impl LogQuota {
    /// Whether a refusal for `reason` from `caller` may be logged now; if not, it is counted.
    pub(crate) fn admit(&self, reason: &'static str, caller: &Arc<str>) -> bool {
        let now = Instant::now();
        let mut windows = self.lock();
        // The common case, a known key, costs no allocation: `Arc` clones only on first sight.
        if let Some(window) = windows.get_mut(&(reason, Arc::clone(caller))) {
            if now.duration_since(window.started) >= WINDOW {
                // Rare (once a window per key), and one line: written under the lock.
                summarize(reason, caller, window.logged, window.suppressed);
                *window = Window {
                    started: now,
                    logged: 0,
                    suppressed: 0,
                };
            }
            if window.logged < LINES_PER_WINDOW {
                window.logged += 1;
                return true;
            }
            window.suppressed += 1;
            return false;
        }
        windows.insert(
            (reason, Arc::clone(caller)),
            Window {
                started: now,
                logged: 1,
                suppressed: 0,
            },
        );
        true
    }

    /// Ends the windows that are over: a summary line for each that suppressed lines; quiet keys
    /// are forgotten. Run every [`WINDOW`], so that a flood that stopped is still summarized.
    pub(crate) fn close_windows(&self) {
        let now = Instant::now();
        let mut over = Vec::new();
        self.lock().retain(|key, window| {
            if now.duration_since(window.started) < WINDOW {
                return true;
            }
            over.push((key.clone(), window.logged, window.suppressed));
            false
        });
        // Written with the lock released: a slow log must not hold up the calls.
        for ((reason, caller), logged, suppressed) in over {
            summarize(reason, &caller, logged, suppressed);
        }
    }

    /// Ends every window now (at shutdown): nothing suppressed goes unsummarized.
    pub(crate) fn close_all(&self) {
        let all: Vec<_> = self.lock().drain().collect();
        for ((reason, caller), window) in all {
            summarize(reason, &caller, window.logged, window.suppressed);
        }
    }

    /// Closes windows every [`WINDOW`] until dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.close_windows();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        // Every critical section leaves the map consistent; a poisoned lock is still usable.
        self.windows
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn summarize(reason: &str, caller: &str, logged: u32, suppressed: u64) {
    if suppressed > 0 {
        tracing::info!(
            reason,
            caller,
            suppressed,
            logged,
            window_secs = WINDOW.as_secs(),
            "refused calls not logged one by one"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_reason_and_caller_gets_its_lines_per_window() {
        let quota = LogQuota::default();
        let (anonymous, billing): (Arc<str>, Arc<str>) = ("".into(), "billing".into());
        let logged =
            |reason, caller: &Arc<str>, n| (0..n).filter(|_| quota.admit(reason, caller)).count();
        assert_eq!(logged("UNAUTHENTICATED", &anonymous, 1000), 10);
        assert_eq!(logged("RATE_LIMITED", &billing, 1000), 10);
        assert_eq!(
            logged("UNAUTHENTICATED", &billing, 5),
            5,
            "a key of its own"
        );
        tokio::time::advance(WINDOW).await;
        assert_eq!(
            logged("UNAUTHENTICATED", &anonymous, 1000),
            10,
            "a new window"
        );
        quota.close_windows();
        tokio::time::advance(WINDOW).await;
        quota.close_windows();
        assert!(quota.lock().is_empty(), "quiet keys are forgotten");
    }
}
