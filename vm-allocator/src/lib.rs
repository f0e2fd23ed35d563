//! The guest physical address map (see `docs/platform.md`) and the allocators that
//! hand out pieces of it: MMIO and port-I/O ranges for BARs and platform devices,
//! GSIs for MSI routes, and PCI device slots.

// Allocations run on API requests (hotplug) in a live VMM; a failure is an
// error for the caller, never a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod address;
mod gsi;
pub mod layout;
pub mod pci_roots;
mod pci_slot;
mod region;

pub use address::{AddressAllocator, AllocError};
pub use gsi::{GsiAllocator, GsiError, FIRST_MSI_GSI};
pub use layout::{GuestLayout, IovaRange, LayoutError, MemoryRegion};
pub use pci_roots::{
    node_of_root_bus, root_bus_of_node, PciRoot, PciRootError, PciRootNeeds, WindowNeed,
};
pub use pci_slot::{PciSlotAllocator, PciSlotError, HOST_BRIDGE_SLOT};
