//! The VM's devices, from creation to teardown: what is placed where, passed
//! through or emulated, added and removed while the guest runs. One file per
//! attachment family (legacy platform devices, PCI, VFIO passthrough, virtio, the
//! PCI hotplug controller); [`DeviceManager`] is the one owner `Vm` asks.

pub mod error;
pub mod hotplug;
pub mod legacy;
pub mod log_file;
pub mod pci;
pub mod pci_roots;
pub mod vfio;
pub mod vfio_error;
pub mod vfio_host;
pub mod vfio_resources;
pub mod virtio;

use crate::config::{DeviceConfig, DmaMapOrder, VmConfig};
use crate::io_buses::IoBuses;
use crate::memory::GuestMemoryMmap;
use devices::acpi::GedEvent;
use devices::Bus;
pub use error::DeviceError;
use form_vm_allocator::{GsiAllocator, GuestLayout, IovaRange, PciRootNeeds};
use hotplug::{attach_hotplug_controller, EjectOutcome, HotplugState, Removal};
use hotplug::{EJECT_GIVE_UP_AFTER, EJECT_IGNORED_AFTER};
use legacy::{attach_legacy_devices, LegacyDevices};
use pci::{GuestFunction, PciDeviceInfo, PciDevices, PciTeardown};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use vfio::{OpenedDevice, VfioDevices, VmResources};
use vfio_error::VfioError;
use vfio_host::VfioHost;
use virtio::{KeptTaps, VirtioDevices, VirtioError, VirtioResources};
use vmm_sys_util::eventfd::EventFd;

/// Why the device manager could not do what it was asked, by attachment family.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error(transparent)]
    Platform(#[from] DeviceError),
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error(transparent)]
    Virtio(#[from] VirtioError),
}

/// The passthrough devices of a VM being built, opened (their IOMMU groups
/// attached) before guest memory exists: the IOMMU's usable ranges decide where RAM
/// and the 64-bit BAR window may go.
pub struct OpenedPassthrough {
    vfio: VfioDevices,
    opened: Vec<OpenedDevice>,
    gsis: Arc<Mutex<GsiAllocator>>,
}

impl OpenedPassthrough {
    /// Opens `devices` through `host` for the VM `kvm`.
    pub fn open(
        host: Arc<dyn VfioHost>,
        kvm: &Arc<hypervisor::Vm>,
        devices: &[DeviceConfig],
    ) -> Result<Self, VfioError> {
        let gsis = PciDevices::gsi_pool();
        let mut vfio = VfioDevices::on_kvm(host, kvm, gsis.clone());
        let opened = if devices.is_empty() {
            Vec::new()
        } else {
            vfio.open(Some(kvm), devices)?
        };
        Ok(Self { vfio, opened, gsis })
    }

    /// The IOMMU's usable IOVA ranges (None without passthrough devices) and the
    /// bytes the devices' 64-bit BARs need.
    pub fn layout_constraints(&self) -> Result<(Option<Vec<IovaRange>>, u64), VfioError> {
        self.vfio.layout_constraints(&self.opened)
    }

    /// What the guest nodes' root buses need of the PCI windows for the devices
    /// placed on them; empty when every device goes on bus 0.
    pub fn root_bus_needs(&self) -> Vec<PciRootNeeds> {
        pci_roots::root_bus_needs(&self.opened)
    }
}

/// What the devices of a VM being built attach to.
pub struct Platform<'a> {
    pub kvm: &'a Arc<hypervisor::Vm>,
    pub memory: &'a GuestMemoryMmap,
    pub layout: &'a GuestLayout,
}

/// The VM's buses and every device on them.
pub struct DeviceManager {
    buses: IoBuses,
    legacy: LegacyDevices,
    pci: PciDevices,
    vfio: VfioDevices,
    virtio: VirtioDevices,
    hotplug: Arc<HotplugState>,
    // Last: dropping it breaks the PCI bus's reference cycle, after the devices
    // above let go of what they hold.
    _teardown: PciTeardown,
}

impl DeviceManager {
    /// Places the platform devices, the PCI bus, the passthrough devices (first, so
    /// they keep the slots they always had) and the virtio devices of `config`,
    /// writing the id each device got back into `config` so that vm.info and a
    /// reboot see the same ids. The NICs named in `taps` reuse those taps.
    pub fn create(
        passthrough: OpenedPassthrough,
        platform: &Platform<'_>,
        config: &mut VmConfig,
        taps: KeptTaps,
    ) -> Result<Self, DeviceManagerError> {
        let buses = IoBuses {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
        };
        let legacy = attach_legacy_devices(platform.kvm, &buses, &config.serial)?;
        let hotplug = attach_hotplug_controller(&buses)?;
        let mut pci = PciDevices::attach(platform.layout, &buses, passthrough.gsis)?;
        let teardown = PciTeardown::new(pci.segment().clone());
        let mut vfio = passthrough.vfio;
        let attached = vfio.attach(
            passthrough.opened,
            &mut VmResources {
                memory: platform.memory,
                pci: &mut pci,
                buses: &buses,
            },
            config.memory.dma_map,
        )?;
        for (device, info) in config.devices.iter_mut().zip(&attached) {
            device.id = Some(info.id.clone());
        }
        let vfio_ids: BTreeSet<String> = attached.into_iter().map(|info| info.id).collect();
        let virtio = VirtioDevices::attach(
            config,
            &vfio_ids,
            &mut VirtioResources {
                memory: platform.memory,
                pci: &mut pci,
                buses: &buses,
                kvm: platform.kvm,
            },
            taps,
        )?;
        Ok(Self {
            buses,
            legacy,
            pci,
            vfio,
            virtio,
            hotplug,
            _teardown: teardown,
        })
    }

    /// The buses the vCPU threads dispatch trapped accesses to.
    pub fn buses(&self) -> &IoBuses {
        &self.buses
    }

    /// Duplicates of the event fds the guest's power-off and reset requests are
    /// written to (the ACPI PM device, the i8042).
    pub fn power_requests(&self) -> std::io::Result<(EventFd, EventFd)> {
        Ok((
            self.legacy.power_off.try_clone()?,
            self.legacy.reset.try_clone()?,
        ))
    }

    /// Bus-0 slots whose devices stay for the VM's life (virtio): the DSDT does not
    /// make them hotpluggable.
    pub fn fixed_slots(&self) -> BTreeSet<u8> {
        self.virtio.slots()
    }

    pub fn press_power_button(&self) {
        self.legacy.press_power_button();
    }

    /// A duplicate of each NIC's tap by net id, for the VM that replaces this one.
    pub fn keep_taps(&self) -> KeptTaps {
        self.virtio.keep_taps()
    }

    /// Passes host devices through, all or none: opened, placed on free slots
    /// (a host slot's functions sharing one) and, in a running guest, announced
    /// through ACPI once every slot is whole (the GED's hotplug event, then a
    /// device check on each slot).
    pub fn add_devices(
        &mut self,
        kvm: &hypervisor::Vm,
        memory: &GuestMemoryMmap,
        configs: &[DeviceConfig],
        guest_running: bool,
    ) -> Result<Vec<PciDeviceInfo>, DeviceManagerError> {
        for id in configs.iter().filter_map(|c| c.id.as_deref()) {
            if self.virtio.contains_id(id) {
                return Err(VfioError::DuplicateId(id.to_string()).into());
            }
        }
        let opened = self.vfio.open(Some(kvm), configs)?;
        let (vfio, mut resources) = self.vfio_with_resources(memory);
        // The call answers once the device can do DMA: RAM mapped before it
        // goes on the bus (or the start's mapping waited for).
        let infos = vfio.attach(opened, &mut resources, DmaMapOrder::Upfront)?;
        if guest_running && !infos.is_empty() {
            // Only bus 0 has a hotplug controller; the others are cold-plugged.
            for info in &infos {
                if let Some(at) = self.vfio.location_of(&info.id).filter(|at| at.bus == 0) {
                    self.hotplug.slot_added(at.slot);
                }
            }
            self.notify_hotplug();
        }
        Ok(infos)
    }

    /// Takes a passed-through device away, with every function sharing its guest
    /// slot: the guest ejects slots, not functions. A running guest is asked to
    /// eject it first and given [`EJECT_IGNORED_AFTER`] to react (or
    /// [`EJECT_GIVE_UP_AFTER`] once it did); what happens to a device it did not
    /// eject is `policy`'s to say. Returns every device removed, `id`'s first.
    pub fn remove_device(
        &mut self,
        memory: &GuestMemoryMmap,
        id: &str,
        guest_running: bool,
        policy: Removal,
    ) -> Result<Vec<PciDeviceInfo>, DeviceManagerError> {
        if self.virtio.contains_id(id) {
            return Err(VirtioError::NotRemovable(id.to_string()).into());
        }
        let at = self
            .vfio
            .location_of(id)
            .ok_or_else(|| VfioError::UnknownId(id.to_string()))?;
        if guest_running && at.bus != 0 {
            return Err(VfioError::NotHotRemovable {
                id: id.to_string(),
                bus: at.bus,
            }
            .into());
        }
        self.remove_at(memory, id, at, guest_running, policy)
    }

    /// [`DeviceManager::remove_device`] for the device `id` at `at`. A device on a
    /// guest node's root bus (no hotplug controller there) is detached without
    /// asking the guest.
    fn remove_at(
        &mut self,
        memory: &GuestMemoryMmap,
        id: &str,
        at: GuestFunction,
        guest_running: bool,
        policy: Removal,
    ) -> Result<Vec<PciDeviceInfo>, DeviceManagerError> {
        let slot = at.slot;
        if guest_running && at.bus != 0 {
            log::warn!("vfio: {id} is on root bus {:#04x}, which has no hotplug controller; detaching it without the guest's eject", at.bus);
        } else if guest_running {
            self.hotplug.request_removal(slot);
            self.notify_hotplug();
            // Giving up early on a guest that has not looked yet only pays when the
            // device goes anyway; a removal that needs the eject waits it out.
            let ignore_after = match policy {
                Removal::DetachAnyway => EJECT_IGNORED_AFTER,
                Removal::KeepUnlessEjected => EJECT_GIVE_UP_AFTER,
            };
            let outcome = self
                .hotplug
                .wait_for_eject(slot, ignore_after, EJECT_GIVE_UP_AFTER);
            match outcome {
                EjectOutcome::Ejected => log::info!("vfio: the guest ejected {id}"),
                EjectOutcome::Ignored | EjectOutcome::TimedOut
                    if policy == Removal::KeepUnlessEjected =>
                {
                    log::warn!("vfio: the guest did not eject {id}; it stays attached");
                    return Err(VfioError::NotEjected {
                        id: id.to_string(),
                        saw_request: outcome == EjectOutcome::TimedOut,
                        waited: EJECT_GIVE_UP_AFTER,
                    }
                    .into());
                }
                EjectOutcome::Ignored => {
                    log::info!("vfio: the guest did not react to the eject request for {id}; detaching it anyway")
                }
                EjectOutcome::TimedOut => log::warn!(
                    "vfio: the guest did not eject {id} within {}s; detaching it anyway",
                    EJECT_GIVE_UP_AFTER.as_secs()
                ),
            }
        }
        let mut removed = self.detach_slot(memory, at.bus, slot);
        if let Some(first) = removed.iter().position(|info| info.id == id) {
            removed.swap(0, first);
        }
        Ok(removed)
    }

    /// Detaches every function of `slot` of root bus `bus`, function 0 last.
    fn detach_slot(&mut self, memory: &GuestMemoryMmap, bus: u8, slot: u8) -> Vec<PciDeviceInfo> {
        let ids = self.vfio.ids_in_slot(bus, slot);
        let (vfio, mut resources) = self.vfio_with_resources(memory);
        ids.iter()
            .filter_map(|id| vfio.detach(id, &mut resources))
            .collect()
    }

    /// Readable when the guest ejected a device on its own or the host asked
    /// for one back; then call [`DeviceManager::handle_device_events`].
    pub fn device_event_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self
            .hotplug
            .guest_eject_fd()
            .map(|fd| fd.as_raw_fd())
            .into_iter()
            .collect();
        fds.extend(self.vfio.host_request_fds());
        fds
    }

    /// Handles what [`DeviceManager::device_event_fds`] signalled: devices the
    /// guest ejected, then devices the host wants back. Returns every device
    /// that left the VM.
    pub fn handle_device_events(
        &mut self,
        memory: &GuestMemoryMmap,
        guest_running: bool,
    ) -> Vec<PciDeviceInfo> {
        let mut removed = self.handle_guest_ejects(memory);
        removed.extend(self.give_back_requested(memory, guest_running));
        removed
    }

    /// Gives the host the devices it asked back (an unbind from vfio-pci, which
    /// blocks until the VMM lets go): a running guest is asked to eject each
    /// first, as for an API removal, and loses it after
    /// [`EJECT_GIVE_UP_AFTER`] if it does not, since the host's request stands.
    fn give_back_requested(
        &mut self,
        memory: &GuestMemoryMmap,
        guest_running: bool,
    ) -> Vec<PciDeviceInfo> {
        let mut removed = Vec::new();
        for id in self.vfio.host_requests() {
            // An earlier removal of its slot may have taken it already.
            let Some(at) = self.vfio.location_of(&id) else {
                continue;
            };
            log::warn!("vfio: the host asked for {id} back; removing it from the VM");
            match self.remove_at(memory, &id, at, guest_running, Removal::DetachAnyway) {
                Ok(infos) => removed.extend(infos),
                Err(e) => log::warn!("vfio: giving {id} back to the host: {e}"),
            }
        }
        removed
    }

    /// Detaches the devices whose slots the guest ejected without being asked (an
    /// administrator in the guest powering a slot off); returns them.
    fn handle_guest_ejects(&mut self, memory: &GuestMemoryMmap) -> Vec<PciDeviceInfo> {
        if let Some(fd) = self.hotplug.guest_eject_fd() {
            // The count is irrelevant: the bitmap says which slots.
            let _ = fd.read();
        }
        let ejected = self.hotplug.take_unrequested_ejects();
        // The controller's bitmaps are bus 0's.
        let mut slots: Vec<u8> = self
            .vfio
            .list()
            .into_iter()
            .filter(|(_, at)| at.bus == 0)
            .map(|(_, at)| at.slot)
            .filter(|slot| ejected & (1u32 << slot) != 0)
            .collect();
        slots.dedup();
        let mut removed = Vec::new();
        for slot in slots {
            for info in self.detach_slot(memory, 0, slot) {
                log::info!(
                    "vfio: the guest ejected {} ({}) on its own",
                    info.id,
                    info.bdf
                );
                removed.push(info);
            }
        }
        removed
    }

    /// Every device on the PCI buses (passed-through and virtio) with its guest
    /// address, in bus and slot order.
    pub fn pci_devices(&self) -> Vec<PciDeviceInfo> {
        let mut all = self.vfio.list();
        let virtio = self.virtio.list().into_iter();
        all.extend(virtio.map(|(info, slot)| (info, GuestFunction::slot(slot))));
        all.sort_by_key(|(_, at)| *at);
        all.into_iter().map(|(info, _)| info).collect()
    }

    /// Config dword `reg` of bus 0, `slot`, function 0, read as the guest reads
    /// it; all ones for an empty slot.
    pub fn pci_config_read(&self, slot: u8, reg: usize) -> u32 {
        ::pci::bus::config_read(&self.pci.bus, slot, 0, reg)
    }

    /// Every passed-through device's counters, by device id.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.vfio.counters()
    }

    /// The passthrough devices and, apart, what attaching and detaching them needs.
    /// Whether guest RAM is mapped for the passed-through devices' DMA yet;
    /// `None` without such devices.
    pub fn dma_gate(&self) -> Option<Arc<::pci::vfio::DmaGate>> {
        self.vfio.dma_gate()
    }

    /// Stops mapping guest RAM for DMA (the VM is stopping).
    pub fn cancel_dma_mapping(&self) {
        self.vfio.cancel_dma_mapping();
    }

    fn vfio_with_resources<'a>(
        &'a mut self,
        memory: &'a GuestMemoryMmap,
    ) -> (&'a mut VfioDevices, VmResources<'a>) {
        (
            &mut self.vfio,
            VmResources {
                memory,
                pci: &mut self.pci,
                buses: &self.buses,
            },
        )
    }

    fn notify_hotplug(&self) {
        self.legacy
            .ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GedEvent::PciHotplug);
    }
}
