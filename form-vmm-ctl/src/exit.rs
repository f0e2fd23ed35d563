//! Exit statuses scripts can rely on, and how service errors map onto them.
//!
//! The mapping keys on the service's stable error codes first and falls back to the HTTP
//! status, so a code added to the service later still lands in the right class.

use form_service_api::types::ErrorCode;

/// The process exit status of `form-vmm-ctl`. The numbers are part of the CLI's
/// contract (docs/cli.md); never renumber them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what was asked.
    Ok = 0,
    /// The service failed the request (binding, the VMM, an internal error), answered
    /// something unreadable, did not answer in time, or `doctor` found an error.
    Failure = 1,
    /// The command line is wrong, or the service refused the request as invalid
    /// (malformed name, size or address, missing kernel, not a GPU).
    Usage = 2,
    /// The service could not be reached (no socket, nothing listening, no permission).
    Unreachable = 3,
    /// No VM or GPU by that name or address.
    NotFound = 4,
    /// The request conflicts with what exists: name taken, GPU in use or not
    /// assignable, not enough free GPUs, VM in the wrong state.
    Conflict = 5,
    /// The service refused the bearer token (TCP only), or refused what the request
    /// names as not allowed to this client: a path outside the service's image
    /// directories, `force` binding over TCP.
    Unauthorized = 6,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The class of a service error code.
    pub fn for_error_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::InvalidConfig
            | ErrorCode::InsufficientMemory
            | ErrorCode::PayloadNotFound
            | ErrorCode::InvalidDevice
            | ErrorCode::NotAGpu
            | ErrorCode::ClassNotAllowed
            | ErrorCode::VmmRefused
            | ErrorCode::BodyTooLarge => Self::Usage,
            ErrorCode::UnknownGpu | ErrorCode::VmNotFound => Self::NotFound,
            ErrorCode::GpuInUse
            | ErrorCode::GpusUnavailable
            | ErrorCode::GroupInUse
            | ErrorCode::DevicesUnavailable
            | ErrorCode::NoResetMethod
            | ErrorCode::GpuNotAssignable
            | ErrorCode::VmExists
            | ErrorCode::InvalidState
            | ErrorCode::EjectTimeout
            | ErrorCode::HugepagesShort
            | ErrorCode::LimitReached => Self::Conflict,
            ErrorCode::Unauthorized | ErrorCode::PathNotAllowed | ErrorCode::ForceNotAllowed => {
                Self::Unauthorized
            }
            ErrorCode::GpuBindFailed
            | ErrorCode::VmmFailed
            | ErrorCode::VmmUnresponsive
            | ErrorCode::NotSupported
            | ErrorCode::RequestTimeout
            | ErrorCode::TooManyConnections
            | ErrorCode::Internal => Self::Failure,
        }
    }

    /// The class of an error answer whose code this CLI does not know.
    pub fn for_http_status(status: u16) -> Self {
        match status {
            400 | 413 | 422 => Self::Usage,
            401 | 403 => Self::Unauthorized,
            404 => Self::NotFound,
            409 => Self::Conflict,
            _ => Self::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_agree() {
        // Every code the service sends must land in the class its HTTP status implies,
        // so a client that only sees the status exits the same way.
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::InvalidConfig,
            ErrorCode::InsufficientMemory,
            ErrorCode::PayloadNotFound,
            ErrorCode::InvalidDevice,
            ErrorCode::NotAGpu,
            ErrorCode::UnknownGpu,
            ErrorCode::GpuInUse,
            ErrorCode::GpusUnavailable,
            ErrorCode::GpuNotAssignable,
            ErrorCode::VmNotFound,
            ErrorCode::VmExists,
            ErrorCode::InvalidState,
            ErrorCode::EjectTimeout,
            ErrorCode::VmmUnresponsive,
            ErrorCode::GpuBindFailed,
            ErrorCode::VmmFailed,
            ErrorCode::NotSupported,
            ErrorCode::Unauthorized,
            ErrorCode::PathNotAllowed,
            ErrorCode::ForceNotAllowed,
            ErrorCode::LimitReached,
            ErrorCode::HugepagesShort,
            ErrorCode::RequestTimeout,
            ErrorCode::BodyTooLarge,
            ErrorCode::TooManyConnections,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                Exit::for_error_code(code),
                Exit::for_http_status(code.http_status()),
                "{code:?}"
            );
        }
    }

    #[test]
    fn numbers_are_the_documented_ones() {
        let numbers: Vec<u8> = [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::Unreachable,
            Exit::NotFound,
            Exit::Conflict,
            Exit::Unauthorized,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(Exit::for_http_status(503), Exit::Failure);
    }
}
