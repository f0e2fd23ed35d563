//! PCI segment 0: bus 0 and the guest NUMA nodes' expander root buses (the
//! layout's [`PciRoot`]s), each with its host bridge, reachable through
//! configuration mechanism #1 (ports 0xCF8-0xCFF) and ECAM, plus the address and
//! GSI pools that PCI devices' BARs and MSI routes are drawn from: each root bus
//! draws BARs from its own slices of the windows, which its host bridge's `_CRS`
//! declares.

use super::error::DeviceError;
use crate::io_buses::IoBuses;
use form_vm_allocator::layout::{
    PCI_CONFIG_IO_SIZE, PCI_CONFIG_IO_START, PCI_ECAM_SIZE, PCI_ECAM_START,
};
use form_vm_allocator::{
    AddressAllocator, AllocError, GsiAllocator, GuestLayout, MemoryRegion, PciRoot,
};
pub use form_vmm_api::types::PciDeviceInfo;
use pci::config_io::PciConfigIo;
use pci::config_mmio::PciConfigMmio;
use pci::device::PciBarRegion;
use pci::vfio::BarAllocators;
use pci::{BarKind, PciBar, PciBus, PciBusError, PciDevice, PciSegment, SharedPciDevice};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Bus 0's bus and windows are the fields; virtio devices and every device
/// without a guest node go there.
pub struct PciDevices {
    pub bus: Arc<Mutex<PciBus>>,
    /// 32-bit MMIO window for non-prefetchable and 32-bit BARs.
    pub mmio32: AddressAllocator,
    /// 64-bit MMIO window above RAM for large prefetchable BARs.
    pub mmio64: AddressAllocator,
    /// Port I/O for I/O BARs.
    pub io: AddressAllocator,
    /// The guest nodes' root buses, by bus number.
    expanders: BTreeMap<u8, ExpanderBus>,
    /// Every root bus, as the config mechanisms route to them.
    segment: PciSegment,
    /// GSIs for MSI/MSI-X routes, shared with the devices that route interrupts
    /// from vCPU threads.
    pub gsis: Arc<Mutex<GsiAllocator>>,
}

/// A guest node's root bus and its slices of the BAR windows.
struct ExpanderBus {
    bus: Arc<Mutex<PciBus>>,
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    io: AddressAllocator,
}

/// An allocator over `region`; an empty one (a root bus whose devices have no BAR
/// of that kind) refuses every allocation.
fn window_allocator(region: MemoryRegion) -> Result<AddressAllocator, AllocError> {
    if region.size > 0 {
        return AddressAllocator::new(region.start, region.size);
    }
    // The allocator cannot be empty: a pool taken whole at once is.
    const POOL: u64 = 0x1000;
    let mut taken = AddressAllocator::new(region.start, POOL)?;
    taken.allocate(POOL, 1)?;
    Ok(taken)
}

impl PciDevices {
    /// Creates the layout's root buses, each with its host bridge, and puts both
    /// config mechanisms on the buses.
    pub fn attach(
        layout: &GuestLayout,
        buses: &IoBuses,
        gsis: Arc<Mutex<GsiAllocator>>,
    ) -> Result<PciDevices, DeviceError> {
        let mover = Arc::new(BarRegionMover {
            buses: buses.clone(),
        });
        let new_bus = || {
            let mut pci_bus = PciBus::new();
            pci_bus.set_bar_reprogram_handler(mover.clone());
            Arc::new(Mutex::new(pci_bus))
        };
        let bus = new_bus();
        let mut segment = PciSegment::new(bus.clone());
        // The layout lists bus 0 first, always.
        let root0 = layout.pci_roots().first().filter(|r| r.bus == 0);
        let root0 = root0.copied().unwrap_or(PciRoot {
            bus: 0,
            mmio32: layout.mmio32(),
            mmio64: layout.mmio64(),
            io: layout.pci_io(),
        });
        let mut expanders = BTreeMap::new();
        for root in layout.pci_roots().iter().filter(|r| r.bus != 0) {
            let expander = ExpanderBus {
                bus: new_bus(),
                mmio32: window_allocator(root.mmio32)?,
                mmio64: window_allocator(root.mmio64)?,
                io: window_allocator(root.io)?,
            };
            segment
                .add_root_bus(root.bus, expander.bus.clone())
                .map_err(DeviceError::PciSegment)?;
            expanders.insert(root.bus, expander);
        }
        buses
            .pio
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(segment.clone()))),
                PCI_CONFIG_IO_START,
                PCI_CONFIG_IO_SIZE,
            )
            .map_err(|source| DeviceError::Bus {
                what: "PCI config ports",
                source,
            })?;
        // The platform map's ECAM window (not the pci crate's 256-bus maximum):
        // the device decodes any offset, we only trap the window the map reserves.
        buses
            .mmio
            .insert(
                Arc::new(Mutex::new(PciConfigMmio::new(segment.clone()))),
                PCI_ECAM_START,
                PCI_ECAM_SIZE,
            )
            .map_err(|source| DeviceError::Bus {
                what: "PCI ECAM",
                source,
            })?;
        Ok(PciDevices {
            bus,
            mmio32: window_allocator(root0.mmio32)?,
            mmio64: window_allocator(root0.mmio64)?,
            io: window_allocator(root0.io)?,
            expanders,
            segment,
            gsis,
        })
    }

    /// Every root bus, bus 0 first.
    pub fn segment(&self) -> &PciSegment {
        &self.segment
    }

    /// The pool MSI/MSI-X GSIs come from: 24 up to KVM's routing table size.
    pub fn gsi_pool() -> Arc<Mutex<GsiAllocator>> {
        Arc::new(Mutex::new(GsiAllocator::new(
            hypervisor::bindings::KVM_MAX_IRQ_ROUTES as u32 - 1,
        )))
    }

    /// Bus 0's BAR windows, as the VFIO placement wants them.
    pub fn bar_allocators(&mut self) -> BarAllocators<'_> {
        BarAllocators {
            mmio32: &mut self.mmio32,
            mmio64: &mut self.mmio64,
            io: &mut self.io,
        }
    }

    /// Root bus `bus`'s BAR windows.
    pub fn bar_allocators_on(&mut self, bus: u8) -> Result<BarAllocators<'_>, PciBusError> {
        if bus == 0 {
            return Ok(self.bar_allocators());
        }
        let e = self
            .expanders
            .get_mut(&bus)
            .ok_or(PciBusError::NoSuchBus(bus))?;
        Ok(BarAllocators {
            mmio32: &mut e.mmio32,
            mmio64: &mut e.mmio64,
            io: &mut e.io,
        })
    }
}

/// Why a device could not be plugged into bus 0.
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    #[error("cannot trap BAR {index} at {addr:#x}: {source}")]
    BarRegion {
        index: usize,
        addr: u64,
        #[source]
        source: devices::BusError,
    },
    #[error("{0}")]
    Slot(#[source] PciBusError),
}

impl PciDevices {
    /// The lowest free slot of bus 0.
    pub fn free_slot(&self) -> Result<u8, PciBusError> {
        self.free_slot_on(0)
    }

    /// The lowest free slot of root bus `bus`.
    pub fn free_slot_on(&self, bus: u8) -> Result<u8, PciBusError> {
        lock(self.root_bus(bus)?)
            .next_free_slot()
            .ok_or(PciBusError::Full)
    }

    fn root_bus(&self, bus: u8) -> Result<&Arc<Mutex<PciBus>>, PciBusError> {
        self.segment.bus(bus).ok_or(PciBusError::NoSuchBus(bus))
    }

    /// The window of bus 0 BARs of `kind` are drawn from.
    pub fn window(&mut self, kind: BarKind) -> &mut AddressAllocator {
        match kind {
            BarKind::Io => &mut self.io,
            BarKind::Memory32 => &mut self.mmio32,
            BarKind::Memory64 => &mut self.mmio64,
        }
    }

    /// The window of root bus `bus` BARs of `kind` are drawn from.
    pub fn window_on(
        &mut self,
        bus: u8,
        kind: BarKind,
    ) -> Result<&mut AddressAllocator, PciBusError> {
        let windows = self.bar_allocators_on(bus)?;
        Ok(match kind {
            BarKind::Io => windows.io,
            BarKind::Memory32 => windows.mmio32,
            BarKind::Memory64 => windows.mmio64,
        })
    }

    /// Puts `device` at `at` with each of `bars` trapped on its bus: the one
    /// attach routine of every PCI device, passed through or emulated. On failure
    /// nothing of the device stays on the buses; its BARs' addresses stay the
    /// caller's to give back.
    pub fn plug(
        &mut self,
        buses: &IoBuses,
        at: GuestFunction,
        device: &SharedPciDevice,
        bars: &[PciBar],
    ) -> Result<(), PlugError> {
        let mut trapped: Vec<&PciBar> = Vec::new();
        let mut failure = None;
        for bar in bars {
            let region = Arc::new(Mutex::new(PciBarRegion::new(device.clone())));
            match bus_for(buses, bar.kind).insert(region, bar.addr, bar.size) {
                Ok(()) => trapped.push(bar),
                Err(source) => {
                    failure = Some(PlugError::BarRegion {
                        index: bar.index,
                        addr: bar.addr,
                        source,
                    });
                    break;
                }
            }
        }
        if failure.is_none() {
            let added = self
                .root_bus(at.bus)
                .and_then(|bus| lock(bus).add_function(at.slot, at.function, device.clone()));
            if let Err(source) = added {
                failure = Some(PlugError::Slot(source));
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                for bar in trapped {
                    let _ = bus_for(buses, bar.kind).remove(bar.addr);
                }
                Err(e)
            }
        }
    }

    /// Takes `device` out of `at` and its BAR regions off the buses,
    /// found where the guest last put them or else where they were `placed`;
    /// `what` names the device in the warnings about anything missing. Off the bus
    /// first, so the guest cannot move a BAR between the read of where it is and
    /// the removal of its region (a region left behind would keep the device, and
    /// with a passthrough device its VFIO descriptors, alive).
    pub fn unplug<D: PciDevice + ?Sized>(
        &mut self,
        buses: &IoBuses,
        at: GuestFunction,
        device: &Mutex<D>,
        placed: &[PciBar],
        what: &str,
    ) {
        let removed = self
            .root_bus(at.bus)
            .and_then(|bus| lock(bus).remove_function(at.slot, at.function));
        if let Err(e) = removed {
            log::warn!("{what}: taking {at} off the bus: {e}");
        }
        let current = lock(device).bars();
        for (bar, original) in current.iter().zip(placed) {
            let bus = bus_for(buses, bar.kind);
            if bus.remove(bar.addr).is_err() && bus.remove(original.addr).is_err() {
                log::warn!("{what}: BAR {} was not on the bus", bar.index);
            }
        }
    }
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bus_for(buses: &IoBuses, kind: BarKind) -> &devices::Bus {
    match kind {
        BarKind::Io => &buses.pio,
        BarKind::Memory32 | BarKind::Memory64 => &buses.mmio,
    }
}

/// Where a device sits in the guest's segment 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestFunction {
    /// The root bus: 0, or a guest node's.
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl GuestFunction {
    /// Function 0 of `slot` of bus 0: every device that has a slot to itself.
    pub fn slot(slot: u8) -> Self {
        Self {
            bus: 0,
            slot,
            function: 0,
        }
    }
}

impl std::fmt::Display for GuestFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{}",
            self.bus, self.slot, self.function
        )
    }
}

/// The guest's address of function 0 of a bus-0 slot.
pub fn guest_bdf(slot: u8) -> String {
    GuestFunction::slot(slot).to_string()
}

/// Moves a trapped BAR's bus region when the guest reprograms the BAR (the device
/// already moved its memory slots).
pub struct BarRegionMover {
    pub buses: IoBuses,
}

impl pci::BarReprogramHandler for BarRegionMover {
    fn bar_moved(&self, slot: u8, _device: &SharedPciDevice, reprogram: &pci::BarReprogram) {
        let bus = bus_for(&self.buses, reprogram.kind);
        if let Err(e) = bus.relocate(reprogram.old, reprogram.new) {
            log::warn!(
                "pci: slot {slot} BAR {} moved {:#x} -> {:#x}, but its region did not follow: {e}",
                reprogram.index,
                reprogram.old,
                reprogram.new
            );
        }
    }
}

/// Frees the PCI devices when the VM goes. The PCI bus's BAR-move handler holds the
/// I/O buses, which hold the config-space devices, which hold the PCI bus: a cycle
/// that would keep every device (VFIO fds, disk images and their locks, taps, the
/// KVM VM its routes point into) alive after the VM is dropped, or after a create
/// that failed half-way. Dropping this guard replaces the handler, which breaks
/// the cycle; create it as soon as the PCI bus exists.
pub struct PciTeardown {
    segment: PciSegment,
}

impl PciTeardown {
    pub fn new(segment: PciSegment) -> Self {
        Self { segment }
    }
}

/// The handler left on a bus whose VM is going away: BARs no longer move anywhere.
struct NoBarMoves;

impl pci::BarReprogramHandler for NoBarMoves {
    fn bar_moved(&self, _: u8, _: &pci::SharedPciDevice, _: &pci::BarReprogram) {}
}

impl Drop for PciTeardown {
    fn drop(&mut self) {
        for (_, bus) in self.segment.buses() {
            lock(bus).set_bar_reprogram_handler(Arc::new(NoBarMoves));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::Bus;

    fn config_dword(buses: &IoBuses, device: u8, reg: u8) -> u32 {
        let address = 0x8000_0000u32 | (u32::from(device) << 11) | u32::from(reg);
        assert!(buses.pio.write(PCI_CONFIG_IO_START, &address.to_le_bytes()));
        let mut data = [0u8; 4];
        assert!(buses.pio.read(PCI_CONFIG_IO_START + 4, &mut data));
        u32::from_le_bytes(data)
    }

    #[test]
    fn host_bridge_answers_on_both_mechanisms() {
        let layout = GuestLayout::new(1 << 30, 40).unwrap();
        let buses = IoBuses {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
        };
        let pci = PciDevices::attach(&layout, &buses, PciDevices::gsi_pool()).unwrap();
        let id = config_dword(&buses, 0, 0);
        assert_ne!(id, 0xffff_ffff, "the host bridge is at 00:00.0");
        let mut data = [0u8; 4];
        assert!(buses.mmio.read(PCI_ECAM_START, &mut data));
        assert_eq!(u32::from_le_bytes(data), id);
        assert_eq!(
            config_dword(&buses, 5, 0),
            0xffff_ffff,
            "empty slots read as all ones"
        );
        assert!(pci.mmio64.base() >= 4 << 30);
    }

    #[test]
    fn an_empty_window_refuses_every_bar() {
        let mut window = window_allocator(MemoryRegion {
            start: 0xffff_0000_0000,
            size: 0,
        })
        .unwrap();
        for size in [4, 0x1000, 1 << 30] {
            assert!(window.allocate(size, size).is_err(), "{size:#x}");
        }
        let mut window = window_allocator(MemoryRegion {
            start: 0xc000_0000,
            size: 0x10_0000,
        })
        .unwrap();
        assert_eq!(window.allocate(0x1000, 0x1000), Ok(0xc000_0000));
    }
}
