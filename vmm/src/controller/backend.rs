//! The seam between the controller and the VM it drives. The real implementation is
//! [`crate::vm::Vm`] on KVM; tests substitute a fake so the API and the state machine
//! run on hosts without /dev/kvm.

use crate::api::VmCounters;
use crate::config::{DeviceConfig, VmConfig};
use crate::device_manager::pci::PciDeviceInfo;
use crate::vm::{KeptTaps, Removal, Vm, VmError, VmEvents, VmExitReason, VmState};

/// One VM as the controller sees it: the operations of the `vm::Vm` facade.
pub trait VmInstance {
    fn boot(&mut self) -> Result<(), VmError>;
    fn shutdown(&mut self) -> Result<(), VmError>;
    fn power_button(&self) -> Result<(), VmError>;
    fn state(&self) -> VmState;
    fn config(&self) -> &VmConfig;
    fn exit_reason(&self) -> Option<VmExitReason>;
    fn memory_actual_size(&self) -> u64;
    /// Passes devices through, all or none (cold if the VM has not booted, hot if
    /// it runs); one answer per device, in order.
    fn add_devices(&mut self, devices: Vec<DeviceConfig>) -> Result<Vec<PciDeviceInfo>, VmError>;
    /// Removes a device and the functions sharing its guest slot; returns them all.
    fn remove_device(&mut self, id: &str, policy: Removal) -> Result<Vec<PciDeviceInfo>, VmError>;
    fn counters(&self) -> VmCounters;
    /// Duplicates of the NICs' taps, by net id, for the VM that replaces this one
    /// on a reboot; asked for before this one is dropped, while it holds them.
    fn keep_taps(&self) -> KeptTaps;
    /// Every device on the guest's PCI bus with its guest address, in slot order.
    fn pci_devices(&self) -> Vec<PciDeviceInfo> {
        Vec::new()
    }
    /// What the boot disk's configuration chose (a VM without a kernel).
    fn boot_source(&self) -> Option<crate::vm::BootSource> {
        None
    }
    /// Fds that become readable when the VM's devices need the controller (the
    /// guest ejected one on its own, the host asked for one back).
    fn device_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Handles what [`VmInstance::device_event_fds`] signalled; true when the
    /// VM's configuration changed.
    fn handle_device_events(&mut self) -> bool {
        false
    }
}

/// Makes VMs. `events` are the fds the VM signals exit and reset on; the controller
/// keeps clones of them to wait on. `taps` are the NIC taps a rebooted VM kept for
/// its successor ([`VmInstance::keep_taps`]); empty otherwise.
pub trait VmBackend {
    type Vm: VmInstance;
    fn create(
        &mut self,
        config: &VmConfig,
        events: VmEvents,
        taps: KeptTaps,
    ) -> Result<Self::Vm, VmError>;
}

/// VMs on this host's KVM.
pub struct KvmBackend;

impl VmBackend for KvmBackend {
    type Vm = Vm;

    fn create(
        &mut self,
        config: &VmConfig,
        events: VmEvents,
        taps: KeptTaps,
    ) -> Result<Vm, VmError> {
        Vm::with_kept_taps(config, events, taps)
    }
}

impl VmInstance for Vm {
    fn boot(&mut self) -> Result<(), VmError> {
        Vm::boot(self)
    }

    fn shutdown(&mut self) -> Result<(), VmError> {
        Vm::shutdown(self)
    }

    fn power_button(&self) -> Result<(), VmError> {
        Vm::power_button(self)
    }

    fn state(&self) -> VmState {
        Vm::state(self)
    }

    fn config(&self) -> &VmConfig {
        Vm::config(self)
    }

    fn exit_reason(&self) -> Option<VmExitReason> {
        Vm::exit_reason(self)
    }

    fn memory_actual_size(&self) -> u64 {
        Vm::memory_actual_size(self)
    }

    fn add_devices(&mut self, devices: Vec<DeviceConfig>) -> Result<Vec<PciDeviceInfo>, VmError> {
        Vm::add_devices(self, devices)
    }

    fn remove_device(&mut self, id: &str, policy: Removal) -> Result<Vec<PciDeviceInfo>, VmError> {
        Vm::remove_device(self, id, policy)
    }

    fn counters(&self) -> VmCounters {
        Vm::counters(self)
    }

    fn keep_taps(&self) -> KeptTaps {
        Vm::keep_taps(self)
    }

    fn pci_devices(&self) -> Vec<PciDeviceInfo> {
        Vm::pci_devices(self)
    }

    fn boot_source(&self) -> Option<crate::vm::BootSource> {
        Vm::boot_source(self).cloned()
    }

    fn device_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vm::device_event_fds(self)
    }

    fn handle_device_events(&mut self) -> bool {
        !Vm::handle_device_events(self).is_empty()
    }
}
