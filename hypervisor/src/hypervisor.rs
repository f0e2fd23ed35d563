//! The host side: `/dev/kvm`, its API version and capabilities.

use crate::error::{ioctl, HypervisorError, Result};
use crate::vm::Vm;
use kvm_bindings::{CpuId, KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const KVM_DEVICE: &str = "/dev/kvm";

/// Capabilities without which form-vmm cannot run a guest at all.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// An open `/dev/kvm` that passed the capability checks.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn new() -> Result<Hypervisor> {
        Self::open(Path::new(KVM_DEVICE))
    }

    pub fn open(path: &Path) -> Result<Hypervisor> {
        let open_error = |source| HypervisorError::Open {
            path: path.to_path_buf(),
            source,
        };
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| open_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| open_error(e.into()))?;
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION as i32 {
            return Err(HypervisorError::ApiVersion {
                found,
                expected: KVM_API_VERSION as i32,
            });
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(HypervisorError::MissingCapability(name));
            }
        }
        Ok(Hypervisor { kvm })
    }

    /// Whether `/dev/kvm` exists on this host (for callers that want to skip, not fail).
    pub fn is_available() -> bool {
        Path::new(KVM_DEVICE).exists()
    }

    /// The most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The most memory slots one VM may have on this host.
    pub fn max_memory_slots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// The CPUID leaves KVM can present to a guest, before per-vCPU fix-ups.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))
    }

    /// MSR indices this KVM can save and restore.
    pub fn msr_index_list(&self) -> Result<Vec<u32>> {
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(list.as_slice().to_vec())
    }

    /// Creates a VM with an in-kernel irqchip (PIC, IOAPIC, LAPICs).
    pub fn create_vm(&self) -> Result<Vm> {
        let vm = self.create_vm_without_irqchip()?;
        vm.create_irqchip()?;
        Ok(vm)
    }

    /// Creates a VM whose irqchip comes later ([`Vm::create_irqchip`]), so guest
    /// memory can be registered first: on the measured host a memory slot added
    /// after the irqchip took ten times as long (docs/performance.md). Nothing that
    /// needs the irqchip (vCPUs, GSI routes, irqfds) works before it.
    pub fn create_vm_without_irqchip(&self) -> Result<Vm> {
        let fd = self.kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        Vm::new(fd, self.max_memory_slots() as u32)
    }
}

/// The host CPU's physical address width, from CPUID leaf 0x8000_0008.
pub fn host_phys_bits() -> u8 {
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext < 0x8000_0008 {
        // CPUs without the leaf implement 36 bits (the PAE minimum).
        return 36;
    }
    let leaf = std::arch::x86_64::__cpuid(0x8000_0008);
    (leaf.eax & 0xff) as u8
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens KVM for a test, or returns None (after saying why) when the host has
    /// none. Under CI=true a missing KVM is a failure, not a skip.
    pub(crate) fn hypervisor_or_skip(test: &str) -> Option<Hypervisor> {
        if !Hypervisor::is_available() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: /dev/kvm is required when CI=true"
            );
            eprintln!("skipping {test}: /dev/kvm is not present");
            return None;
        }
        Some(Hypervisor::new().expect("open /dev/kvm"))
    }

    #[test]
    fn reports_host_limits() {
        let Some(hv) = hypervisor_or_skip("reports_host_limits") else {
            return;
        };
        assert!(hv.max_vcpus() >= 1);
        assert!(hv.max_memory_slots() >= 32);
        let cpuid = hv.supported_cpuid().unwrap();
        assert!(cpuid.as_slice().iter().any(|e| e.function == 0));
        let bits = host_phys_bits();
        assert!((36..=57).contains(&bits), "phys bits {bits}");
    }
}
