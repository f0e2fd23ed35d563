//! The service's HTTP API.

pub mod types;
