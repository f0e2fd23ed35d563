//! Peer-to-peer DMA between passed-through devices: a device reaches another's
//! BAR through the IOMMU, so every mmapped BAR area installed as a guest memory
//! slot is also DMA-mapped in the VM's container at IOVA = guest physical
//! address (where the guest put the BAR), read and write.
//!
//! [`DmaMappedSlots`] wraps the VM's [`GuestMemorySlots`], so the mapping follows
//! the slot exactly: installed with it (memory decoding on), unmapped before it
//! goes (BAR moved, decoding off, detach). P2P is best effort: a refused map is
//! logged and the slot stays, unlike guest RAM, whose mapping is mandatory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use log::warn;

use crate::vfio::bars::GuestMemorySlots;
use crate::vfio::container::IommuDma;
use crate::vfio::ops::BoxError;

/// [`GuestMemorySlots`] that also DMA-maps each slot into an IOMMU container.
pub struct DmaMappedSlots {
    slots: Arc<dyn GuestMemorySlots>,
    dma: Arc<dyn IommuDma + Send + Sync>,
    /// Slots mapped for DMA, `(iova, size)` by slot.
    mapped: Mutex<BTreeMap<u32, (u64, u64)>>,
}

impl DmaMappedSlots {
    pub fn new(slots: Arc<dyn GuestMemorySlots>, dma: Arc<dyn IommuDma + Send + Sync>) -> Self {
        Self {
            slots,
            dma,
            mapped: Mutex::new(BTreeMap::new()),
        }
    }

    /// `(iova, size)` of every slot mapped for DMA.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        self.lock().values().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, (u64, u64)>> {
        self.mapped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GuestMemorySlots for DmaMappedSlots {
    unsafe fn add(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, BoxError> {
        // SAFETY: passed on from the caller.
        let slot = unsafe { self.slots.add(gpa, size, host_addr) }?;
        // SAFETY: the caller keeps the host range mapped until `remove`, which
        // unmaps it from the IOMMU first.
        match unsafe { self.dma.map(gpa, size, host_addr as *mut u8) } {
            Ok(()) => {
                self.lock().insert(slot, (gpa, size));
            }
            Err(e) => warn!(
                "vfio: BAR area {gpa:#x}..{:#x} not mapped for peer-to-peer DMA \
                 (errno {}): {e}; the guest still reaches it, other devices cannot",
                gpa.saturating_add(size),
                e.raw_os_error().unwrap_or(0)
            ),
        }
        Ok(slot)
    }

    fn remove(&self, slot: u32) -> Result<(), BoxError> {
        let mapped = self.lock().remove(&slot);
        if let Some((iova, size)) = mapped {
            if let Err(e) = self.dma.unmap(iova, size) {
                warn!("vfio: unmapping BAR area {iova:#x}+{size:#x} from the IOMMU: {e}");
            }
        }
        self.slots.remove(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::{FakeIommu, FakeSlots};

    fn rig(refuse: bool) -> (Arc<FakeSlots>, Arc<FakeIommu>, DmaMappedSlots) {
        let slots = Arc::new(FakeSlots::default());
        let iommu = Arc::new(FakeIommu::default());
        iommu.set_refuse(refuse);
        let wrapped = DmaMappedSlots::new(slots.clone(), iommu.clone());
        (slots, iommu, wrapped)
    }

    #[test]
    fn a_slot_is_mapped_with_it_and_unmapped_before_it_goes() {
        let (slots, iommu, wrapped) = rig(false);
        // SAFETY: fakes never touch the host address.
        let slot = unsafe { wrapped.add(0x1_0000_0000, 0x20_0000, 0x7f00_0000_0000) }.unwrap();
        assert_eq!(iommu.snapshot(), vec![(0x1_0000_0000, 0x20_0000)]);
        assert_eq!(wrapped.mapped(), vec![(0x1_0000_0000, 0x20_0000)]);
        wrapped.remove(slot).unwrap();
        assert!(iommu.snapshot().is_empty());
        assert!(slots.snapshot().is_empty());
    }

    #[test]
    fn a_refused_map_keeps_the_slot() {
        let (slots, iommu, wrapped) = rig(true);
        // SAFETY: fakes never touch the host address.
        let slot = unsafe { wrapped.add(0x1_0000_0000, 0x1000, 0x7f00_0000_0000) }.unwrap();
        assert_eq!(slots.snapshot().len(), 1);
        assert!(iommu.snapshot().is_empty());
        wrapped.remove(slot).unwrap();
        assert_eq!(iommu.unmaps(), 0, "nothing mapped, nothing to unmap");
        assert!(slots.snapshot().is_empty());
    }

    #[test]
    fn a_refused_slot_maps_nothing() {
        let (_slots, iommu, wrapped) = rig(false);
        // SAFETY: fakes never touch the host address.
        assert!(unsafe { wrapped.add(0x1_0000_0800, 0x1000, 0x7f00_0000_0000) }.is_err());
        assert!(iommu.snapshot().is_empty());
    }
}
