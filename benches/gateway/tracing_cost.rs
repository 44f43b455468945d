//! Section 4, tracing's cost: the release binary exporting OTLP to a collector in this process,
//! against the same binary with no OTEL_* variable; rounds alternate between the two processes.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::MetricsService,
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::TraceService,
        },
    },
    trace::v1::span::SpanKind,
};
use prost::Message as _;
use tokio::{runtime::Runtime, sync::oneshot};

use crate::{
    IN_FLIGHT, ROUNDS, WARM_UP,
    binary::{Server, binary_config},
    compare::{COMPARE_CONCURRENT, COMPARE_SEQUENTIAL, Compared, ticks_per_second, write_table},
    kit::otlp::serve_otlp,
    load::{Counter, Who, concurrent, connect, gateway_call, sequential},
    stats::millis,
};

/// What the in-bench OTLP collector received.
#[derive(Default)]
struct CollectorCounts {
    server_spans: AtomicUsize,
    client_spans: AtomicUsize,
    other_spans: AtomicUsize,
    trace_exports: AtomicUsize,
    metric_exports: AtomicUsize,
    /// Encoded size of every export request, traces and metrics.
    bytes: AtomicUsize,
}

impl CollectorCounts {
    fn spans(&self) -> usize {
        self.server_spans.load(Ordering::Relaxed)
            + self.client_spans.load(Ordering::Relaxed)
            + self.other_spans.load(Ordering::Relaxed)
    }
}

/// A minimal OTLP/gRPC receiver: it decodes every export, as a collector must, and only counts what
/// it got (tests/api/otel.rs has one that keeps it, which would cost this process memory and CPU
/// that the gateways under test share).
#[derive(Clone, Default)]
struct OtlpCollector(Arc<CollectorCounts>);

#[tonic::async_trait]
impl TraceService for OtlpCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let counts = &self.0;
        counts.trace_exports.fetch_add(1, Ordering::Relaxed);
        counts
            .bytes
            .fetch_add(request.encoded_len(), Ordering::Relaxed);
        for span in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let counter = if span.kind == SpanKind::Server as i32 {
                &counts.server_spans
            } else if span.kind == SpanKind::Client as i32 {
                &counts.client_spans
            } else {
                &counts.other_spans
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let counts = &self.0;
        counts.metric_exports.fetch_add(1, Ordering::Relaxed);
        counts
            .bytes
            .fetch_add(request.get_ref().encoded_len(), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Both processes' figures and what the collector received.
pub(crate) struct TracingFigures {
    off: Compared,
    on: Compared,
    /// Calls made to the traced process, warm-up included.
    traced_calls: usize,
    /// Spans the collector had received when the load ended, and after the exit's flush.
    spans_at_end_of_load: usize,
    spans_after_exit: usize,
    server_spans: usize,
    client_spans: usize,
    other_spans: usize,
    trace_exports: usize,
    metric_exports: usize,
    export_bytes: usize,
    /// Time from SIGTERM to exit 0: (off, on); the traced one flushes its exporters first.
    shutdown: (Duration, Duration),
    ticks_per_second: f64,
}

/// Starts the collector and both processes, and alternates their rounds.
pub(crate) fn bench(runtime: &Runtime) -> TracingFigures {
    let config = binary_config();
    let collector = OtlpCollector::default();
    let counts = Arc::clone(&collector.0);
    let (stop_collector, collector_stopped) = oneshot::channel::<()>();
    let (collector_addr, collector_task) = runtime.block_on(serve_otlp(collector, None, async {
        let _ = collector_stopped.await;
    }));
    let endpoint = format!("http://{collector_addr}");

    // Both processes run side by side, so that their rounds can alternate.
    let off = Server::spawn(&config, &[]);
    let on = Server::spawn(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    let mut off_figures = Compared::new("tracing off (no OTEL_* variable)");
    let mut on_figures = Compared::new("tracing on: OTLP to a live collector, always_on");
    let mut traced_calls = 0;
    runtime.block_on(async {
        let off_client = connect(off.addr).await;
        let on_client = connect(on.addr).await;
        let none = Counter::default();
        // Sequential: `alice`, an OK no-op after the first reset (one Cognito call each: the
        // cooldown is 0). Concurrent: another unknown user each call, so no call shares another's.
        let off_ok = gateway_call(&off_client, Who::Alice, &none);
        let on_ok = gateway_call(&on_client, Who::Alice, &none);
        let off_missing = gateway_call(&off_client, Who::Nobody, &none);
        let on_missing = gateway_call(&on_client, Who::Nobody, &none);
        for call in [&off_ok, &on_ok] {
            sequential(WARM_UP, call, "tracing warm-up").await;
        }
        for call in [&off_missing, &on_missing] {
            concurrent(WARM_UP * 5, IN_FLIGHT, call, "tracing warm-up").await;
        }
        traced_calls += WARM_UP * 6;
        let off_cpu = || off.cpu_ticks();
        let on_cpu = || on.cpu_ticks();
        let unseen = || 0;
        for round in 0..ROUNDS {
            // Which goes first alternates, so that neither always follows the other's load.
            let mut order = [
                (
                    &mut off_figures,
                    &off_ok,
                    &off_missing,
                    &off_cpu as &dyn Fn() -> u64,
                ),
                (&mut on_figures, &on_ok, &on_missing, &on_cpu),
            ];
            if round % 2 == 1 {
                order.reverse();
            }
            for (figures, ok, _, cpu) in &mut order {
                figures
                    .sequential_round(COMPARE_SEQUENTIAL, ok, *cpu, &unseen)
                    .await;
            }
            for (figures, _, missing, cpu) in &mut order {
                figures
                    .concurrent_round(COMPARE_CONCURRENT, missing, *cpu, &unseen)
                    .await;
            }
            traced_calls += COMPARE_SEQUENTIAL + COMPARE_CONCURRENT;
        }
    });
    // The batch span processor exports every 5 s or 512 spans: some are still queued here.
    let spans_at_end_of_load = counts.spans();
    let (off_shutdown, _) = off.stop();
    // The exit flushes the exporters (the collector keeps serving on the runtime meanwhile) and
    // waits for their answers, so everything exported has been counted once the process is gone.
    let (on_shutdown, _) = on.stop();
    let _ = stop_collector.send(());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), collector_task).await })
        .expect("the collector stops")
        .expect("the collector task does not panic")
        .expect("the collector stops cleanly");

    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    TracingFigures {
        off: off_figures,
        on: on_figures,
        traced_calls,
        spans_at_end_of_load,
        spans_after_exit: counts.spans(),
        server_spans: load(&counts.server_spans),
        client_spans: load(&counts.client_spans),
        other_spans: load(&counts.other_spans),
        trace_exports: load(&counts.trace_exports),
        metric_exports: load(&counts.metric_exports),
        export_bytes: load(&counts.bytes),
        shutdown: (off_shutdown, on_shutdown),
        ticks_per_second: ticks_per_second(),
    }
}

/// The report's section on tracing's cost.
pub(crate) fn write(out: &mut String, t: &TracingFigures) {
    let _ = writeln!(
        out,
        "## Tracing's cost: OTLP export on and off (release binary)\n\n\
         Two `cognito-gateway serve --local --log-format json` processes run side by side with the \
         high-limits `--config` above and `RUST_LOG=info` (one JSON log line per call to a pipe, \
         both): one with no OTEL_* variable, one with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an \
         OTLP/gRPC collector running in the bench process (opentelemetry-proto's tonic services, \
         which decode every export and count the spans), `OTEL_TRACES_SAMPLER=always_on` and \
         `OTEL_METRIC_EXPORT_INTERVAL=1000` (metrics exported every second). The same load goes to \
         both, over one connection each: after {WARM_UP} sequential and {} concurrent warm-up \
         calls, {ROUNDS} rounds of {COMPARE_SEQUENTIAL} sequential resets of `alice` (an OK no-op, \
         one local-Cognito call each) then {COMPARE_CONCURRENT} calls with {IN_FLIGHT} in flight, \
         each a new unknown user (NOT_FOUND, one local-Cognito call each); the two processes' \
         rounds alternate and which goes first alternates too. Latency is measured by the client; \
         CPU is the gateway process's own (utime + stime from /proc/<pid>/stat around each phase, \
         divided by its calls; {:.0} ms ticks, summed over rounds). The machine has 2 CPUs \
         shared by the client, both gateways and the collector.\n",
        WARM_UP * 5,
        1000.0 / t.ticks_per_second,
    );
    let d = write_table(out, &t.off, &t.on, t.ticks_per_second);
    let _ = writeln!(
        out,
        "With export on, the gateway spends **{:+.1} µs more CPU per call under load** (×{:.2}) \
         and serves **×{:.2} the calls per second**; sequential calls move {} and {:+.0} µs at \
         p99 (×{:.2}).\n",
        d.concurrent_cpu.0,
        d.concurrent_cpu.1,
        d.throughput,
        d.p50_text(),
        d.p99.0,
        d.p99.1,
    );
    let per_call = |n: usize| n as f64 / t.traced_calls as f64;
    let _ = writeln!(
        out,
        "The collector received **{} spans for {} calls to the traced process ({:.2} per call)**: \
         {} SERVER ({:.2} per call), {} CLIENT ({:.2} per call), {} other; every call here makes \
         one Cognito call, so 2 per call is complete. {} of them ({:.2} per call) had arrived when \
         the load ended, the rest in the flush at exit (the batch processor exports every 5 s or \
         512 spans). {} trace exports ({:.0} spans each), {} metric exports, {:.1} MiB of OTLP in \
         all ({:.0} B per call). SIGTERM → exit 0: {:.0} ms untraced, {:.0} ms traced (the \
         exporters flush first).\n",
        t.spans_after_exit,
        t.traced_calls,
        per_call(t.spans_after_exit),
        t.server_spans,
        per_call(t.server_spans),
        t.client_spans,
        per_call(t.client_spans),
        t.other_spans,
        t.spans_at_end_of_load,
        per_call(t.spans_at_end_of_load),
        t.trace_exports,
        t.spans_after_exit as f64 / t.trace_exports.max(1) as f64,
        t.metric_exports,
        t.export_bytes as f64 / (1024.0 * 1024.0),
        per_call(t.export_bytes),
        millis(t.shutdown.0),
        millis(t.shutdown.1),
    );
}
