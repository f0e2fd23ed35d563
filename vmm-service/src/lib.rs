//! The Formation VMM service.

pub mod api;
pub mod gpu;
