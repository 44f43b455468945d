//! Two paths compared round by round (sections 4 and 5): sequential and concurrent rounds
//! alternating between the paths, the CPU each used, and the table that pairs them per round.

use std::process::Command;

use cognito_gateway::telemetry;

use crate::{
    IN_FLIGHT,
    load::{Call, concurrent, sequential},
    report::{table, us},
    stats::{Concurrent, Sequential, Summary, median, spread},
};

/// Sequential calls per round in the tracing and stack comparisons.
pub(crate) const COMPARE_SEQUENTIAL: usize = 2_000;
/// Concurrent calls per round in the tracing and stack comparisons.
pub(crate) const COMPARE_CONCURRENT: usize = 10_000;

/// One path of a comparison: sequential and concurrent rounds, and the CPU they used.
pub(crate) struct Compared {
    pub(crate) sequential: Sequential,
    pub(crate) concurrent: Concurrent,
    /// CPU used during the sequential rounds, and the calls made in them.
    pub(crate) sequential_cpu: CpuUse,
    pub(crate) concurrent_cpu: CpuUse,
}

impl Compared {
    pub(crate) fn new(label: &'static str) -> Self {
        Self {
            sequential: Sequential::new(label),
            concurrent: Concurrent::new(label),
            sequential_cpu: CpuUse::default(),
            concurrent_cpu: CpuUse::default(),
        }
    }

    /// One sequential round; `cpu` reads the CPU ticks of whatever is being measured and `backend`
    /// the calls its backend has received (0 where they cannot be seen).
    pub(crate) async fn sequential_round(
        &mut self,
        n: usize,
        call: &Call,
        cpu: &dyn Fn() -> u64,
        backend: &dyn Fn() -> u64,
    ) {
        let (ticks, calls) = (cpu(), backend());
        let latencies = sequential(n, call, self.sequential.label).await;
        self.sequential_cpu.add(cpu() - ticks, n);
        self.sequential.push(latencies);
        self.sequential.backend_calls += backend() - calls;
    }

    pub(crate) async fn concurrent_round(
        &mut self,
        n: usize,
        call: &Call,
        cpu: &dyn Fn() -> u64,
        backend: &dyn Fn() -> u64,
    ) {
        let (ticks, calls) = (cpu(), backend());
        let load = concurrent(n, IN_FLIGHT, call, self.concurrent.label).await;
        self.concurrent_cpu.add(cpu() - ticks, n);
        self.concurrent.push(load, backend() - calls);
    }
}

/// CPU ticks used over some calls.
#[derive(Default, Clone, Copy)]
pub(crate) struct CpuUse {
    ticks: u64,
    calls: usize,
}

impl CpuUse {
    pub(crate) fn add(&mut self, ticks: u64, calls: usize) {
        self.ticks += ticks;
        self.calls += calls;
    }

    /// CPU µs per call.
    pub(crate) fn per_call(self, ticks_per_second: f64) -> f64 {
        self.ticks as f64 / ticks_per_second * 1e6 / self.calls as f64
    }
}

/// utime + stime of a /proc/<pid>/stat file, in clock ticks.
pub(crate) fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = std::fs::read_to_string(stat_path).expect("/proc/<pid>/stat is readable");
    // The gateway's own parser, which its process.cpu.time metric reads /proc/self/stat with.
    let (user, system) =
        telemetry::proc_stat_cpu_ticks(&stat).expect("/proc/<pid>/stat has utime and stime");
    user + system
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub(crate) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A comparison's table: both paths, then the second against the first, paired per round; returns
/// that difference for the text that follows the table.
pub(crate) fn write_table(
    out: &mut String,
    base: &Compared,
    other: &Compared,
    ticks: f64,
) -> Difference {
    let row = |c: &Compared| {
        let s = c.sequential.median();
        let (lo, hi) = c.sequential.p50_range();
        let (cps_lo, cps, cps_hi) = spread(c.concurrent.calls_per_sec.clone());
        let conc = Summary::median_of(&c.concurrent.latencies);
        vec![
            c.sequential.label.to_owned(),
            us(s.p50),
            us(s.p99),
            format!("{}–{}", us(lo), us(hi)),
            format!("{:.1}", c.sequential_cpu.per_call(ticks)),
            format!("{cps:.0}"),
            format!("{cps_lo:.0}–{cps_hi:.0}"),
            us(conc.p50),
            us(conc.p99),
            format!("{:.1}", c.concurrent_cpu.per_call(ticks)),
        ]
    };
    let d = Difference::of(base, other, ticks);
    let mut rows = vec![row(base), row(other)];
    rows.push(vec![
        "difference (paired per round)".to_owned(),
        format!("{:+.0} (×{:.2})", d.p50.0, d.p50.1),
        format!("{:+.0} (×{:.2})", d.p99.0, d.p99.1),
        String::new(),
        format!("{:+.1} (×{:.2})", d.sequential_cpu.0, d.sequential_cpu.1),
        format!("×{:.2}", d.throughput),
        String::new(),
        format!("{:+.0}", d.concurrent_p50),
        format!("{:+.0}", d.concurrent_p99),
        format!("{:+.1} (×{:.2})", d.concurrent_cpu.0, d.concurrent_cpu.1),
    ]);
    table(out, &COMPARED_HEADER, &rows);
    d
}

/// The second path of a comparison against the first: (difference, ratio) pairs, latencies
/// paired per round, CPU over all rounds.
pub(crate) struct Difference {
    pub(crate) p50: (f64, f64),
    pub(crate) p99: (f64, f64),
    /// Whether the two paths' per-round sequential p50 ranges overlap (the p50 change is then
    /// within the noise between rounds).
    pub(crate) p50_ranges_overlap: bool,
    pub(crate) sequential_cpu: (f64, f64),
    pub(crate) throughput: f64,
    pub(crate) concurrent_p50: f64,
    pub(crate) concurrent_p99: f64,
    pub(crate) concurrent_cpu: (f64, f64),
}

impl Difference {
    pub(crate) fn of(base: &Compared, other: &Compared, ticks: f64) -> Self {
        let paired = |f: fn(&Summary) -> f64| {
            let pairs = base.sequential.rounds.iter().zip(&other.sequential.rounds);
            let delta = median(pairs.clone().map(|(b, o)| f(o) - f(b)));
            let ratio = median(pairs.map(|(b, o)| f(o) / f(b)));
            (delta, ratio)
        };
        let concurrent_p = |f: fn(&Summary) -> f64| {
            let pairs = base
                .concurrent
                .latencies
                .iter()
                .zip(&other.concurrent.latencies);
            median(pairs.map(|(b, o)| f(o) - f(b)))
        };
        let cpu = |b: CpuUse, o: CpuUse| {
            let (b, o) = (b.per_call(ticks), o.per_call(ticks));
            (o - b, o / b)
        };
        let (base_lo, base_hi) = base.sequential.p50_range();
        let (other_lo, other_hi) = other.sequential.p50_range();
        Self {
            p50: paired(|s| s.p50),
            p99: paired(|s| s.p99),
            p50_ranges_overlap: base_lo.max(other_lo) <= base_hi.min(other_hi),
            sequential_cpu: cpu(base.sequential_cpu, other.sequential_cpu),
            throughput: median(
                base.concurrent
                    .calls_per_sec
                    .iter()
                    .zip(&other.concurrent.calls_per_sec)
                    .map(|(b, o)| o / b),
            ),
            concurrent_p50: concurrent_p(|s| s.p50),
            concurrent_p99: concurrent_p(|s| s.p99),
            concurrent_cpu: cpu(base.concurrent_cpu, other.concurrent_cpu),
        }
    }

    /// "+7 µs at p50 (×1.06)", noting when the rounds' ranges overlap.
    pub(crate) fn p50_text(&self) -> String {
        let noise = if self.p50_ranges_overlap {
            ", within the spread between rounds"
        } else {
            ""
        };
        format!("{:+.0} µs at p50 (×{:.2}{noise})", self.p50.0, self.p50.1)
    }
}

/// The columns of a comparison's table ([`write_table`]).
const COMPARED_HEADER: [&str; 10] = [
    "path",
    "seq p50 µs",
    "seq p99 µs",
    "seq p50 range",
    "CPU µs/call (seq)",
    "calls/s (64 in flight)",
    "calls/s range",
    "conc p50 µs",
    "conc p99 µs",
    "CPU µs/call (conc)",
];
