//! PCI segment 0: the host bridge behind port 0xCF8 and the ECAM window.
//!
//! Placeholder until the `pci` crate's segment lands; holds the allocators that
//! PCI devices will draw from.

use form_vm_allocator::{AddressAllocator, GsiAllocator, GuestLayout, PciSlotAllocator};

pub struct PciDevices {
    pub slots: PciSlotAllocator,
    pub mmio32: AddressAllocator,
    pub mmio64: AddressAllocator,
    pub gsis: GsiAllocator,
}

impl PciDevices {
    pub fn new(layout: &GuestLayout) -> Result<PciDevices, form_vm_allocator::AllocError> {
        let m32 = layout.mmio32();
        let m64 = layout.mmio64();
        Ok(PciDevices {
            slots: PciSlotAllocator::new(),
            mmio32: AddressAllocator::new(m32.start, m32.size)?,
            mmio64: AddressAllocator::new(m64.start, m64.size)?,
            gsis: GsiAllocator::new(hypervisor::bindings::KVM_MAX_IRQ_ROUTES as u32 - 1),
        })
    }
}
