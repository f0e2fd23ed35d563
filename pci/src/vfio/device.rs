//! [`VfioPciDevice`]: a host PCI function on the guest's PCI bus.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{debug, warn};

use crate::config::{BarKind, PciBar, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE, CONFIG_SPACE_SIZE};
use crate::device::{BarMoveError, PciDevice};
use crate::interrupt::InterruptRouting;
use crate::msix::MsixRegion;
use crate::vfio::bars::{mappable_areas, BarMapper, GuestMemorySlots, HostBar, PAGE_SIZE};
use crate::vfio::config::{ConfigHardware, ConfigOptions, VfioConfig, VfioConfigError};
use crate::vfio::counters::VfioCounters;
use crate::vfio::dma_map::DmaGate;
use crate::vfio::interrupts::{VfioIntx, VfioMsiRoute};
use crate::vfio::ops::{IrqIndex, VfioDeviceOps, VfioOpsError, BAR0_REGION, CONFIG_REGION};
use crate::BarReprogram;

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("reading the device's config space: {0}")]
    ReadConfig(#[source] VfioOpsError),
    #[error("the device has no config region")]
    NoConfigRegion,
    #[error(transparent)]
    Config(#[from] VfioConfigError),
    #[error("resetting the device: {0}")]
    Reset(#[source] VfioOpsError),
    #[error("setting up INTx on GSI {gsi}: {source}")]
    Intx {
        gsi: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What the VMM lends a device.
pub struct VfioResources {
    pub slots: Arc<dyn GuestMemorySlots>,
    pub routing: Arc<dyn InterruptRouting>,
    /// The IOAPIC GSI of the slot's INTx line; `None` leaves INTx unwired.
    pub intx_gsi: Option<u32>,
    /// Opens once guest RAM is mapped for DMA; `None`: it already is.
    pub dma_gate: Option<Arc<DmaGate>>,
}

/// Byte offset of the command register in config space.
const COMMAND_OFFSET: usize = 0x04;

/// Reads the device's config region: 4 KiB for PCIe functions, 256 bytes else.
pub fn read_raw_config(ops: &dyn VfioDeviceOps) -> Result<Vec<u8>, VfioPciError> {
    let region = ops
        .region_info(CONFIG_REGION)
        .ok_or(VfioPciError::NoConfigRegion)?;
    let len = (region.size as usize).min(CONFIG_SPACE_SIZE);
    let mut raw = vec![0u8; len];
    ops.region_read(CONFIG_REGION, 0, &mut raw)
        .map_err(VfioPciError::ReadConfig)?;
    Ok(raw)
}

struct Hardware<'a>(&'a dyn VfioDeviceOps);

impl ConfigHardware for Hardware<'_> {
    fn read(&self, offset: usize, data: &mut [u8]) {
        if let Err(e) = self.0.region_read(CONFIG_REGION, offset as u64, data) {
            debug!("vfio: config read at {offset:#x}: {e}");
            data.fill(0xff);
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        if let Err(e) = self.0.region_write(CONFIG_REGION, offset as u64, data) {
            warn!("vfio: config write at {offset:#x}: {e}");
        }
    }
}

pub struct VfioPciDevice {
    name: String,
    ops: Arc<dyn VfioDeviceOps>,
    config: VfioConfig,
    host_bars: Vec<HostBar>,
    mapper: BarMapper,
    msi_route: Arc<VfioMsiRoute>,
    msix_route: Arc<VfioMsiRoute>,
    intx: Option<VfioIntx>,
    counters: Arc<VfioCounters>,
    released: bool,
    dma_gate: Option<Arc<DmaGate>>,
    /// Set by whoever is about to detach the device, so that a write held at the
    /// DMA gate lets go of the locks detaching needs.
    detaching: Arc<std::sync::atomic::AtomicBool>,
}

impl VfioPciDevice {
    /// Builds the device over `ops` with its BARs at `placed` (from
    /// [`place_bars`](super::place_bars) over `host_bars`). Resets the device first
    /// when it supports reset; wires INTx when the device has it and a GSI is given.
    pub fn new(
        name: impl Into<String>,
        ops: Arc<dyn VfioDeviceOps>,
        host_bars: Vec<HostBar>,
        placed: &[PciBar],
        resources: VfioResources,
        options: &ConfigOptions,
    ) -> Result<Self, VfioPciError> {
        let name = name.into();
        if ops.device_info().reset {
            ops.reset().map_err(VfioPciError::Reset)?;
        } else {
            // The guest gets whatever state the last user left: its memory, its
            // firmware's state, DMA it had set up. vmm-service refuses such devices
            // unless the operator allows them; said here for form-vmm run alone.
            warn!(
                "vfio {name}: the device has no reset method (no FLR, no bus or PM reset): this VM sees what its last user left in it, and the next user sees what this VM leaves"
            );
        }
        let raw = read_raw_config(&*ops)?;
        let counters = Arc::new(VfioCounters::default());
        let vectors = |index| ops.irq_info(index).map_or(0, |i| i.count as usize);
        let msi_route = Arc::new(VfioMsiRoute::new(
            IrqIndex::Msi,
            vectors(IrqIndex::Msi),
            ops.clone(),
            resources.routing.clone(),
            counters.clone(),
        ));
        let msix_route = Arc::new(VfioMsiRoute::new(
            IrqIndex::Msix,
            vectors(IrqIndex::Msix),
            ops.clone(),
            resources.routing.clone(),
            counters.clone(),
        ));
        let has_intx = vectors(IrqIndex::Intx) > 0;
        let config = VfioConfig::build(
            &raw,
            placed,
            has_intx && resources.intx_gsi.is_some(),
            msi_route.clone(),
            msix_route.clone(),
            options,
        )?;
        let plan: Vec<_> = placed
            .iter()
            .filter(|b| b.kind != BarKind::Io)
            .filter_map(|bar| {
                let host = host_bars.iter().find(|h| h.index == bar.index)?;
                let holes = config
                    .msix()
                    .map(|m| msix_holes(m.layout(), bar.index))
                    .unwrap_or_default();
                Some((*bar, mappable_areas(&host.region, &holes, PAGE_SIZE)))
            })
            .collect();
        let mapper = BarMapper::new(ops.clone(), resources.slots.clone(), &plan);
        let mut intx = None;
        if let (true, Some(gsi)) = (has_intx, resources.intx_gsi) {
            let mut line =
                VfioIntx::new(gsi, ops.clone(), resources.routing.clone()).map_err(|e| {
                    VfioPciError::Intx {
                        gsi,
                        source: e.into(),
                    }
                })?;
            line.enable()
                .map_err(|source| VfioPciError::Intx { gsi, source })?;
            intx = Some(line);
        }
        let mut device = Self {
            name,
            ops,
            config,
            host_bars,
            mapper,
            msi_route,
            msix_route,
            intx,
            counters,
            released: false,
            dma_gate: resources.dma_gate,
            detaching: Arc::default(),
        };
        if let Some(gsi) = resources.intx_gsi {
            device
                .config
                .config_mut()
                .set_interrupt_line(gsi.try_into().unwrap_or(0xff));
        }
        // The hardware starts as the guest sees it: a device vfio-pci could not
        // reset may still master the bus for its last user, and none may before
        // the guest turns it on (nor, with RAM mapped in the background, before
        // the gate opens).
        let command = device.config.config().command();
        if let Err(e) =
            device
                .ops
                .region_write(CONFIG_REGION, COMMAND_OFFSET as u64, &command.to_le_bytes())
        {
            warn!("vfio {}: clearing the command register: {e}", device.name);
        }
        Ok(device)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The flag that releases a guest write held at the DMA gate (set it before
    /// taking this device's lock to detach it): the write goes on without Bus
    /// Master Enable.
    pub fn detaching(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.detaching.clone()
    }

    pub fn counters(&self) -> Arc<VfioCounters> {
        self.counters.clone()
    }

    pub fn config(&self) -> &VfioConfig {
        &self.config
    }

    pub fn mapper(&self) -> &BarMapper {
        &self.mapper
    }

    pub fn msix_route(&self) -> &VfioMsiRoute {
        &self.msix_route
    }

    pub fn msi_route(&self) -> &VfioMsiRoute {
        &self.msi_route
    }

    pub fn intx(&self) -> Option<&VfioIntx> {
        self.intx.as_ref()
    }

    /// Releases everything the device holds: interrupts (host side, irqfds, routes,
    /// GSIs), memory slots and BAR mappings; resets the device when it can so the
    /// next user finds it quiet. Idempotent; also run on drop. The VMM then drops
    /// the device (closing the VFIO fd, which releases the group when it was the
    /// last), removes its trapped BAR regions from its buses and frees the BAR
    /// ranges.
    pub fn detach(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if let Some(mut intx) = self.intx.take() {
            if let Err(e) = intx.disable() {
                warn!("vfio {}: turning INTx off: {e}", self.name);
            }
        }
        self.msix_route.release();
        self.msi_route.release();
        self.mapper.release();
        if self.ops.device_info().reset {
            if let Err(e) = self.ops.reset() {
                warn!("vfio {}: reset on detach: {e}", self.name);
            }
        }
    }

    /// Brings the host's interrupt setup in line with what the guest enabled.
    /// VFIO allows one of INTx, MSI and MSI-X at a time, so whatever turns off goes
    /// first.
    fn sync_interrupts(&mut self) {
        let msi = self.config.msi_enabled_vectors() as u32;
        let msix = if self.config.msix_enabled() {
            self.config.msix().map_or(0, |m| m.layout().vectors as u32)
        } else {
            0
        };
        let want_intx = msi == 0 && msix == 0;
        if let (false, Some(intx)) = (want_intx, self.intx.as_mut()) {
            if let Err(e) = intx.disable() {
                warn!("vfio {}: turning INTx off: {e}", self.name);
            }
        }
        let order = [(msi == 0, true), (msix == 0, false)];
        let (offs, ons): (Vec<_>, Vec<_>) = order.iter().partition(|(off, _)| *off);
        for (_, is_msi) in offs.into_iter().chain(ons) {
            let (route, count, what) = if is_msi {
                (&self.msi_route, msi, "MSI")
            } else {
                (&self.msix_route, msix, "MSI-X")
            };
            if let Err(e) = route.vfio_enable(count) {
                warn!("vfio {}: {what} with {count} vectors: {e}", self.name);
            }
        }
        if let (true, Some(intx)) = (want_intx, self.intx.as_mut()) {
            if let Err(e) = intx.enable() {
                warn!("vfio {}: turning INTx on: {e}", self.name);
            }
        }
    }

    /// Latches interrupts that arrived on masked MSI vectors into the pending bits.
    fn sync_msi_pending(&mut self) {
        for vector in self.msi_route.take_fired_while_masked() {
            self.counters
                .interrupts_while_masked
                .fetch_add(1, Ordering::Relaxed);
            self.config.trigger_msi(vector);
        }
    }

    /// Latches interrupts that arrived on masked MSI-X vectors into the PBA.
    fn sync_pending(&mut self) {
        let fired = self.msix_route.take_fired_while_masked();
        if let Some(msix) = self.config.msix_mut() {
            for vector in fired {
                self.counters
                    .interrupts_while_masked
                    .fetch_add(1, Ordering::Relaxed);
                msix.trigger(vector);
            }
        }
    }

    fn bar_at(&self, base: u64) -> Option<PciBar> {
        self.config.config().bars().find(|b| b.addr == base)
    }

    fn count_access(&self, kind: BarKind, write: bool) {
        let c = &self.counters;
        let counter = match (kind, write) {
            (BarKind::Io, false) => &c.pio_reads,
            (BarKind::Io, true) => &c.pio_writes,
            (_, false) => &c.mmio_reads,
            (_, true) => &c.mmio_writes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Holds a write that sets Bus Master Enable until guest RAM is mapped for
    /// DMA: until then the device could reach pages the IOMMU does not map yet.
    /// If the mapping failed (the VM is being stopped) the write goes on without
    /// the bit.
    fn hold_bus_master<'d>(
        &self,
        reg_idx: usize,
        offset: u64,
        data: &'d [u8],
    ) -> std::borrow::Cow<'d, [u8]> {
        let unchanged = std::borrow::Cow::Borrowed(data);
        let Some(gate) = &self.dma_gate else {
            return unchanged;
        };
        let start = reg_idx
            .checked_mul(4)
            .and_then(|b| b.checked_add(usize::try_from(offset).ok()?));
        let Some(at) = start.and_then(|s| COMMAND_OFFSET.checked_sub(s)) else {
            return unchanged;
        };
        let bus_master = COMMAND_BUS_MASTER as u8;
        if data.get(at).is_none_or(|b| b & bus_master == 0) || gate.is_open() {
            return unchanged;
        }
        let waited = std::time::Instant::now();
        match gate.wait_unless(&self.detaching, std::time::Duration::from_millis(20)) {
            Ok(()) => {
                log::info!(
                    "vfio {}: the guest's Bus Master Enable waited {} ms for guest RAM's DMA mapping",
                    self.name,
                    waited.elapsed().as_millis()
                );
                unchanged
            }
            Err(why) => {
                warn!("vfio {}: Bus Master Enable left clear: {why}", self.name);
                let mut held = data.to_vec();
                held[at] &= !bus_master;
                std::borrow::Cow::Owned(held)
            }
        }
    }

    fn msix_region(&self, bar: &PciBar, offset: u64) -> Option<MsixRegion> {
        self.config.msix()?.layout().locate(bar.index as u8, offset)
    }
}

/// The MSI-X table and PBA parts of BAR `index`, as `(offset, len)`.
fn msix_holes(layout: &crate::msix::MsixLayout, index: usize) -> Vec<(u64, u64)> {
    let mut holes = Vec::new();
    if usize::from(layout.table_bar) == index {
        holes.push((u64::from(layout.table_offset), layout.table_len()));
    }
    if usize::from(layout.pba_bar) == index {
        holes.push((u64::from(layout.pba_offset), layout.pba_len()));
    }
    holes
}

impl PciDevice for VfioPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.counters.config_reads.fetch_add(1, Ordering::Relaxed);
        if self.config.msi().is_some_and(|m| m.covers(reg_idx)) {
            self.sync_msi_pending();
        }
        self.config.read(reg_idx, &Hardware(&*self.ops))
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<BarReprogram> {
        self.counters.config_writes.fetch_add(1, Ordering::Relaxed);
        if self.released {
            return None;
        }
        let data = self.hold_bus_master(reg_idx, offset, data);
        let effect = self
            .config
            .write(reg_idx, offset, &data, &Hardware(&*self.ops));
        if let Some(command) = effect.command {
            self.mapper
                .set_memory_enabled(command & COMMAND_MEMORY_SPACE != 0);
        }
        if effect.msi_touched || effect.msix_touched {
            self.sync_interrupts();
        }
        effect.bar_moved
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.config().bars().collect()
    }

    fn move_bar(&mut self, reprogram: &BarReprogram) -> Result<(), BarMoveError> {
        if reprogram.kind != BarKind::Io {
            self.mapper.move_bar(reprogram.index, reprogram.new);
        }
        Ok(())
    }

    fn read_bar(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(bar) = self.bar_at(base) else {
            data.fill(0xff);
            return;
        };
        self.count_access(bar.kind, false);
        match self.msix_region(&bar, offset) {
            Some(MsixRegion::Table(o)) => {
                self.counters
                    .msix_table_accesses
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(msix) = self.config.msix() {
                    msix.read_table(o, data);
                }
            }
            Some(MsixRegion::Pba(o)) => {
                self.counters
                    .msix_table_accesses
                    .fetch_add(1, Ordering::Relaxed);
                self.sync_pending();
                if let Some(msix) = self.config.msix() {
                    msix.read_pba(o, data);
                }
            }
            None => {
                let region = BAR0_REGION + bar.index as u32;
                if let Err(e) = self.ops.region_read(region, offset, data) {
                    debug!(
                        "vfio {}: BAR {} read at {offset:#x}: {e}",
                        self.name, bar.index
                    );
                    data.fill(0xff);
                }
            }
        }
    }

    fn write_bar(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(bar) = self.bar_at(base) else {
            return;
        };
        self.count_access(bar.kind, true);
        match self.msix_region(&bar, offset) {
            Some(region) => {
                self.counters
                    .msix_table_accesses
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(msix) = self.config.msix_mut() {
                    match region {
                        MsixRegion::Table(o) => msix.write_table(o, data),
                        MsixRegion::Pba(o) => msix.write_pba(o, data),
                    }
                }
            }
            None => {
                let region = BAR0_REGION + bar.index as u32;
                if let Err(e) = self.ops.region_write(region, offset, data) {
                    debug!(
                        "vfio {}: BAR {} write at {offset:#x}: {e}",
                        self.name, bar.index
                    );
                }
            }
        }
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.detach();
    }
}

impl VfioPciDevice {
    /// The BARs as the hardware has them.
    pub fn host_bars(&self) -> &[HostBar] {
        &self.host_bars
    }
}
