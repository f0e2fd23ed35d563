//! One KVM VM: memory slots, the in-kernel irqchip, irqfd/ioeventfd, GSI routing.

use crate::error::{ioctl, HypervisorError, Result};
use crate::routing::{GsiRoutes, MsiMessage};
use crate::vcpu::Vcpu;
use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_msi, kvm_userspace_memory_region,
    KVM_MEM_READONLY,
};
use kvm_ioctls::{DeviceFd, NoDatamatch, VmFd};
use std::collections::BTreeSet;
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Where KVM keeps the three pages of the real-mode TSS: just below the BIOS area
/// at the top of the 32-bit space, which the platform map leaves unused.
pub const TSS_ADDRESS: u64 = 0xfffb_d000;
/// The identity-map page KVM needs on Intel for unpaged real mode, next to the TSS.
pub const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// An address an ioeventfd listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// A value an ioeventfd fires on; the width is the access size that matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMatch {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
}

impl From<IoEventAddress> for kvm_ioctls::IoEventAddress {
    fn from(addr: IoEventAddress) -> Self {
        match addr {
            IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
        }
    }
}

pub struct Vm {
    fd: VmFd,
    max_slots: u32,
    used_slots: Mutex<BTreeSet<u32>>,
    routes: Mutex<GsiRoutes>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vm {
    pub(crate) fn new(fd: VmFd, max_slots: u32) -> Result<Vm> {
        fd.set_tss_address(TSS_ADDRESS as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(IDENTITY_MAP_ADDRESS)
            .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        Ok(Vm {
            fd,
            max_slots,
            used_slots: Mutex::new(BTreeSet::new()),
            routes: Mutex::new(GsiRoutes::default()),
        })
    }

    /// Creates the in-kernel irqchip (PIC, IOAPIC, LAPICs) and installs the GSI
    /// routing table. No in-kernel PIT (KVM_CREATE_PIT2), as in Cloud Hypervisor:
    /// guests keep time with the LAPIC timer and kvmclock, and creating one starts
    /// a kernel thread per VM, which cost 6.8 ms of every start on the measured
    /// host and 18 ms of its teardown (docs/performance.md).
    pub fn create_irqchip(&self) -> Result<()> {
        self.fd
            .create_irq_chip()
            .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        // Install our copy of the table at once so KVM and `routes` never disagree.
        self.commit_routes(&lock(&self.routes))
    }

    /// Creates vCPU `id` (its APIC ID).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        Vcpu::new(fd, id)
    }

    /// Maps `size` bytes of host memory at `host_addr` into the guest at
    /// `guest_addr` and returns the slot id, for [`Vm::remove_memory`].
    ///
    /// # Safety
    /// The host range must stay mapped and valid until the slot is removed or the
    /// VM is dropped: the guest reads and writes it behind Rust's back.
    pub unsafe fn add_memory(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        read_only: bool,
    ) -> Result<u32> {
        let mut used = lock(&self.used_slots);
        let slot = (0..self.max_slots)
            .find(|s| !used.contains(s))
            .ok_or(HypervisorError::NoFreeMemorySlot(self.max_slots))?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: if read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the caller guarantees the host range outlives the slot.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        used.insert(slot);
        Ok(slot)
    }

    /// Unmaps a slot added with [`Vm::add_memory`]; the guest range becomes MMIO.
    pub fn remove_memory(&self, slot: u32) -> Result<()> {
        let mut used = lock(&self.used_slots);
        if !used.contains(&slot) {
            return Err(HypervisorError::UnknownMemorySlot(slot));
        }
        // A zero size deletes the slot; the other fields are ignored then.
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: deleting a slot never gives the guest access to new memory.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION (delete)"))?;
        used.remove(&slot);
        Ok(())
    }

    /// Number of memory slots in use.
    pub fn memory_slots_in_use(&self) -> usize {
        lock(&self.used_slots).len()
    }

    /// Makes a write to `fd` raise `gsi` (edge).
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(fd, gsi).map_err(ioctl("KVM_IRQFD"))
    }

    /// Level-triggered irqfd: KVM signals `resample` when the guest EOIs the
    /// interrupt, so the device can re-assert it if still pending.
    pub fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<()> {
        self.fd
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(ioctl("KVM_IRQFD (resample)"))
    }

    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(fd, gsi)
            .map_err(ioctl("KVM_IRQFD (deassign)"))
    }

    /// Makes a guest write to `addr` (matching `datamatch` if given) signal `fd`
    /// inside KVM, without an exit to the VMM.
    pub fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<()> {
        let addr = addr.into();
        let r = match datamatch {
            None => self.fd.register_ioevent(fd, &addr, NoDatamatch),
            Some(DataMatch::U8(v)) => self.fd.register_ioevent(fd, &addr, v),
            Some(DataMatch::U16(v)) => self.fd.register_ioevent(fd, &addr, v),
            Some(DataMatch::U32(v)) => self.fd.register_ioevent(fd, &addr, v),
            Some(DataMatch::U64(v)) => self.fd.register_ioevent(fd, &addr, v),
        };
        r.map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_ioevent`]; address and datamatch must be the same.
    pub fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<()> {
        let addr = addr.into();
        let r = match datamatch {
            None => self.fd.unregister_ioevent(fd, &addr, NoDatamatch),
            Some(DataMatch::U8(v)) => self.fd.unregister_ioevent(fd, &addr, v),
            Some(DataMatch::U16(v)) => self.fd.unregister_ioevent(fd, &addr, v),
            Some(DataMatch::U32(v)) => self.fd.unregister_ioevent(fd, &addr, v),
            Some(DataMatch::U64(v)) => self.fd.unregister_ioevent(fd, &addr, v),
        };
        r.map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }

    fn commit_routes(&self, routes: &GsiRoutes) -> Result<()> {
        self.fd
            .set_gsi_routing(&routes.to_kvm()?)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))
    }

    /// Adds or updates the MSI route of `gsi` (24 or above).
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<()> {
        let mut routes = lock(&self.routes);
        let previous = routes.msi(gsi);
        routes.set_msi(gsi, msg)?;
        if let Err(e) = self.commit_routes(&routes) {
            // Keep our table equal to what KVM has.
            match previous {
                Some(p) => routes.set_msi(gsi, p)?,
                None => drop(routes.remove_msi(gsi)),
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes the MSI route of `gsi`; the irqchip routes stay as they are.
    pub fn remove_msi_route(&self, gsi: u32) -> Result<()> {
        let mut routes = lock(&self.routes);
        let previous = routes.remove_msi(gsi)?;
        if let Err(e) = self.commit_routes(&routes) {
            routes.set_msi(gsi, previous)?;
            return Err(e);
        }
        Ok(())
    }

    /// The MSI route of `gsi`, if one is set.
    pub fn msi_route(&self, gsi: u32) -> Option<MsiMessage> {
        lock(&self.routes).msi(gsi)
    }

    /// Number of entries in the routing table as KVM has it.
    pub fn gsi_routing_entries(&self) -> usize {
        lock(&self.routes).entries().len()
    }

    /// Sets the level of an irqchip input (IOAPIC/PIC pin).
    pub fn irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, level)
            .map_err(ioctl("KVM_IRQ_LINE"))
    }

    /// Injects one MSI directly, without a route. Returns whether it was delivered.
    pub fn signal_msi(&self, msg: MsiMessage) -> Result<bool> {
        let msi = kvm_msi {
            address_lo: msg.address_lo,
            address_hi: msg.address_hi,
            data: msg.data,
            ..Default::default()
        };
        let delivered = self.fd.signal_msi(msi).map_err(ioctl("KVM_SIGNAL_MSI"))?;
        Ok(delivered > 0)
    }

    /// Creates the KVM-VFIO pseudo device, to which VFIO groups are attached so
    /// KVM knows about non-coherent DMA and can wire up posted interrupts.
    pub fn create_vfio_device(&self) -> Result<DeviceFd> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        self.fd
            .create_device(&mut dev)
            .map_err(ioctl("KVM_CREATE_DEVICE (VFIO)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::tests::hypervisor_or_skip;

    struct Anon {
        ptr: *mut u8,
        len: usize,
    }
    impl Anon {
        fn new(len: usize) -> Anon {
            // SAFETY: a fresh anonymous mapping; checked for failure below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            Anon {
                ptr: ptr.cast(),
                len,
            }
        }
    }
    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: unmapping what new() mapped.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    #[test]
    fn memory_slots_are_allocated_and_reused() {
        let Some(hv) = hypervisor_or_skip("memory_slots_are_allocated_and_reused") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let mem = Anon::new(0x4000);
        // SAFETY: `mem` outlives the VM's use of it (the VM is dropped first).
        let a = unsafe { vm.add_memory(0x10_0000, 0x2000, mem.ptr, false) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { vm.add_memory(0x20_0000, 0x2000, mem.ptr.add(0x2000), true) }.unwrap();
        assert_ne!(a, b);
        assert_eq!(vm.memory_slots_in_use(), 2);
        // Overlapping an existing slot is KVM's error, and it must not leak a slot id.
        // SAFETY: as above.
        assert!(unsafe { vm.add_memory(0x10_1000, 0x1000, mem.ptr, false) }.is_err());
        assert_eq!(vm.memory_slots_in_use(), 2);
        vm.remove_memory(a).unwrap();
        assert!(matches!(
            vm.remove_memory(a),
            Err(HypervisorError::UnknownMemorySlot(_))
        ));
        // SAFETY: as above.
        let c = unsafe { vm.add_memory(0x10_0000, 0x2000, mem.ptr, false) }.unwrap();
        assert_eq!(c, a, "a freed slot id is reused");
        drop(vm);
    }

    #[test]
    fn msi_routes_keep_the_irqchip_routes() {
        let Some(hv) = hypervisor_or_skip("msi_routes_keep_the_irqchip_routes") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let defaults = vm.gsi_routing_entries();
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x30,
        };
        vm.set_msi_route(24, msg).unwrap();
        vm.set_msi_route(25, msg).unwrap();
        vm.set_msi_route(24, MsiMessage { data: 0x31, ..msg })
            .unwrap();
        assert_eq!(vm.gsi_routing_entries(), defaults + 2);
        assert_eq!(vm.msi_route(24).unwrap().data, 0x31);
        vm.remove_msi_route(24).unwrap();
        assert_eq!(vm.gsi_routing_entries(), defaults + 1);
        assert!(vm.msi_route(24).is_none());
        // The IOAPIC pins still route: an irqfd on GSI 4 needs an irqchip route.
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&fd, 4).unwrap();
        vm.irq_line(4, true).unwrap();
        vm.irq_line(4, false).unwrap();
        assert!(vm.set_msi_route(3, msg).is_err());
    }

    #[test]
    fn irqfds_register_and_unregister() {
        let Some(hv) = hypervisor_or_skip("irqfds_register_and_unregister") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&fd, 5).unwrap();
        // One eventfd cannot feed two irqfds at once.
        assert!(vm.register_irqfd(&fd, 6).is_err());
        vm.unregister_irqfd(&fd, 5).unwrap();
        vm.register_irqfd_with_resample(&fd, &resample, 10).unwrap();
        vm.unregister_irqfd(&fd, 10).unwrap();
        vm.set_msi_route(
            40,
            MsiMessage {
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x40,
            },
        )
        .unwrap();
        vm.register_irqfd(&fd, 40).unwrap();
        vm.unregister_irqfd(&fd, 40).unwrap();
    }

    #[test]
    fn ioeventfds_register_and_unregister() {
        let Some(hv) = hypervisor_or_skip("ioeventfds_register_and_unregister") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pio = IoEventAddress::Pio(0x510);
        let mmio = IoEventAddress::Mmio(0xf000_1000);
        vm.register_ioevent(&fd, pio, None).unwrap();
        // The same fd, address and match twice is a conflict.
        assert!(vm.register_ioevent(&fd, pio, None).is_err());
        vm.register_ioevent(&fd, mmio, Some(DataMatch::U32(7)))
            .unwrap();
        vm.unregister_ioevent(&fd, pio, None).unwrap();
        // Unregistering needs the same datamatch that was registered.
        assert!(vm
            .unregister_ioevent(&fd, mmio, Some(DataMatch::U32(8)))
            .is_err());
        vm.unregister_ioevent(&fd, mmio, Some(DataMatch::U32(7)))
            .unwrap();
        assert!(vm
            .unregister_ioevent(&fd, mmio, Some(DataMatch::U32(7)))
            .is_err());
    }

    #[test]
    fn signal_msi_and_vfio_device() {
        let Some(hv) = hypervisor_or_skip("signal_msi_and_vfio_device") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let _vcpu = vm.create_vcpu(0).unwrap();
        vm.signal_msi(MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x30,
        })
        .unwrap();
        // The KVM-VFIO device exists only when the kvm module was built with VFIO.
        if let Err(e) = vm.create_vfio_device() {
            eprintln!("KVM-VFIO device unavailable on this host: {e}");
        }
    }
}
