//! The host side of VFIO as the device manager sees it: checking a device path,
//! opening the VM's container and its devices. [`KernelVfioHost`] does it with the
//! kernel; tests give the device manager fakes over `pci::vfio::fake`.

use super::vfio_error::VfioError;
use form_vm_allocator::IovaRange;
use pci::vfio::container::{bdf_of, IommuDma};
use pci::vfio::group::bound_driver;
use pci::vfio::{GuestRamDma, VfioDeviceOps, VfioDmaContainer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Finds and opens devices; one per VMM process.
pub trait VfioHost: Send + Sync {
    /// Checks that `path` names a PCI function ready for passthrough and returns
    /// its BDF. Runs before anything is opened, so a bad request changes nothing.
    fn check_device(&self, path: &Path) -> Result<String, VfioError>;

    /// Opens the VM's container (one per VM), registered with `vm`'s KVM-VFIO
    /// device when given.
    fn open_container(
        &self,
        vm: Option<&hypervisor::Vm>,
    ) -> Result<Box<dyn VfioContainerOps>, VfioError>;
}

/// One VM's VFIO container.
pub trait VfioContainerOps: Send {
    /// Every device the VM passes through, so shared IOMMU groups are judged with
    /// all of them.
    fn declare_vm_devices(&self, bdfs: &[String]);
    /// A device left the VM.
    fn forget_vm_device(&self, bdf: &str);
    /// Runs the IOMMU group check and opens the device.
    fn open_device(&self, path: &Path) -> Result<Arc<dyn VfioDeviceOps>, VfioError>;
    /// The IOVA ranges the IOMMU translates (`None`: not reported).
    fn iova_ranges(&self) -> Result<Option<Vec<IovaRange>>, VfioError>;
    /// Guest RAM's DMA mapping in this container.
    fn guest_ram(&self) -> &GuestRamDma;
    /// The container's IOMMU map calls, to map BARs for peer-to-peer DMA.
    fn iommu_dma(&self) -> Arc<dyn IommuDma + Send + Sync>;
}

/// VFIO on this host's kernel.
pub struct KernelVfioHost {
    sysfs: PathBuf,
    vfio_dev: PathBuf,
}

impl Default for KernelVfioHost {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            vfio_dev: PathBuf::from("/dev/vfio/vfio"),
        }
    }
}

impl KernelVfioHost {
    /// A host whose sysfs and VFIO node are elsewhere (tests).
    pub fn with_roots(sysfs: PathBuf, vfio_dev: PathBuf) -> Self {
        Self { sysfs, vfio_dev }
    }
}

impl VfioHost for KernelVfioHost {
    fn check_device(&self, path: &Path) -> Result<String, VfioError> {
        let bdf = bdf_of(path).ok_or_else(|| VfioError::NotAPciDevice(path.into()))?;
        // Without the VFIO modules nothing can be bound to vfio-pci, so that is
        // what to say first.
        if !self.vfio_dev.exists() {
            return Err(VfioError::Unavailable(self.vfio_dev.clone()));
        }
        if !self.sysfs.join("bus/pci/devices").join(&bdf).exists() {
            return Err(VfioError::NoSuchDevice {
                path: path.into(),
                bdf,
            });
        }
        match bound_driver(&self.sysfs, &bdf) {
            Some(d) if d == "vfio-pci" => {}
            driver => return Err(VfioError::NotVfioBound { bdf, driver }),
        }
        Ok(bdf)
    }

    fn open_container(
        &self,
        vm: Option<&hypervisor::Vm>,
    ) -> Result<Box<dyn VfioContainerOps>, VfioError> {
        if !self.vfio_dev.exists() {
            return Err(VfioError::Unavailable(self.vfio_dev.clone()));
        }
        // KVM allows one KVM-VFIO device per VM at a time; without it passthrough
        // still works (KVM only misses the non-coherent DMA hint).
        let kvm_vfio = vm.and_then(|vm| match vm.create_vfio_device() {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!("vfio: no KVM-VFIO device for this container: {e}");
                None
            }
        });
        let container = VfioDmaContainer::new(kvm_vfio).map_err(VfioError::Container)?;
        Ok(Box::new(KernelContainer(container)))
    }
}

struct KernelContainer(VfioDmaContainer);

impl VfioContainerOps for KernelContainer {
    fn declare_vm_devices(&self, bdfs: &[String]) {
        self.0.declare_vm_devices(bdfs.iter().map(String::as_str));
    }

    fn forget_vm_device(&self, bdf: &str) {
        self.0.forget_vm_device(bdf);
    }

    fn open_device(&self, path: &Path) -> Result<Arc<dyn VfioDeviceOps>, VfioError> {
        let device = self.0.open_device(path).map_err(VfioError::Container)?;
        Ok(Arc::new(device))
    }

    fn iova_ranges(&self) -> Result<Option<Vec<IovaRange>>, VfioError> {
        self.0.iova_ranges().map_err(VfioError::Container)
    }

    fn guest_ram(&self) -> &GuestRamDma {
        self.0.guest_ram()
    }

    fn iommu_dma(&self) -> Arc<dyn IommuDma + Send + Sync> {
        self.0.iommu_dma()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fixture(driver: Option<&str>) -> (tempdir::Dir, KernelVfioHost) {
        let dir = tempdir::Dir::new();
        let dev = dir.path().join("sys/bus/pci/devices/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        if let Some(d) = driver {
            let drv = dir.path().join("sys/bus/pci/drivers").join(d);
            std::fs::create_dir_all(&drv).unwrap();
            symlink(&drv, dev.join("driver")).unwrap();
        }
        let vfio = dir.path().join("dev-vfio");
        std::fs::write(&vfio, b"").unwrap();
        let host = KernelVfioHost::with_roots(dir.path().join("sys"), vfio);
        (dir, host)
    }

    /// A scratch directory removed on drop.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("form-vmm-vfio-host-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_vfio_bound_device_passes_the_check() {
        let (_dir, host) = fixture(Some("vfio-pci"));
        let bdf = host
            .check_device(Path::new("/sys/bus/pci/devices/0000:00:03.0"))
            .unwrap();
        assert_eq!(bdf, "0000:00:03.0");
    }

    #[test]
    fn a_device_on_another_driver_says_how_to_bind_it() {
        let (_dir, host) = fixture(Some("bochs-drm"));
        let err = host
            .check_device(Path::new("/sys/bus/pci/devices/0000:00:03.0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bochs-drm"), "{err}");
        assert!(
            err.contains("bind it to vfio-pci first: vmm-service gpu bind 0000:00:03.0"),
            "{err}"
        );
        let (_dir, host) = fixture(None);
        let err = host
            .check_device(Path::new("/sys/bus/pci/devices/0000:00:03.0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no driver"), "{err}");
    }

    #[test]
    fn bad_paths_and_missing_vfio_are_named() {
        let (dir, host) = fixture(Some("vfio-pci"));
        let err = host.check_device(Path::new("/tmp/gpu")).unwrap_err();
        assert!(matches!(err, VfioError::NotAPciDevice(_)), "{err}");
        let err = host
            .check_device(Path::new("/sys/bus/pci/devices/0000:00:09.0"))
            .unwrap_err();
        assert!(matches!(err, VfioError::NoSuchDevice { .. }), "{err}");
        let host = KernelVfioHost::with_roots(dir.path().join("sys"), dir.path().join("no-vfio"));
        let err = host
            .check_device(Path::new("/sys/bus/pci/devices/0000:00:03.0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VFIO is not available on this host (load vfio-pci)"),
            "{err}"
        );
    }
}
