//! VFIO passthrough devices of one VM: attach and detach, the same code for
//! cold-plug (at VM creation) and hotplug (over the API); hotplug only adds the
//! guest's notification, which the VM does.
//!
//! - One container per VM, opened with the first device and dropped with the last
//!   (which unmaps guest RAM from the IOMMU and unpins it).
//! - All guest RAM is DMA-mapped once per container, IOVA = guest physical address,
//!   so RAM must lie in the IOMMU's IOVA ranges. At creation it is mapped while the
//!   guest starts (`memory.dma_map=deferred`, pci's `dma_map`): each device's Bus
//!   Master Enable waits at the container's [`DmaGate`] until all of it is mapped.
//!   A hotplug maps (or waits for the mapping) before the device goes on the bus. At creation the devices are opened
//!   before guest RAM exists ([`VfioDevices::open`], then
//!   [`VfioDevices::layout_constraints`]) and the layout is clamped to the ranges;
//!   on hotplug into a VM laid out without them, RAM is checked instead.
//! - Every mmapped BAR area is also DMA-mapped in the container while it is a
//!   guest memory slot, IOVA = where the guest put it ([`DmaMappedSlots`]), so
//!   passed-through devices can reach each other's BARs (peer-to-peer DMA; the
//!   64-bit window is clamped to the IOVA ranges for this). Best effort: a
//!   refused BAR map is a warning, never an attach failure.
//! - Functions of one host slot passed in one request (a GPU at `01:00.0` and its
//!   audio function at `01:00.1`) share one guest slot and keep their function
//!   numbers, where guest drivers look for their siblings; function 0 goes on the
//!   bus last and comes off first-but-after-the-others' eject, so a guest never
//!   scans half a slot. Without the host's function 0 each gets a slot of its own.
//! - The host can ask for a device back (an unbind from vfio-pci signals the
//!   device's request interrupt, then waits for the VMM to close it): each device
//!   gets an eventfd on it, and [`VfioDevices::host_requests`] says which asked.
//! - A device with a guest node (`numa_node`) goes on that node's root bus and
//!   draws its BARs from that bus's windows; the others on bus 0.
//! - Attach order per device: lowest free slot, INTx GSI from the slot
//!   ([`crate::acpi_pci::intx_gsi`]), BARs placed off any BAR the guest moved,
//!   [`VfioPciDevice`] built, every BAR trapped whole on the MMIO/PIO bus (mapped
//!   parts never exit), then the device goes on the PCI bus. Detach undoes it in
//!   reverse, finding trapped BARs where the guest last put them.

use super::pci::{lock, GuestFunction, PciDeviceInfo, PciDevices, PlugError};
use super::vfio_error::VfioError;
use super::vfio_host::{VfioContainerOps, VfioHost};
use super::vfio_resources::{KvmInterruptRouting, KvmMemorySlots};
use crate::acpi_pci::intx_gsi;
use crate::config::{DeviceConfig, DmaMapOrder};
use crate::io_buses::IoBuses;
use crate::memory::GuestMemoryMmap;
use form_vm_allocator::{root_bus_of_node, IovaRange};
use pci::vfio::ops::IrqIndex;
use pci::vfio::{
    discover_bars, place_bars, read_raw_config, release_bars, ConfigOptions, DmaGate,
    DmaMappedSlots, GuestMemorySlots, HostBar, InterruptRouting, VfioDeviceOps, VfioPciDevice,
    VfioResources,
};
use pci::{BarKind, PciBar, PciDevice, SharedPciDevice};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Offset of the interrupt pin register in config space.
const INTERRUPT_PIN: usize = 0x3d;

/// A device opened (its group attached) but not yet on the bus.
pub struct OpenedDevice {
    id: String,
    bdf: String,
    path: PathBuf,
    ops: Arc<dyn VfioDeviceOps>,
    raw_config: Vec<u8>,
    host_bars: Vec<HostBar>,
    options: ConfigOptions,
    /// The root bus it goes on: its guest node's.
    bus: u8,
}

impl OpenedDevice {
    /// The root bus the device goes on.
    pub fn root_bus(&self) -> u8 {
        self.bus
    }

    /// Its BARs, as the host has them.
    pub fn host_bars(&self) -> &[HostBar] {
        &self.host_bars
    }

    /// Bytes the device's 64-bit BARs need in the 64-bit window.
    fn mmio64_bytes(&self) -> u64 {
        self.host_bars
            .iter()
            .filter(|b| b.kind == BarKind::Memory64)
            .map(|b| b.size)
            .sum()
    }
}

struct AttachedDevice {
    bdf: String,
    path: PathBuf,
    at: GuestFunction,
    device: Arc<Mutex<VfioPciDevice>>,
    /// Signalled when the host wants the device back; `None` when the kernel
    /// offers no request interrupt.
    host_request: Option<HostRequest>,
    /// As allocated (the allocators know these addresses, not the guest's moves).
    placed: Vec<PciBar>,
    /// Releases a guest write held at the DMA gate ([`VfioPciDevice::detaching`]).
    detaching: Arc<std::sync::atomic::AtomicBool>,
}

/// What attaching needs from the VM.
pub struct VmResources<'a> {
    pub memory: &'a GuestMemoryMmap,
    pub pci: &'a mut PciDevices,
    pub buses: &'a IoBuses,
}

/// The VM's VFIO devices and their container.
pub struct VfioDevices {
    host: Arc<dyn VfioHost>,
    container: Option<Box<dyn VfioContainerOps>>,
    devices: BTreeMap<String, AttachedDevice>,
    /// Lent to every device: KVM memory slots and interrupt routes.
    slots: Arc<dyn GuestMemorySlots>,
    routing: Arc<dyn InterruptRouting>,
    /// Whether guest RAM is mapped for DMA yet, while the container is open.
    dma_gate: Option<Arc<DmaGate>>,
}

fn describe(ranges: &[IovaRange]) -> String {
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl VfioDevices {
    pub fn new(
        host: Arc<dyn VfioHost>,
        slots: Arc<dyn GuestMemorySlots>,
        routing: Arc<dyn InterruptRouting>,
    ) -> Self {
        Self {
            host,
            container: None,
            devices: BTreeMap::new(),
            slots,
            routing,
            dma_gate: None,
        }
    }

    /// Over KVM: the VM's memory slots, its routing table and GSI pool.
    pub fn on_kvm(
        host: Arc<dyn VfioHost>,
        kvm: &Arc<hypervisor::Vm>,
        gsis: Arc<Mutex<form_vm_allocator::GsiAllocator>>,
    ) -> Self {
        Self::new(
            host,
            Arc::new(KvmMemorySlots::new(kvm.clone())),
            Arc::new(KvmInterruptRouting::new(kvm.clone(), gsis)),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Ids and guest addresses in bus order, with each one's place.
    pub fn list(&self) -> Vec<(PciDeviceInfo, GuestFunction)> {
        let mut all: Vec<_> = self
            .devices
            .iter()
            .map(|(id, d)| (d.at, guest_info(id, d.at)))
            .collect();
        all.sort_by_key(|(at, _)| *at);
        all.into_iter().map(|(at, info)| (info, at)).collect()
    }

    /// Where device `id` sits.
    pub fn location_of(&self, id: &str) -> Option<GuestFunction> {
        self.devices.get(id).map(|d| d.at)
    }

    /// The ids of every function in `slot` of root bus `bus`, in the order they
    /// come off the bus: function 0 last.
    pub fn ids_in_slot(&self, bus: u8, slot: u8) -> Vec<String> {
        let mut ids: Vec<(u8, String)> = self
            .devices
            .iter()
            .filter(|(_, d)| d.at.bus == bus && d.at.slot == slot)
            .map(|(id, d)| (d.at.function, id.clone()))
            .collect();
        ids.sort_by_key(|(function, _)| std::cmp::Reverse(*function));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The id and BDF each config gets, after checking the paths and that no id or
    /// device is given twice (in `configs` or already attached).
    fn resolve(&self, configs: &[DeviceConfig]) -> Result<Vec<(String, String)>, VfioError> {
        let mut taken: BTreeMap<String, (String, PathBuf)> = self
            .devices
            .iter()
            .map(|(id, d)| (id.clone(), (d.bdf.clone(), d.path.clone())))
            .collect();
        let mut out = Vec::with_capacity(configs.len());
        for config in configs {
            let bdf = self.host.check_device(&config.path)?;
            if let Some((id, _)) = taken.iter().find(|(_, (b, _))| *b == bdf) {
                return Err(VfioError::DuplicateDevice {
                    path: config.path.clone(),
                    bdf,
                    id: id.clone(),
                });
            }
            let id = match &config.id {
                Some(id) if taken.contains_key(id) => {
                    return Err(VfioError::DuplicateId(id.clone()))
                }
                Some(id) => id.clone(),
                None => (0..)
                    .map(|n| format!("_vfio{n}"))
                    .find(|id| !taken.contains_key(id))
                    .unwrap_or_default(),
            };
            taken.insert(id.clone(), (bdf.clone(), config.path.clone()));
            out.push((id, bdf));
        }
        Ok(out)
    }

    /// Opens the container (if needed) and `configs`' devices, reading what placing
    /// them needs. Nothing is on the guest's bus yet. `kvm` gets the container's
    /// groups registered with its KVM-VFIO device.
    pub fn open(
        &mut self,
        kvm: Option<&hypervisor::Vm>,
        configs: &[DeviceConfig],
    ) -> Result<Vec<OpenedDevice>, VfioError> {
        let names = self.resolve(configs)?;
        let fresh_container = self.container.is_none();
        if fresh_container {
            self.container = Some(self.host.open_container(kvm)?);
        }
        let result = self.open_in_container(configs, &names);
        if result.is_err() && fresh_container && self.devices.is_empty() {
            self.container = None;
        }
        result
    }

    fn open_in_container(
        &self,
        configs: &[DeviceConfig],
        names: &[(String, String)],
    ) -> Result<Vec<OpenedDevice>, VfioError> {
        let Some(container) = self.container.as_ref() else {
            return Ok(Vec::new());
        };
        let bdfs: Vec<String> = names.iter().map(|(_, bdf)| bdf.clone()).collect();
        container.declare_vm_devices(&bdfs);
        let mut opened = Vec::with_capacity(configs.len());
        for (config, (id, bdf)) in configs.iter().zip(names) {
            let opening = || -> Result<OpenedDevice, VfioError> {
                let node = config.numa_node.unwrap_or(0);
                let bus = root_bus_of_node(node).ok_or_else(|| VfioError::NoRootBus {
                    id: id.clone(),
                    node,
                })?;
                let ops = container.open_device(&config.path)?;
                let device_err = |source| VfioError::Device {
                    id: id.clone(),
                    source,
                };
                let raw_config = read_raw_config(&*ops).map_err(device_err)?;
                let host_bars =
                    discover_bars(&*ops, &raw_config).map_err(|source| VfioError::Bars {
                        id: id.clone(),
                        source,
                    })?;
                Ok(OpenedDevice {
                    id: id.clone(),
                    bdf: bdf.clone(),
                    path: config.path.clone(),
                    ops,
                    raw_config,
                    host_bars,
                    options: ConfigOptions {
                        gpudirect_clique: config.x_nv_gpudirect_clique,
                    },
                    bus,
                })
            };
            match opening() {
                Ok(device) => opened.push(device),
                Err(e) => {
                    for bdf in &bdfs {
                        if !self.devices.values().any(|d| &d.bdf == bdf) {
                            container.forget_vm_device(bdf);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(opened)
    }

    /// For VM creation: the IOVA ranges guest RAM and the 64-bit window must fit,
    /// and the 64-bit window size `opened` needs.
    pub fn layout_constraints(
        &self,
        opened: &[OpenedDevice],
    ) -> Result<(Option<Vec<IovaRange>>, u64), VfioError> {
        let Some(container) = self.container.as_ref() else {
            return Ok((None, 0));
        };
        let needed = opened.iter().map(OpenedDevice::mmio64_bytes).sum();
        Ok((container.iova_ranges()?, needed))
    }

    /// Maps guest RAM for DMA (once per container; `order` says whether before
    /// returning), after checking on hotplug that it lies where the IOMMU
    /// translates.
    fn map_memory(
        &mut self,
        memory: &GuestMemoryMmap,
        order: DmaMapOrder,
    ) -> Result<(), VfioError> {
        let Some(container) = self.container.as_ref() else {
            return Ok(());
        };
        if let Some(ranges) = container.iova_ranges()? {
            for region in memory.iter() {
                let start = region.start_addr().0;
                let end = start + region.len() - 1;
                if !ranges.iter().any(|r| r.start <= start && end <= r.end) {
                    return Err(VfioError::RamOutsideIova {
                        start,
                        end,
                        ranges: describe(&ranges),
                    });
                }
            }
        }
        let ram = container.guest_ram();
        let gate = match order {
            DmaMapOrder::Deferred => ram.map_in_background(memory, dma_thread_start),
            DmaMapOrder::Upfront => ram.map_now(memory),
        }
        .map_err(|e| VfioError::Container(e.into()))?;
        self.dma_gate = Some(gate);
        Ok(())
    }

    /// Closing the container unmaps and unpins guest RAM (after stopping a mapping
    /// under way).
    fn close_container(&mut self) {
        self.container = None;
        self.dma_gate = None;
    }

    /// Whether guest RAM is mapped for DMA yet; `None` without a container.
    pub fn dma_gate(&self) -> Option<Arc<DmaGate>> {
        self.dma_gate.clone()
    }

    /// Stops a mapping still under way (the VM is stopping): a vCPU waiting at
    /// the gate is released at once.
    pub fn cancel_dma_mapping(&self) {
        if let Some(container) = &self.container {
            container.guest_ram().cancel();
        }
    }

    /// Puts opened devices on the guest's bus, guest RAM mapped for their DMA in
    /// `order`. On a failure, the devices of this call that were attached are
    /// detached again.
    pub fn attach(
        &mut self,
        opened: Vec<OpenedDevice>,
        vm: &mut VmResources<'_>,
        order: DmaMapOrder,
    ) -> Result<Vec<PciDeviceInfo>, VfioError> {
        let names: Vec<(String, String)> = opened
            .iter()
            .map(|d| (d.id.clone(), d.bdf.clone()))
            .collect();
        let result = self.map_memory(vm.memory, order).and_then(|()| {
            let mut infos: Vec<Option<PciDeviceInfo>> = vec![None; opened.len()];
            let mut opened: Vec<Option<OpenedDevice>> = opened.into_iter().map(Some).collect();
            let buses: Vec<u8> = opened
                .iter()
                .map(|d| d.as_ref().map_or(0, |d| d.bus))
                .collect();
            for slot_group in shared_slots(&names)
                .into_iter()
                .flat_map(|group| split_by_bus(group, &buses))
            {
                let bus = buses[slot_group[0]];
                let slot = vm.pci.free_slot_on(bus).map_err(|source| VfioError::Slot {
                    id: names[slot_group[0]].0.clone(),
                    source,
                })?;
                let multifunction = slot_group.len() > 1;
                for index in slot_group {
                    let function = if multifunction {
                        host_function(&names[index].1).unwrap_or(0)
                    } else {
                        0
                    };
                    if let Some(device) = opened[index].take() {
                        let at = GuestFunction {
                            bus,
                            slot,
                            function,
                        };
                        infos[index] = Some(self.attach_one(device, at, vm)?);
                    }
                }
            }
            Ok(infos.into_iter().flatten().collect())
        });
        if result.is_err() {
            // Off the bus in reverse: function 0 before the slot's others would
            // leave them hidden, and the bus refuses it.
            let mut attached: Vec<(GuestFunction, String)> = names
                .iter()
                .filter_map(|(id, _)| Some((self.devices.get(id)?.at, id.clone())))
                .collect();
            attached.sort_by_key(|(at, _)| std::cmp::Reverse(at.function));
            // Forgotten before the detaches, which close the container with the
            // last device.
            for (id, bdf) in &names {
                if !self.devices.contains_key(id) {
                    if let Some(container) = &self.container {
                        container.forget_vm_device(bdf);
                    }
                }
            }
            for (_, id) in &attached {
                self.detach(id, vm);
            }
            if self.devices.is_empty() {
                self.close_container();
            }
        }
        result
    }

    /// The memory slots a new device gets: the VM's, also mapped into the
    /// container for peer-to-peer DMA.
    fn p2p_slots(&self) -> Arc<dyn GuestMemorySlots> {
        match &self.container {
            Some(container) => Arc::new(DmaMappedSlots::new(
                self.slots.clone(),
                container.iommu_dma(),
            )),
            None => self.slots.clone(),
        }
    }

    fn attach_one(
        &mut self,
        opened: OpenedDevice,
        at: GuestFunction,
        vm: &mut VmResources<'_>,
    ) -> Result<PciDeviceInfo, VfioError> {
        let id = opened.id.clone();
        let slot = at.slot;
        let pin = opened
            .raw_config
            .get(INTERRUPT_PIN)
            .copied()
            .filter(|p| (1..=4).contains(p));
        let intx = pin.map(|p| intx_gsi(slot, p - 1));
        let placed = {
            // The guest may have moved BARs of devices already here to addresses
            // the windows still count as free; keep the new device off them.
            let held = self.hold_moved_bars(vm.pci, at.bus);
            let placed = vm
                .pci
                .bar_allocators_on(at.bus)
                .map(|mut windows| place_bars(&opened.host_bars, &mut windows));
            for (kind, addr) in held {
                if let Ok(Err(e)) = vm.pci.window_on(at.bus, kind).map(|w| w.free(addr)) {
                    log::warn!("vfio: releasing the hold on {addr:#x}: {e}");
                }
            }
            let placed = placed.map_err(|source| VfioError::Slot {
                id: id.clone(),
                source,
            })?;
            placed.map_err(|source| VfioError::Bars {
                id: id.clone(),
                source,
            })?
        };
        let host_request = HostRequest::register(&id, opened.ops.clone());
        let built = VfioPciDevice::new(
            id.clone(),
            opened.ops,
            opened.host_bars,
            &placed,
            VfioResources {
                slots: self.p2p_slots(),
                routing: self.routing.clone(),
                intx_gsi: intx,
                dma_gate: self.dma_gate.clone(),
            },
            &opened.options,
        );
        let device = match built {
            Ok(device) => Arc::new(Mutex::new(device)),
            Err(source) => {
                release_placed(&placed, at.bus, vm.pci);
                return Err(VfioError::Device { id, source });
            }
        };
        let shared: SharedPciDevice = device.clone();
        if let Err(e) = vm.pci.plug(vm.buses, at, &shared, &placed) {
            lock(&device).detach();
            drop(shared);
            drop(device);
            release_placed(&placed, at.bus, vm.pci);
            return Err(match e {
                PlugError::BarRegion {
                    index,
                    addr,
                    source,
                } => VfioError::BarRegion {
                    id,
                    index,
                    addr,
                    source,
                },
                PlugError::Slot(source) => VfioError::Slot { id, source },
            });
        }
        log::info!("vfio: {id} ({}) attached at {at}", opened.bdf);
        let detaching = lock(&device).detaching();
        self.devices.insert(
            id.clone(),
            AttachedDevice {
                bdf: opened.bdf,
                path: opened.path,
                at,
                detaching,
                device,
                placed,
                host_request,
            },
        );
        Ok(guest_info(&id, at))
    }

    /// Claims, in root bus `bus`'s BAR windows, every BAR the guest moved away from
    /// where it was placed (where that range is free); returns the claims to give
    /// back.
    fn hold_moved_bars(&self, pci: &mut PciDevices, bus: u8) -> Vec<(BarKind, u64)> {
        let mut held = Vec::new();
        for attached in self.devices.values() {
            let current = lock(&attached.device).bars();
            for (bar, original) in current.iter().zip(&attached.placed) {
                if bar.addr == original.addr {
                    continue;
                }
                let window = pci.window_on(bus, bar.kind);
                if window.is_ok_and(|w| w.allocate_at(bar.addr, bar.size).is_ok()) {
                    held.push((bar.kind, bar.addr));
                }
            }
        }
        held
    }

    /// Takes the device off the bus and gives back everything it held: trapped BAR
    /// regions, interrupts, memory slots, BAR ranges; the container with the last
    /// device.
    pub fn detach(&mut self, id: &str, vm: &mut VmResources<'_>) -> Option<PciDeviceInfo> {
        let attached = self.devices.remove(id)?;
        // A vCPU may hold the bus and the device at the DMA gate until guest RAM is
        // mapped: let it go first, or this waits for the whole mapping.
        attached
            .detaching
            .store(true, std::sync::atomic::Ordering::SeqCst);
        vm.pci.unplug(
            vm.buses,
            attached.at,
            &attached.device,
            &attached.placed,
            &format!("vfio: {id}"),
        );
        lock(&attached.device).detach();
        drop(attached.device);
        release_placed(&attached.placed, attached.at.bus, vm.pci);
        if let Some(container) = &self.container {
            container.forget_vm_device(&attached.bdf);
        }
        if self.devices.is_empty() {
            self.close_container();
        }
        log::info!("vfio: {id} ({}) detached", attached.bdf);
        Some(guest_info(id, attached.at))
    }

    /// Every device's counters, by id.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.devices
            .iter()
            .map(|(id, d)| {
                let counters = lock(&d.device).counters().snapshot();
                let map = counters
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect();
                (id.clone(), map)
            })
            .collect()
    }

    /// The eventfds the host's requests for devices arrive on.
    pub fn host_request_fds(&self) -> Vec<RawFd> {
        self.devices
            .values()
            .filter_map(|d| d.host_request.as_ref())
            .map(|r| r.fd.as_raw_fd())
            .collect()
    }

    /// The ids of the devices the host asked back since the last call.
    pub fn host_requests(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, d)| d.host_request.as_ref().is_some_and(HostRequest::take))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn has_container(&self) -> bool {
        self.container.is_some()
    }

    /// The guest-visible device behind `id`, for tests and diagnostics.
    pub fn device(&self, id: &str) -> Option<Arc<Mutex<VfioPciDevice>>> {
        self.devices.get(id).map(|d| d.device.clone())
    }
}

/// Gives placed BARs back to root bus `bus`'s windows.
fn release_placed(placed: &[PciBar], bus: u8, pci: &mut PciDevices) {
    match pci.bar_allocators_on(bus) {
        Ok(mut windows) => release_bars(placed, &mut windows),
        Err(e) => log::warn!("vfio: releasing BARs: {e}"),
    }
}

/// `group` (indices of devices sharing a guest slot) split so that each part is on
/// one root bus: functions given different guest nodes cannot share a slot.
fn split_by_bus(group: Vec<usize>, buses: &[u8]) -> Vec<Vec<usize>> {
    let mut parts: Vec<Vec<usize>> = Vec::new();
    for index in group {
        match parts.iter_mut().find(|p| buses[p[0]] == buses[index]) {
            Some(part) => part.push(index),
            None => parts.push(vec![index]),
        }
    }
    parts
}

fn guest_info(id: &str, at: GuestFunction) -> PciDeviceInfo {
    PciDeviceInfo {
        id: id.to_string(),
        bdf: at.to_string(),
    }
}

/// A device's request interrupt, registered with VFIO for as long as it lives.
struct HostRequest {
    fd: EventFd,
    ops: Arc<dyn VfioDeviceOps>,
}

impl HostRequest {
    fn register(id: &str, ops: Arc<dyn VfioDeviceOps>) -> Option<Self> {
        if ops
            .irq_info(IrqIndex::Req)
            .is_none_or(|info| info.count == 0)
        {
            log::debug!("vfio: {id}: no request interrupt; a host unbind waits for the VM to end");
            return None;
        }
        let fd = match EventFd::new(EFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("vfio: {id}: no eventfd for host requests: {e}");
                return None;
            }
        };
        if let Err(e) = ops.set_irq_eventfds(IrqIndex::Req, 0, &[Some(&fd)]) {
            log::warn!("vfio: {id}: the host's requests for the device cannot reach the VMM: {e}");
            return None;
        }
        Some(Self { fd, ops })
    }

    /// Whether the host asked since the last call.
    fn take(&self) -> bool {
        self.fd.read().is_ok()
    }
}

impl Drop for HostRequest {
    fn drop(&mut self) {
        // Unregistered before the eventfd closes under the kernel's trigger.
        if let Err(e) = self.ops.disable_irqs(IrqIndex::Req) {
            log::debug!("vfio: unregistering the request interrupt: {e}");
        }
    }
}

/// The mapping worker's first step: its seccomp filter.
fn dma_thread_start() {
    crate::sandbox::enter_or_abort(crate::sandbox::ThreadKind::VfioDma);
}

/// `domain:bus:device` and the function of a host BDF (`0000:01:00.1`).
fn host_slot(bdf: &str) -> Option<(&str, u8)> {
    let (slot, function) = bdf.rsplit_once('.')?;
    let function: u8 = function.parse().ok()?;
    (function < 8).then_some((slot, function))
}

fn host_function(bdf: &str) -> Option<u8> {
    host_slot(bdf).map(|(_, function)| function)
}

/// Which of `devices` (id, host BDF) share a guest slot, as indices into it: the
/// functions of one host slot whose function 0 is among them, function 0 last so
/// the slot is whole before the guest can find it; every other device alone.
/// Slots in the order their first device was given.
fn shared_slots(devices: &[(String, String)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
    for (index, (_, bdf)) in devices.iter().enumerate() {
        let key = host_slot(bdf).map(|(slot, _)| slot).filter(|slot| {
            devices
                .iter()
                .any(|(_, other)| host_slot(other) == Some((slot, 0)))
        });
        match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
            Some((_, members)) => members.push(index),
            None => groups.push((key, vec![index])),
        }
    }
    groups
        .into_iter()
        .map(|(_, mut members)| {
            members.sort_by_key(|&i| std::cmp::Reverse(host_function(&devices[i].1).unwrap_or(0)));
            members
        })
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod testing {
    //! A [`VfioHost`] over `pci::vfio::fake` devices, for tests here and in
    //! `vmm/tests`.

    use super::*;
    use form_vm_allocator::IovaRange;
    use pci::vfio::fake::{FakeIommu, FakeVfioDevice};
    use pci::vfio::GuestRamDma;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A host whose devices are fakes, by path. Paths must still end in a BDF.
    #[derive(Default)]
    pub struct FakeVfioHost {
        pub devices: Mutex<BTreeMap<PathBuf, Arc<FakeVfioDevice>>>,
        pub iova: Option<Vec<IovaRange>>,
        pub containers_open: Arc<AtomicUsize>,
        pub containers_opened: Arc<AtomicUsize>,
        pub declared: Arc<Mutex<Vec<String>>>,
        /// Where each container opened so far mapped guest RAM, in order.
        pub ram_iommus: Mutex<Vec<Arc<FakeIommu>>>,
        /// How long each map of a piece of guest RAM takes.
        pub ram_map_delay: Mutex<std::time::Duration>,
        /// What every container maps beyond guest RAM (BARs, for P2P).
        pub iommu: Arc<FakeIommu>,
    }

    impl FakeVfioHost {
        pub fn with(devices: Vec<(&str, FakeVfioDevice)>) -> Self {
            let host = FakeVfioHost::default();
            for (path, device) in devices {
                lock(&host.devices).insert(PathBuf::from(path), Arc::new(device));
            }
            host
        }

        /// Guest RAM as the last container opened mapped it, `(iova, size)` per
        /// map call.
        pub fn ram_mapped(&self) -> Vec<(u64, u64)> {
            lock(&self.ram_iommus)
                .last()
                .map(|iommu| iommu.snapshot())
                .unwrap_or_default()
        }
    }

    impl VfioHost for FakeVfioHost {
        fn check_device(&self, path: &Path) -> Result<String, VfioError> {
            let bdf = pci::vfio::container::bdf_of(path)
                .ok_or_else(|| VfioError::NotAPciDevice(path.into()))?;
            if !lock(&self.devices).contains_key(path) {
                return Err(VfioError::NotVfioBound { bdf, driver: None });
            }
            Ok(bdf)
        }

        fn open_container(
            &self,
            _vm: Option<&hypervisor::Vm>,
        ) -> Result<Box<dyn VfioContainerOps>, VfioError> {
            self.containers_open.fetch_add(1, Ordering::SeqCst);
            self.containers_opened.fetch_add(1, Ordering::SeqCst);
            let ram_iommu = Arc::new(FakeIommu::default());
            ram_iommu.set_map_delay(*lock(&self.ram_map_delay));
            lock(&self.ram_iommus).push(ram_iommu.clone());
            Ok(Box::new(FakeContainer {
                devices: lock(&self.devices).clone(),
                iova: self.iova.clone(),
                open: self.containers_open.clone(),
                declared: self.declared.clone(),
                ram: GuestRamDma::new(ram_iommu),
                iommu: self.iommu.clone(),
            }))
        }
    }

    struct FakeContainer {
        devices: BTreeMap<PathBuf, Arc<FakeVfioDevice>>,
        iova: Option<Vec<IovaRange>>,
        open: Arc<AtomicUsize>,
        declared: Arc<Mutex<Vec<String>>>,
        ram: GuestRamDma,
        iommu: Arc<FakeIommu>,
    }

    impl Drop for FakeContainer {
        fn drop(&mut self) {
            self.open.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl VfioContainerOps for FakeContainer {
        fn declare_vm_devices(&self, bdfs: &[String]) {
            let mut declared = lock(&self.declared);
            for bdf in bdfs {
                if !declared.contains(bdf) {
                    declared.push(bdf.clone());
                }
            }
        }

        fn forget_vm_device(&self, bdf: &str) {
            lock(&self.declared).retain(|b| b != bdf);
        }

        fn open_device(&self, path: &Path) -> Result<Arc<dyn VfioDeviceOps>, VfioError> {
            let device = self
                .devices
                .get(path)
                .cloned()
                .ok_or_else(|| VfioError::NotAPciDevice(path.into()))?;
            Ok(device)
        }

        fn iova_ranges(&self) -> Result<Option<Vec<IovaRange>>, VfioError> {
            Ok(self.iova.clone())
        }

        fn guest_ram(&self) -> &GuestRamDma {
            &self.ram
        }

        fn iommu_dma(&self) -> Arc<dyn pci::vfio::container::IommuDma + Send + Sync> {
            self.iommu.clone()
        }
    }
}
