//! One integration-test binary: the real server on port 0, driven by a real tonic client, in front of
//! the real AWS SDK talking to wire-level fakes (wiremock), moto's Cognito server, or the embedded
//! local Cognito.

mod helpers;

mod local;
mod moto;
mod server;
mod wire;
