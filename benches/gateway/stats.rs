//! Statistics: latency percentiles per round, and medians and spreads over rounds.

use std::time::Duration;

use crate::load::Load;

/// Sequential rounds of one path.
pub(crate) struct Sequential {
    pub(crate) label: &'static str,
    pub(crate) rounds: Vec<Summary>,
    /// Calls the backend received during these rounds, where the bench can see it.
    pub(crate) backend_calls: u64,
}

/// Concurrent rounds of one path.
pub(crate) struct Concurrent {
    pub(crate) label: &'static str,
    pub(crate) calls_per_sec: Vec<f64>,
    pub(crate) latencies: Vec<Summary>,
    pub(crate) calls: usize,
    /// Requests that reached the local Cognito during these rounds.
    pub(crate) cognito_requests: u64,
}

/// Latency percentiles of one round, in µs.
#[derive(Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
}

impl Summary {
    pub(crate) fn of(mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        // Nearest rank: the smallest sample with at least p% of samples at or below it.
        let at = |p: f64| {
            let rank = (p / 100.0 * latencies.len() as f64).ceil() as usize;
            micros(latencies[rank.clamp(1, latencies.len()) - 1])
        };
        Self {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
        }
    }

    /// The per-percentile median over rounds.
    pub(crate) fn median_of(rounds: &[Self]) -> Self {
        Self {
            p50: median(rounds.iter().map(|s| s.p50)),
            p90: median(rounds.iter().map(|s| s.p90)),
            p99: median(rounds.iter().map(|s| s.p99)),
        }
    }
}

impl Sequential {
    pub(crate) fn new(label: &'static str) -> Self {
        Self {
            label,
            rounds: Vec::new(),
            backend_calls: 0,
        }
    }

    pub(crate) fn push(&mut self, latencies: Vec<Duration>) {
        self.rounds.push(Summary::of(latencies));
    }

    pub(crate) fn median(&self) -> Summary {
        Summary::median_of(&self.rounds)
    }

    pub(crate) fn p50_range(&self) -> (f64, f64) {
        min_max(self.rounds.iter().map(|s| s.p50))
    }
}

impl Concurrent {
    pub(crate) fn new(label: &'static str) -> Self {
        Self {
            label,
            calls_per_sec: Vec::new(),
            latencies: Vec::new(),
            calls: 0,
            cognito_requests: 0,
        }
    }

    pub(crate) fn push(&mut self, load: Load, cognito_requests: u64) {
        self.calls += load.latencies.len();
        self.cognito_requests += cognito_requests;
        self.calls_per_sec
            .push(load.latencies.len() as f64 / load.elapsed.as_secs_f64());
        self.latencies.push(Summary::of(load.latencies));
    }

    /// Local Cognito requests per call: 1 when every call made its own.
    pub(crate) fn cognito_per_call(&self) -> f64 {
        self.cognito_requests as f64 / self.calls as f64
    }
}

/// A duration in µs.
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration in ms.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The smallest and the largest value.
pub(crate) fn min_max(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// min, median, max.
pub(crate) fn spread(values: impl IntoIterator<Item = f64> + Clone) -> (f64, f64, f64) {
    let (lo, hi) = min_max(values.clone());
    (lo, median(values), hi)
}
