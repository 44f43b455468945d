//! Tower layers, one per concern. The order they run in is decided in one place:
//! [`crate::app`]'s `layers()`.
//!
//! The admission checks (load shedding, authentication, per-caller rate) share one shape,
//! [`check::CheckLayer`]: look at the request, then either pass it on (holding a guard until the
//! answer is ready) or answer at once with a status from the error table.

pub mod admission;
pub mod check;
pub mod deadline;
pub mod error_details;
pub mod trace;

/// Paths open to everyone: health (Kubernetes probes carry no credentials) and reflection (it serves
/// the API's schema, which is public, and no data).
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}
