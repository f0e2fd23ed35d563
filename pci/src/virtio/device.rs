//! [`VirtioPciDevice`]: one virtio device on the PCI bus through the modern
//! transport. Config space comes from [`PciConfiguration`] with the virtio
//! capabilities and MSI-X; BAR0 accesses are dispatched to the structure they fall
//! in ([`layout::locate`]); DRIVER_OK and reset are carried out here.

use std::any::Any;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::virtio::{
    ActivateError, Activation, ActiveQueue, GuestMemoryMmap, VirtioDevice, VirtioInterrupt,
    VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VIRTIO_RING_F_EVENT_IDX,
};
use log::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::config::{
    BarKind, BarReprogram, PciBar, PciClassCode, PciConfiguration, PciHeader, PciInterruptPin,
};
use crate::device::{BarMoveError, PciDevice};
use crate::interrupt::InterruptRouting;
use crate::msi_irqfd::IrqfdMsiRoute;
use crate::msix::{Msix, MsixLayout, MsixRegion};
use crate::virtio::common_config::{CommonConfig, QueueConfig, StatusEffect};
use crate::virtio::interrupt::VirtioPciInterrupt;
use crate::virtio::layout::{self, Bar0Region, MAX_QUEUES, VIRTIO_PCI_BAR_SIZE};
use crate::virtio::notify::QueueNotifiers;
use crate::virtio::pci_cfg::PciCfgWindow;
use crate::virtio::{IoEventRegistrar, VirtioPciError};

const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) devices are 0x1040 + device type.
const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
const VIRTIO_PCI_DEVICE_ID_LAST: u16 = 0x107f;
/// Revision 1 tells drivers the device is modern only.
const VIRTIO_PCI_REVISION: u8 = 1;
/// virtio-queue's limit, which is the spec's.
const MAX_QUEUE_SIZE: u16 = 32768;

/// Why DRIVER_OK did not start the device. The guest sees DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
enum ActivationFailure {
    #[error("queue {queue}: {what} address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        queue: usize,
        what: &'static str,
        addr: u64,
        align: u64,
    },
    #[error(
        "queue {queue} (size {size}): its rings are not all in guest memory (descriptors \
         {desc:#x}, driver ring {driver:#x}, device ring {device:#x})"
    )]
    OutsideMemory {
        queue: usize,
        size: u16,
        desc: u64,
        driver: u64,
        device: u64,
    },
    #[error("queue {queue}: {source}")]
    Queue {
        queue: usize,
        source: virtio_queue::Error,
    },
    #[error("queue {queue}: duplicating its notification eventfd: {source}")]
    Kick {
        queue: usize,
        source: std::io::Error,
    },
    #[error(transparent)]
    Device(#[from] ActivateError),
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    id: String,
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    config: PciConfiguration,
    msix_layout: MsixLayout,
    msix_route: Arc<IrqfdMsiRoute>,
    common: CommonConfig,
    interrupt: Arc<VirtioPciInterrupt>,
    notifiers: QueueNotifiers,
    pci_cfg: PciCfgWindow,
    active: bool,
}

fn class_code(device_type: u32) -> PciClassCode {
    let (class, subclass) = match device_type {
        VIRTIO_ID_BLOCK => (0x01, 0x00),
        VIRTIO_ID_NET => (0x02, 0x00),
        _ => (0xff, 0x00),
    };
    PciClassCode {
        class,
        subclass,
        prog_if: 0,
    }
}

fn pci_header(device_type: u32) -> PciHeader {
    let device_id = u16::try_from(device_type)
        .ok()
        .and_then(|t| VIRTIO_PCI_DEVICE_ID_BASE.checked_add(t))
        .map_or(VIRTIO_PCI_DEVICE_ID_LAST, |id| {
            id.min(VIRTIO_PCI_DEVICE_ID_LAST)
        });
    PciHeader {
        vendor_id: VIRTIO_PCI_VENDOR_ID,
        device_id,
        class: class_code(device_type),
        revision_id: VIRTIO_PCI_REVISION,
        subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
        subsystem_id: device_type as u16,
        multifunction: false,
        interrupt_pin: PciInterruptPin::None,
    }
}

fn check_queues(id: &str, sizes: &[u16]) -> Result<(), VirtioPciError> {
    if sizes.is_empty() {
        return Err(VirtioPciError::NoQueues { id: id.into() });
    }
    if sizes.len() > MAX_QUEUES {
        return Err(VirtioPciError::TooManyQueues {
            id: id.into(),
            queues: sizes.len(),
            max: MAX_QUEUES,
        });
    }
    if let Some((queue, &size)) = sizes
        .iter()
        .enumerate()
        .find(|(_, s)| !s.is_power_of_two() || **s > MAX_QUEUE_SIZE)
    {
        return Err(VirtioPciError::InvalidQueueSize {
            id: id.into(),
            queue,
            size,
        });
    }
    Ok(())
}

impl VirtioPciDevice {
    /// Presents `device` with BAR0 at `bar0` ([`VIRTIO_PCI_BAR_SIZE`] bytes, aligned
    /// to its size, below 4 GiB) and registers the queues' ioeventfds.
    pub fn new(
        id: &str,
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        bar0: u64,
        routing: Arc<dyn InterruptRouting>,
        ioevents: Arc<dyn IoEventRegistrar>,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes().to_vec();
        check_queues(id, &max_sizes)?;
        let num_queues = max_sizes.len();
        let vectors = num_queues + 1;
        let config_err = |source| VirtioPciError::Config {
            id: id.into(),
            source,
        };

        let mut config = PciConfiguration::new(&pci_header(device.device_type()));
        config
            .add_bar(&PciBar {
                index: usize::from(layout::BAR0),
                addr: bar0,
                size: VIRTIO_PCI_BAR_SIZE,
                kind: BarKind::Memory32,
                prefetchable: false,
            })
            .map_err(config_err)?;
        let pci_cfg =
            layout::add_virtio_capabilities(&mut config, num_queues).map_err(config_err)?;
        let msix_layout = layout::msix_layout(vectors);
        let msix_route = Arc::new(IrqfdMsiRoute::new(vectors, routing));
        let msix =
            Msix::add_to(&mut config, msix_layout, msix_route.clone()).map_err(|source| {
                VirtioPciError::Msix {
                    id: id.into(),
                    source,
                }
            })?;

        let generation = Arc::new(AtomicU8::new(0));
        // At most MAX_QUEUES + 1 vectors, well inside u16.
        let common = CommonConfig::new(
            device.features(),
            &max_sizes,
            vectors as u16,
            generation.clone(),
        );
        let interrupt = Arc::new(VirtioPciInterrupt::new(
            Arc::new(Mutex::new(msix)),
            num_queues,
            generation,
        ));
        let mut notifiers =
            QueueNotifiers::new(num_queues, ioevents).map_err(|(queue, source)| {
                VirtioPciError::EventFd {
                    id: id.into(),
                    queue,
                    source,
                }
            })?;
        notifiers
            .register(bar0)
            .map_err(|e| VirtioPciError::IoEvent {
                id: id.into(),
                queue: e.queue,
                addr: e.addr,
                source: e.source,
            })?;
        info!(
            "virtio-pci {id}: {} with {num_queues} queues, BAR0 at {bar0:#x}",
            device.name()
        );
        Ok(Self {
            id: id.into(),
            device,
            memory,
            config,
            msix_layout,
            msix_route,
            common,
            interrupt,
            notifiers,
            pci_cfg: PciCfgWindow::new(pci_cfg),
            active: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// One of the `VIRTIO_ID_*` constants.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Where BAR0 is now (the guest may have moved it).
    pub fn bar0(&self) -> u64 {
        self.config
            .bar(usize::from(layout::BAR0))
            .map_or(0, |b| b.addr)
    }

    /// Whether the device is running (DRIVER_OK accepted, not reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn common_config(&self) -> &CommonConfig {
        &self.common
    }

    pub fn config(&self) -> &PciConfiguration {
        &self.config
    }

    pub fn interrupt(&self) -> &Arc<VirtioPciInterrupt> {
        &self.interrupt
    }

    pub fn msix_route(&self) -> &IrqfdMsiRoute {
        &self.msix_route
    }

    /// Where queue `queue`'s ioeventfd is registered, if it is.
    pub fn notify_registered_at(&self, queue: usize) -> Option<u64> {
        self.notifiers.registered_at(queue)
    }

    fn msix(&self) -> MutexGuard<'_, Msix> {
        self.interrupt
            .msix()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A BAR0 read at `offset`, whichever way it arrived (trap or PCI_CFG window).
    fn read_bar0(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match layout::locate(offset, &self.msix_layout) {
            Some(Bar0Region::Common(o)) => self.common.read(o, data),
            Some(Bar0Region::Isr(0)) => {
                if let Some(first) = data.first_mut() {
                    *first = self.interrupt.read_and_clear_isr();
                }
            }
            Some(Bar0Region::DeviceConfig(o)) => self.device.read_config(o, data),
            Some(Bar0Region::Msix(MsixRegion::Table(o))) => self.msix().read_table(o, data),
            Some(Bar0Region::Msix(MsixRegion::Pba(o))) => self.msix().read_pba(o, data),
            Some(Bar0Region::Isr(_)) | Some(Bar0Region::Notify(_)) | None => {}
        }
    }

    /// A BAR0 write at `offset`.
    fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match layout::locate(offset, &self.msix_layout) {
            Some(Bar0Region::Common(o)) => {
                let effect = self.common.write(o, data);
                self.sync_vectors();
                match effect {
                    StatusEffect::None => {}
                    StatusEffect::Reset => self.reset_device(),
                    StatusEffect::DriverOk => self.activate(),
                }
            }
            Some(Bar0Region::DeviceConfig(o)) => self.device.write_config(o, data),
            Some(Bar0Region::Notify(o)) => self.notifiers.kick(layout::notify_queue(o)),
            Some(Bar0Region::Msix(MsixRegion::Table(o))) => self.msix().write_table(o, data),
            Some(Bar0Region::Msix(MsixRegion::Pba(o))) => self.msix().write_pba(o, data),
            Some(Bar0Region::Isr(_)) | None => {
                debug!(
                    "virtio-pci {}: ignoring {}-byte write at BAR0 {offset:#x}",
                    self.id,
                    data.len()
                );
            }
        }
    }

    fn sync_vectors(&self) {
        self.interrupt.set_vectors(
            self.common.config_msix_vector(),
            self.common.queues().iter().map(|q| q.msix_vector),
        );
    }

    fn activate(&mut self) {
        match self.try_activate() {
            Ok(()) => {
                self.active = true;
                info!("virtio-pci {}: {} activated", self.id, self.device.name());
            }
            Err(e) => {
                warn!(
                    "virtio-pci {}: the driver set DRIVER_OK but the device cannot start: {e}; \
                     it now reports DEVICE_NEEDS_RESET",
                    self.id
                );
                self.common.set_needs_reset();
                // The driver learns about DEVICE_NEEDS_RESET from a config change.
                if let Err(e) = self.interrupt.notify_config() {
                    warn!("virtio-pci {}: config interrupt: {e}", self.id);
                }
            }
        }
    }

    fn try_activate(&mut self) -> Result<(), ActivationFailure> {
        let acked = self.common.driver_features();
        let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, q) in self.common.queues().iter().enumerate() {
            if !q.enabled {
                continue;
            }
            let queue = build_queue(index, q, event_idx, &self.memory)?;
            let kick =
                self.notifiers
                    .device_kick(index)
                    .map_err(|source| ActivationFailure::Kick {
                        queue: index,
                        source,
                    })?;
            queues.push(ActiveQueue {
                // check_queues bounds the queue count by MAX_QUEUES.
                index: index as u16,
                queue,
                kick,
            });
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device.activate(Activation {
            mem: self.memory.clone(),
            interrupt,
            queues,
            acked_features: acked,
        })?;
        Ok(())
    }

    /// The driver wrote 0 to device_status; the register file already reset itself.
    fn reset_device(&mut self) {
        self.device.reset();
        self.interrupt.reset();
        self.notifiers.drain();
        if self.active {
            info!("virtio-pci {}: {} reset", self.id, self.device.name());
        }
        self.active = false;
    }

    /// Serves a read of the PCI_CFG window's data dword before config space answers.
    fn window_read(&mut self) {
        let Some(access) = self.pci_cfg.access(&self.config) else {
            return;
        };
        let mut buf = [0u8; 4];
        let Some(data) = buf.get_mut(..access.len) else {
            return;
        };
        self.read_bar0(access.offset, data);
        self.pci_cfg.store_data(&mut self.config, data);
    }

    /// Carries out a write of the PCI_CFG window's data dword.
    fn window_write(&mut self) {
        let Some(access) = self.pci_cfg.access(&self.config) else {
            return;
        };
        let data = self.pci_cfg.data(&self.config, access.len);
        self.write_bar0(access.offset, &data);
    }
}

fn build_queue(
    index: usize,
    q: &QueueConfig,
    event_idx: bool,
    memory: &GuestMemoryMmap,
) -> Result<Queue, ActivationFailure> {
    let queue_err = |source| ActivationFailure::Queue {
        queue: index,
        source,
    };
    let mut queue = Queue::new(q.max_size).map_err(queue_err)?;
    queue.try_set_size(q.size).map_err(queue_err)?;
    for (what, addr, align) in [
        ("descriptor table", q.desc, 16),
        ("driver ring", q.driver, 2),
        ("device ring", q.device, 4),
    ] {
        if addr % align != 0 {
            return Err(ActivationFailure::Misaligned {
                queue: index,
                what,
                addr,
                align,
            });
        }
    }
    queue
        .try_set_desc_table_address(GuestAddress(q.desc))
        .map_err(queue_err)?;
    queue
        .try_set_avail_ring_address(GuestAddress(q.driver))
        .map_err(queue_err)?;
    queue
        .try_set_used_ring_address(GuestAddress(q.device))
        .map_err(queue_err)?;
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    if !queue.is_valid(memory) {
        return Err(ActivationFailure::OutsideMemory {
            queue: index,
            size: q.size,
            desc: q.desc,
            driver: q.driver,
            device: q.device,
        });
    }
    Ok(queue)
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        if self.pci_cfg.is_data_register(reg_idx) {
            self.window_read();
        }
        self.config.read_config_register(reg_idx)
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<BarReprogram> {
        let moved = self.config.write_config_register(reg_idx, offset, data);
        {
            let mut msix = self.msix();
            if msix.covers(reg_idx) {
                msix.config_written(&self.config);
            }
        }
        if self.pci_cfg.is_data_register(reg_idx) {
            self.window_write();
        }
        moved
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars().collect()
    }

    fn move_bar(&mut self, reprogram: &BarReprogram) -> Result<(), BarMoveError> {
        if reprogram.index != usize::from(layout::BAR0) {
            return Ok(());
        }
        self.notifiers
            .move_to(reprogram.new)
            .map_err(|e| BarMoveError::new(reprogram, e))
    }

    fn read_bar(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if base != self.bar0() {
            data.fill(0xff);
            return;
        }
        self.read_bar0(offset, data);
    }

    fn write_bar(&mut self, base: u64, offset: u64, data: &[u8]) {
        if base != self.bar0() {
            return;
        }
        self.write_bar0(offset, data);
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.notifiers.unregister();
        // Stops the I/O thread, which drops its clone of the interrupt.
        self.device.reset();
        self.msix_route.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::FakeRouting;
    use crate::virtio::fake::{FakeIoEvents, FakeVirtioDevice};
    use devices::virtio::{VIRTIO_ID_CONSOLE, VIRTIO_ID_RNG};
    use vm_memory::GuestMemoryMmap;

    const BAR0: u64 = 0xc000_0000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn new_device(
        device: FakeVirtioDevice,
    ) -> Result<(VirtioPciDevice, Arc<FakeRouting>, Arc<FakeIoEvents>), VirtioPciError> {
        let routing = Arc::new(FakeRouting::default());
        let events = Arc::new(FakeIoEvents::default());
        let dev = VirtioPciDevice::new(
            "test0",
            Box::new(device),
            memory(),
            BAR0,
            routing.clone(),
            events.clone(),
        )?;
        Ok((dev, routing, events))
    }

    #[test]
    fn header_identifies_a_modern_virtio_device() {
        for (ty, class) in [
            (VIRTIO_ID_BLOCK, 0x01),
            (VIRTIO_ID_NET, 0x02),
            (VIRTIO_ID_CONSOLE, 0xff),
            (VIRTIO_ID_RNG, 0xff),
        ] {
            let (mut dev, _, _) = new_device(FakeVirtioDevice::new(ty, &[8], 0)).unwrap();
            let id = dev.read_config_register(0);
            assert_eq!(id, 0x1af4 | (0x1040 + ty) << 16);
            let class_rev = dev.read_config_register(2);
            assert_eq!(class_rev, (class << 24) | 1);
            assert_eq!(dev.read_config_register(11), 0x1af4 | ty << 16);
            assert_eq!(dev.read_config_register(15) >> 8 & 0xff, 0, "no INTx pin");
        }
        assert_eq!(pci_header(0x1_0000).device_id, VIRTIO_PCI_DEVICE_ID_LAST);
    }

    #[test]
    fn bar0_is_a_32_bit_memory_bar_and_msix_has_a_vector_per_queue_plus_one() {
        let (mut dev, _, _) = new_device(FakeVirtioDevice::new(2, &[8, 8, 8], 0)).unwrap();
        assert_eq!(
            dev.bars(),
            vec![PciBar {
                index: 0,
                addr: BAR0,
                size: VIRTIO_PCI_BAR_SIZE,
                kind: BarKind::Memory32,
                prefetchable: false,
            }]
        );
        assert_eq!(dev.read_config_register(4), BAR0 as u32);
        let msix = dev
            .config
            .find_capability(crate::config::PciCapabilityId::MSIX)
            .unwrap();
        assert_eq!(dev.config.read_u16(msix + 2) & 0x7ff, 3);
        assert_eq!(dev.config.read_u32(msix + 4), layout::MSIX_TABLE_OFFSET);
    }

    #[test]
    fn new_refuses_unusable_queue_layouts() {
        assert!(matches!(
            new_device(FakeVirtioDevice::new(2, &[], 0)),
            Err(VirtioPciError::NoQueues { .. })
        ));
        assert!(matches!(
            new_device(FakeVirtioDevice::new(2, &[8; MAX_QUEUES + 1], 0)),
            Err(VirtioPciError::TooManyQueues { .. })
        ));
        for bad in [0, 3, u16::MAX] {
            assert!(matches!(
                new_device(FakeVirtioDevice::new(2, &[8, bad], 0)),
                Err(VirtioPciError::InvalidQueueSize { queue: 1, .. })
            ));
        }
        assert!(matches!(
            new_device(FakeVirtioDevice::new(2, &[8], 0)).map(|_| ()),
            Ok(())
        ));
    }

    #[test]
    fn a_misaligned_bar_or_failed_ioeventfd_is_an_error_and_leaks_nothing() {
        let routing = Arc::new(FakeRouting::default());
        let events = Arc::new(FakeIoEvents::default());
        let e = VirtioPciDevice::new(
            "x",
            Box::new(FakeVirtioDevice::new(2, &[8], 0)),
            memory(),
            BAR0 + 0x1000,
            routing.clone(),
            events.clone(),
        )
        .err()
        .unwrap();
        assert!(matches!(e, VirtioPciError::Config { .. }), "{e}");
        events.fail_at(BAR0 + 0x3004);
        let e = VirtioPciDevice::new(
            "x",
            Box::new(FakeVirtioDevice::new(2, &[8, 8], 0)),
            memory(),
            BAR0,
            routing,
            events.clone(),
        )
        .err()
        .unwrap();
        assert!(matches!(e, VirtioPciError::IoEvent { queue: 1, .. }), "{e}");
        assert!(events.addresses().is_empty());
    }

    #[test]
    fn move_bar_moves_the_ioeventfds_and_drop_cleans_up() {
        let fake = FakeVirtioDevice::new(2, &[8, 8], 0);
        let state = fake.state();
        let (mut dev, _, events) = new_device(fake).unwrap();
        assert_eq!(events.addresses(), vec![BAR0 + 0x3000, BAR0 + 0x3004]);
        let new = 0xd000_0000u64;
        let moved = dev
            .write_config_register(4, 0, &(new as u32).to_le_bytes())
            .unwrap();
        dev.move_bar(&moved).unwrap();
        assert_eq!(events.addresses(), vec![new + 0x3000, new + 0x3004]);
        assert_eq!(dev.bar0(), new);
        let mut b = [0u8; 2];
        dev.read_bar(BAR0, 0x12, &mut b);
        assert_eq!(b, [0xff, 0xff], "old base no longer answers");
        dev.read_bar(new, 0x12, &mut b);
        assert_eq!(u16::from_le_bytes(b), 2);
        drop(dev);
        assert!(events.addresses().is_empty());
        assert_eq!(state.lock().unwrap().resets, 1);
    }

    #[test]
    fn trapped_notify_writes_signal_the_queue_kick() {
        let (mut dev, _, _) = new_device(FakeVirtioDevice::new(2, &[8, 8], 0)).unwrap();
        let kick = dev.notifiers.device_kick(1).unwrap();
        dev.write_bar(BAR0, layout::NOTIFY_OFFSET + 4, &1u16.to_le_bytes());
        assert_eq!(kick.read().unwrap(), 1);
        // Past the last queue: ignored.
        dev.write_bar(BAR0, layout::NOTIFY_OFFSET + 8, &2u16.to_le_bytes());
        dev.write_bar(BAR0, layout::NOTIFY_OFFSET + 0xffc, &[]);
    }

    #[test]
    fn device_config_reads_and_writes_reach_the_device() {
        let fake = FakeVirtioDevice::new(2, &[8], 0);
        let state = fake.state();
        let (mut dev, _, _) = new_device(fake).unwrap();
        let mut b = [0u8; 4];
        dev.read_bar(BAR0, layout::DEVICE_CFG_OFFSET + 2, &mut b);
        assert_eq!(b, [2, 3, 4, 5]);
        dev.write_bar(BAR0, layout::DEVICE_CFG_OFFSET + 1, &[9]);
        assert_eq!(state.lock().unwrap().config_writes, vec![(1, vec![9])]);
    }

    #[test]
    fn isr_reads_clear_it() {
        let (mut dev, _, _) = new_device(FakeVirtioDevice::new(2, &[8], 0)).unwrap();
        dev.interrupt().notify_queue(0).unwrap();
        dev.interrupt().notify_config().unwrap();
        let mut b = [0u8; 4];
        dev.read_bar(BAR0, layout::ISR_OFFSET, &mut b);
        assert_eq!(b, [3, 0, 0, 0]);
        dev.read_bar(BAR0, layout::ISR_OFFSET, &mut b);
        assert_eq!(b, [0; 4]);
        dev.interrupt().notify_queue(0).unwrap();
        dev.read_bar(BAR0, layout::ISR_OFFSET + 1, &mut b[..1]);
        dev.read_bar(BAR0, layout::ISR_OFFSET, &mut b[..1]);
        assert_eq!(b[0], 1, "only a read of byte 0 clears");
    }

    #[test]
    fn pci_cfg_window_reaches_bar0() {
        let (mut dev, _, _) = new_device(FakeVirtioDevice::new(2, &[8, 8], 0)).unwrap();
        let cap = dev.pci_cfg.cap_offset();
        let reg = |f: usize| (cap + f) / 4;
        // num_queues through the window: BAR 0, offset 0x12, length 2.
        dev.write_config_register(reg(4), 0, &[0]);
        dev.write_config_register(reg(8), 0, &0x12u32.to_le_bytes());
        dev.write_config_register(reg(12), 0, &2u32.to_le_bytes());
        assert_eq!(dev.read_config_register(reg(16)), 2);
        // queue_select = 1 through the window, then read it back directly.
        dev.write_config_register(reg(8), 0, &0x16u32.to_le_bytes());
        dev.write_config_register(reg(16), 0, &1u32.to_le_bytes());
        assert_eq!(dev.common_config().queues().len(), 2);
        let mut b = [0u8; 2];
        dev.read_bar(BAR0, 0x16, &mut b);
        assert_eq!(u16::from_le_bytes(b), 1);
    }
}
