//! PCI segment 0: bus 0 with its host bridge, reachable through configuration
//! mechanism #1 (ports 0xCF8-0xCFF) and ECAM, plus the address and GSI pools that
//! PCI devices' BARs and MSI routes are drawn from.

use super::vfio::BarRegionMover;
use super::DeviceError;
use crate::cpu::IoBuses;
use form_vm_allocator::layout::{
    PCI_CONFIG_IO_SIZE, PCI_CONFIG_IO_START, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_IO_SIZE,
    PCI_IO_START,
};
use form_vm_allocator::{AddressAllocator, GsiAllocator, GuestLayout};
use pci::config_io::PciConfigIo;
use pci::config_mmio::PciConfigMmio;
use pci::vfio::BarAllocators;
use pci::PciBus;
use std::sync::{Arc, Mutex};

pub struct PciDevices {
    pub bus: Arc<Mutex<PciBus>>,
    /// 32-bit MMIO window for non-prefetchable and 32-bit BARs.
    pub mmio32: AddressAllocator,
    /// 64-bit MMIO window above RAM for large prefetchable BARs.
    pub mmio64: AddressAllocator,
    /// Port I/O for I/O BARs.
    pub io: AddressAllocator,
    /// GSIs for MSI/MSI-X routes, shared with the devices that route interrupts
    /// from vCPU threads.
    pub gsis: Arc<Mutex<GsiAllocator>>,
}

impl PciDevices {
    /// Creates bus 0 with the host bridge and puts both config mechanisms on the buses.
    pub fn attach(
        layout: &GuestLayout,
        buses: &IoBuses,
        gsis: Arc<Mutex<GsiAllocator>>,
    ) -> Result<PciDevices, DeviceError> {
        let mut pci_bus = PciBus::new();
        pci_bus.set_bar_reprogram_handler(Arc::new(BarRegionMover {
            buses: buses.clone(),
        }));
        let bus = Arc::new(Mutex::new(pci_bus));
        buses
            .pio
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
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
                Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
                PCI_ECAM_START,
                PCI_ECAM_SIZE,
            )
            .map_err(|source| DeviceError::Bus {
                what: "PCI ECAM",
                source,
            })?;
        let m32 = layout.mmio32();
        let m64 = layout.mmio64();
        Ok(PciDevices {
            bus,
            mmio32: AddressAllocator::new(m32.start, m32.size)?,
            mmio64: AddressAllocator::new(m64.start, m64.size)?,
            io: AddressAllocator::new(PCI_IO_START, PCI_IO_SIZE)?,
            gsis,
        })
    }

    /// The pool MSI/MSI-X GSIs come from: 24 up to KVM's routing table size.
    pub fn gsi_pool() -> Arc<Mutex<GsiAllocator>> {
        Arc::new(Mutex::new(GsiAllocator::new(
            hypervisor::bindings::KVM_MAX_IRQ_ROUTES as u32 - 1,
        )))
    }

    /// The BAR windows, as the VFIO placement wants them.
    pub fn bar_allocators(&mut self) -> BarAllocators<'_> {
        BarAllocators {
            mmio32: &mut self.mmio32,
            mmio64: &mut self.mmio64,
            io: &mut self.io,
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
}
