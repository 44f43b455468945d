//! Logs, traces and metrics.
//!
//! - **Logs:** `tracing` to stderr, human-readable or JSON, filtered by `RUST_LOG` (default `info`).
//! - **Traces and metrics:** OpenTelemetry over OTLP, gRPC or HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`
//!   `grpc`, the default, or `http/protobuf`), configured by the standard `OTEL_*` variables
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT` and its `_TRACES_`/`_METRICS_` variants, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG` with parent-based sampling by default,
//!   `OTEL_METRIC_EXPORT_INTERVAL`). With no endpoint set nothing is exported and no exporter runs.
//!   Exports run on their own threads with bounded queues: a slow or absent collector drops
//!   telemetry, never delays a call.
//! - **Prometheus:** with `--metrics-listen`, the same MeterProvider also serves `GET /metrics`
//!   ([`scrape`]), with or without OTLP.
//! - **Propagation:** W3C `traceparent`/`tracestate`, set explicitly (OpenTelemetry's default
//!   propagator does nothing).
//!
//! The AWS SDK and the HTTP stack log request details at `debug` and `trace`, which for this service
//! means usernames and client metadata. Their targets are capped at `info` whatever `RUST_LOG` says,
//! and none of their spans reach OpenTelemetry: no setting can make the gateway record what callers
//! sent.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use opentelemetry::{
    KeyValue, global,
    trace::{TraceId, TracerProvider as _},
};
use opentelemetry_otlp::{
    MetricExporter, SpanExporter, WithHttpConfig as _, WithTonicConfig,
    tonic_types::transport::{Certificate, ClientTlsConfig, Identity},
};
use opentelemetry_sdk::{
    Resource,
    metrics::SdkMeterProvider,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
};
use tracing::{Level, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterFn, Targets},
    fmt,
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

mod otlp_http;
pub mod scrape;

pub use scrape::MetricsEndpoint;

/// Target prefixes whose `debug`/`trace` output can carry request contents.
const CAPPED_TARGETS: &[&str] = &[
    "aws_config",
    "aws_runtime",
    "aws_sdk_",
    "aws_sigv4",
    "aws_smithy_",
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
];

/// How long shutdown waits for pending telemetry to be flushed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a span or event may be recorded at all: everything of ours, and at most `info` from the
/// dependencies above.
pub fn allowed(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let capped = CAPPED_TARGETS
        .iter()
        .any(|prefix| target.starts_with(prefix));
    !capped || *metadata.level() <= Level::INFO
}

/// The filter the gateway logs with: `RUST_LOG` (default `info`), then the cap above.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// How log lines look (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

/// The exporters, kept to flush them at shutdown.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Flushes what is pending, waiting at most a few seconds: a collector that is down must not
    /// hold up the exit.
    pub fn shutdown(self) {
        // Logged through the subscriber, still installed, so that JSON logs stay JSON.
        if let Some(tracer) = self.tracer
            && let Err(error) = tracer.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(%error, "flushing traces failed");
        }
        if let Some(meter) = self.meter
            && let Err(error) = meter.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            tracing::warn!(%error, "flushing metrics failed");
        }
    }
}

/// `OTEL_EXPORTER_OTLP_<SIGNAL>_<SETTING>`, else `OTEL_EXPORTER_OTLP_<SETTING>`; empty is unset.
fn otlp_setting(signal: &str, setting: &str) -> Option<String> {
    let get = |name: String| std::env::var(name).ok().filter(|v| !v.is_empty());
    get(format!("OTEL_EXPORTER_OTLP_{signal}_{setting}"))
        .or_else(|| get(format!("OTEL_EXPORTER_OTLP_{setting}")))
}

fn configured(signal: &str) -> bool {
    otlp_setting(signal, "ENDPOINT").is_some()
}

/// How a signal reaches its collector (`OTEL_EXPORTER_OTLP_[<SIGNAL>_]PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `grpc`, the default: what the gateway has always spoken, to a collector's port 4317.
    Grpc,
    /// `http/protobuf`: to port 4318, or to a backend that takes OTLP over HTTP only (Prometheus's
    /// own OTLP receiver, most vendors).
    HttpProtobuf,
}

fn protocol(signal: &str) -> Result<Protocol, String> {
    match otlp_setting(signal, "PROTOCOL").as_deref() {
        None | Some("grpc") => Ok(Protocol::Grpc),
        Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: grpc or http/protobuf"
        )),
    }
}

/// The PEM files that secure the connection to a collector, read.
#[derive(Default)]
struct CollectorTls {
    /// `..._CERTIFICATE`: the CAs the collector's certificate must chain to, alone; else the
    /// system's roots.
    ca: Option<Vec<u8>>,
    /// `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`, for collectors that ask for one.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// TLS to the collector, unless the endpoint says `http://` (a schemeless endpoint is secure under
/// the OTLP spec unless `OTEL_EXPORTER_OTLP_INSECURE`, and tonic uses TLS only for `https` anyway).
fn collector_tls(signal: &str) -> Result<Option<CollectorTls>, String> {
    let plaintext = otlp_setting(signal, "ENDPOINT")
        .is_some_and(|endpoint| endpoint.to_ascii_lowercase().starts_with("http://"));
    if plaintext {
        return Ok(None);
    }
    let read = |setting: &str| -> Result<Option<Vec<u8>>, String> {
        otlp_setting(signal, setting)
            .map(|path| std::fs::read(&path).map_err(|e| format!("{path}: {e}")))
            .transpose()
    };
    let identity = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err("a client certificate needs both CLIENT_CERTIFICATE and CLIENT_KEY".into());
        }
    };
    Ok(Some(CollectorTls {
        ca: read("CERTIFICATE")?,
        identity,
    }))
}

impl CollectorTls {
    fn tonic(self) -> ClientTlsConfig {
        let mut tls = match self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }
}

fn tonic_builder<B: WithTonicConfig>(signal: &str, builder: B) -> Result<B, String> {
    Ok(match collector_tls(signal)? {
        Some(tls) => builder.with_tls_config(tls.tonic()),
        None => builder,
    })
}

fn span_exporter() -> Result<SpanExporter, String> {
    let built = match protocol("TRACES")? {
        Protocol::Grpc => tonic_builder("TRACES", SpanExporter::builder().with_tonic())?.build(),
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_http_client(otlp_http::client("TRACES", collector_tls("TRACES")?)?)
            .build(),
    };
    built.map_err(|e| e.to_string())
}

fn metric_exporter() -> Result<MetricExporter, String> {
    let built = match protocol("METRICS")? {
        Protocol::Grpc => tonic_builder("METRICS", MetricExporter::builder().with_tonic())?.build(),
        Protocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_http_client(otlp_http::client("METRICS", collector_tls("METRICS")?)?)
            .build(),
    };
    built.map_err(|e| e.to_string())
}

/// The resource, weakest first: the gateway's defaults, then the SDK's own attributes and
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`, as the spec orders them.
/// `service.instance.id` is a random UUID unless given: without it, the cumulative series of two
/// replicas (or of a process and its restart) would collide in Prometheus.
fn resource() -> Resource {
    let mut builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "cognito-gateway"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", crate::domain::random_uuid()),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.is_empty()
    {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// The registry `/metrics` gathers from, once [`init`] has made one.
static SCRAPED: OnceLock<prometheus::Registry> = OnceLock::new();

/// Binds the `/metrics` endpoint (`--metrics-listen`) on the metrics of [`init`]`(.., true)`; run
/// it with [`MetricsEndpoint::run`].
pub async fn bind_metrics(addr: SocketAddr) -> std::io::Result<MetricsEndpoint> {
    let registry = SCRAPED.get().cloned().ok_or_else(|| {
        std::io::Error::other("no Prometheus registry: telemetry::init was not asked for one")
    })?;
    MetricsEndpoint::bind(addr, registry).await
}

/// Installs the global subscriber, propagator and, where an endpoint is configured, the OTLP
/// exporters; with `scrape`, a Prometheus reader on the same meter provider for
/// [`bind_metrics`]. Call once, inside the Tokio runtime (the exporters use it), before anything
/// logs.
pub fn init(format: LogFormat, scrape: bool) -> Telemetry {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut telemetry = Telemetry::default();
    // One resource for both signals: one instance id.
    let resource = resource();

    let tracer = configured("TRACES")
        .then(|| match span_exporter() {
            Ok(exporter) => {
                let provider = SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_sampler(UnsampledRefusals(
                        opentelemetry_sdk::trace::Config::default().sampler,
                    ))
                    .with_batch_exporter(exporter)
                    .build();
                let tracer = provider.tracer("cognito-gateway");
                telemetry.tracer = Some(provider);
                Some(tracer)
            }
            Err(error) => {
                eprintln!("cognito-gateway: OTLP trace exporter not started: {error}");
                None
            }
        })
        .flatten();
    let layers = layers(format, tracer);

    // One meter provider, whoever reads it: OTLP pushes what `/metrics` serves.
    let mut meter = SdkMeterProvider::builder().with_resource(resource.clone());
    let mut readers = 0;
    if configured("METRICS") {
        match metric_exporter() {
            Ok(exporter) => {
                meter = meter.with_periodic_exporter(exporter);
                readers += 1;
            }
            Err(error) => eprintln!("cognito-gateway: OTLP metric exporter not started: {error}"),
        }
    }
    if scrape {
        let registry = prometheus::Registry::new();
        match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
        {
            Ok(reader) => {
                meter = meter.with_reader(reader);
                let _ = SCRAPED.set(registry);
                readers += 1;
            }
            Err(error) => eprintln!("cognito-gateway: Prometheus exporter not started: {error}"),
        }
    }
    if readers > 0 {
        let provider = meter.build();
        global::set_meter_provider(provider.clone());
        register_process_metrics();
        telemetry.meter = Some(provider);
    }

    tracing_subscriber::registry().with(layers).init();
    telemetry
}

/// The subscriber's layers: logs, and spans to OpenTelemetry if there is a `tracer`.
///
/// A list, so that an absent OpenTelemetry layer is absent. An `Option` layer's `None` declares an
/// interest in every callsite: every dependency's `trace` spans (h2 makes several per frame) were
/// created and entered on every call, only for the filters to drop them; that was a third of a
/// refused call's CPU.
fn layers(
    format: LogFormat,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Vec<Box<dyn Layer<Registry> + Send + Sync>> {
    let mut layers = vec![log_layer(format, std::io::stderr)];
    if let Some(tracer) = tracer {
        // Only the gateway's own spans: the dependencies' are noise at best and carry request
        // contents at worst.
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Spans start when their context is first needed (a child, a log line's ids) or
                // when they close, not when entered: so that a refusal, known only later, is
                // still marked when the sampler decides (see `UnsampledRefusals`). Nothing of
                // ours reads OpenTelemetry's own current context, which entering would set.
                .with_context_activation(false)
                .with_filter(Targets::new().with_target("cognito_gateway", Level::INFO))
                .boxed(),
        );
    }
    layers
}

/// The span attribute that marks a call the gateway refused at the door
/// (`crate::status::is_refusal`).
pub(crate) const REFUSED: &str = "cognito_gateway.refused";

/// The sampler `OTEL_TRACES_SAMPLER` configures (OpenTelemetry's default: parent-based, always on),
/// except that spans marked [`REFUSED`] are dropped: not exported. A flood of refused calls costs the
/// collector nothing and cannot push real calls' spans out of the export queue (2,048 spans);
/// metrics count them, and their log lines (within a quota) carry the caller's trace id.
#[derive(Debug, Clone)]
struct UnsampledRefusals(Box<dyn opentelemetry_sdk::trace::ShouldSample>);

impl opentelemetry_sdk::trace::ShouldSample for UnsampledRefusals {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry::trace::TraceContextExt as _;
        use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult};
        let refused = attributes
            .iter()
            .any(|kv| kv.key.as_str() == REFUSED && kv.value == opentelemetry::Value::Bool(true));
        if !refused {
            return self
                .0
                .should_sample(parent, trace_id, name, kind, attributes, links);
        }
        SamplingResult {
            decision: SamplingDecision::Drop,
            attributes: Vec::new(),
            trace_state: parent
                .map(|parent| parent.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// The log layer as the binary installs it: `format` to `writer`, filtered by `RUST_LOG` and then
/// the dependencies' cap ([`allowed`]). Benchmarks install it too, to measure what runs.
pub fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_filter(env_filter())
            .with_filter(FilterFn::new(allowed))
            .boxed(),
        // JSON lines name no span (see `json_logs`): the layer asks for none, so that without
        // OpenTelemetry no span is made at all (the registry's bookkeeping of a call's spans was
        // a third of what JSON logging cost per call). Outermost: under `EnvFilter` as the outer
        // filter, spans were enabled again.
        LogFormat::Json => json_logs(writer)
            .with_filter(env_filter())
            .with_filter(FilterFn::new(|metadata: &Metadata<'_>| {
                metadata.is_event() && allowed(metadata)
            }))
            .boxed(),
    }
}

/// JSON log lines (`--log-format json`): one object per event, its fields flattened. Spans' fields
/// are not in the lines, and so not formatted at all: tracing-subscriber's JSON formatter
/// re-parses and re-serialises a span's fields at every `Span::record` (four per call, about
/// 20 µs), for lines that did not need them: a call's own line (the rescue layer's) names its
/// caller, pool, outcome and trace ids itself, and spans go to OpenTelemetry whole.
pub fn json_logs<S, W>(
    writer: W,
) -> fmt::Layer<S, NoSpanFields, fmt::format::Format<fmt::format::Json>, W>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> fmt::MakeWriter<'writer> + 'static,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .fmt_fields(NoSpanFields)
        .with_writer(writer)
}

/// Formats no span fields: see [`json_logs`]. (Events' fields are the JSON formatter's own work.)
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSpanFields;

impl<'writer> fmt::FormatFields<'writer> for NoSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: fmt::format::Writer<'writer>,
        _fields: R,
    ) -> std::fmt::Result {
        Ok(())
    }

    fn add_fields(
        &self,
        _current: &'writer mut fmt::FormattedFields<Self>,
        _fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        Ok(())
    }
}

tokio::task_local! {
    /// The trace id a call came with (W3C `traceparent`). With no OTLP endpoint there is no
    /// OpenTelemetry layer to carry it, yet logs and `RequestInfo` should still name the caller's
    /// trace.
    static INCOMING_TRACE: Option<TraceId>;
}

/// Runs the synchronous part of a call (a layer may answer at once) with the trace id it came with.
pub fn in_incoming_trace<R>(trace_id: Option<TraceId>, call: impl FnOnce() -> R) -> R {
    INCOMING_TRACE.sync_scope(trace_id, call)
}

/// Runs a call's future with the trace id it came with, if any.
pub fn with_incoming_trace<F: Future>(
    trace_id: Option<TraceId>,
    call: F,
) -> impl Future<Output = F::Output> {
    INCOMING_TRACE.scope(trace_id, call)
}

/// The current trace and span ids (hex): for log lines, so that logs and traces join. Without
/// tracing, the caller's trace id and no span id.
pub fn current_ids() -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    if ids.is_valid() {
        return Some((ids.trace_id().to_string(), ids.span_id().to_string()));
    }
    INCOMING_TRACE
        .try_with(|trace_id| *trace_id)
        .ok()
        .flatten()
        .map(|trace_id| (trace_id.to_string(), String::new()))
}

/// `process.memory.usage` and `process.cpu.time`, read from `/proc` when the exporter asks (every
/// export interval), not on the request path.
fn register_process_metrics() {
    let meter = global::meter("cognito-gateway");
    let _memory = meter
        .i64_observable_gauge("process.memory.usage")
        .with_unit("By")
        .with_description("Resident set size")
        .with_callback(|gauge| {
            if let Some(rss) = proc_self::rss_bytes() {
                gauge.observe(rss, &[]);
            }
        })
        .build();
    let _cpu = meter
        .f64_observable_counter("process.cpu.time")
        .with_unit("s")
        .with_description("CPU time used by the process")
        .with_callback(|counter| {
            if let Some((user, system)) = proc_self::cpu_seconds() {
                counter.observe(user, &[KeyValue::new("cpu.mode", "user")]);
                counter.observe(system, &[KeyValue::new("cpu.mode", "system")]);
            }
        })
        .build();
}

/// utime and stime, in clock ticks, from the text of a Linux `/proc/<pid>/stat` file; `None` if the
/// text is not one. Public so that the bench reads its child processes' CPU time with this parser.
///
/// ```
/// use cognito_gateway::telemetry::proc_stat_cpu_ticks;
///
/// // The command name may hold spaces and parentheses: fields count from its last ')'.
/// let stat = "42 (odd) name) S 1 42 42 0 -1 4194560 120 0 0 0 7 3 0 0 20 0 1 0 9 1024 12";
/// assert_eq!(proc_stat_cpu_ticks(stat), Some((7, 3)));
/// assert_eq!(proc_stat_cpu_ticks("not a stat line"), None);
/// ```
pub fn proc_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // Field 3 (the state) is the first after the command's closing parenthesis; utime and stime
    // are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Linux `/proc/self`; elsewhere the process metrics are simply absent.
mod proc_self {
    /// Clock ticks per second: 100 on every Linux this runs on (`getconf CLK_TCK`).
    const TICKS_PER_SECOND: f64 = 100.0;
    const PAGE_SIZE: i64 = 4096;

    pub(super) fn rss_bytes() -> Option<i64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * PAGE_SIZE)
    }

    pub(super) fn cpu_seconds() -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (user, system) = super::proc_stat_cpu_ticks(&stat)?;
        Some((
            user as f64 / TICKS_PER_SECOND,
            system as f64 / TICKS_PER_SECOND,
        ))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// What the binary's subscriber asks to be created: its own spans, never a dependency's
    /// `trace` output (which it would only drop, after paying for it on every frame).
    fn enabled(
        format: LogFormat,
        tracer: Option<opentelemetry_sdk::trace::Tracer>,
    ) -> (bool, bool, bool, bool) {
        let subscriber = tracing_subscriber::registry().with(layers(format, tracer));
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::event_enabled!(target: "cognito_gateway::middleware", Level::INFO),
                tracing::span_enabled!(target: "cognito_gateway::middleware", Level::INFO),
                tracing::event_enabled!(target: "h2::proto", Level::TRACE),
                tracing::span_enabled!(target: "h2::proto", Level::TRACE),
            )
        })
    }

    #[test]
    fn dependencies_trace_output_is_never_created_with_or_without_opentelemetry() {
        let tracer = || SdkTracerProvider::builder().build().tracer("test");
        // Our events always; our spans where something reads them: text lines print them, JSON
        // lines do not, OpenTelemetry exports them.
        assert_eq!(enabled(LogFormat::Json, None), (true, false, false, false));
        assert_eq!(enabled(LogFormat::Text, None), (true, true, false, false));
        assert_eq!(
            enabled(LogFormat::Json, Some(tracer())),
            (true, true, false, false)
        );
    }
}
