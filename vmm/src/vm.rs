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
use crate::boot::{self, BootCpuError, BootError, EntryPoint, PayloadRequest};
use crate::config::DeviceConfig;
use crate::config::VmConfig;
use crate::cpu::{configure_vcpu, spawn_vcpu_thread, DeviceRequests, ExitSignal, IoBuses};
use crate::device_manager::hotplug::{attach_hotplug_controller, EjectOutcome};
use crate::device_manager::legacy::attach_legacy_devices;
use crate::device_manager::pci::PciDevices;
use crate::device_manager::vfio::{PciDeviceInfo, VfioDevices, VfioError, VmResources};
use crate::device_manager::vfio_host::{KernelVfioHost, VfioHost};
pub use crate::device_manager::virtio::KeptTaps;
use crate::device_manager::virtio::{VirtioDevices, VirtioError, VirtioResources};
use crate::device_manager::{DeviceError, DeviceManager, PciTeardown};
use crate::memory::{
    create_guest_memory, meminfo_field, register_guest_memory, GuestMemoryMmap, MemoryError,
};
use crate::numa::{self, HostNode, NumaError};
use devices::acpi::GedEvent;
use devices::Bus;
use form_vm_allocator::{GuestLayout, LayoutError};
use hypervisor::{host_phys_bits, Hypervisor, HypervisorError, Vcpu};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExitReason {
    PowerOff,
    Reset,
    Crashed(String),
}

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
    #[error("boot vCPU: {0}")]
    BootCpu(#[from] BootCpuError),
    #[error("devices: {0}")]
    Device(#[from] DeviceError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] AcpiError),
    #[error("cannot start a vCPU thread: {0}")]
    VcpuThread(std::io::Error),
    #[error("the guest did not eject device {id} within {}s ({}); it is still attached to the VM. Retry, remove it without the guest's consent (require_eject false), or shut the VM down", waited.as_secs(), if *saw_request { "it read the removal request but did not eject" } else { "it never read the removal request: no ACPI PCI hotplug?" })]
    NotEjected {
        id: String,
        saw_request: bool,
        waited: Duration,
    },
    #[error("cannot {action}: the VM is {state:?}")]
    InvalidState {
        action: &'static str,
        state: VmState,
    },
    #[error("cannot duplicate the VM's event fds: {0}")]
    EventFd(std::io::Error),
    #[error("memory.host_numa_node: {0}")]
    Numa(#[from] NumaError),
}

pub struct Vm {
    config: VmConfig,
    state: VmState,
    // Fields drop in order (after Drop joined the threads): vCPUs, devices, KVM,
    // then guest memory, which KVM maps until the VM fd closes.
    vcpu_threads: Vec<JoinHandle<()>>,
    /// The threads' kernel ids, in vCPU order, while they run.
    vcpu_tids: Vec<libc::pid_t>,
    /// Where the vCPU threads run: the CPUs of `memory.host_numa_node`, or
    /// anywhere when None.
    vcpu_cpus: Option<Arc<Vec<usize>>>,
    vcpus: Vec<Vcpu>,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    kvm_vm: Arc<hypervisor::Vm>,
    memory: GuestMemoryMmap,
    _events: VmEvents,
}

/// What `validate` found on the host: the kernel to load and the NUMA node, if
/// one was asked for.
struct HostChecks {
    kernel: PathBuf,
    node: Option<HostNode>,
}

fn validate(config: &VmConfig, hv: &Hypervisor) -> Result<HostChecks, VmError> {
    let size = config.memory.size;
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
    let node = config
        .memory
        .host_numa_node
        .map(|node| HostNode::probe(std::path::Path::new(numa::NODE_SYSFS), node))
        .transpose()?;
    let kernel = config.payload.kernel.clone().ok_or(VmError::NoKernel)?;
    if !kernel.exists() {
        return Err(VmError::KernelMissing(kernel));
    }
    boot::kernel::detect_format(&kernel)?;
    Ok(HostChecks { kernel, node })
}

/// How long remove-device waits for a guest that does not even read the removal
/// request (no ACPI PCI hotplug: the test guest, a guest without acpiphp) before
/// detaching the device anyway.
pub const EJECT_IGNORED_AFTER: Duration = Duration::from_secs(1);
/// How long it waits for a guest that read the request to run the slot's `_EJ0`
/// (its driver unbinding the device first).
pub const EJECT_GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// What [`Vm::remove_device`] does with a device a running guest did not eject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Detach it anyway, as when a device is pulled: the guest's driver loses it
    /// mid-use, the host gets it back for sure.
    DetachAnyway,
    /// Leave it attached and fail with [`VmError::NotEjected`]; a guest that ejects
    /// it later still gives it up (as a guest-initiated eject).
    KeepUnlessEjected,
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
        let HostChecks { kernel, node } = validate(config, &hv)?;
        let vcpu_cpus = node.as_ref().and_then(numa::vcpu_cpus).map(Arc::new);
        let kvm_vm = Arc::new(hv.create_vm()?);
        // VFIO first: the IOMMU's IOVA ranges, readable only once a group is
        // attached, bound where guest RAM and the 64-bit BAR window may go.
        let gsis = PciDevices::gsi_pool();
        let mut vfio = VfioDevices::on_kvm(vfio_host, &kvm_vm, gsis.clone());
        let opened = if config.devices.is_empty() {
            Vec::new()
        } else {
            vfio.open(Some(&kvm_vm), &config.devices)?
        };
        let (iova_ranges, mmio64_needed) = vfio.layout_constraints(&opened)?;
        let phys_bits = host_phys_bits().min(52);
        let layout = match iova_ranges {
            Some(ranges) => GuestLayout::with_iova_ranges(
                config.memory.size,
                phys_bits,
                &ranges,
                mmio64_needed,
            )?,
            None => GuestLayout::new(config.memory.size, phys_bits)?,
        };
        let memory = create_guest_memory(&layout, &config.memory)?;
        register_guest_memory(&kvm_vm, &memory)?;

        let request = PayloadRequest {
            kernel: &kernel,
            initramfs: config.payload.initramfs.as_deref(),
            cmdline: config.payload.cmdline.as_deref().unwrap_or(""),
        };
        let payload = boot::load_payload(&memory, &layout, &request)?;
        let vcpu_count = u32::from(config.cpus.boot_vcpus);

        let buses = IoBuses {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
        };
        let legacy = attach_legacy_devices(&kvm_vm, &buses, &config.serial)?;
        let requests = DeviceRequests {
            power_off: legacy.power_off.try_clone().map_err(VmError::EventFd)?,
            reset: legacy.reset.try_clone().map_err(VmError::EventFd)?,
        };
        let exit_evt = events.exit.try_clone().map_err(VmError::EventFd)?;
        let reset_evt = events.reset.try_clone().map_err(VmError::EventFd)?;
        let exit = Arc::new(ExitSignal::new(exit_evt, reset_evt, requests));
        let hotplug = attach_hotplug_controller(&buses)?;
        let mut pci = PciDevices::attach(&layout, &buses, gsis)?;
        let teardown = PciTeardown::new(pci.bus.clone());
        let attached = vfio.attach(
            opened,
            &mut VmResources {
                memory: &memory,
                pci: &mut pci,
                buses: &buses,
            },
        )?;
        // The configuration says which id each device got, so vm.info and a
        // reboot see the same ids.
        let mut config = config.clone();
        for (device, info) in config.devices.iter_mut().zip(&attached) {
            device.id = Some(info.id.clone());
        }
        // After the VFIO devices, which so keep the slots they always had.
        let vfio_ids: BTreeSet<String> = attached.into_iter().map(|info| info.id).collect();
        let virtio = VirtioDevices::attach(
            &mut config,
            &vfio_ids,
            &mut VirtioResources {
                memory: &memory,
                pci: &mut pci,
                buses: &buses,
                kvm: &kvm_vm,
            },
            taps,
        )?;

        // After the devices: the DSDT marks the virtio slots as not hotpluggable.
        let rsdp = create_acpi_tables(
            &memory,
            &AcpiPlatform {
                layout: &layout,
                vcpus: vcpu_count,
                fixed_slots: virtio.slots(),
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
        let mut vcpus = Vec::with_capacity(vcpu_count as usize);
        for id in 0..vcpu_count {
            let vcpu = kvm_vm.create_vcpu(id)?;
            configure_vcpu(&vcpu, &supported, vcpu_count)?;
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
            devices: DeviceManager {
                buses,
                legacy,
                pci,
                vfio,
                virtio,
                hotplug,
                teardown,
            },
            kvm_vm,
            memory,
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
            match spawn_vcpu_thread(
                vcpu,
                self.devices.buses.clone(),
                self.exit.clone(),
                self.vcpu_cpus.clone(),
            ) {
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
        Ok(())
    }

    fn stop_threads(&mut self) {
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
        self.devices.legacy.press_power_button();
        Ok(())
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn exit_reason(&self) -> Option<VmExitReason> {
        self.exit.reason()
    }

    /// A duplicate of each NIC's tap by net id, to be handed to the VM that
    /// replaces this one ([`Vm::with_kept_taps`]); taken while this VM still holds
    /// its taps, that is before it is dropped.
    pub fn keep_taps(&self) -> KeptTaps {
        self.devices.virtio.keep_taps()
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

    fn vm_resources(&mut self) -> (&mut VfioDevices, VmResources<'_>) {
        let devices = &mut self.devices;
        (
            &mut devices.vfio,
            VmResources {
                memory: &self.memory,
                pci: &mut devices.pci,
                buses: &devices.buses,
            },
        )
    }

    /// Passes a host device through to the VM. A running guest is told through
    /// ACPI (the GED's hotplug event, then a device check on the slot); a guest
    /// without ACPI hotplug finds it by rescanning bus 0.
    pub fn add_device(&mut self, config: DeviceConfig) -> Result<PciDeviceInfo, VmError> {
        if self.state == VmState::Shutdown {
            return Err(VmError::InvalidState {
                action: "add a device",
                state: self.state,
            });
        }
        if let Some(id) = config.id.as_deref() {
            if self.devices.virtio.contains_id(id) {
                return Err(VfioError::DuplicateId(id.to_string()).into());
            }
        }
        let opened = self
            .devices
            .vfio
            .open(Some(&self.kvm_vm), std::slice::from_ref(&config))?;
        let (vfio, mut resources) = self.vm_resources();
        let info = vfio
            .attach(opened, &mut resources)?
            .pop()
            .ok_or_else(|| VfioError::UnknownId(config.id.clone().unwrap_or_default()))?;
        let mut recorded = config;
        recorded.id = Some(info.id.clone());
        self.config.devices.push(recorded);
        if self.state == VmState::Running {
            if let Some(slot) = self.devices.vfio.slot_of(&info.id) {
                self.devices.hotplug.slot_added(slot);
                self.notify_hotplug();
            }
        }
        Ok(info)
    }

    /// Takes a passed-through device away. A running guest is asked to eject it
    /// first and given [`EJECT_IGNORED_AFTER`] to react (or
    /// [`EJECT_GIVE_UP_AFTER`] once it did). What happens to a device the guest
    /// did not eject is `policy`'s to say.
    pub fn remove_device(&mut self, id: &str, policy: Removal) -> Result<PciDeviceInfo, VmError> {
        if self.devices.virtio.contains_id(id) {
            return Err(VirtioError::NotRemovable(id.to_string()).into());
        }
        let slot = self
            .devices
            .vfio
            .slot_of(id)
            .ok_or_else(|| VfioError::UnknownId(id.to_string()))?;
        if self.state == VmState::Running {
            self.devices.hotplug.request_removal(slot);
            self.notify_hotplug();
            let outcome =
                self.devices
                    .hotplug
                    .wait_for_eject(slot, EJECT_IGNORED_AFTER, EJECT_GIVE_UP_AFTER);
            match outcome {
                EjectOutcome::Ejected => log::info!("vfio: the guest ejected {id}"),
                EjectOutcome::Ignored | EjectOutcome::TimedOut
                    if policy == Removal::KeepUnlessEjected =>
                {
                    let saw_request = outcome == EjectOutcome::TimedOut;
                    log::warn!("vfio: the guest did not eject {id}; it stays attached");
                    return Err(VmError::NotEjected {
                        id: id.to_string(),
                        saw_request,
                        waited: if saw_request {
                            EJECT_GIVE_UP_AFTER
                        } else {
                            EJECT_IGNORED_AFTER
                        },
                    });
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
        let (vfio, mut resources) = self.vm_resources();
        let info = vfio
            .detach(id, &mut resources)
            .ok_or_else(|| VfioError::UnknownId(id.to_string()))?;
        self.config.devices.retain(|d| d.id.as_deref() != Some(id));
        Ok(info)
    }

    /// Readable when the guest ejected a device on its own; then call
    /// [`Vm::handle_guest_ejects`].
    pub fn device_events_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.devices
            .hotplug
            .guest_eject_fd()
            .map(|fd| fd.as_raw_fd())
    }

    /// Detaches the devices whose slots the guest ejected without being asked (an
    /// administrator in the guest powering a slot off); returns them.
    pub fn handle_guest_ejects(&mut self) -> Vec<PciDeviceInfo> {
        if let Some(fd) = self.devices.hotplug.guest_eject_fd() {
            // The count is irrelevant: the bitmap says which slots.
            let _ = fd.read();
        }
        let ejected = self.devices.hotplug.take_unrequested_ejects();
        let ids: Vec<String> = self
            .devices
            .vfio
            .list()
            .into_iter()
            .filter(|(_, slot)| ejected & (1u32 << slot) != 0)
            .map(|(info, _)| info.id)
            .collect();
        let mut removed = Vec::new();
        for id in ids {
            let (vfio, mut resources) = self.vm_resources();
            if let Some(info) = vfio.detach(&id, &mut resources) {
                log::info!("vfio: the guest ejected {id} ({}) on its own", info.bdf);
                self.config.devices.retain(|d| d.id.as_deref() != Some(&id));
                removed.push(info);
            }
        }
        removed
    }

    fn notify_hotplug(&self) {
        self.devices
            .legacy
            .ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GedEvent::PciHotplug);
    }

    /// Every device on the PCI bus (passed-through and virtio) with its guest
    /// address, in slot order.
    pub fn pci_devices(&self) -> Vec<PciDeviceInfo> {
        let mut all = self.devices.vfio.list();
        all.extend(self.devices.virtio.list());
        all.sort_by_key(|(_, slot)| *slot);
        all.into_iter().map(|(info, _)| info).collect()
    }

    /// Config dword `reg` of bus 0, `slot`, function 0, read as the guest reads
    /// it; all ones for an empty slot. For tests and diagnostics.
    pub fn pci_config_read(&self, slot: u8, reg: usize) -> u32 {
        pci::bus::config_read(&self.devices.pci.bus, slot, 0, reg)
    }

    /// Every passed-through device's counters, by device id.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.devices.vfio.counters()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
