//! `form-vmm-ctl`: the operator's command line for the Formation VMM service.
//!
//! The request and response bodies are `form_service_api::types`, shared with the
//! service, so the two cannot drift apart without a compile error.

pub mod api;
pub mod cli;
pub mod client;
pub mod commands;
pub mod console;
pub mod devices;
pub mod endpoint;
pub mod error;
pub mod exit;
pub mod files;
pub mod options;
pub mod render;
pub mod table;
pub mod tls;
