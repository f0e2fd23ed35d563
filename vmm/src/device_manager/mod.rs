//! Creates the VM's devices and puts them on the I/O buses, one file per
//! attachment family (legacy platform devices, PCI, VFIO passthrough, virtio, the
//! PCI hotplug controller).

pub mod hotplug;
pub mod legacy;
pub mod log_file;
pub mod pci;
pub mod vfio;
pub mod vfio_host;
pub mod vfio_resources;
pub mod virtio;

use crate::cpu::IoBuses;
use std::sync::{Arc, Mutex};
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

/// The VM's buses and the devices on them.
pub struct DeviceManager {
    pub buses: IoBuses,
    pub legacy: legacy::LegacyDevices,
    pub pci: pci::PciDevices,
    pub vfio: vfio::VfioDevices,
    pub virtio: virtio::VirtioDevices,
    pub hotplug: std::sync::Arc<hotplug::HotplugState>,
    pub teardown: PciTeardown,
}

/// Frees the PCI devices when the VM goes. The PCI bus's BAR-move handler holds the
/// I/O buses, which hold the config-space devices, which hold the PCI bus: a cycle
/// that would keep every device (VFIO fds, disk images and their locks, taps, the
/// KVM VM its routes point into) alive after the VM is dropped, or after a create
/// that failed half-way. Dropping this guard replaces the handler, which breaks
/// the cycle; create it as soon as the PCI bus exists.
pub struct PciTeardown {
    bus: Arc<Mutex<::pci::PciBus>>,
}

impl PciTeardown {
    pub fn new(bus: Arc<Mutex<::pci::PciBus>>) -> Self {
        Self { bus }
    }
}

/// The handler left on a bus whose VM is going away: BARs no longer move anywhere.
struct NoBarMoves;

impl ::pci::BarReprogramHandler for NoBarMoves {
    fn bar_moved(&self, _: u8, _: &::pci::SharedPciDevice, _: &::pci::BarReprogram) {}
}

impl Drop for PciTeardown {
    fn drop(&mut self) {
        self.bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_bar_reprogram_handler(Arc::new(NoBarMoves));
    }
}
