//! cognito-gateway: a gRPC sidecar that resets user passwords in Amazon Cognito user pools.
//!
//! Internal services call `cognitogateway.v1.UserAdminService/ResetUserPassword`; the gateway
//! validates the request at the edge, calls Cognito's `AdminResetUserPassword` through the AWS SDK,
//! and turns every outcome into a precise gRPC status (docs/api.md, docs/errors.md).
//!
//! # Layout
//! - [`app`], server assembly. Start here: it shows the layers a call passes and where it goes.
//! - `api`, the gRPC service: authorize, validate, the per-user gate, call Cognito, answer.
//! - [`domain`], validated request types and region names; the username never prints.
//! - `gate`, one reset per user per cooldown: single flight, remembered outcomes and request
//!   ids, decided by a store (in this process, or shared by a fleet).
//! - `fleet`, the gate's store in Redis, shared by every replica, and what a replica does when
//!   it does not answer.
//! - `rate`, token buckets with exact waits: per caller, per pool, the backend guard.
//! - `identity`, who is "the same person": the username as the pool compares it, or the `sub`.
//! - [`cognito`], the backend trait, the AWS SDK implementation, region routing and retry rules.
//! - `status`, THE error table, Cognito and gateway failures to gRPC statuses.
//! - `middleware`, tower layers, one per concern: trace, rescue (the one place errors become
//!   statuses and calls are logged), deadline, load shedding, authentication, per-caller rate.
//! - `auth`, who calls and what for: the callers, their tokens and pools, reloaded without a
//!   restart; `auth::jwt`, JWT verification against a JWKS; `auth::tls`, server TLS with client
//!   certificates (mTLS), reloaded when the files change.
//! - [`cli`], the command line (flags with environment twins).
//! - [`config`], the validated settings, plain data read by the rest: flags and the TOML file
//!   (`config/file.rs`), checked at start. It reads only [`domain`].
//! - [`local`], the embedded local Cognito of `serve --local`.
//! - `listener`, the accept loop: connections capped, a handshake deadline, TLS beside the loop.
//! - `health`, `grpc.health.v1`, whose `Watch` streams end at shutdown.
//! - [`client`], the `reset` subcommand.
//! - [`telemetry`], logs, OpenTelemetry traces and metrics (OTLP over gRPC or HTTP, and the
//!   `/metrics` endpoint of `--metrics-listen`); `metrics`, the instruments.
//!

#![forbid(unsafe_code)]

// The surface: what the binary, the tests and the benchmark build on.
pub mod app;
pub mod cli;
pub mod client;
pub mod cognito;
pub mod config;
pub mod domain;
pub mod local;
pub mod telemetry;

// The rest is the gateway's own; what the benchmark needs of it to stand the handler up bare is
// re-exported below.
mod api;
mod auth;
mod fleet;
mod gate;
mod health;
mod identity;
mod listener;
mod metrics;
mod middleware;
mod rate;
mod status;

// Entry points for the fuzz targets in fuzz/ (docs/fuzzing.md); not part of the API.
#[doc(hidden)]
pub mod fuzzing;

pub use api::{ResetGate, UserAdmin};
pub use app::App;
pub use auth::Policy;
pub use config::Config;
pub use gate::{MemoryStore, Times, random_key};
pub use status::code_name;

/// The generated gRPC types and the descriptor set that reflection serves.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("cognitogateway.v1");

    /// The encoded `FileDescriptorSet` reflection serves: `user_admin.proto`, and
    /// `google/rpc/status.proto` and `error_details.proto` (with their imports), so that clients can
    /// decode the error details.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/reflection_descriptor.bin"));

    // Generated without `Debug` (see build.rs): the username and metadata are sensitive.
    impl std::fmt::Debug for ResetUserPasswordRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ResetUserPasswordRequest")
                .field("user_pool_id", &self.user_pool_id)
                .field("username", &"<redacted>")
                .field(
                    "client_metadata",
                    &format_args!("<{} redacted entries>", self.client_metadata.len()),
                )
                .finish()
        }
    }
}
