//! What a VFIO device borrows from the VM: guest memory slots for its mapped BARs
//! and interrupt routes, implemented over KVM (`hypervisor::Vm`) and the VM's GSI
//! pool.

use form_vm_allocator::GsiAllocator;
use pci::vfio::GuestMemorySlots;
use pci::BoxError;
use pci::InterruptRouting;
use pci::MsiMessage;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// KVM memory slots for BAR areas the device lets us mmap.
pub struct KvmMemorySlots {
    vm: Arc<hypervisor::Vm>,
}

impl KvmMemorySlots {
    pub fn new(vm: Arc<hypervisor::Vm>) -> Self {
        Self { vm }
    }
}

impl GuestMemorySlots for KvmMemorySlots {
    unsafe fn add(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, BoxError> {
        // SAFETY: the caller keeps the host range mapped until `remove`.
        let slot = unsafe { self.vm.add_memory(gpa, size, host_addr as *mut u8, false) }?;
        Ok(slot)
    }

    fn remove(&self, slot: u32) -> Result<(), BoxError> {
        Ok(self.vm.remove_memory(slot)?)
    }
}

/// MSI routes and irqfds in KVM, GSIs from the VM's pool (shared with every other
/// device that needs one).
pub struct KvmInterruptRouting {
    vm: Arc<hypervisor::Vm>,
    gsis: Arc<Mutex<GsiAllocator>>,
}

impl KvmInterruptRouting {
    pub fn new(vm: Arc<hypervisor::Vm>, gsis: Arc<Mutex<GsiAllocator>>) -> Self {
        Self { vm, gsis }
    }
}

/// The PCI message as KVM's routing table wants it (address split in halves).
pub fn kvm_msi_message(msg: MsiMessage) -> hypervisor::MsiMessage {
    hypervisor::MsiMessage {
        address_lo: msg.address as u32,
        address_hi: (msg.address >> 32) as u32,
        data: msg.data,
    }
}

impl InterruptRouting for KvmInterruptRouting {
    fn allocate_gsi(&self) -> Result<u32, BoxError> {
        let mut gsis = self.gsis.lock().unwrap_or_else(|e| e.into_inner());
        Ok(gsis.allocate()?)
    }

    fn free_gsi(&self, gsi: u32) {
        let mut gsis = self.gsis.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = gsis.free(gsi) {
            log::warn!("vfio: {e}");
        }
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), BoxError> {
        Ok(self.vm.set_msi_route(gsi, kvm_msi_message(msg))?)
    }

    fn remove_msi_route(&self, gsi: u32) -> Result<(), BoxError> {
        Ok(self.vm.remove_msi_route(gsi)?)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), BoxError> {
        Ok(self.vm.register_irqfd(fd, gsi)?)
    }

    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), BoxError> {
        Ok(self.vm.register_irqfd_with_resample(fd, resample, gsi)?)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), BoxError> {
        Ok(self.vm.unregister_irqfd(fd, gsi)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_address_splits_into_kvm_halves() {
        let m = kvm_msi_message(MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x4041,
        });
        assert_eq!(m.address_lo, 0xfee0_1000);
        assert_eq!(m.address_hi, 1);
        assert_eq!(m.data, 0x4041);
    }
}
