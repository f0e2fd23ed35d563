use std::path::PathBuf;

/// Why a KVM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot open {path}: {source} (is the kvm module loaded and the device readable and writable by this user?)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KVM API version {found} is not supported; version {expected} is required")]
    ApiVersion { found: i32, expected: i32 },
    #[error("the host KVM lacks the {0} capability that form-vmm requires")]
    MissingCapability(&'static str),
    #[error("{op} failed: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("all {0} KVM memory slots are in use")]
    NoFreeMemorySlot(u32),
    #[error("memory slot {0} is not in use")]
    UnknownMemorySlot(u32),
    #[error("GSI {gsi} cannot carry an MSI route: GSIs below {first} are IOAPIC/PIC pins")]
    GsiReservedForIrqchip { gsi: u32, first: u32 },
    #[error("no MSI route is set for GSI {0}")]
    UnknownMsiRoute(u32),
    #[error("the GSI routing table is full ({0} entries)")]
    RoutingTableFull(usize),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickSignal(vmm_sys_util::errno::Error),
}

pub type Result<T> = std::result::Result<T, HypervisorError>;

pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |source| HypervisorError::Ioctl { op, source }
}
