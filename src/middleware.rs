//! Tower layers, one per concern. The order they run in is decided in one place:
//! [`crate::app`]'s `layers()`.

pub mod deadline;
pub mod error_details;
