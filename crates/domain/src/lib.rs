//! The order model shared by every Hallmark service.
//!
//! Everything here is pure: no I/O, no clocks read implicitly, no async. The services own
//! persistence and transport; this crate owns the rules they must agree on.

pub mod events;
pub mod held;
pub mod material;
pub mod pricing;
pub mod status;
pub mod stl;

pub use material::Material;
pub use status::{OrderStatus, Stage, System, TransitionError};
