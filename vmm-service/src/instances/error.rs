//! Why an action on a VM failed; each maps to one stable API error code.

use crate::api::types::ErrorCode;
use crate::gpu::{Bdf, BdfError, GpuError};
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("memory is {asked} bytes, more than this host's {host} bytes")]
    InsufficientMemory { asked: u64, host: u64 },
    #[error("{0}")]
    Payload(String),
    /// A path outside the operator's image directories or block devices.
    #[error("{0}")]
    PathNotAllowed(String),
    /// `force` asked for by a client that may not (TCP).
    #[error("{0}")]
    ForceNotAllowed(String),
    /// An admission limit of the operator's.
    #[error("{0}")]
    LimitReached(String),
    /// A huge page pool the VM draws on is short.
    #[error("{0}")]
    HugepagesShort(String),
    #[error(transparent)]
    BadDevice(BdfError),
    #[error("no PCI device {0} on this host; GET /v1/gpus lists the GPUs")]
    UnknownGpu(Bdf),
    #[error("{bdf} is not a GPU or accelerator (class {class:#08x})")]
    NotAGpu { bdf: Bdf, class: u32 },
    #[error("GPU {bdf} belongs to VM {owner}")]
    GpuInUse { bdf: Bdf, owner: String },
    #[error("{0}")]
    GroupInUse(String),
    #[error("{0}")]
    GroupNotAssignable(String),
    #[error("{0}")]
    ClassNotAllowed(String),
    #[error("{0}")]
    NoResetMethod(String),
    #[error("{0}")]
    DevicesUnavailable(String),
    /// form-vmm refused a request for its content (a 4xx answer).
    #[error("form-vmm refused {endpoint}: {message}; nothing was changed")]
    VmmRefused {
        endpoint: String,
        message: String,
        code: Option<String>,
    },
    #[error("{asked} free GPUs matching '{model}' asked for, {free} available")]
    GpusUnavailable {
        model: String,
        asked: u32,
        free: usize,
    },
    #[error("{0}")]
    NotAssignable(GpuError),
    #[error("{0}")]
    Bind(GpuError),
    #[error("no VM named {0}")]
    NotFound(String),
    #[error("a VM named {0} exists; pick another name or delete it first")]
    Exists(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    Vmm(String),
    #[error("{0}")]
    EjectTimeout(String),
    #[error("{0}")]
    VmmUnresponsive(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    Internal(String),
}

impl InstanceError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::InvalidConfig,
            Self::InsufficientMemory { .. } => ErrorCode::InsufficientMemory,
            Self::Payload(_) => ErrorCode::PayloadNotFound,
            Self::PathNotAllowed(_) => ErrorCode::PathNotAllowed,
            Self::ForceNotAllowed(_) => ErrorCode::ForceNotAllowed,
            Self::LimitReached(_) => ErrorCode::LimitReached,
            Self::HugepagesShort(_) => ErrorCode::HugepagesShort,
            Self::BadDevice(_) => ErrorCode::InvalidDevice,
            Self::UnknownGpu(_) => ErrorCode::UnknownGpu,
            Self::NotAGpu { .. } => ErrorCode::NotAGpu,
            Self::GpuInUse { .. } => ErrorCode::GpuInUse,
            Self::GroupInUse(_) => ErrorCode::GroupInUse,
            Self::GroupNotAssignable(_) => ErrorCode::GpuNotAssignable,
            Self::ClassNotAllowed(_) => ErrorCode::ClassNotAllowed,
            Self::NoResetMethod(_) => ErrorCode::NoResetMethod,
            Self::DevicesUnavailable(_) => ErrorCode::DevicesUnavailable,
            Self::VmmRefused { .. } => ErrorCode::VmmRefused,
            Self::GpusUnavailable { .. } => ErrorCode::GpusUnavailable,
            Self::NotAssignable(_) => ErrorCode::GpuNotAssignable,
            Self::Bind(_) => ErrorCode::GpuBindFailed,
            Self::NotFound(_) => ErrorCode::VmNotFound,
            Self::Exists(_) => ErrorCode::VmExists,
            Self::InvalidState(_) => ErrorCode::InvalidState,
            Self::Vmm(_) => ErrorCode::VmmFailed,
            Self::EjectTimeout(_) => ErrorCode::EjectTimeout,
            Self::VmmUnresponsive(_) => ErrorCode::VmmUnresponsive,
            Self::NotSupported(_) => ErrorCode::NotSupported,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// form-vmm's own error code, for `vmm_refused`.
    pub fn vmm_code(&self) -> Option<String> {
        match self {
            Self::VmmRefused { code, .. } => code.clone(),
            _ => None,
        }
    }

    /// Sorts a gpu-module error from binding into "cannot be assigned here" (the
    /// operator must change the host) or "binding failed".
    pub fn from_bind(e: GpuError) -> Self {
        match e {
            GpuError::NoSuchDevice { bdf, .. } => Self::UnknownGpu(bdf),
            GpuError::NotAGpu { bdf, class } => Self::NotAGpu { bdf, class },
            GpuError::NoIommuGroup { .. }
            | GpuError::VfioPciMissing { .. }
            | GpuError::ConsoleDevice { .. }
            | GpuError::SharedGroup { .. } => Self::NotAssignable(e),
            other => Self::Bind(other),
        }
    }
}

impl From<StateError> for InstanceError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::GpuTaken { bdf, owner } => Self::GpuInUse { bdf, owner },
            StateError::NameTaken(name) => Self::Exists(name),
            other => Self::Internal(other.to_string()),
        }
    }
}
