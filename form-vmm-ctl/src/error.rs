//! What can go wrong talking to the service, each saying what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use form_service_api::types::ErrorCode;

use crate::endpoint::Endpoint;
use crate::exit::Exit;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach vmm-service: {reason}; is vmm-service running? start it with `vmm-service serve`; {endpoint}")]
    Unreachable { endpoint: Endpoint, reason: String },

    #[error("no answer from vmm-service at {endpoint} within {}s; the operation may still complete: check with `form-vmm-ctl list`, or raise --timeout", waited.as_secs())]
    Timeout {
        endpoint: Endpoint,
        waited: Duration,
    },

    #[error("the connection to vmm-service at {endpoint} failed mid-request: {reason}")]
    Transport { endpoint: Endpoint, reason: String },

    #[error("no secure connection to vmm-service: {reason}; {endpoint}")]
    Tls { endpoint: Endpoint, reason: String },

    #[error("--ca-file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },

    #[error("no CA certificates in the system's store ({reason}); pass the CA that signed the service's certificate with --ca-file FILE")]
    NoSystemRoots { reason: String },

    #[error("refusing to send the bearer token in clear text to {peer} ({endpoint}): use an https:// URL (vmm-service serve --tls-cert FILE --tls-key FILE), or an SSH tunnel to a loopback port; --allow-plain-http accepts the risk")]
    PlainToken { endpoint: Endpoint, peer: String },

    /// An error answer from the service, carrying its stable code when it sent one.
    #[error("{message}")]
    Service {
        status: u16,
        code: Option<ErrorCode>,
        message: String,
        /// The raw body, for `--json`.
        body: Vec<u8>,
    },

    #[error("vmm-service answered {what} with a body this form-vmm-ctl cannot read ({reason}); are the two the same version?")]
    BadResponse { what: String, reason: String },

    #[error("cannot read the token file {path}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },

    #[error("the token file {path} is empty; it must hold the bearer token vmm-service was started with")]
    EmptyToken { path: PathBuf },

    #[error("{0}")]
    Usage(String),

    #[error("{flag} {path}: cannot read the file: {source}")]
    ReadFile {
        flag: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error("VM {vm} has no GPU with device id '{id}'; it has: {known}")]
    NoSuchDeviceId {
        vm: String,
        id: String,
        known: String,
    },

    #[error("cannot start the I/O runtime: {0}")]
    Runtime(io::Error),
}

impl CtlError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Unreachable { .. } | Self::Tls { .. } => Exit::Unreachable,
            Self::Service { status, code, .. } => match code {
                Some(code) => Exit::for_error_code(*code),
                None => Exit::for_http_status(*status),
            },
            Self::TokenFile { .. }
            | Self::EmptyToken { .. }
            | Self::Usage(_)
            | Self::ReadFile { .. }
            | Self::CaFile { .. }
            | Self::NoSystemRoots { .. }
            | Self::PlainToken { .. } => Exit::Usage,
            Self::NoSuchDeviceId { .. } => Exit::NotFound,
            Self::Timeout { .. }
            | Self::Transport { .. }
            | Self::BadResponse { .. }
            | Self::Runtime(_) => Exit::Failure,
        }
    }
}
