//! Logs: `tracing` to stderr, human-readable or JSON, filtered by `RUST_LOG` (default `info`).
//!
//! The AWS SDK and the HTTP stack log request details at `debug` and `trace`, which for this service
//! means usernames and client metadata. Their targets are capped at `info` whatever `RUST_LOG` says:
//! no setting can make the gateway log what callers sent.

use tracing::{Level, Metadata};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::FilterFn, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use crate::config::LogFormat;

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

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let cap = FilterFn::new(allowed);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(env_filter())
                    .with_filter(cap),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr)
                    .with_filter(env_filter())
                    .with_filter(cap),
            )
            .init(),
    }
}
