//! `cargo bench --bench gateway`: what the gateway costs, measured in one run.
//!
//! 1. The release binary: file size, time from exec to the `SERVING` log line, RSS idle and after
//!    calls, time from SIGTERM to a clean exit.
//! 2. In process, as the tests build the app: sequential latency (p50/p90/p99) and concurrent
//!    throughput, with a real tonic client over loopback, against the embedded local Cognito.
//! 3. The same loads sent straight to the local Cognito with the AWS SDK, no gateway, so the
//!    difference is the gateway's own overhead.
//! 4. Tracing's cost: the release binary with OTLP export at 100% sampling to a live collector
//!    running in this process, against the same binary with no OTEL_* variables, rounds
//!    interleaved; the collector counts the spans it received.
//! 5. The middleware stack's cost: the gateway as `App::build` assembles it (token authentication
//!    on) against the bare handler with no layers, both in front of a backend that answers at once,
//!    so the figures are the gateway's alone, not Cognito's.
//! 6. The fleet's cost: the user gate and the limits in a `redis-server` on loopback against in
//!    process, with the Redis round trips each call costs.
//! - Hostile clients: a well-behaved caller alone and beside a flood of refused calls, with idle
//!   connections held open; the CPU per refused call; RSS before, during and after.
//! - Out of process, as a user would compare: the release binary and a direct SDK client, each in
//!   its own process, against one local Cognito in a third; the bare gRPC hop beside them.
//! - Cold and idle connections over TLS: the first call after idle periods (configurable), the
//!   fake Cognito closing idle connections as AWS does.
//!
//! The gateway's limits (caller rate, backend guard, per-user cooldown) are raised out of the way,
//! as the tests do: their checks still run on every call, but none refuses one and no answer is
//! remembered (cooldown 0), so the figures are the gateway's work rather than its throttles. Only
//! the per-user single-flight stays: concurrent loads name a new user each call, apart from one
//! line that shows the sharing on purpose.
//!
//! The machine is shared and noisy, so every figure is a median over repeated rounds, gateway and
//! direct rounds are interleaved (a noisy spell hits both), and overheads are paired per round. The
//! tables go to stdout and, with the method and machine, to `docs/benchmarks.md`.
//!
//! # Layout
//!
//! One file per measured concern; each measures and then writes its section of the report, so that
//! the method the report describes sits next to the code that follows it.
//!
//! - `binary.rs`: 1, the release binary as a child process.
//! - `in_process.rs`: 2 and 3, the gateway in process against the SDK called directly.
//! - `tracing_cost.rs`: 4, OTLP export on and off.
//! - `stack.rs`: 5, the middleware stack against the bare handler.
//! - `fleet.rs`: 6, Redis against in process.
//! - `abuse.rs`: hostile clients.
//! - `out_of_process.rs`: out of process and idle connections, three processes; also the roles this binary plays in them.
//! - `callgrind.rs`: a harness of N calls in process for `valgrind --tool=callgrind`.
//! - `load.rs`: what one call is, and how calls are sent: one after another or many in flight.
//! - `stats.rs`: percentiles per round, medians over rounds.
//! - `compare.rs`: two paths measured round by round with the CPU they used (sections 4 and 5).
//! - `report.rs`: the machine, the report's header, its tables.
//! - `tests/kit/` (shared with the API tests): the app in process, the binary as a child process,
//!   an OTLP collector server.
//!
//! 7. The soak (`soak.rs`), run on its own: `cargo test --locked --bench gateway -- --soak`, the
//!    release binary under ten minutes of mixed load (`COGNITO_GATEWAY_SOAK_SECS`), then an audit of
//!    outcomes, Cognito sends, metrics, memory and file descriptors. It writes only its own section
//!    of the report, which a full run keeps.
//!
//! `cargo test --all-targets` also builds and runs this (harness = false) target, without
//! `--bench` or `--soak`; `main` then returns at once so the test suite stays fast. With
//! `COGNITO_GATEWAY_BENCH=fleet`, `in_process`, `stack`, `out_of_process` or `abuse` only that
//! section runs, and its table goes to
//! stdout only.

// A benchmark that meets an unexpected state should stop loudly rather than report numbers for the
// wrong thing; every `expect` in these files says what it relies on.

use std::{path::Path, time::Instant};

mod abuse;
mod binary;
mod callgrind;
mod compare;
mod fleet;
mod in_process;
mod load;
mod out_of_process;
mod report;
mod soak;
mod stack;
mod stats;
mod tracing_cost;

// Shared with tests/api/: the app in process, the binary as a child, the OTLP collector server.
#[path = "../../tests/kit/kit.rs"]
mod kit;

// The system allocator, counting what the threads that ask are given (`COGNITO_GATEWAY_BENCH=allocations`).
#[global_allocator]
static ALLOCATOR: callgrind::allocations::Counting = callgrind::allocations::Counting;

/// Rounds of each measurement but the binary's startup; figures are medians over rounds.
const ROUNDS: usize = 5;
/// Calls not measured before the first round of each path (connections, SDK caches, allocator).
const WARM_UP: usize = 200;
/// Calls in flight at once under concurrent load.
const IN_FLIGHT: usize = 64;

fn main() {
    // The fake Cognito and the direct client of the out-of-process sections are this binary again.
    if let Ok(role) = std::env::var(out_of_process::ROLE) {
        out_of_process::run_role(&role);
        return;
    }
    // cargo bench passes --bench; cargo test does not, and must not pay for minutes of load.
    let soak = std::env::args().any(|arg| arg == "--soak");
    if !soak && !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let started = Instant::now();
    let only = std::env::var("COGNITO_GATEWAY_BENCH").ok();
    // Default worker count (one per core), as the binary's #[tokio::main] has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    if soak {
        soak::run(&runtime);
        return;
    }

    match only.as_deref() {
        Some("fleet") => {
            let figures = runtime.block_on(fleet::bench());
            let mut report = String::new();
            fleet::write(&mut report, &figures);
            println!("{report}");
            return;
        }
        Some("abuse") => {
            let figures = abuse::bench(&runtime);
            let mut report = String::new();
            abuse::write(&mut report, &figures);
            println!("{report}");
            return;
        }
        Some("log_line") => {
            callgrind::log_line();
            return;
        }
        Some(mode @ ("callgrind" | "allocations")) => {
            runtime.block_on(callgrind::run(mode == "allocations"));
            return;
        }
        Some("out_of_process") => {
            let (hop, idle) = out_of_process::bench(&runtime, out_of_process::IdlePlan::from_env());
            let mut report = String::new();
            out_of_process::write(&mut report, &hop, &idle);
            println!("{report}");
            return;
        }
        Some("stack") => {
            let figures = runtime.block_on(stack::bench());
            let mut report = String::new();
            stack::write(&mut report, &figures);
            println!("{report}");
            return;
        }
        Some("in_process") => {
            let figures = runtime.block_on(in_process::bench());
            let mut report = String::new();
            in_process::write(&mut report, &figures, report::Machine::probe().cpus);
            println!("{report}");
            return;
        }
        _ => {}
    }
    let machine = report::Machine::probe();
    eprintln!(
        "benchmarking the release binary ({} processes)...",
        binary::STARTUP_RUNS
    );
    let binary = binary::bench(&runtime);
    eprintln!("benchmarking in process ({ROUNDS} rounds per figure)...");
    let in_process = runtime.block_on(in_process::bench());
    eprintln!("benchmarking tracing: OTLP export on and off ({ROUNDS} rounds)...");
    let tracing_cost = tracing_cost::bench(&runtime);
    // Last: its second half installs a process-wide log subscriber, which nothing before expects.
    eprintln!("benchmarking the middleware stack against the bare handler ({ROUNDS} rounds)...");
    let stack = runtime.block_on(stack::bench());
    eprintln!("benchmarking the fleet: Redis against in process ({ROUNDS} rounds)...");
    let fleet = runtime.block_on(fleet::bench());
    eprintln!(
        "benchmarking out of process: the binary against the SDK, and idle TLS connections..."
    );
    let (hop, idle) = out_of_process::bench(&runtime, out_of_process::IdlePlan::from_env());
    eprintln!("benchmarking hostile clients: a refused-call flood beside a caller...");
    let abuse = abuse::bench(&runtime);
    let load_after = report::read_loadavg();

    let mut report = String::new();
    report::write_header(&mut report, &machine, &load_after, started.elapsed());
    binary::write(&mut report, &binary);
    in_process::write(&mut report, &in_process, machine.cpus);
    tracing_cost::write(&mut report, &tracing_cost);
    stack::write(&mut report, &stack);
    fleet::write(&mut report, &fleet);
    out_of_process::write(&mut report, &hop, &idle);
    abuse::write(&mut report, &abuse);
    // The soak runs on its own; its section, if the report has one, stays.
    let previous = std::fs::read_to_string(report::REPORT).unwrap_or_default();
    if let Some(soak) = report::section(&previous, "## Soak") {
        report.push('\n');
        report.push_str(&soak);
    }
    println!("{report}");
    if let Some(dir) = Path::new(report::REPORT).parent() {
        std::fs::create_dir_all(dir).expect("docs/ can be created");
    }
    std::fs::write(report::REPORT, &report).expect("docs/benchmarks.md is writable");
    eprintln!("written to {}", report::REPORT);
}
