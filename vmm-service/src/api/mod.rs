//! The service's HTTP API: routes, errors as JSON with stable codes, and listeners.

mod auth;
mod error;
mod listen;
mod routes;
pub mod types;

pub use error::ApiError;
pub use listen::{serve, Listen, ListenError, DEFAULT_SOCKET};
pub use routes::router;
