//! [`VfioDeviceOps`] on a real vfio-pci device (vfio-ioctls' `VfioDevice`).
//!
//! Region info is asked for here (vfio-ioctls' cached list loses track of indices
//! when a region's query fails); region reads and writes use the device fd at the
//! region's offset directly (to get errors back); interrupts are set with our own `VFIO_DEVICE_SET_IRQS` calls
//! (per-vector ranges and `-1` detaching, which vfio-ioctls does not offer), and
//! reset and device info use their ioctls.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd};

use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_TYPE,
};
use vfio_ioctls::VfioDevice;
use vmm_sys_util::eventfd::EventFd;

use crate::vfio::ops::{
    DeviceInfo, IrqIndex, IrqInfo, OpsResult, RegionInfo, VfioDeviceOps, VfioOpsError, IRQ_INDEXES,
};
use crate::vfio::region_info::{self, parse_region_info, REGION_INFO_LEN};

vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE as u32, VFIO_BASE + 9);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);

/// `struct vfio_irq_set` without its data: argsz, flags, index, start, count.
const IRQ_SET_HEADER_WORDS: usize = 5;
/// How many times the kernel may ask for a bigger region info buffer.
const MAX_INFO_TRIES: usize = 4;
/// Regions a vfio-pci device has at most that we look at (BARs, ROM, config, VGA).
const PCI_REGIONS: u32 = 9;

/// Asks the kernel about region `index`, growing the buffer when it has
/// capabilities; `None` when the region does not exist or is empty.
fn region_info(device: &VfioDevice, index: u32) -> Option<(RegionInfo, u64)> {
    let mut len = REGION_INFO_LEN;
    for _ in 0..MAX_INFO_TRIES {
        // u64 elements keep the buffer aligned for the kernel's u64 fields.
        let mut buf = vec![0u64; len.div_ceil(8)];
        let argsz = (buf.len() * 8) as u64;
        buf[0] = argsz;
        buf[1] = u64::from(index);
        // SAFETY: the kernel writes at most argsz bytes into `buf`.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                device,
                VFIO_DEVICE_GET_REGION_INFO(),
                buf.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return None;
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|q| q.to_le_bytes()).collect();
        match region_info::requested_argsz(&bytes) {
            Some(want) if want > bytes.len() => len = want,
            _ => return parse_region_info(&bytes).filter(|(r, _)| r.size > 0),
        }
    }
    None
}

pub struct KernelVfioDevice {
    device: VfioDevice,
    bdf: String,
    info: DeviceInfo,
    regions: Vec<Option<(RegionInfo, u64)>>,
    irqs: [Option<IrqInfo>; IRQ_INDEXES],
}

fn kernel_err(op: &str) -> VfioOpsError {
    VfioOpsError::kernel(op, std::io::Error::last_os_error())
}

impl KernelVfioDevice {
    pub(crate) fn new(device: VfioDevice, bdf: String) -> OpsResult<Self> {
        // struct vfio_device_info: argsz, flags, num_regions, num_irqs, cap_offset, pad.
        let mut raw = [0u32; 6];
        raw[0] = std::mem::size_of_val(&raw) as u32;
        // SAFETY: the kernel writes at most argsz bytes into `raw`.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                &device,
                VFIO_DEVICE_GET_INFO(),
                raw.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(kernel_err("VFIO_DEVICE_GET_INFO"));
        }
        let info = DeviceInfo {
            reset: raw[1] & VFIO_DEVICE_FLAGS_RESET != 0,
            num_regions: raw[2],
            num_irqs: raw[3],
        };
        let regions = (0..PCI_REGIONS.min(info.num_regions))
            .map(|index| region_info(&device, index))
            .collect();
        let irq = |index: IrqIndex| -> Option<IrqInfo> {
            // struct vfio_irq_info: argsz, flags, index, count.
            let mut raw = [0u32; 4];
            raw[0] = std::mem::size_of_val(&raw) as u32;
            raw[2] = index as u32;
            // SAFETY: the kernel writes at most argsz bytes into `raw`.
            let rc = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                    &device,
                    VFIO_DEVICE_GET_IRQ_INFO(),
                    raw.as_mut_ptr(),
                )
            };
            (rc >= 0).then_some(IrqInfo {
                count: raw[3],
                noresize: raw[1] & VFIO_IRQ_INFO_NORESIZE != 0,
            })
        };
        let irqs = [
            irq(IrqIndex::Intx),
            irq(IrqIndex::Msi),
            irq(IrqIndex::Msix),
            irq(IrqIndex::Err),
            irq(IrqIndex::Req),
        ];
        Ok(Self {
            device,
            bdf,
            info,
            regions,
            irqs,
        })
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    fn file(&self) -> ManuallyDrop<File> {
        // SAFETY: the fd belongs to `self.device`, which outlives the borrow;
        // ManuallyDrop keeps it from being closed here.
        ManuallyDrop::new(unsafe { File::from_raw_fd(self.device.as_raw_fd()) })
    }

    fn region(&self, index: u32, offset: u64, len: usize) -> OpsResult<(&RegionInfo, u64)> {
        let (region, base) = self
            .regions
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or(VfioOpsError::RegionAccess {
                index,
                what: "found",
            })?;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > region.size) {
            return Err(VfioOpsError::OutOfRange {
                index,
                offset,
                len,
                size: region.size,
            });
        }
        Ok((region, base + offset))
    }

    fn set_irqs(&self, flags: u32, index: IrqIndex, start: u32, data: &[i32]) -> OpsResult<()> {
        let mut buf = vec![0u32; IRQ_SET_HEADER_WORDS + data.len()];
        buf[0] = (buf.len() * 4) as u32;
        buf[1] = flags;
        buf[2] = index as u32;
        buf[3] = start;
        buf[4] = if flags & VFIO_IRQ_SET_DATA_EVENTFD != 0 {
            data.len() as u32
        } else {
            0
        };
        for (slot, fd) in buf[IRQ_SET_HEADER_WORDS..].iter_mut().zip(data) {
            *slot = *fd as u32;
        }
        // SAFETY: `buf` is a complete vfio_irq_set of argsz bytes; the kernel only
        // reads it.
        let rc = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(&self.device, VFIO_DEVICE_SET_IRQS(), buf.as_ptr())
        };
        if rc < 0 {
            return Err(kernel_err(&format!(
                "VFIO_DEVICE_SET_IRQS ({index:?}, vectors {start}+{})",
                data.len()
            )));
        }
        Ok(())
    }
}

impl VfioDeviceOps for KernelVfioDevice {
    fn device_info(&self) -> DeviceInfo {
        self.info
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        Some(self.regions.get(index as usize)?.as_ref()?.0.clone())
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> OpsResult<()> {
        let (region, at) = self.region(index, offset, data.len())?;
        if !region.readable {
            return Err(VfioOpsError::RegionAccess {
                index,
                what: "read",
            });
        }
        self.file()
            .read_exact_at(data, at)
            .map_err(|e| VfioOpsError::kernel(format!("reading VFIO region {index}"), e))
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> OpsResult<()> {
        let (region, at) = self.region(index, offset, data.len())?;
        if !region.writable {
            return Err(VfioOpsError::RegionAccess {
                index,
                what: "written",
            });
        }
        self.file()
            .write_all_at(data, at)
            .map_err(|e| VfioOpsError::kernel(format!("writing VFIO region {index}"), e))
    }

    fn mmap_region(&self, index: u32, offset: u64, size: u64) -> OpsResult<u64> {
        let len = usize::try_from(size).map_err(|_| VfioOpsError::OutOfRange {
            index,
            offset,
            len: usize::MAX,
            size,
        })?;
        let (_, at) = self.region(index, offset, len)?;
        // SAFETY: a fresh shared mapping of the device fd; nothing else is replaced.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                at as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(kernel_err(&format!("mmap of VFIO region {index}")));
        }
        Ok(addr as u64)
    }

    fn munmap_region(&self, host_addr: u64, size: u64) {
        // SAFETY: only called with a mapping `mmap_region` returned, once.
        unsafe { libc::munmap(host_addr as *mut libc::c_void, size as usize) };
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        self.irqs[index as usize]
    }

    fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> OpsResult<()> {
        let data: Vec<i32> = fds
            .iter()
            .map(|fd| fd.map_or(-1, |fd| fd.as_raw_fd()))
            .collect();
        self.set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            &data,
        )
    }

    fn disable_irqs(&self, index: IrqIndex) -> OpsResult<()> {
        self.set_irqs(
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            0,
            &[],
        )
    }

    fn set_intx_unmask_eventfd(&self, fd: &EventFd) -> OpsResult<()> {
        self.set_irqs(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            IrqIndex::Intx,
            0,
            &[fd.as_raw_fd()],
        )
    }

    fn reset(&self) -> OpsResult<()> {
        // SAFETY: VFIO_DEVICE_RESET takes no argument.
        let rc = unsafe { vmm_sys_util::ioctl::ioctl(&self.device, VFIO_DEVICE_RESET()) };
        if rc < 0 {
            return Err(kernel_err("VFIO_DEVICE_RESET"));
        }
        Ok(())
    }
}
