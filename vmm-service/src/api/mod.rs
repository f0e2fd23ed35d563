//! The service's HTTP API: routes, errors as JSON with stable codes, and listeners.

mod auth;
mod error;
mod listen;
mod routes;

pub use error::ApiError;
/// Request and response bodies, shared with clients (the `form-service-api` crate).
pub use form_service_api::types;
pub use listen::{serve, Listen, ListenError, DEFAULT_SOCKET};
pub use routes::router;
