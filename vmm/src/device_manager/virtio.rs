//! The VM's virtio devices (disks, NICs, the entropy source and the console), each
//! a virtio-pci function on bus 0. They are attached once, when the VM is built,
//! after the VFIO cold-plug devices (which so keep the slots they had before virtio
//! existed), in configuration order: disks, NICs, rng, console.
//!
//! Per device: the device model is opened (image, tap, entropy file, console
//! output), the lowest free slot taken, BAR0 ([`VIRTIO_PCI_BAR_SIZE`] bytes) placed
//! in the 32-bit MMIO window aligned to its size, the [`VirtioPciDevice`] transport
//! built over KVM's MSI routes and ioeventfds, BAR0 trapped whole on the MMIO bus
//! (queue notifications never exit: they are ioeventfds inside the BAR), and the
//! function put on the PCI bus. A failure undoes the devices this attach placed,
//! and the error names the device and what to fix.

use super::log_file::open_guest_log;
use super::pci::PciDevices;
use super::pci::{guest_bdf, lock, GuestFunction, PciDeviceInfo, PlugError};
use super::vfio_resources::KvmInterruptRouting;
use crate::config::{ConsoleConfig, ConsoleOutputMode, DiskFormat, VmConfig};
use crate::io_buses::IoBuses;
use crate::memory::GuestMemoryMmap;
use devices::virtio::block::{Block, BlockError, BlockOptions, ImageFormat};
use devices::virtio::console::Console;
use devices::virtio::net::{MacAddr, Net, NetError, NetOptions, Tap, TapSource};
use devices::virtio::rng::{Rng, RngError};
use devices::virtio::VirtioDevice;
use hypervisor::IoEventAddress;
use pci::virtio::{IoEventRegistrar, VirtioPciDevice, VirtioPciError, VIRTIO_PCI_BAR_SIZE};
use pci::BoxError;
use pci::{PciBusError, SharedPciDevice};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("disk {id}: {source}")]
    Block {
        id: String,
        #[source]
        source: BlockError,
    },
    #[error("net {id}: {source}")]
    Net {
        id: String,
        #[source]
        source: NetError,
    },
    #[error("net {id}: cannot duplicate tap fd {fd} (is it open in form-vmm?): {source}")]
    TapFd {
        id: String,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("rng {id}: {source}")]
    Rng {
        id: String,
        #[source]
        source: RngError,
    },
    #[error("console: mode File needs a file path (console.file)")]
    ConsoleFileMissing,
    #[error("console: cannot create output file {path}: {source}")]
    ConsoleFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("console: cannot duplicate stdin for input: {0}")]
    ConsoleStdin(#[source] std::io::Error),
    #[error("console mode {0:?} is not supported; use Off, Null, Tty or File")]
    ConsoleModeUnsupported(ConsoleOutputMode),
    #[error("{id}: {source}")]
    Slot {
        id: String,
        #[source]
        source: PciBusError,
    },
    #[error("{id}: no room for its {size:#x}-byte BAR0 in the 32-bit MMIO window: {source}")]
    Bar {
        id: String,
        size: u64,
        #[source]
        source: form_vm_allocator::AllocError,
    },
    #[error("{0}")]
    Transport(#[from] VirtioPciError),
    #[error("{id}: cannot trap BAR0 at {addr:#x}: {source}")]
    BarRegion {
        id: String,
        addr: u64,
        #[source]
        source: devices::BusError,
    },
    #[error("device id {0:?} is used by more than one device; give each device its own id")]
    DuplicateId(String),
    #[error("{0} is a virtio device, attached for the VM's life; only passed-through devices can be removed")]
    NotRemovable(String),
}

impl VirtioError {
    /// Whether the request named something unusable (a client error), not the host
    /// failing.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            VirtioError::Block { .. }
                | VirtioError::TapFd { .. }
                | VirtioError::ConsoleFileMissing
                | VirtioError::ConsoleModeUnsupported(_)
                | VirtioError::DuplicateId(_)
                | VirtioError::NotRemovable(_)
        )
    }
}

/// The devices crate's name for a configured disk format.
pub fn image_format(format: DiskFormat) -> ImageFormat {
    match format {
        DiskFormat::Raw => ImageFormat::Raw,
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
    }
}

fn disk_format(format: ImageFormat) -> DiskFormat {
    match format {
        ImageFormat::Raw => DiskFormat::Raw,
        ImageFormat::Qcow2 => DiskFormat::Qcow2,
    }
}

/// KVM ioeventfds on MMIO addresses, for the transports' queue notifications.
pub struct KvmIoEvents {
    vm: Arc<hypervisor::Vm>,
}

impl KvmIoEvents {
    pub fn new(vm: Arc<hypervisor::Vm>) -> Self {
        Self { vm }
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), BoxError> {
        Ok(self
            .vm
            .register_ioevent(fd, IoEventAddress::Mmio(addr), None)?)
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> Result<(), BoxError> {
        Ok(self
            .vm
            .unregister_ioevent(fd, IoEventAddress::Mmio(addr), None)?)
    }
}

/// What attaching needs from the VM.
pub struct VirtioResources<'a> {
    pub memory: &'a GuestMemoryMmap,
    pub pci: &'a mut PciDevices,
    pub buses: &'a IoBuses,
    pub kvm: &'a Arc<hypervisor::Vm>,
}

struct AttachedVirtio {
    id: String,
    slot: u8,
    /// Where BAR0 was allocated (the guest may move it; the region follows).
    bar0: u64,
    /// The BARs as placed, for finding their regions if the guest's moves did not.
    placed: Vec<pci::PciBar>,
    device: Arc<Mutex<VirtioPciDevice>>,
}

/// The VM's virtio devices, in slot order.
#[derive(Default)]
pub struct VirtioDevices {
    devices: Vec<AttachedVirtio>,
    /// Each NIC's tap by net id, shared with its device, for [`VirtioDevices::keep_taps`].
    taps: BTreeMap<String, Arc<Tap>>,
}

/// NIC taps carried from a VM to the one that replaces it on a reboot, by net id.
///
/// The kernel deletes a tap form-vmm created once its last descriptor closes, and
/// a tap created again under the same name has lost what the host set up on the
/// old one (its bridge port, addresses, MTU). Holding a duplicate while the old VM
/// goes and handing it to the new one keeps the very same interface, without making
/// taps persistent: a crashed form-vmm still takes its taps with it.
#[derive(Debug, Default)]
pub struct KeptTaps(BTreeMap<String, OwnedFd>);

impl KeptTaps {
    pub fn insert(&mut self, id: String, tap: OwnedFd) {
        self.0.insert(id, tap);
    }

    /// The tap kept for NIC `id`, which the caller then owns.
    pub fn take(&mut self, id: &str) -> Option<OwnedFd> {
        self.0.remove(id)
    }

    /// The net ids a tap is kept for.
    pub fn ids(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// Takes the lowest `{prefix}N` nobody has reserved.
fn next_id(prefix: &str, reserved: &mut BTreeSet<String>) -> String {
    let id = (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|id| !reserved.contains(id))
        .unwrap_or_default();
    reserved.insert(id.clone());
    id
}

/// Reserves the ids `config` names for its disks and NICs, so a default id never
/// takes a name given to a later device. `taken` are the VFIO devices' ids.
fn reserve_configured_ids(
    config: &VmConfig,
    taken: &BTreeSet<String>,
) -> Result<BTreeSet<String>, VirtioError> {
    let mut reserved = taken.clone();
    let configured = config
        .disks
        .iter()
        .filter_map(|d| d.id.as_ref())
        .chain(config.net.iter().filter_map(|n| n.id.as_ref()));
    for id in configured {
        if !reserved.insert(id.clone()) {
            return Err(VirtioError::DuplicateId(id.clone()));
        }
    }
    Ok(reserved)
}

impl VirtioDevices {
    /// The PCI slots the virtio devices occupy.
    pub fn slots(&self) -> BTreeSet<u8> {
        self.devices.iter().map(|d| d.slot).collect()
    }

    /// Attaches every virtio device `config` asks for and records in it the ids and
    /// MAC addresses chosen for it, so vm.info shows them and a reboot builds the
    /// same devices. `taken` holds the ids of devices already attached (VFIO).
    /// A NIC whose id is in `kept` uses that tap instead of opening its own.
    pub fn attach(
        config: &mut VmConfig,
        taken: &BTreeSet<String>,
        vm: &mut VirtioResources<'_>,
        kept: KeptTaps,
    ) -> Result<VirtioDevices, VirtioError> {
        let mut devices = VirtioDevices::default();
        match devices.attach_all(config, taken, vm, kept) {
            Ok(()) => Ok(devices),
            Err(e) => {
                devices.detach_all(vm);
                Err(e)
            }
        }
    }

    fn attach_all(
        &mut self,
        config: &mut VmConfig,
        taken: &BTreeSet<String>,
        vm: &mut VirtioResources<'_>,
        mut kept: KeptTaps,
    ) -> Result<(), VirtioError> {
        let mut reserved = reserve_configured_ids(config, taken)?;
        for disk in &mut config.disks {
            let id = match &disk.id {
                Some(id) => id.clone(),
                None => next_id("disk", &mut reserved),
            };
            let block = Block::open(BlockOptions {
                path: disk.path.clone(),
                readonly: disk.readonly,
                direct: disk.direct,
                serial: disk.serial.clone(),
                format: disk.format.map(image_format),
            })
            .map_err(|source| VirtioError::Block {
                id: id.clone(),
                source,
            })?;
            // Kept for every later open (a reboot rebuilds the VM from this
            // configuration): the guest controls the image's first bytes.
            disk.format = Some(disk_format(block.format()));
            self.place(&id, Box::new(block), vm)?;
            disk.id = Some(id);
        }

        for net in &mut config.net {
            let id = match &net.id {
                Some(id) => id.clone(),
                None => next_id("net", &mut reserved),
            };
            let mac = match net.mac_bytes().transpose() {
                Ok(mac) => mac.map(MacAddr),
                // validate() refuses these before any VM is built.
                Err(e) => {
                    log::warn!("net {id}: {e}; using a random MAC address");
                    None
                }
            };
            let reused = kept.take(&id);
            let origin = match reused {
                Some(_) => " (kept from before the reboot)",
                None => "",
            };
            let device = open_net(&id, net.tap.as_deref(), net.tap_fd(), mac, reused)?;
            net.mac = Some(device.mac().to_string());
            log::info!(
                "net {id}: tap {} mac {}{origin}",
                device.tap_name(),
                device.mac()
            );
            let tap = device.tap();
            self.place(&id, Box::new(device), vm)?;
            self.taps.insert(id.clone(), tap);
            net.id = Some(id);
        }

        if let Some(rng) = &config.rng {
            let id = next_id("rng", &mut reserved);
            let device = Rng::open(&rng.src).map_err(|source| VirtioError::Rng {
                id: id.clone(),
                source,
            })?;
            self.place(&id, Box::new(device), vm)?;
        }

        if let Some(console) = open_console(&config.console)? {
            let id = next_id("console", &mut reserved);
            self.place(&id, Box::new(console), vm)?;
        }
        Ok(())
    }

    /// Puts one device on the bus: slot, BAR0, transport, trapped BAR, PCI bus.
    fn place(
        &mut self,
        id: &str,
        device: Box<dyn VirtioDevice>,
        vm: &mut VirtioResources<'_>,
    ) -> Result<(), VirtioError> {
        let slot = vm.pci.free_slot().map_err(|source| VirtioError::Slot {
            id: id.to_string(),
            source,
        })?;
        let bar0 = vm
            .pci
            .mmio32
            .allocate(VIRTIO_PCI_BAR_SIZE, VIRTIO_PCI_BAR_SIZE)
            .map_err(|source| VirtioError::Bar {
                id: id.to_string(),
                size: VIRTIO_PCI_BAR_SIZE,
                source,
            })?;
        let release_bar = |pci: &mut PciDevices| {
            if let Err(e) = pci.mmio32.free(bar0) {
                log::warn!("virtio: {id}: releasing BAR0 at {bar0:#x}: {e}");
            }
        };
        let transport = VirtioPciDevice::new(
            id,
            device,
            vm.memory.clone(),
            bar0,
            Arc::new(KvmInterruptRouting::new(
                vm.kvm.clone(),
                vm.pci.gsis.clone(),
            )),
            Arc::new(KvmIoEvents::new(vm.kvm.clone())),
        );
        let device = match transport {
            Ok(device) => Arc::new(Mutex::new(device)),
            Err(e) => {
                release_bar(vm.pci);
                return Err(e.into());
            }
        };
        let shared: SharedPciDevice = device.clone();
        let bars = pci::PciDevice::bars(&*lock(&device));
        if let Err(e) = vm
            .pci
            .plug(vm.buses, GuestFunction::slot(slot), &shared, &bars)
        {
            release_bar(vm.pci);
            return Err(match e {
                PlugError::BarRegion { addr, source, .. } => VirtioError::BarRegion {
                    id: id.to_string(),
                    addr,
                    source,
                },
                PlugError::Slot(source) => VirtioError::Slot {
                    id: id.to_string(),
                    source,
                },
            });
        }
        log::info!(
            "virtio: {id} attached at {} with BAR0 at {bar0:#x}",
            guest_bdf(slot)
        );
        self.devices.push(AttachedVirtio {
            id: id.to_string(),
            slot,
            bar0,
            placed: bars,
            device,
        });
        Ok(())
    }

    /// Takes every device off the buses and gives their BARs back; dropping the
    /// transports then stops their I/O and unregisters their ioeventfds.
    fn detach_all(&mut self, vm: &mut VirtioResources<'_>) {
        self.taps.clear();
        for attached in self.devices.drain(..).rev() {
            vm.pci.unplug(
                vm.buses,
                GuestFunction::slot(attached.slot),
                &attached.device,
                &attached.placed,
                &format!("virtio: {}", attached.id),
            );
            if let Err(e) = vm.pci.mmio32.free(attached.bar0) {
                log::warn!("virtio: {}: releasing BAR0: {e}", attached.id);
            }
        }
    }

    /// A duplicate of each NIC's tap, by net id, for the VM that replaces this one.
    /// A tap that cannot be duplicated (out of descriptors) is left out with a
    /// warning: the next VM then opens it as on a first boot.
    pub fn keep_taps(&self) -> KeptTaps {
        let mut kept = KeptTaps::default();
        for (id, tap) in &self.taps {
            match tap.try_clone_fd() {
                Ok(fd) => kept.insert(id.clone(), fd),
                Err(e) => log::warn!(
                    "net {id}: cannot keep tap {} across the reboot: {e}; the next VM opens it afresh",
                    tap.name()
                ),
            }
        }
        kept
    }

    /// Ids and guest addresses in slot order.
    pub fn list(&self) -> Vec<(PciDeviceInfo, u8)> {
        let mut all: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                (
                    PciDeviceInfo {
                        id: d.id.clone(),
                        bdf: guest_bdf(d.slot),
                    },
                    d.slot,
                )
            })
            .collect();
        all.sort_by_key(|(_, slot)| *slot);
        all
    }

    pub fn contains_id(&self, id: &str) -> bool {
        self.devices.iter().any(|d| d.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The transport behind `id`, for tests and diagnostics.
    pub fn device(&self, id: &str) -> Option<Arc<Mutex<VirtioPciDevice>>> {
        self.devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.device.clone())
    }
}

/// Takes the tap kept from before a reboot, else a duplicate of the caller's fd,
/// else opens the tap by name: the device owns and closes what it gets, and the
/// configured fd must stay open for a later boot. A kept tap is never opened by
/// name as well, since a single-queue tap takes one attachment at a time.
fn open_net(
    id: &str,
    tap: Option<&str>,
    fd: Option<i32>,
    mac: Option<MacAddr>,
    kept: Option<OwnedFd>,
) -> Result<Net, VirtioError> {
    let net_err = |source| VirtioError::Net {
        id: id.to_string(),
        source,
    };
    let adopt = |owned: OwnedFd| {
        // Validated and set up (header size, offloads, link) as any passed fd.
        let net = Net::new(NetOptions {
            tap: TapSource::Fd(owned.as_raw_fd()),
            mac,
        })
        .map_err(net_err)?;
        // The device owns the descriptor now; on error `owned` closes it.
        let _ = owned.into_raw_fd();
        Ok(net)
    };
    match (kept, tap, fd) {
        (Some(kept), _, _) => adopt(kept),
        (None, _, Some(fd)) => adopt(duplicate_fd(fd).map_err(|source| VirtioError::TapFd {
            id: id.to_string(),
            fd,
            source,
        })?),
        (None, tap, None) => Net::new(NetOptions {
            tap: TapSource::Name(tap.unwrap_or_default().to_string()),
            mac,
        })
        .map_err(net_err),
    }
}

fn duplicate_fd(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads `fd`'s state; a closed fd fails with EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a new descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) })
}

/// The virtio console `console` asks for: none when off; tty writes to stdout and
/// reads stdin only when stdin is a terminal (never a script's pipe or /dev/null).
fn open_console(console: &ConsoleConfig) -> Result<Option<Console>, VirtioError> {
    let (output, input): (Box<dyn std::io::Write + Send>, _) = match console.mode {
        ConsoleOutputMode::Off => return Ok(None),
        ConsoleOutputMode::Null => (Box::new(std::io::sink()), None),
        ConsoleOutputMode::Tty => (Box::new(std::io::stdout()), stdin_if_terminal()?),
        ConsoleOutputMode::File => {
            let path = console
                .file
                .as_ref()
                .ok_or(VirtioError::ConsoleFileMissing)?;
            let file = open_guest_log(path).map_err(|source| VirtioError::ConsoleFile {
                path: path.clone(),
                source,
            })?;
            (Box::new(file), None)
        }
        mode @ ConsoleOutputMode::Pty => return Err(VirtioError::ConsoleModeUnsupported(mode)),
    };
    Ok(Some(Console::new(output, input)))
}

fn stdin_if_terminal() -> Result<Option<std::fs::File>, VirtioError> {
    let stdin = std::io::stdin();
    // SAFETY: isatty only reads the descriptor's state.
    if unsafe { libc::isatty(stdin.as_raw_fd()) } != 1 {
        return Ok(None);
    }
    use std::os::fd::AsFd;
    let fd = stdin
        .as_fd()
        .try_clone_to_owned()
        .map_err(VirtioError::ConsoleStdin)?;
    Ok(Some(std::fs::File::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_take_the_lowest_free_number() {
        let mut reserved: BTreeSet<String> = ["disk0", "disk2"].map(String::from).into();
        assert_eq!(next_id("disk", &mut reserved), "disk1");
        assert_eq!(next_id("disk", &mut reserved), "disk3");
        assert_eq!(next_id("net", &mut reserved), "net0");
    }

    #[test]
    fn configured_ids_are_reserved_before_defaults_are_chosen() {
        let mut config = VmConfig::default();
        config.disks = vec![
            crate::config::DiskConfig::parse("path=/a").unwrap(),
            crate::config::DiskConfig::parse("path=/b,id=disk0").unwrap(),
        ];
        let mut reserved = reserve_configured_ids(&config, &BTreeSet::new()).unwrap();
        assert_eq!(next_id("disk", &mut reserved), "disk1");

        let vfio: BTreeSet<String> = ["disk0".to_string()].into();
        assert!(matches!(
            reserve_configured_ids(&config, &vfio),
            Err(VirtioError::DuplicateId(id)) if id == "disk0"
        ));
    }

    #[test]
    fn a_closed_tap_fd_is_reported_before_the_device_sees_it() {
        let Err(err) = open_net("net0", None, Some(999_999), None, None) else {
            panic!("a closed fd opened a NIC");
        };
        assert!(
            err.to_string()
                .starts_with("net net0: cannot duplicate tap fd 999999"),
            "{err}"
        );
    }

    #[test]
    fn console_off_adds_nothing_and_pty_is_refused() {
        assert!(open_console(&ConsoleConfig::off()).unwrap().is_none());
        assert!(open_console(&ConsoleConfig {
            mode: ConsoleOutputMode::Null,
            file: None
        })
        .unwrap()
        .is_some());
        assert!(matches!(
            open_console(&ConsoleConfig {
                mode: ConsoleOutputMode::Pty,
                file: None
            }),
            Err(VirtioError::ConsoleModeUnsupported(ConsoleOutputMode::Pty))
        ));
    }
}
