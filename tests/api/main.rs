//! One integration-test binary: the real server on port 0, driven by a real tonic client, in front of
//! the real AWS SDK talking to wire-level fakes (wiremock), moto's Cognito server, or the embedded
//! local Cognito.

#![allow(clippy::unwrap_used)] // test plumbing: a failed unwrap is a failed test

mod helpers;
mod jwt;

// Shared with benches/gateway/: the app in process, the binary as a child, the fake Cognito,
// temporary files, an OTLP collector server.
#[path = "../kit/kit.rs"]
mod kit;

mod callers;
mod chaos;
mod cli;
mod fleet;
mod hostile;
mod local;
mod moto;
mod mtls;
mod otel;
mod readme;
mod reflection;
mod server;
mod shipped_config;
mod wire;
