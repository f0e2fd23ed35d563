//! The service's HTTP API: routes, errors as JSON with stable codes, and listeners.

mod auth;
mod doctor;
mod error;
mod listen;
mod peer_cap;
mod routes;
mod tls;

pub use error::ApiError;
/// Request and response bodies, shared with clients (the `form-service-api` crate).
pub use form_service_api::types;
pub use listen::{
    serve, Listen, ListenError, ServeOptions, Transport, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_PEER, DEFAULT_SOCKET,
};
pub use routes::{router, CREATE_BODY_LIMIT, SMALL_BODY_LIMIT};
pub use tls::{TlsError, TlsFiles};
