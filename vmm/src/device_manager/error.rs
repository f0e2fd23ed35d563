//! Why creating or placing a platform device failed, shared by every attachment
//! family.

use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create an event fd for {what}: {source}")]
    EventFd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot place {what} on the bus: {source}")]
    Bus {
        what: &'static str,
        source: devices::BusError,
    },
    #[error("cannot wire the {what} interrupt to GSI {gsi}: {source}")]
    Irqfd {
        what: &'static str,
        gsi: u32,
        source: hypervisor::HypervisorError,
    },
    #[error("serial mode File needs a file path (serial.file)")]
    SerialFileMissing,
    #[error("cannot open serial output file {path}: {source}")]
    SerialFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("serial mode {0:?} is not supported; use Tty, File, Off or Null")]
    SerialModeUnsupported(crate::config::ConsoleOutputMode),
    #[error("PCI root buses: {0}")]
    PciSegment(pci::PciSegmentError),
    #[error("PCI address pools: {0}")]
    Allocator(#[from] form_vm_allocator::AllocError),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

pub(crate) fn eventfd(what: &'static str) -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| DeviceError::EventFd { what, source })
}
