//! The Formation VMM service.

pub mod gpu;
