//! One virtual machine: guest memory, the loaded payload, devices and vCPUs.
//!
//! This is the seam between the VMM's control loop (API, CLI) and everything that
//! touches KVM. CONTRACT (filled in by the boot path; signatures are fixed):
//! - `Vm::new` validates against the host (memory, vCPU limits, kernel format), builds
//!   memory, loads the payload, creates devices and vCPUs; nothing runs yet.
//! - `Vm::boot` starts one thread per vCPU.
//! - The VM writes to `VmEvents::exit` when the guest powers off or a vCPU fails
//!   fatally, and to `VmEvents::reset` when the guest asks to reboot; `exit_reason`
//!   then says which.
//! - `Vm::shutdown` stops and joins the vCPU threads; calling it twice is harmless.

use crate::acpi::{create_acpi_tables, AcpiError, AcpiPlatform};
use crate::boot::disk::{read_boot_disk, BootDiskError};
use crate::boot::{self, BootCpuError, BootError, EntryPoint, PayloadFile, PayloadRequest};
use crate::config::DeviceConfig;
use crate::config::VmConfig;
use crate::cpu::{configure_vcpu, spawn_vcpu_thread, DeviceRequests, ExitSignal};
pub use crate::device_manager::hotplug::{Removal, EJECT_GIVE_UP_AFTER, EJECT_IGNORED_AFTER};
use crate::device_manager::pci::PciDeviceInfo;
use crate::device_manager::vfio_error::VfioError;
use crate::device_manager::vfio_host::{KernelVfioHost, VfioHost};
pub use crate::device_manager::virtio::KeptTaps;
use crate::device_manager::virtio::VirtioError;
use crate::device_manager::{
    DeviceError, DeviceManager, DeviceManagerError, OpenedPassthrough, Platform,
};
pub use crate::exit_reason::VmExitReason;
use crate::guest_numa::{self, GuestNuma};
use crate::memory::{
    create_guest_memory, meminfo_field, register_guest_memory, GuestMemoryMmap, MemoryError,
};
use crate::numa::{self, HostNode, NumaError};
use form_vm_allocator::{GuestLayout, LayoutError};
pub use form_vmm_api::types::{BootSource, VmState};
use hypervisor::{host_phys_bits, Hypervisor, HypervisorError, Vcpu};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

pub struct VmEvents {
    pub exit: EventFd,
    pub reset: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("the VM boot path is not built yet")]
    NotImplemented,
    #[error("KVM: {0}")]
    Hypervisor(#[from] HypervisorError),
    #[error("memory size is 0; give the VM some memory (memory.size)")]
    NoMemory,
    #[error("memory size {requested} bytes is more than this host has ({host} bytes of MemTotal)")]
    MemoryExceedsHost { requested: u64, host: u64 },
    #[error("boot_vcpus is {requested}, but must be between 1 and {max} (this host's KVM limit)")]
    VcpuCount { requested: u8, max: usize },
    #[error("{0}")]
    Vfio(#[from] VfioError),
    #[error("{0}")]
    Virtio(#[from] VirtioError),
    #[error("no kernel given (payload.kernel)")]
    NoKernel,
    #[error("kernel file {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("guest address layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("boot: {0}")]
    Boot(#[from] BootError),
    #[error("{0}")]
    BootDisk(#[from] BootDiskError),
    #[error("boot vCPU: {0}")]
    BootCpu(#[from] BootCpuError),
    #[error("devices: {0}")]
    Device(#[from] DeviceError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] AcpiError),
    #[error("cannot start a vCPU thread: {0}")]
    VcpuThread(std::io::Error),
    #[error("cannot {action}: the VM is {state:?}")]
    InvalidState {
        action: &'static str,
        state: VmState,
    },
    #[error("cannot duplicate the VM's event fds: {0}")]
    EventFd(std::io::Error),
    #[error("memory.host_numa_node: {0}")]
    Numa(#[from] NumaError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// The device manager's errors land in the variants the API already maps to
/// statuses, by attachment family.
impl From<DeviceManagerError> for VmError {
    fn from(e: DeviceManagerError) -> Self {
        match e {
            DeviceManagerError::Platform(e) => VmError::Device(e),
            DeviceManagerError::Vfio(e) => VmError::Vfio(e),
            DeviceManagerError::Virtio(e) => VmError::Virtio(e),
        }
    }
}

pub struct Vm {
    config: VmConfig,
    state: VmState,
    // Fields drop in order (after Drop joined the threads): vCPUs, devices, KVM,
    // then guest memory, which KVM maps until the VM fd closes.
    vcpu_threads: Vec<JoinHandle<()>>,
    /// The threads' kernel ids, in vCPU order, while they run.
    vcpu_tids: Vec<libc::pid_t>,
    /// Where each vCPU's thread runs, by vCPU id: the CPUs of its host node
    /// (`memory.host_numa_node`, or its guest node's zones'), or anywhere when None.
    vcpu_cpus: Vec<Option<Arc<Vec<usize>>>>,
    vcpus: Vec<Vcpu>,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    kvm_vm: Arc<hypervisor::Vm>,
    memory: GuestMemoryMmap,
    /// What the boot disk's configuration chose, when there is no kernel.
    boot_source: Option<BootSource>,
    _events: VmEvents,
}

/// What `validate` found on the host: the kernel to load (None: the boot
/// disk's) and the host NUMA nodes asked for, by number.
struct HostChecks {
    kernel: Option<PathBuf>,
    nodes: BTreeMap<u32, HostNode>,
}

fn validate(config: &VmConfig, hv: &Hypervisor) -> Result<HostChecks, VmError> {
    let size = config.memory.ram_size();
    if size == 0 {
        return Err(VmError::NoMemory);
    }
    if let Some(host_kib) = meminfo_field("MemTotal") {
        let host = host_kib * 1024;
        if size > host {
            return Err(VmError::MemoryExceedsHost {
                requested: size,
                host,
            });
        }
    }
    let boot_vcpus = config.cpus.boot_vcpus;
    let max = hv.max_vcpus();
    if boot_vcpus == 0 || usize::from(boot_vcpus) > max {
        return Err(VmError::VcpuCount {
            requested: boot_vcpus,
            max,
        });
    }
    let mut nodes = BTreeMap::new();
    let wanted = config.memory.host_numa_node.into_iter().chain(
        config
            .memory
            .zones()
            .iter()
            .filter_map(|z| z.host_numa_node),
    );
    for node in wanted {
        if let std::collections::btree_map::Entry::Vacant(slot) = nodes.entry(node) {
            slot.insert(HostNode::probe(
                std::path::Path::new(numa::NODE_SYSFS),
                node,
            )?);
        }
    }
    let Some(kernel) = config.payload.kernel.clone() else {
        // The kernel comes from the disk with `boot`, read while building.
        config.boot_disk().ok_or(VmError::NoKernel)?;
        return Ok(HostChecks {
            kernel: None,
            nodes,
        });
    };
    if !kernel.exists() {
        return Err(VmError::KernelMissing(kernel));
    }
    boot::kernel::detect_format(&kernel)?;
    Ok(HostChecks {
        kernel: Some(kernel),
        nodes,
    })
}

/// Each vCPU's host CPUs, by vCPU id: those of `memory.host_numa_node` for every
/// vCPU without zones; with them those of the host nodes of its guest node's
/// zones.
fn vcpu_placement(
    config: &VmConfig,
    numa: Option<&GuestNuma>,
    nodes: &BTreeMap<u32, HostNode>,
) -> Vec<Option<Arc<Vec<usize>>>> {
    let count = usize::from(config.cpus.boot_vcpus);
    let Some(numa) = numa else {
        let cpus = config
            .memory
            .host_numa_node
            .and_then(|n| nodes.get(&n))
            .and_then(numa::vcpu_cpus)
            .map(Arc::new);
        return vec![cpus; count];
    };
    let per_node: Vec<Option<Arc<Vec<usize>>>> = numa
        .nodes
        .iter()
        .map(|node| {
            let hosts: Vec<&HostNode> = node
                .host_nodes
                .iter()
                .filter_map(|h| nodes.get(h))
                .collect();
            guest_numa::vcpu_cpus(&hosts).map(Arc::new)
        })
        .collect();
    (0..count as u32)
        .map(|vcpu| {
            numa.nodes
                .iter()
                .position(|n| n.vcpus.contains(&vcpu))
                .and_then(|i| per_node[i].clone())
        })
        .collect()
}

impl Vm {
    pub fn new(config: &VmConfig, events: VmEvents) -> Result<Vm, VmError> {
        Vm::with_kept_taps(config, events, KeptTaps::default())
    }

    /// Like [`Vm::new`], for a reboot: the NICs named in `taps` use the taps the
    /// VM being replaced kept for them (see [`Vm::keep_taps`]) instead of opening
    /// their own.
    pub fn with_kept_taps(
        config: &VmConfig,
        events: VmEvents,
        taps: KeptTaps,
    ) -> Result<Vm, VmError> {
        Vm::build(config, events, Arc::new(KernelVfioHost::default()), taps)
    }

    /// Like [`Vm::new`], with VFIO devices found and opened through `vfio_host`
    /// (tests pass fakes).
    pub fn with_vfio_host(
        config: &VmConfig,
        events: VmEvents,
        vfio_host: Arc<dyn VfioHost>,
    ) -> Result<Vm, VmError> {
        Vm::build(config, events, vfio_host, KeptTaps::default())
    }

    fn build(
        config: &VmConfig,
        events: VmEvents,
        vfio_host: Arc<dyn VfioHost>,
        taps: KeptTaps,
    ) -> Result<Vm, VmError> {
        let hv = Hypervisor::new()?;
        let HostChecks { kernel, nodes } = validate(config, &hv)?;
        // No kernel: the boot disk's default entry, read (and the image closed)
        // before its virtio disk opens and locks it.
        let from_disk = match (&kernel, config.boot_disk()) {
            (None, Some(disk)) => Some(read_boot_disk(disk, config.payload.cmdline.as_deref())?),
            _ => None,
        };
        let kvm_vm = Arc::new(hv.create_vm_without_irqchip()?);
        // Passthrough devices first: the IOMMU's IOVA ranges, readable only once a
        // group is attached, bound where guest RAM and the 64-bit BAR window may go.
        let passthrough = OpenedPassthrough::open(vfio_host, &kvm_vm, &config.devices)?;
        let (iova_ranges, mmio64_needed) = passthrough.layout_constraints()?;
        let phys_bits = host_phys_bits().min(52);
        let layout = match iova_ranges {
            Some(ranges) => GuestLayout::with_iova_ranges(
                config.memory.ram_size(),
                phys_bits,
                &ranges,
                mmio64_needed,
            )?,
            None => GuestLayout::new(config.memory.ram_size(), phys_bits)?,
        };
        // The guest nodes' root buses take their devices' share of the windows.
        let layout = layout.with_pci_roots(&passthrough.root_bus_needs())?;
        let guest_numa = GuestNuma::new(config, &layout);
        let vcpu_cpus = vcpu_placement(config, guest_numa.as_ref(), &nodes);
        let memory = create_guest_memory(&layout, &config.memory)?;
        register_guest_memory(&kvm_vm, &memory)?;
        kvm_vm.create_irqchip()?;

        let (payload, mut boot_source) = match (&kernel, from_disk) {
            (_, Some(disk)) => {
                let request = PayloadRequest {
                    kernel: PayloadFile::Bytes {
                        name: &disk.kernel_name,
                        data: &disk.kernel,
                    },
                    initramfs: disk.initrd.as_deref().map(|data| PayloadFile::Bytes {
                        name: &disk.initrd_name,
                        data,
                    }),
                    cmdline: &disk.source.cmdline,
                };
                (
                    boot::load_payload(&memory, &layout, &request)?,
                    Some(disk.source),
                )
            }
            (Some(kernel), None) => {
                let request = PayloadRequest {
                    kernel: PayloadFile::Path(kernel),
                    initramfs: config.payload.initramfs.as_deref().map(PayloadFile::Path),
                    cmdline: config.payload.cmdline.as_deref().unwrap_or(""),
                };
                (boot::load_payload(&memory, &layout, &request)?, None)
            }
            (None, None) => return Err(VmError::NoKernel),
        };
        let vcpu_count = u32::from(config.cpus.boot_vcpus);

        let mut config = config.clone();
        let devices = DeviceManager::create(
            passthrough,
            &Platform {
                kvm: &kvm_vm,
                memory: &memory,
                layout: &layout,
            },
            &mut config,
            taps,
        )?;
        if let Some(source) = &mut boot_source {
            // The boot disk's id, as the device manager gave it.
            if let Some(disk) = config.disks.iter().find(|d| d.boot) {
                source.disk = disk.id.clone().unwrap_or_default();
            }
        }
        let (power_off, reset) = devices.power_requests().map_err(VmError::EventFd)?;
        let requests = DeviceRequests { power_off, reset };
        let exit_evt = events.exit.try_clone().map_err(VmError::EventFd)?;
        let reset_evt = events.reset.try_clone().map_err(VmError::EventFd)?;
        let exit = Arc::new(ExitSignal::new(exit_evt, reset_evt, requests));
        if let Some(gate) = devices.dma_gate() {
            // Guest RAM that cannot be mapped for DMA ends the VM, with the reason.
            let exit = Arc::downgrade(&exit);
            gate.on_failure(move |why| {
                if let Some(exit) = exit.upgrade() {
                    exit.fire(VmExitReason::Failed(why));
                }
            });
        }

        // After the devices: the DSDT marks the virtio slots as not hotpluggable.
        let rsdp = create_acpi_tables(
            &memory,
            &AcpiPlatform {
                layout: &layout,
                vcpus: vcpu_count,
                fixed_slots: devices.fixed_slots(),
                numa: guest_numa.as_ref(),
            },
        )?;
        boot::write_reset_stub(&memory)?;
        let e820 = boot::e820_map(&layout);
        let boot_info = match payload.entry {
            EntryPoint::Linux64 { .. } => {
                boot::write_zero_page(&memory, &payload, &e820, Some(rsdp))?
            }
            EntryPoint::Pvh { .. } => boot::write_start_info(&memory, &payload, &e820, Some(rsdp))?,
        };

        let supported = hv.supported_cpuid()?;
        let llc_vcpus = guest_numa
            .as_ref()
            .map_or(vcpu_count, |numa| numa.llc_vcpus(vcpu_count));
        let mut vcpus = Vec::with_capacity(vcpu_count as usize);
        for id in 0..vcpu_count {
            let vcpu = kvm_vm.create_vcpu(id)?;
            configure_vcpu(&vcpu, &supported, vcpu_count, llc_vcpus)?;
            exit.add_kicker(vcpu.kicker());
            vcpus.push(vcpu);
        }
        boot::setup_boot_vcpu(&memory, &vcpus[0], payload.entry, boot_info)?;

        Ok(Vm {
            config,
            state: VmState::Created,
            vcpu_threads: Vec::new(),
            vcpu_tids: Vec::new(),
            vcpu_cpus,
            vcpus,
            exit,
            devices,
            kvm_vm,
            memory,
            boot_source,
            _events: events,
        })
    }

    pub fn boot(&mut self) -> Result<(), VmError> {
        if self.state != VmState::Created {
            return Err(VmError::InvalidState {
                action: "boot",
                state: self.state,
            });
        }
        let vcpus: Vec<Vcpu> = self.vcpus.drain(..).collect();
        for vcpu in vcpus {
            let cpus = self.vcpu_cpus.get(vcpu.id() as usize).cloned().flatten();
            match spawn_vcpu_thread(vcpu, self.devices.buses().clone(), self.exit.clone(), cpus) {
                Ok((handle, tid)) => {
                    self.vcpu_threads.push(handle);
                    self.vcpu_tids.push(tid);
                }
                Err(e) => {
                    self.stop_threads();
                    self.state = VmState::Shutdown;
                    return Err(VmError::VcpuThread(e));
                }
            }
        }
        self.state = VmState::Running;
        let mapping = match self.devices.dma_gate() {
            Some(gate) if !gate.is_open() => "; guest RAM is still being mapped for device DMA",
            _ => "",
        };
        log::info!("vm: {} vCPUs running{mapping}", self.vcpu_threads.len());
        Ok(())
    }

    fn stop_threads(&mut self) {
        // A vCPU held at the DMA gate is not in KVM_RUN, where the kick reaches it.
        self.devices.cancel_dma_mapping();
        self.exit.stop_vcpus();
        self.vcpu_tids.clear();
        for handle in self.vcpu_threads.drain(..) {
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
    }

    pub fn shutdown(&mut self) -> Result<(), VmError> {
        self.stop_threads();
        self.vcpus.clear();
        self.state = VmState::Shutdown;
        Ok(())
    }

    /// Presses the ACPI power button: a graceful shutdown request to the guest.
    pub fn power_button(&self) -> Result<(), VmError> {
        if self.state != VmState::Running {
            return Err(VmError::InvalidState {
                action: "press the power button",
                state: self.state,
            });
        }
        self.devices.press_power_button();
        Ok(())
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The boot disk's entry this VM was built with (no kernel given).
    pub fn boot_source(&self) -> Option<&BootSource> {
        self.boot_source.as_ref()
    }

    pub fn exit_reason(&self) -> Option<VmExitReason> {
        self.exit.reason()
    }

    /// A duplicate of each NIC's tap by net id, to be handed to the VM that
    /// replaces this one ([`Vm::with_kept_taps`]); taken while this VM still holds
    /// its taps, that is before it is dropped.
    pub fn keep_taps(&self) -> KeptTaps {
        self.devices.keep_taps()
    }

    /// Bytes of guest RAM actually mapped.
    pub fn memory_actual_size(&self) -> u64 {
        self.memory.iter().map(|r| r.len()).sum()
    }

    /// Each guest RAM region's host address and length, for tests and
    /// diagnostics that inspect the mappings (their NUMA policy, say); the
    /// addresses stay valid as long as this `Vm` does.
    pub fn ram_host_ranges(&self) -> Vec<(*const u8, usize)> {
        self.memory
            .iter()
            .map(|r| (r.as_ptr().cast_const(), r.len() as usize))
            .collect()
    }

    /// The kernel thread ids of the running vCPU threads, in vCPU order (empty
    /// before boot and after shutdown); for tests and diagnostics.
    pub fn vcpu_thread_ids(&self) -> Vec<libc::pid_t> {
        self.vcpu_tids.clone()
    }

    /// Passes a host device through to the VM. A running guest is told through
    /// ACPI; a guest without ACPI hotplug finds it by rescanning bus 0.
    pub fn add_device(&mut self, config: DeviceConfig) -> Result<PciDeviceInfo, VmError> {
        let mut infos = self.add_devices(vec![config])?;
        infos.pop().ok_or(VmError::InvalidState {
            action: "add a device",
            state: self.state,
        })
    }

    /// Passes host devices through together, all or none; functions of one host
    /// slot share a guest slot ([`DeviceManager::add_devices`]).
    pub fn add_devices(
        &mut self,
        configs: Vec<DeviceConfig>,
    ) -> Result<Vec<PciDeviceInfo>, VmError> {
        if self.state == VmState::Shutdown {
            return Err(VmError::InvalidState {
                action: "add a device",
                state: self.state,
            });
        }
        for config in &configs {
            config.validate_hotplug(self.config.numa.as_deref())?;
        }
        let running = self.state == VmState::Running;
        let infos = self
            .devices
            .add_devices(&self.kvm_vm, &self.memory, &configs, running)?;
        for (mut recorded, info) in configs.into_iter().zip(&infos) {
            recorded.id = Some(info.id.clone());
            self.config.devices.push(recorded);
        }
        Ok(infos)
    }

    /// Takes a passed-through device away, with the functions sharing its guest
    /// slot; a running guest is asked to eject it first
    /// ([`DeviceManager::remove_device`]). Returns every device removed.
    pub fn remove_device(
        &mut self,
        id: &str,
        policy: Removal,
    ) -> Result<Vec<PciDeviceInfo>, VmError> {
        let running = self.state == VmState::Running;
        let removed = self
            .devices
            .remove_device(&self.memory, id, running, policy)?;
        for info in &removed {
            self.config
                .devices
                .retain(|d| d.id.as_deref() != Some(&info.id));
        }
        Ok(removed)
    }

    /// Readable when the guest ejected a device on its own or the host asked for
    /// one back; then call [`Vm::handle_device_events`].
    pub fn device_event_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.devices.device_event_fds()
    }

    /// Detaches the devices the guest ejected on its own and those the host
    /// asked back (after the guest's eject); returns them.
    pub fn handle_device_events(&mut self) -> Vec<PciDeviceInfo> {
        let running = self.state == VmState::Running;
        let removed = self.devices.handle_device_events(&self.memory, running);
        for info in &removed {
            self.config
                .devices
                .retain(|d| d.id.as_deref() != Some(&info.id));
        }
        removed
    }

    /// Every device on the PCI bus (passed-through and virtio) with its guest
    /// address, in slot order.
    pub fn pci_devices(&self) -> Vec<PciDeviceInfo> {
        self.devices.pci_devices()
    }

    /// Config dword `reg` of bus 0, `slot`, function 0, read as the guest reads
    /// it; all ones for an empty slot. For tests and diagnostics.
    pub fn pci_config_read(&self, slot: u8, reg: usize) -> u32 {
        self.devices.pci_config_read(slot, reg)
    }

    /// Every passed-through device's counters, by device id.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.devices.counters()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
