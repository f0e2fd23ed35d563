//! VFIO PCI passthrough: a host PCI function bound to `vfio-pci` (a GPU on a real
//! host) appears on the guest's PCI bus with its BARs mapped, its interrupts
//! delivered by KVM straight from VFIO eventfds, and DMA through the host IOMMU.
//!
//! One module per job, each testable alone:
//!
//! - [`ops`]: the kernel VFIO calls a device makes ([`VfioDeviceOps`]);
//!   [`kernel`] implements it on vfio-ioctls, `fake` (feature `testing`) models
//!   devices for tests.
//! - [`container`]: the VM's VFIO container: groups, the DMA map of guest RAM,
//!   the IOMMU's IOVA ranges ([`iova`]) and the IOMMU group rules ([`group`]).
//! - [`config`]: the guest's view of config space (virtualised BARs, command,
//!   MSI/MSI-X, capability filtering, the GPUDirect clique capability in [`clique`]).
//! - [`bars`]: BAR placement, mmap of the mappable parts as guest memory slots
//!   ([`GuestMemorySlots`]), trapping of the rest, moves.
//! - [`dma_map`]: guest RAM mapped in the background while the guest starts, and
//!   the [`DmaGate`] that holds a device's Bus Master Enable until it is.
//! - [`p2p`]: [`DmaMappedSlots`] also maps those slots into the container, for
//!   peer-to-peer DMA between devices (best effort).
//! - [`interrupts`]: MSI/MSI-X routes and INTx over [`InterruptRouting`].
//! - [`device`]: [`VfioPciDevice`], the [`PciDevice`](crate::PciDevice) tying it
//!   together, with its [`counters`].
//!
//! What the VMM does to attach a device:
//!
//! 1. `VfioDmaContainer::new(Some(vm.create_vfio_device()?))` once per VM, then
//!    `declare_vm_devices` with every BDF the VM gets.
//! 2. `open_device(sysfs_path)` for each (refuses shared IOMMU groups).
//! 3. `iova_ranges()` → `GuestLayout::with_iova_ranges`; create guest RAM;
//!    `guest_ram().map_in_background(&mem, ..)` (or `map_now`), whose
//!    [`DmaGate`] each device gets.
//! 4. Per device: `read_raw_config` → `discover_bars` → `place_bars` (vm-allocator
//!    windows) → `VfioPciDevice::new(...)` with its [`GuestMemorySlots`] and
//!    [`InterruptRouting`] implementations and the gate → add to the `PciBus`, and put a
//!    `PciBarRegion` on the MMIO (or PIO) bus for every BAR, whole (mapped parts
//!    never exit). On a `BarReprogramHandler::bar_moved`, move that bus region.
//! 5. Detach: remove the bus regions, `detach()` (also on drop), drop the device,
//!    `release_bars`.

pub mod bars;
pub mod clique;
pub mod config;
pub mod container;
pub mod counters;
pub mod device;
pub mod dma_map;
// Test support, built only for tests and the `testing` feature; a failed setup
// there should fail the test loudly.
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod fake;
pub mod group;
pub mod interrupts;
pub mod iova;
pub mod kernel;
pub mod ops;
pub mod p2p;
pub mod region_info;

pub use crate::interrupt::InterruptRouting;
pub use bars::{
    discover_bars, mappable_areas, place_bars, release_bars, BarAllocators, GuestMemorySlots,
    HostBar, MapArea,
};
pub use config::ConfigOptions;
pub use container::VfioDmaContainer;
pub use counters::VfioCounters;
pub use device::{read_raw_config, VfioPciDevice, VfioPciError, VfioResources};
pub use dma_map::{BackgroundMap, DmaGate, GuestRamDma};
pub use ops::VfioDeviceOps;
pub use p2p::DmaMappedSlots;
