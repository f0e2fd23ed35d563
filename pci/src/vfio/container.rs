//! One VFIO container per VM: the IOMMU domain every passed-through device of the
//! VM shares.
//!
//! - Groups: a device's group is attached to the container when its first device is
//!   opened and detached when its last device is dropped (vfio-ioctls counts the
//!   users); each attached group is also added to the KVM-VFIO pseudo device (so
//!   KVM handles non-coherent DMA and posted interrupts) when the container was
//!   created with it. Before a group is touched, [`crate::vfio::group::check_group`]
//!   refuses groups that are shared with devices outside this VM.
//! - DMA: all guest RAM is mapped once (IOVA = guest physical address), pinning it,
//!   at once or while the guest starts ([`GuestRamDma`]). Pinning counts against
//!   `RLIMIT_MEMLOCK`; a refusal is reported with the bytes needed and the limit in
//!   force.
//! - IOVA ranges: read from the IOMMU once a group is attached, for the VMM to clamp
//!   its guest layout.
//!
//! Order the VMM follows: [`VfioDmaContainer::new`] → [`VfioDmaContainer::open_device`]
//! for every device → [`VfioDmaContainer::iova_ranges`] → guest layout and RAM →
//! [`GuestRamDma::map_now`] or [`GuestRamDma::map_in_background`] (through
//! [`VfioDmaContainer::guest_ram`]) → BAR placement and
//! [`VfioPciDevice::new`](super::VfioPciDevice::new).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use form_vm_allocator::IovaRange;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

pub use crate::vfio::dma_map::{
    dma_map_failure, map_regions, memlock_limit, DmaMapError, DmaRegion, GuestRamDma, IommuDma,
};
use crate::vfio::group::{check_group, GroupError};
use crate::vfio::iova::{parse_iova_ranges, requested_argsz, IovaError, INFO_LEN};
use crate::vfio::kernel::KernelVfioDevice;

vmm_sys_util::ioctl_io_nr!(
    VFIO_IOMMU_GET_INFO,
    vfio_bindings::bindings::vfio::VFIO_TYPE as u32,
    vfio_bindings::bindings::vfio::VFIO_BASE + 12
);

/// How many times the kernel may ask for a bigger info buffer.
const MAX_INFO_TRIES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "opening the VFIO container /dev/vfio/vfio: {0}; is vfio-pci loaded and the IOMMU on?"
    )]
    Open(#[source] VfioError),
    #[error("{0} is not a PCI device path (expected /sys/bus/pci/devices/<domain:bus:dev.fn>)")]
    BadDevicePath(PathBuf),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("IOMMU group {group} of {bdf} is held by another process (another VM has a member of it, or a VMM is still exiting); a group goes to one VM at a time: give {bdf} to that VM or free it there first")]
    GroupBusy { bdf: String, group: u32 },
    #[error("opening VFIO device {path}: {source}")]
    OpenDevice {
        path: PathBuf,
        #[source]
        source: VfioError,
    },
    #[error("reading the device: {0}")]
    Device(#[from] crate::vfio::ops::VfioOpsError),
    #[error("VFIO_IOMMU_GET_INFO failed: {0}; attach a device before asking for IOVA ranges")]
    IommuInfo(#[source] std::io::Error),
    #[error("the kernel's IOMMU info: {0}")]
    IommuInfoFormat(#[from] IovaError),
    #[error(transparent)]
    Dma(#[from] DmaMapError),
}

/// The PCI address a sysfs device path ends in.
pub fn bdf_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let valid = name.len() == 12
        && name.as_bytes()[4] == b':'
        && name.as_bytes()[7] == b':'
        && name.as_bytes()[10] == b'.';
    valid.then(|| name.to_string())
}

impl IommuDma for VfioContainer {
    unsafe fn map(&self, iova: u64, size: u64, host: *mut u8) -> std::io::Result<()> {
        let size = usize::try_from(size).map_err(std::io::Error::other)?;
        // SAFETY: the caller's contract is the one vfio_dma_map asks for.
        unsafe { self.vfio_dma_map(iova, size, host) }.map_err(|e| match e {
            VfioError::IommuDmaMap(errno) => std::io::Error::from_raw_os_error(errno.errno()),
            other => std::io::Error::other(other.to_string()),
        })
    }

    fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
        let size = usize::try_from(size).map_err(std::io::Error::other)?;
        self.vfio_dma_unmap(iova, size)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

pub struct VfioDmaContainer {
    inner: Arc<VfioContainer>,
    sysfs_root: PathBuf,
    /// Every device this VM passes through (for the group check), by BDF.
    vm_devices: Mutex<BTreeSet<String>>,
    ram: GuestRamDma,
}

impl VfioDmaContainer {
    /// Opens a container. `kvm_vfio` is the VM's KVM-VFIO pseudo device
    /// (`hypervisor::Vm::create_vfio_device`); groups are added to it as they
    /// attach.
    pub fn new(kvm_vfio: Option<hypervisor::DeviceFd>) -> Result<Self, ContainerError> {
        let device = kvm_vfio.map(|fd| Arc::new(VfioDeviceFd::new_from_kvm(fd)));
        let inner = VfioContainer::new(device).map_err(ContainerError::Open)?;
        let inner = Arc::new(inner);
        Ok(Self {
            ram: GuestRamDma::new(inner.clone()),
            inner,
            sysfs_root: PathBuf::from("/sys"),
            vm_devices: Mutex::new(BTreeSet::new()),
        })
    }

    /// Declares the devices the VM will pass through, so that a group holding
    /// several of them is accepted whichever is opened first.
    pub fn declare_vm_devices<'a>(&self, bdfs: impl IntoIterator<Item = &'a str>) {
        let mut devices = self.vm_devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.extend(bdfs.into_iter().map(str::to_string));
    }

    /// Forgets a device the VM no longer passes through (hot-unplug), so its group
    /// members are judged without it from now on.
    pub fn forget_vm_device(&self, bdf: &str) {
        let mut devices = self.vm_devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.remove(bdf);
    }

    /// Checks the device's group and opens the device (attaching its group).
    pub fn open_device(&self, sysfs_path: &Path) -> Result<KernelVfioDevice, ContainerError> {
        let bdf =
            bdf_of(sysfs_path).ok_or_else(|| ContainerError::BadDevicePath(sysfs_path.into()))?;
        let group = {
            let mut devices = self.vm_devices.lock().unwrap_or_else(|e| e.into_inner());
            devices.insert(bdf.clone());
            check_group(&self.sysfs_root, &bdf, &devices)?
        };
        if !group.idle.is_empty() {
            log::warn!(
                "vfio: IOMMU group {} of {bdf} also holds {}, on vfio-pci but not given to this VM: nobody can use them while this VM holds the group",
                group.group,
                group.idle.join(", ")
            );
        }
        let device =
            VfioDevice::new(sysfs_path, self.inner.clone(), false).map_err(
                |source| match &source {
                    VfioError::OpenGroup(e, _) if e.raw_os_error() == Some(libc::EBUSY) => {
                        ContainerError::GroupBusy {
                            bdf: bdf.clone(),
                            group: group.group,
                        }
                    }
                    _ => ContainerError::OpenDevice {
                        path: sysfs_path.into(),
                        source,
                    },
                },
            )?;
        Ok(KernelVfioDevice::new(device, bdf)?)
    }

    /// The IOVA ranges the IOMMU translates; `None` when the kernel does not say
    /// (before Linux 5.4). Needs an attached group.
    pub fn iova_ranges(&self) -> Result<Option<Vec<IovaRange>>, ContainerError> {
        let mut len = INFO_LEN;
        for _ in 0..MAX_INFO_TRIES {
            // u64 elements keep the buffer 8-byte aligned, as the structs need.
            let mut buf = vec![0u64; len.div_ceil(8)];
            let argsz = (buf.len() * 8) as u32;
            buf[0] = u64::from(argsz);
            // SAFETY: the kernel writes at most `argsz` bytes into `buf`, which is
            // that long.
            let rc = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                    &*self.inner,
                    VFIO_IOMMU_GET_INFO(),
                    buf.as_mut_ptr(),
                )
            };
            if rc < 0 {
                return Err(ContainerError::IommuInfo(std::io::Error::last_os_error()));
            }
            let bytes: Vec<u8> = buf.iter().flat_map(|q| q.to_le_bytes()).collect();
            match requested_argsz(&bytes) {
                Some(want) if want > bytes.len() => len = want,
                _ => return Ok(parse_iova_ranges(&bytes)?),
            }
        }
        Err(ContainerError::IommuInfoFormat(IovaError::Truncated {
            offset: 0,
            len,
        }))
    }

    /// Guest RAM's DMA mapping in this container (see [`GuestRamDma`]).
    pub fn guest_ram(&self) -> &GuestRamDma {
        &self.ram
    }

    /// The container's map and unmap calls, for mappings beyond guest RAM (BARs,
    /// for peer-to-peer DMA). Holding it keeps the container open.
    pub fn iommu_dma(&self) -> Arc<dyn IommuDma + Send + Sync> {
        self.inner.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_message_names_the_bytes_and_the_limit() {
        let msg = dma_map_failure(libc::ENOMEM, 8 << 30, Some(8 << 20)).unwrap();
        assert!(msg.contains("8589934592 bytes"), "{msg}");
        assert!(msg.contains("8192 MiB"), "{msg}");
        assert!(msg.contains("RLIMIT_MEMLOCK is 8388608 bytes"), "{msg}");
        assert!(msg.contains("ulimit -l 8388608"), "{msg}");
        assert!(dma_map_failure(libc::EPERM, 4096, None)
            .unwrap()
            .contains("unlimited"));
        assert_eq!(dma_map_failure(libc::EINVAL, 4096, None), None);
    }

    #[derive(Default)]
    struct FakeDma {
        mapped: std::cell::RefCell<Vec<(u64, u64)>>,
        fail_at: Option<(u64, i32)>,
    }

    impl IommuDma for FakeDma {
        unsafe fn map(&self, iova: u64, size: u64, _host: *mut u8) -> std::io::Result<()> {
            if let Some((at, errno)) = self.fail_at.filter(|f| f.0 == iova) {
                let _ = at;
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            self.mapped.borrow_mut().push((iova, size));
            Ok(())
        }
        fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()> {
            let mut m = self.mapped.borrow_mut();
            let i = m.iter().position(|r| *r == (iova, size)).unwrap();
            m.remove(i);
            Ok(())
        }
    }

    fn ram() -> Vec<DmaRegion> {
        vec![
            DmaRegion {
                iova: 0,
                size: 3 << 30,
                host: std::ptr::null_mut(),
            },
            DmaRegion {
                iova: 4 << 30,
                size: 1 << 30,
                host: std::ptr::null_mut(),
            },
        ]
    }

    #[test]
    fn all_ram_maps_or_none_does() {
        let dma = FakeDma::default();
        // SAFETY: the fake never touches the addresses.
        unsafe { map_regions(&dma, &ram(), None) }.unwrap();
        assert_eq!(*dma.mapped.borrow(), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);

        let dma = FakeDma {
            fail_at: Some((4 << 30, libc::ENOMEM)),
            ..Default::default()
        };
        // SAFETY: as above.
        let err = unsafe { map_regions(&dma, &ram(), Some(64 << 10)) }.unwrap_err();
        assert!(
            dma.mapped.borrow().is_empty(),
            "the first region was unmapped again"
        );
        let msg = err.to_string();
        assert!(msg.contains("needs 4294967296 bytes"), "{msg}");
        assert!(msg.contains("RLIMIT_MEMLOCK is 65536 bytes"), "{msg}");

        let dma = FakeDma {
            fail_at: Some((0, libc::EINVAL)),
            ..Default::default()
        };
        // SAFETY: as above.
        let err = unsafe { map_regions(&dma, &ram(), None) }.unwrap_err();
        assert!(
            matches!(err, DmaMapError::DmaMap { iova: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bdf_comes_from_the_path() {
        assert_eq!(
            bdf_of(Path::new("/sys/bus/pci/devices/0000:01:00.0")).as_deref(),
            Some("0000:01:00.0")
        );
        assert_eq!(bdf_of(Path::new("/sys/bus/pci/devices/")), None);
        assert_eq!(bdf_of(Path::new("/tmp/gpu")), None);
    }
}
