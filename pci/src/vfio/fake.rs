//! Models of a VFIO device and of the VMM's traits, for tests here and in the VMM.
//!
//! [`FakeVfioDevice`] answers every [`VfioDeviceOps`] call from memory and records
//! the calls that change hardware state; its presets are shaped like real devices.
//! [`FakeRouting`] and [`FakeSlots`] record what a device asked of the VMM.

use crate::vfio::ops::IRQ_INDEXES;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::InterruptRouting;
use crate::vfio::bars::GuestMemorySlots;
use crate::vfio::container::IommuDma;
use crate::vfio::ops::{
    BoxError, DeviceInfo, IrqIndex, IrqInfo, OpsResult, RegionInfo, SparseArea, VfioDeviceOps,
    VfioOpsError, CONFIG_REGION,
};
use crate::MsiMessage;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A state-changing call the device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeOp {
    Reset,
    /// `fds`: which vectors got an eventfd (true) or -1 (false).
    SetIrqs {
        index: IrqIndex,
        start: u32,
        fds: Vec<bool>,
    },
    DisableIrqs(IrqIndex),
    IntxUnmaskFd,
    Mmap {
        index: u32,
        offset: u64,
        size: u64,
    },
    Munmap {
        addr: u64,
        size: u64,
    },
    RegionWrite {
        index: u32,
        offset: u64,
        data: Vec<u8>,
    },
}

pub struct FakeVfioDevice {
    info: DeviceInfo,
    regions: BTreeMap<u32, RegionInfo>,
    irqs: [IrqInfo; IRQ_INDEXES],
    /// Region contents that were written or preset, by (region, offset).
    memory: Mutex<BTreeMap<(u32, u64), u8>>,
    ops: Mutex<Vec<FakeOp>>,
    /// Eventfds VFIO would signal, by (index, vector), as raw fds.
    eventfds: Mutex<BTreeMap<(IrqIndex, u32), i32>>,
    next_map: AtomicU64,
    /// Regions whose mmap fails.
    pub mmap_refused: Mutex<BTreeSet<u32>>,
}

/// Builds fake config bytes.
struct RawConfig(Vec<u8>);

impl RawConfig {
    fn new(vendor: u16, device: u16, class: [u8; 3], len: usize) -> Self {
        let mut raw = vec![0u8; len];
        raw[0..2].copy_from_slice(&vendor.to_le_bytes());
        raw[2..4].copy_from_slice(&device.to_le_bytes());
        raw[8] = 0xa1;
        raw[9] = class[2];
        raw[10] = class[1];
        raw[11] = class[0];
        raw[0x2c..0x2e].copy_from_slice(&vendor.to_le_bytes());
        raw[0x2e..0x30].copy_from_slice(&0x1234u16.to_le_bytes());
        Self(raw)
    }

    fn put(&mut self, offset: usize, bytes: &[u8]) {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn bar(&mut self, index: usize, bits: u32) {
        self.put(0x10 + index * 4, &bits.to_le_bytes());
    }

    /// Links conventional capabilities `(offset, id, body)` in order.
    fn caps(&mut self, caps: &[(usize, u8, &[u8])]) {
        self.0[0x06] |= 0x10;
        self.0[0x34] = caps.first().map_or(0, |c| c.0 as u8);
        for (i, (off, id, body)) in caps.iter().enumerate() {
            let next = caps.get(i + 1).map_or(0, |c| c.0 as u8);
            self.put(*off, &[*id, next]);
            self.put(off + 2, body);
        }
    }

    /// Links extended capabilities `(offset, id)`, 4-byte bodies of 0xee.
    fn ext_caps(&mut self, caps: &[(usize, u16)]) {
        for (i, (off, id)) in caps.iter().enumerate() {
            let next = caps.get(i + 1).map_or(0, |c| c.0 as u32);
            let header = u32::from(*id) | (1 << 16) | (next << 20);
            self.put(*off, &header.to_le_bytes());
            self.put(off + 4, &[0xee; 4]);
        }
    }
}

fn bar_region(size: u64, sparse: Option<Vec<SparseArea>>) -> RegionInfo {
    RegionInfo {
        size,
        readable: true,
        writable: true,
        mappable: size >= 4096,
        sparse_areas: sparse,
    }
}

/// MSI capability body: control (64-bit, per-vector mask, `mmc`), then zeros.
fn msi_body(mmc: u16) -> Vec<u8> {
    let control: u16 = (mmc << 1) | (1 << 7) | (1 << 8);
    let mut body = control.to_le_bytes().to_vec();
    body.resize(0x16, 0);
    body
}

impl FakeVfioDevice {
    fn with(config: Vec<u8>, regions: BTreeMap<u32, RegionInfo>, irqs: [IrqInfo; 3]) -> Self {
        let mut regions = regions;
        regions.insert(
            CONFIG_REGION,
            RegionInfo {
                size: config.len() as u64,
                readable: true,
                writable: true,
                mappable: false,
                sparse_areas: None,
            },
        );
        let memory = config
            .iter()
            .enumerate()
            .map(|(i, b)| ((CONFIG_REGION, i as u64), *b))
            .collect();
        Self {
            info: DeviceInfo {
                reset: true,
                num_regions: 9,
                num_irqs: 5,
            },
            regions,
            // Every vfio-pci device has one request vector; none has AER here.
            irqs: [
                irqs[0],
                irqs[1],
                irqs[2],
                IrqInfo::default(),
                IrqInfo {
                    count: 1,
                    noresize: false,
                },
            ],
            memory: Mutex::new(memory),
            ops: Mutex::new(Vec::new()),
            eventfds: Mutex::new(BTreeMap::new()),
            next_map: AtomicU64::new(0x7f00_0000_0000),
            mmap_refused: Mutex::new(BTreeSet::new()),
        }
    }

    /// Like QEMU's `edu`: 1 MiB BAR0, MSI with one vector, INTx, 256-byte config.
    pub fn edu() -> Self {
        let mut raw = RawConfig::new(0x1234, 0x11e8, [0x00, 0xff, 0x00], 256);
        raw.bar(0, 0x0);
        raw.put(0x3d, &[1]);
        raw.caps(&[(0x40, 0x05, &msi_body(0))]);
        let regions = BTreeMap::from([(0, bar_region(MIB, None))]);
        Self::with(
            raw.0,
            regions,
            [
                IrqInfo {
                    count: 1,
                    noresize: false,
                },
                IrqInfo {
                    count: 1,
                    noresize: false,
                },
                IrqInfo {
                    count: 0,
                    noresize: false,
                },
            ],
        )
    }

    /// A GPU: 16 MiB BAR0 with the MSI-X table (16 vectors) at 0xb_0000 and PBA at
    /// 0xb_1000 and sparse areas around them (PM 0x40, MSI 0x48, PCIe 0x60, MSI-X
    /// 0xa0, VPD 0xb0), 128 GiB 64-bit prefetchable BAR1,
    /// 32 MiB 64-bit prefetchable BAR3, I/O BAR5; PM, MSI, PCIe, MSI-X, a VPD
    /// capability to hide; extended AER (hidden), DSN (kept), SR-IOV (hidden).
    pub fn gpu() -> Self {
        Self::gpu_with_bar1(128 * GIB)
    }

    /// [`FakeVfioDevice::gpu`] with another BAR1 size.
    pub fn gpu_with_bar1(bar1: u64) -> Self {
        let mut raw = RawConfig::new(0x10de, 0x2330, [0x03, 0x02, 0x00], 4096);
        raw.bar(0, 0x0);
        raw.bar(1, 0xc);
        raw.bar(3, 0xc);
        raw.bar(5, 0x1);
        raw.put(0x3d, &[1]);
        let mut pm = vec![0u8; 6];
        pm[0] = 0x03;
        let mut pcie = vec![0u8; 0x3a];
        pcie[0] = 0x02;
        let mut msix = Vec::new();
        msix.extend_from_slice(&15u16.to_le_bytes());
        msix.extend_from_slice(&0xb_0000u32.to_le_bytes());
        msix.extend_from_slice(&0xb_1000u32.to_le_bytes());
        raw.caps(&[
            (0x40, 0x01, &pm),
            (0x48, 0x05, &msi_body(0)),
            (0x60, 0x10, &pcie),
            (0xa0, 0x11, &msix),
            (0xb0, 0x03, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66]),
        ]);
        raw.ext_caps(&[(0x100, 0x0001), (0x148, 0x0003), (0x1b4, 0x0010)]);
        let sparse = vec![
            SparseArea {
                offset: 0,
                size: 0xb_0000,
            },
            SparseArea {
                offset: 0xb_2000,
                size: 16 * MIB - 0xb_2000,
            },
        ];
        let regions = BTreeMap::from([
            (0, bar_region(16 * MIB, Some(sparse))),
            (1, bar_region(bar1, None)),
            (3, bar_region(32 * MIB, None)),
            (
                5,
                RegionInfo {
                    mappable: false,
                    ..bar_region(128, None)
                },
            ),
        ]);
        Self::with(
            raw.0,
            regions,
            [
                IrqInfo {
                    count: 1,
                    noresize: false,
                },
                IrqInfo {
                    count: 1,
                    noresize: false,
                },
                IrqInfo {
                    count: 16,
                    noresize: true,
                },
            ],
        )
    }

    /// One 256-byte memory BAR and MSI-X with its table in it.
    pub fn tiny_bar() -> Self {
        let mut raw = RawConfig::new(0x1af4, 0x1041, [0x02, 0x00, 0x00], 256);
        raw.bar(0, 0x0);
        let mut msix = Vec::new();
        msix.extend_from_slice(&3u16.to_le_bytes());
        msix.extend_from_slice(&0x80u32.to_le_bytes());
        msix.extend_from_slice(&0xc0u32.to_le_bytes());
        raw.caps(&[(0x40, 0x11, &msix)]);
        let regions = BTreeMap::from([(0, bar_region(256, None))]);
        Self::with(
            raw.0,
            regions,
            [
                IrqInfo::default(),
                IrqInfo::default(),
                IrqInfo {
                    count: 4,
                    noresize: false,
                },
            ],
        )
    }

    /// No INTx, no ROM, no VGA, no reset, no capabilities: one 4 KiB BAR.
    pub fn bare() -> Self {
        let mut raw = RawConfig::new(0x8086, 0x1234, [0x01, 0x08, 0x02], 256);
        raw.bar(2, 0x0);
        raw.put(0x3d, &[1]);
        let regions = BTreeMap::from([(2, bar_region(4096, None))]);
        let mut dev = Self::with(
            raw.0,
            regions,
            [IrqInfo::default(), IrqInfo::default(), IrqInfo::default()],
        );
        dev.info.reset = false;
        dev
    }

    /// The raw config bytes as the device has them now.
    pub fn raw_config(&self) -> Vec<u8> {
        let len = self.regions[&CONFIG_REGION].size;
        let mut raw = vec![0u8; len as usize];
        let _ = self.region_read(CONFIG_REGION, 0, &mut raw);
        raw
    }

    /// Sets bytes of a region as the hardware would.
    pub fn poke(&self, index: u32, offset: u64, bytes: &[u8]) {
        let mut memory = self.memory.lock().unwrap();
        for (i, b) in bytes.iter().enumerate() {
            memory.insert((index, offset + i as u64), *b);
        }
    }

    /// The calls received so far, cleared.
    pub fn take_ops(&self) -> Vec<FakeOp> {
        std::mem::take(&mut self.ops.lock().unwrap())
    }

    /// Raises `vector` the way VFIO does: writes its eventfd. Returns false when no
    /// eventfd is attached.
    pub fn fire(&self, index: IrqIndex, vector: u32) -> bool {
        let Some(&fd) = self.eventfds.lock().unwrap().get(&(index, vector)) else {
            return false;
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local buffer to an eventfd the device
        // was given and that the route keeps open while attached.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) == 8 }
    }

    fn record(&self, op: FakeOp) {
        self.ops.lock().unwrap().push(op);
    }
}

impl VfioDeviceOps for FakeVfioDevice {
    fn device_info(&self) -> DeviceInfo {
        self.info
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(&index).cloned()
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> OpsResult<()> {
        let region = self.regions.get(&index).ok_or(VfioOpsError::RegionAccess {
            index,
            what: "found",
        })?;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > region.size)
        {
            return Err(VfioOpsError::OutOfRange {
                index,
                offset,
                len: data.len(),
                size: region.size,
            });
        }
        let memory = self.memory.lock().unwrap();
        for (i, b) in data.iter_mut().enumerate() {
            *b = memory
                .get(&(index, offset + i as u64))
                .copied()
                .unwrap_or(0);
        }
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> OpsResult<()> {
        let region = self.regions.get(&index).ok_or(VfioOpsError::RegionAccess {
            index,
            what: "found",
        })?;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > region.size)
        {
            return Err(VfioOpsError::OutOfRange {
                index,
                offset,
                len: data.len(),
                size: region.size,
            });
        }
        self.poke(index, offset, data);
        self.record(FakeOp::RegionWrite {
            index,
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn mmap_region(&self, index: u32, offset: u64, size: u64) -> OpsResult<u64> {
        if self.mmap_refused.lock().unwrap().contains(&index) {
            return Err(VfioOpsError::kernel(
                "mmap",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        self.record(FakeOp::Mmap {
            index,
            offset,
            size,
        });
        // Addresses that look like mmaps but are never touched.
        Ok(self.next_map.fetch_add(size.max(4096), Ordering::Relaxed))
    }

    fn munmap_region(&self, addr: u64, size: u64) {
        self.record(FakeOp::Munmap { addr, size });
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        Some(self.irqs[index as usize])
    }

    fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> OpsResult<()> {
        let count = self.irqs[index as usize].count;
        if start as usize + fds.len() > count as usize {
            return Err(VfioOpsError::kernel(
                "VFIO_DEVICE_SET_IRQS",
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let mut eventfds = self.eventfds.lock().unwrap();
        for (i, fd) in fds.iter().enumerate() {
            let key = (index, start + i as u32);
            match fd {
                Some(fd) => eventfds.insert(key, fd.as_raw_fd()),
                None => eventfds.remove(&key),
            };
        }
        self.record(FakeOp::SetIrqs {
            index,
            start,
            fds: fds.iter().map(Option::is_some).collect(),
        });
        Ok(())
    }

    fn disable_irqs(&self, index: IrqIndex) -> OpsResult<()> {
        self.eventfds.lock().unwrap().retain(|k, _| k.0 != index);
        self.record(FakeOp::DisableIrqs(index));
        Ok(())
    }

    fn set_intx_unmask_eventfd(&self, _fd: &EventFd) -> OpsResult<()> {
        self.record(FakeOp::IntxUnmaskFd);
        Ok(())
    }

    fn reset(&self) -> OpsResult<()> {
        self.record(FakeOp::Reset);
        Ok(())
    }
}

/// What a [`FakeRouting`] holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoutingState {
    pub allocated: BTreeSet<u32>,
    pub routes: BTreeMap<u32, MsiMessage>,
    /// GSI → raw fd of each registered irqfd.
    pub irqfds: BTreeMap<u32, i32>,
    /// GSIs whose irqfd has a resample fd.
    pub resample: BTreeSet<u32>,
}

/// An [`InterruptRouting`] that records; GSIs from 24 up.
#[derive(Default)]
pub struct FakeRouting {
    pub state: Mutex<RoutingState>,
}

impl FakeRouting {
    pub fn snapshot(&self) -> RoutingState {
        self.state.lock().unwrap().clone()
    }
}

impl InterruptRouting for FakeRouting {
    fn allocate_gsi(&self) -> Result<u32, BoxError> {
        let mut s = self.state.lock().unwrap();
        let gsi = (24..).find(|g| !s.allocated.contains(g)).ok_or("no GSI")?;
        s.allocated.insert(gsi);
        Ok(gsi)
    }

    fn free_gsi(&self, gsi: u32) {
        self.state.lock().unwrap().allocated.remove(&gsi);
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), BoxError> {
        self.state.lock().unwrap().routes.insert(gsi, msg);
        Ok(())
    }

    fn remove_msi_route(&self, gsi: u32) -> Result<(), BoxError> {
        self.state
            .lock()
            .unwrap()
            .routes
            .remove(&gsi)
            .map(|_| ())
            .ok_or_else(|| format!("no route for GSI {gsi}").into())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), BoxError> {
        let mut s = self.state.lock().unwrap();
        if s.irqfds.insert(gsi, fd.as_raw_fd()).is_some() {
            return Err(format!("GSI {gsi} already has an irqfd").into());
        }
        Ok(())
    }

    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        _resample: &EventFd,
        gsi: u32,
    ) -> Result<(), BoxError> {
        self.register_irqfd(fd, gsi)?;
        self.state.lock().unwrap().resample.insert(gsi);
        Ok(())
    }

    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), BoxError> {
        let mut s = self.state.lock().unwrap();
        s.resample.remove(&gsi);
        s.irqfds
            .remove(&gsi)
            .map(|_| ())
            .ok_or_else(|| format!("GSI {gsi} has no irqfd").into())
    }
}

/// A [`GuestMemorySlots`] that records `(gpa, size, host)` by slot and refuses
/// what KVM would (unaligned ranges, overlaps).
#[derive(Default)]
pub struct FakeSlots {
    pub slots: Mutex<BTreeMap<u32, (u64, u64, u64)>>,
    next: AtomicU64,
}

impl FakeSlots {
    pub fn snapshot(&self) -> BTreeMap<u32, (u64, u64, u64)> {
        self.slots.lock().unwrap().clone()
    }
}

impl GuestMemorySlots for FakeSlots {
    unsafe fn add(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, BoxError> {
        if (gpa | size | host_addr) & 0xfff != 0 || size == 0 {
            return Err(format!("unaligned slot {gpa:#x}+{size:#x}").into());
        }
        let mut slots = self.slots.lock().unwrap();
        if slots
            .values()
            .any(|&(g, s, _)| gpa < g + s && g < gpa + size)
        {
            return Err(format!("slot {gpa:#x}+{size:#x} overlaps").into());
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) as u32;
        slots.insert(slot, (gpa, size, host_addr));
        Ok(slot)
    }

    fn remove(&self, slot: u32) -> Result<(), BoxError> {
        self.slots
            .lock()
            .unwrap()
            .remove(&slot)
            .map(|_| ())
            .ok_or_else(|| format!("no slot {slot}").into())
    }
}

/// An [`IommuDma`] that records mapped `(iova, size)` ranges, or refuses maps
/// with `EFAULT` (what the kernel says for memory it cannot map); each map may take
/// a while, as pinning does.
#[derive(Default)]
pub struct FakeIommu {
    mapped: Mutex<BTreeMap<u64, u64>>,
    /// Maps reaching this IOVA or above are refused.
    refuse_from: Mutex<Option<u64>>,
    map_delay: Mutex<std::time::Duration>,
    unmaps: AtomicU64,
}

impl FakeIommu {
    pub fn set_refuse(&self, refuse: bool) {
        *self.refuse_from.lock().unwrap() = refuse.then_some(0);
    }

    /// Refuses maps that reach `iova` or above.
    pub fn refuse_from(&self, iova: u64) {
        *self.refuse_from.lock().unwrap() = Some(iova);
    }

    /// Every map sleeps this long first.
    pub fn set_map_delay(&self, delay: std::time::Duration) {
        *self.map_delay.lock().unwrap() = delay;
    }

    /// Mapped `(iova, size)`, by IOVA.
    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        let mapped = self.mapped.lock().unwrap();
        mapped.iter().map(|(&iova, &size)| (iova, size)).collect()
    }

    /// How many unmaps were asked for.
    pub fn unmaps(&self) -> u64 {
        self.unmaps.load(Ordering::Relaxed)
    }
}

impl IommuDma for FakeIommu {
    unsafe fn map(&self, iova: u64, size: u64, _host: *mut u8) -> std::io::Result<()> {
        let delay = *self.map_delay.lock().unwrap();
        std::thread::sleep(delay);
        let refuse_from = *self.refuse_from.lock().unwrap();
        if refuse_from.is_some_and(|from| iova.saturating_add(size) > from) {
            return Err(std::io::Error::from_raw_os_error(libc::EFAULT));
        }
        let mut mapped = self.mapped.lock().unwrap();
        if mapped
            .range(..iova.saturating_add(size))
            .any(|(&i, &s)| i + s > iova)
        {
            return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
        }
        mapped.insert(iova, size);
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        let mut mapped = self.mapped.lock().unwrap();
        match mapped.get(&iova) {
            Some(&s) if s == size => {
                mapped.remove(&iova);
                Ok(())
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}
