//! The test kit: what the API tests (`tests/api/`) and the benchmark (`benches/gateway/`) both need
//! to stand a gateway up and give it a Cognito to talk to.
//!
//! Both include it with `#[path = ".../tests/kit/kit.rs"] mod kit;`. It lives in a folder of its
//! own because Cargo builds every `tests/*.rs` and every `tests/*/main.rs` as a test binary of its
//! own, and the root is `kit.rs` rather than `mod.rs` (STYLE.md: no `mod.rs`); rustc looks for the
//! submodules of a file included by `#[path]` next to it.
//!
//! # Layout
//!
//! - [`app`]: the gateway in this process on port 0, with a connected client (`spawn_app`).
//! - [`binary`]: the real binary as a child process, started and waited for until `SERVING`.
//! - [`files`]: temporary config and key files, written as Kubernetes swaps them.
//! - [`fake_cognito`]: Cognito on the wire, faked with wiremock.
//! - [`chaos_cognito`]: Cognito with faults below HTTP (silence, resets, stalls, bad TLS), on a raw
//!   socket.
//! - [`otlp`]: an OTLP collector server, for the tests' and the bench's collector services.
//! - [`redis`]: a private `redis-server`, for the fleet.

// Each includer uses part of the kit, and nothing here is reachable outside the binary it is
// compiled into.
#![allow(dead_code, unreachable_pub)]

pub mod app;
pub mod binary;
pub mod chaos_cognito;
pub mod fake_cognito;
pub mod files;
pub mod otlp;
pub mod redis;
