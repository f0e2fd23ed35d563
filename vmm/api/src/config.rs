//! The VM configuration, in Cloud Hypervisor's JSON shape so its tooling can drive
//! form-vmm unchanged. The same types are filled from the command line.

pub mod numa;
pub mod options;
pub mod virtio;

pub use numa::{MemoryZoneConfig, NumaConfig, NumaConfigError, NumaDistance};
pub use virtio::{DiskConfig, DiskFormat, NetConfig, RngConfig, DEFAULT_RNG_SOURCE};

use options::{ByteSize, OptionError, OptionValue, Options};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Guest RAM is mapped in whole pages.
const PAGE_SIZE: u64 = 4096;

/// A configuration that can never boot, whatever the host. Checks that depend on the
/// host (how much memory it has, KVM's vCPU limit, the kernel's format) belong to
/// `Vm::new`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("at least one vCPU is required")]
    NoVcpus,
    #[error("boot vCPUs ({boot}) exceed max vCPUs ({max})")]
    BootAboveMax { boot: u8, max: u8 },
    #[error("memory size must be greater than zero")]
    ZeroMemory,
    #[error("memory size {0} bytes is not a multiple of 4 KiB")]
    UnalignedMemory(u64),
    #[error("hugepage_size is given but hugepages is off: add hugepages=on")]
    HugepageSizeWithoutHugepages,
    #[error("hugepage_size {0} bytes: x86-64 huge pages are 2M or 1G")]
    HugepageSize(u64),
    #[error("memory size {size} bytes is not a multiple of the {page}-byte huge page size")]
    HugepageAlignment { size: u64, page: u64 },
    #[error("no kernel given and no disk to boot from: give payload.kernel (--kernel), or boot=on on the disk whose own boot configuration should boot")]
    NoKernel,
    #[error("disks {first} and {second} both have boot=on; at most one disk boots the VM")]
    TwoBootDisks { first: PathBuf, second: PathBuf },
    #[error("payload.kernel and boot=on on disk {0} both say what to boot; give the kernel, or leave it out to boot the disk's own configuration")]
    KernelAndBootDisk(PathBuf),
    #[error("payload.initramfs is given without payload.kernel; a disk with boot=on brings its own initrd")]
    InitramfsWithoutKernel,
    #[error("{what} {path}: {reason}")]
    UnusableFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{which} output is 'file' but no file path is given")]
    OutputFileMissing { which: &'static str },
    #[error("device path is empty: name the device by its sysfs path")]
    EmptyDevicePath,
    #[error("device id '{0}' is used by more than one device")]
    DuplicateDeviceId(String),
    #[error("device {0} is listed more than once")]
    DuplicateDevicePath(PathBuf),
    #[error("device {path}: PCI segment {segment} does not exist; form-vmm has segment 0 only")]
    DeviceSegment { path: PathBuf, segment: u16 },
    #[error("device {path}: numa_node={node}, but only guest nodes 0 to {} can have PCI devices (one root bus each in the 128-bus ECAM window)", DEVICE_NUMA_NODES - 1)]
    DeviceNumaNodeRange { path: PathBuf, node: u32 },
    #[error("device {path}: numa_node={node}, but the VM has no guest NUMA node {node}; define it (--numa guest_numa_id={node},...) or leave numa_node out")]
    DeviceNumaNodeUnknown { path: PathBuf, node: u32 },
    #[error("device {path}: numa_node={node} puts it on guest node {node}'s PCI root bus, which has no hotplug controller: devices there are cold-plugged only. Give it when the VM is created, or hotplug it without numa_node (or with numa_node=0) onto bus 0")]
    DeviceNumaNodeHotplug { path: PathBuf, node: u32 },
    #[error("device {0}: iommu=on (a virtual IOMMU in front of the device) is not supported; leave it off")]
    DeviceIommu(PathBuf),
    #[error("device id is empty: give a name or leave id out for a default one")]
    EmptyDeviceId,
    #[error("disk path is empty: give the raw image file (path=...)")]
    EmptyDiskPath,
    #[error("disk {0} is listed more than once")]
    DuplicateDiskPath(PathBuf),
    #[error("disk serial '{0}' must be at most 20 printable ASCII characters without spaces")]
    DiskSerial(String),
    #[error("give exactly one of tap=NAME (form-vmm opens or creates the tap) or fd=N (an open tap's descriptor)")]
    NetTapOrFd,
    #[error("tap name '{0}' must be 1 to 15 characters without '/', ':' or spaces")]
    TapName(String),
    #[error("tap {0} is listed more than once")]
    DuplicateTap(String),
    #[error("tap fd {0} is not a file descriptor number")]
    NetFd(i32),
    #[error("tap fd {0} is listed more than once")]
    DuplicateNetFd(i32),
    #[error("give the tap's descriptor as fd (a number) or as fds (a list of one), not both")]
    NetFdAndFds,
    #[error("fds lists {0} descriptors, but form-vmm's NIC has one queue pair and takes exactly one tap descriptor: give fds as [N]")]
    NetFdsCount(usize),
    #[error("MAC address '{0}' is not six hex bytes separated by colons (e.g. 52:54:00:12:34:56)")]
    MacSyntax(String),
    #[error("MAC address '{0}' is a multicast address; a NIC needs a unicast one (the first byte's lowest bit clear)")]
    MacMulticast(String),
    #[error("MAC address '{0}' is all zeros, which names no NIC; give another or leave mac out for a random one")]
    MacZero(String),
    #[error("MAC address {0} is given to more than one network device")]
    DuplicateMac(String),
    #[error("rng source path is empty: give an entropy file such as /dev/urandom (src=...)")]
    EmptyRngSource,
    #[error("serial and console are both 'tty', but only one device can own the terminal; set one of them to off, null or file=PATH")]
    DoubleTty,
    #[error(transparent)]
    Numa(#[from] NumaConfigError),
}

/// The command line's `key=value` option string was malformed, or parsed into a
/// value that can never boot.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("{flag} {input}: {source}")]
    Invalid {
        flag: &'static str,
        input: String,
        source: ConfigError,
    },
    #[error("{flag}: unknown output '{input}'; valid: off, null, tty, pty, file=PATH")]
    UnknownOutput { flag: &'static str, input: String },
}

fn invalid(flag: &'static str, input: &str) -> impl FnOnce(ConfigError) -> ParseError {
    let input = input.to_string();
    move |source| ParseError::Invalid {
        flag,
        input,
        source,
    }
}

impl VmConfig {
    /// Rejects configurations that cannot boot on any host, so that mistakes are
    /// reported before any resources are taken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cpus.validate()?;
        self.memory.validate()?;
        numa::validate_numa(
            &self.cpus,
            &self.memory,
            self.numa.as_deref().unwrap_or(&[]),
        )?;
        self.validate_boot_disk()?;
        self.payload.validate()?;
        self.serial.validate("serial")?;
        self.console.validate("console")?;
        if self.serial.mode == ConsoleOutputMode::Tty && self.console.mode == ConsoleOutputMode::Tty
        {
            return Err(ConfigError::DoubleTty);
        }
        let mut ids = HashSet::new();
        let mut claim_id = |id: &Option<String>| match id {
            Some(id) if !ids.insert(id.clone()) => Err(ConfigError::DuplicateDeviceId(id.clone())),
            _ => Ok(()),
        };
        let mut paths = HashSet::new();
        for device in &self.devices {
            device.validate()?;
            device.validate_numa_node(self.numa.as_deref())?;
            claim_id(&device.id)?;
            if !paths.insert(device.path.as_path()) {
                return Err(ConfigError::DuplicateDevicePath(device.path.clone()));
            }
        }
        let mut images = HashSet::new();
        for disk in &self.disks {
            disk.validate()?;
            claim_id(&disk.id)?;
            if !images.insert(disk.path.as_path()) {
                return Err(ConfigError::DuplicateDiskPath(disk.path.clone()));
            }
        }
        self.validate_net(&mut claim_id)?;
        if let Some(rng) = &self.rng {
            rng.validate()?;
        }
        Ok(())
    }

    /// What boots: `payload.kernel`, or else the one disk with `boot`.
    fn validate_boot_disk(&self) -> Result<(), ConfigError> {
        let mut boot = self.disks.iter().filter(|d| d.boot);
        let first = boot.next();
        if let (Some(first), Some(second)) = (first, boot.next()) {
            return Err(ConfigError::TwoBootDisks {
                first: first.path.clone(),
                second: second.path.clone(),
            });
        }
        match (&self.payload.kernel, first) {
            (Some(_), Some(disk)) => Err(ConfigError::KernelAndBootDisk(disk.path.clone())),
            (None, None) => Err(ConfigError::NoKernel),
            (None, Some(_)) if self.payload.initramfs.is_some() => {
                Err(ConfigError::InitramfsWithoutKernel)
            }
            _ => Ok(()),
        }
    }

    /// The disk the VM boots from (`boot`), when it has no kernel.
    pub fn boot_disk(&self) -> Option<&DiskConfig> {
        if self.payload.kernel.is_some() {
            return None;
        }
        self.disks.iter().find(|d| d.boot)
    }

    fn validate_net(
        &self,
        claim_id: &mut impl FnMut(&Option<String>) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let mut taps = HashSet::new();
        let mut fds = HashSet::new();
        let mut macs = HashSet::new();
        for net in &self.net {
            net.validate()?;
            claim_id(&net.id)?;
            if let Some(tap) = &net.tap {
                if !taps.insert(tap.as_str()) {
                    return Err(ConfigError::DuplicateTap(tap.clone()));
                }
            }
            if let Some(fd) = net.tap_fd() {
                if !fds.insert(fd) {
                    return Err(ConfigError::DuplicateNetFd(fd));
                }
            }
            if let Some(bytes) = net.mac_bytes().transpose()? {
                if !macs.insert(bytes) {
                    return Err(ConfigError::DuplicateMac(
                        net.mac.clone().unwrap_or_default(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    #[serde(default)]
    pub cpus: CpusConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Required, as in Cloud Hypervisor; `{}` (no kernel) with a disk with `boot`.
    pub payload: PayloadConfig,
    #[serde(default)]
    pub serial: ConsoleConfig,
    #[serde(default = "ConsoleConfig::off")]
    pub console: ConsoleConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    /// virtio-blk devices, in the order they go on the PCI bus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices, after the disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// A virtio-rng device when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// Guest NUMA nodes ([`numa`]); without them the guest has one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<Vec<NumaConfig>>,
}

/// The same defaults as the JSON's: in particular the console is off, since any
/// other mode adds a virtio-console device.
impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: PayloadConfig::default(),
            serial: ConsoleConfig::default(),
            console: ConsoleConfig::off(),
            devices: Vec::new(),
            disks: Vec::new(),
            net: Vec::new(),
            rng: None,
            numa: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u8,
    pub max_vcpus: u8,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        }
    }
}

impl CpusConfig {
    pub const OPTIONS: &'static [&'static str] = &["boot", "max"];

    /// Parses `--cpus boot=N[,max=M]`; `max` defaults to `boot`.
    pub fn parse(input: &str) -> Result<CpusConfig, ParseError> {
        const FLAG: &str = "--cpus";
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let boot_vcpus = opts.get::<u8>("boot")?.unwrap_or(1);
        let max_vcpus = opts.get::<u8>("max")?.unwrap_or(boot_vcpus);
        let cpus = CpusConfig {
            boot_vcpus,
            max_vcpus,
        };
        cpus.validate().map_err(invalid(FLAG, input))?;
        Ok(cpus)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.boot_vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.boot_vcpus > self.max_vcpus {
            return Err(ConfigError::BootAboveMax {
                boot: self.boot_vcpus,
                max: self.max_vcpus,
            });
        }
        Ok(())
    }
}

pub const DEFAULT_MEMORY_SIZE: u64 = 512 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Back RAM with a shared mapping (memfd), as vhost-user back ends need.
    #[serde(default)]
    pub shared: bool,
    /// Back RAM with huge pages from the host's hugetlbfs pool.
    #[serde(default)]
    pub hugepages: bool,
    /// The huge page size, in bytes: 2 MiB or 1 GiB (Cloud Hypervisor's
    /// `hugepage_size`). Without it the host's default size (`Hugepagesize` in
    /// /proc/meminfo, 2 MiB unless the host boots with `default_hugepagesz=`), so a
    /// host that reserved only 1 GiB pages needs it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    /// Take guest RAM from this host NUMA node only, and run the vCPUs on its
    /// CPUs (Cloud Hypervisor's memory zones call the node the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_numa_node: Option<u32>,
    /// When guest RAM is mapped for passed-through devices' DMA.
    #[serde(default, skip_serializing_if = "DmaMapOrder::is_default")]
    pub dma_map: DmaMapOrder,
    /// Guest RAM as separately backed zones, in guest physical order ([`numa`]);
    /// then `size` is 0 or their total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<MemoryZoneConfig>>,
}

/// When a VM with passed-through devices maps its RAM in the IOMMU (pinning it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmaMapOrder {
    /// While the guest starts: a worker maps RAM, low addresses first, and a
    /// device's first Bus Master Enable (and any hotplug) waits until all of it is
    /// mapped, so no device can reach an unmapped page. The start no longer grows
    /// with RAM.
    #[default]
    Deferred,
    /// All of RAM before the first guest instruction, as before deferral (kept to
    /// compare and as a fallback).
    Upfront,
}

impl DmaMapOrder {
    pub fn is_default(&self) -> bool {
        *self == DmaMapOrder::default()
    }
}

impl OptionValue for DmaMapOrder {
    fn from_option(raw: &str) -> Result<DmaMapOrder, String> {
        match raw {
            "deferred" => Ok(DmaMapOrder::Deferred),
            "upfront" => Ok(DmaMapOrder::Upfront),
            _ => Err("expected deferred or upfront".to_string()),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY_SIZE,
            shared: false,
            hugepages: false,
            hugepage_size: None,
            host_numa_node: None,
            dma_map: DmaMapOrder::default(),
            zones: None,
        }
    }
}

/// The huge page sizes x86-64 has.
pub const HUGEPAGE_SIZES: [u64; 2] = [2 << 20, 1 << 30];

impl MemoryConfig {
    pub const OPTIONS: &'static [&'static str] = &[
        "size",
        "shared",
        "hugepages",
        "hugepage_size",
        "host_numa_node",
        "dma_map",
    ];

    /// Parses `--memory size=512M[,shared=on][,hugepages=on[,hugepage_size=2M|1G]][,host_numa_node=N][,dma_map=deferred|upfront]`;
    /// `size` defaults to [`DEFAULT_MEMORY_SIZE`]. Whether node N exists is the
    /// host's business, checked when the VM is built.
    pub fn parse(input: &str) -> Result<MemoryConfig, ParseError> {
        let memory = Self::parse_options(input)?;
        memory.validate().map_err(invalid("--memory", input))?;
        Ok(memory)
    }

    /// `--memory`'s options, not yet validated (zones may come with them).
    fn parse_options(input: &str) -> Result<MemoryConfig, ParseError> {
        let opts = Options::parse("--memory", input, Self::OPTIONS)?;
        Ok(MemoryConfig {
            size: opts
                .get::<ByteSize>("size")?
                .map_or(DEFAULT_MEMORY_SIZE, |s| s.0),
            shared: opts.get("shared")?.unwrap_or(false),
            hugepages: opts.get("hugepages")?.unwrap_or(false),
            hugepage_size: opts.get::<ByteSize>("hugepage_size")?.map(|s| s.0),
            host_numa_node: opts.get("host_numa_node")?,
            dma_map: opts.get("dma_map")?.unwrap_or_default(),
            zones: None,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.zones().is_empty() {
            return Ok(numa::validate_zones(self, self.zones())?);
        }
        if self.size == 0 {
            return Err(ConfigError::ZeroMemory);
        }
        if !self.size.is_multiple_of(PAGE_SIZE) {
            return Err(ConfigError::UnalignedMemory(self.size));
        }
        if let Some(page) = self.hugepage_size {
            if !self.hugepages {
                return Err(ConfigError::HugepageSizeWithoutHugepages);
            }
            if !HUGEPAGE_SIZES.contains(&page) {
                return Err(ConfigError::HugepageSize(page));
            }
            if !self.size.is_multiple_of(page) {
                return Err(ConfigError::HugepageAlignment {
                    size: self.size,
                    page,
                });
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// Optional when a disk has `boot`: the VM then boots that disk's own boot
    /// configuration (`cmdline` is appended to the entry's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

impl PayloadConfig {
    /// Checks the files given; whether a kernel is needed is
    /// [`VmConfig::validate`]'s business (a boot disk may stand in for it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(kernel) = &self.kernel {
            check_readable_file("kernel", kernel)?;
        }
        if let Some(initramfs) = &self.initramfs {
            check_readable_file("initramfs", initramfs)?;
        }
        Ok(())
    }
}

/// The payload files are opened later, by `Vm::new`; checking now turns a typo into
/// an error that names the flag's file instead of a failure deep in the boot path.
fn check_readable_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let unusable = |reason: String| ConfigError::UnusableFile {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| unusable(e.to_string()))?;
    if !metadata.is_file() {
        return Err(unusable("not a regular file".to_string()));
    }
    std::fs::File::open(path).map_err(|e| unusable(e.to_string()))?;
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    Off,
    Pty,
    #[default]
    Tty,
    File,
    Null,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleOutputMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl ConsoleConfig {
    pub fn off() -> Self {
        ConsoleConfig {
            mode: ConsoleOutputMode::Off,
            file: None,
        }
    }

    /// Parses `--serial`/`--console`: `off`, `null`, `tty`, `pty` or `file=PATH`.
    pub fn parse(flag: &'static str, input: &str) -> Result<ConsoleConfig, ParseError> {
        let mode = match input {
            "off" => ConsoleOutputMode::Off,
            "null" => ConsoleOutputMode::Null,
            "tty" => ConsoleOutputMode::Tty,
            "pty" => ConsoleOutputMode::Pty,
            _ => {
                let opts = Options::parse(flag, input, &["file"]).map_err(|e| match e {
                    OptionError::UnknownKey { .. } => ParseError::UnknownOutput {
                        flag,
                        input: input.to_string(),
                    },
                    other => other.into(),
                })?;
                return Ok(ConsoleConfig {
                    mode: ConsoleOutputMode::File,
                    file: Some(opts.require("file")?),
                });
            }
        };
        Ok(ConsoleConfig { mode, file: None })
    }

    pub fn validate(&self, which: &'static str) -> Result<(), ConfigError> {
        if self.mode == ConsoleOutputMode::File
            && self.file.as_ref().is_none_or(|f| f.as_os_str().is_empty())
        {
            return Err(ConfigError::OutputFileMissing { which });
        }
        Ok(())
    }
}

/// A host device passed through with VFIO, named by its sysfs path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub iommu: bool,
    #[serde(default)]
    pub pci_segment: u16,
    /// The guest NUMA node the device belongs to: it goes on that node's PCI root
    /// bus (node 0's is bus 0, node N's bus `0x10 × N`), whose host bridge's `_PXM`
    /// gives the guest the device's node. Without it, bus 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
    /// NVIDIA GPUDirect P2P clique id advertised to the guest driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_nv_gpudirect_clique: Option<u8>,
}

impl DeviceConfig {
    pub const OPTIONS: &'static [&'static str] = &[
        "path",
        "id",
        "iommu",
        "pci_segment",
        "numa_node",
        "x_nv_gpudirect_clique",
    ];

    /// Parses `--device path=/sys/bus/pci/devices/BDF[,id=NAME][,iommu=off]
    /// [,pci_segment=0][,numa_node=N][,x_nv_gpudirect_clique=N]`; what [`DeviceConfig::validate`]
    /// refuses is a parse error.
    pub fn parse(input: &str) -> Result<DeviceConfig, ParseError> {
        const FLAG: &str = "--device";
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let device = DeviceConfig {
            path: opts.require("path")?,
            id: opts.get("id")?,
            iommu: opts.get("iommu")?.unwrap_or(false),
            pci_segment: opts.get("pci_segment")?.unwrap_or(0),
            numa_node: opts.get("numa_node")?,
            x_nv_gpudirect_clique: opts.get("x_nv_gpudirect_clique")?,
        };
        device.validate().map_err(invalid(FLAG, input))?;
        Ok(device)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyDevicePath);
        }
        if self.pci_segment != 0 {
            return Err(ConfigError::DeviceSegment {
                path: self.path.clone(),
                segment: self.pci_segment,
            });
        }
        if self.iommu {
            return Err(ConfigError::DeviceIommu(self.path.clone()));
        }
        match self.numa_node {
            Some(node) if node >= DEVICE_NUMA_NODES => Err(ConfigError::DeviceNumaNodeRange {
                path: self.path.clone(),
                node,
            }),
            _ => Ok(()),
        }
    }

    /// `numa_node` names one of the VM's guest nodes (`numa`).
    pub fn validate_numa_node(&self, numa: Option<&[NumaConfig]>) -> Result<(), ConfigError> {
        let Some(node) = self.numa_node else {
            return Ok(());
        };
        if !numa.unwrap_or(&[]).iter().any(|n| n.guest_numa_id == node) {
            return Err(ConfigError::DeviceNumaNodeUnknown {
                path: self.path.clone(),
                node,
            });
        }
        Ok(())
    }

    /// For a device added to a built VM whose guest nodes are `numa`: only bus 0
    /// has a hotplug controller, so a node other than 0 is refused.
    pub fn validate_hotplug(&self, numa: Option<&[NumaConfig]>) -> Result<(), ConfigError> {
        self.validate_numa_node(numa)?;
        match self.numa_node {
            Some(node) if node != 0 => Err(ConfigError::DeviceNumaNodeHotplug {
                path: self.path.clone(),
                node,
            }),
            _ => Ok(()),
        }
    }
}

/// Guest nodes a device can be placed on: node N's root bus is bus `0x10 × N`,
/// and the ECAM window has 128 buses (vm-allocator's `pci_roots`).
pub const DEVICE_NUMA_NODES: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloud_hypervisor_shape_with_defaults() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"/k","cmdline":"hello"},"memory":{"size":67108864},
                "devices":[{"path":"/sys/bus/pci/devices/0000:01:00.0","x_nv_gpudirect_clique":3}]}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.payload.kernel.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        assert_eq!(cfg.memory.size, 64 << 20);
        assert!(!cfg.memory.shared);
        assert_eq!(cfg.cpus.boot_vcpus, 1);
        assert_eq!(cfg.serial.mode, ConsoleOutputMode::Tty);
        assert_eq!(cfg.console.mode, ConsoleOutputMode::Off);
        assert_eq!(cfg.devices[0].x_nv_gpudirect_clique, Some(3));
    }

    fn kernel_file() -> tempfile_path::TempFile {
        tempfile_path::TempFile::new("kernel")
    }

    /// A file that exists for the test's lifetime; std only, so no dev-dependency.
    mod tempfile_path {
        use std::path::PathBuf;

        pub struct TempFile(pub PathBuf);

        impl TempFile {
            pub fn new(tag: &str) -> TempFile {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "form-vmm-config-test-{}-{}-{tag}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, b"\x7fELF").unwrap();
                TempFile(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn bootable(kernel: &std::path::Path) -> VmConfig {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(kernel.to_path_buf()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn memory_takes_a_huge_page_size_with_huge_pages_only() {
        let memory = MemoryConfig::parse("size=4G,hugepages=on,hugepage_size=1G").unwrap();
        assert_eq!(memory.hugepage_size, Some(1 << 30));
        for (input, says) in [
            ("size=4G,hugepage_size=1G", "add hugepages=on"),
            ("size=4G,hugepages=on,hugepage_size=4M", "2M or 1G"),
            ("size=3M,hugepages=on,hugepage_size=2M", "not a multiple"),
        ] {
            let err = MemoryConfig::parse(input).unwrap_err().to_string();
            assert!(err.contains(says), "{input}: {err}");
        }
    }

    #[test]
    fn dma_map_order_is_deferred_unless_asked_and_kept_out_of_json_by_default() {
        assert_eq!(
            MemoryConfig::parse("size=1G").unwrap().dma_map,
            DmaMapOrder::Deferred
        );
        let upfront = MemoryConfig::parse("size=1G,dma_map=upfront").unwrap();
        assert_eq!(upfront.dma_map, DmaMapOrder::Upfront);
        let json = serde_json::to_string(&upfront).unwrap();
        assert!(json.contains(r#""dma_map":"upfront""#), "{json}");
        let default = serde_json::to_string(&MemoryConfig::default()).unwrap();
        assert!(!default.contains("dma_map"), "{default}");
        let err = MemoryConfig::parse("size=1G,dma_map=later")
            .unwrap_err()
            .to_string();
        assert!(err.contains("deferred or upfront"), "{err}");
    }

    #[test]
    fn cpus_option_defaults_max_to_boot() {
        assert_eq!(
            CpusConfig::parse("boot=4").unwrap(),
            CpusConfig {
                boot_vcpus: 4,
                max_vcpus: 4
            }
        );
        assert_eq!(
            CpusConfig::parse("boot=2,max=8").unwrap(),
            CpusConfig {
                boot_vcpus: 2,
                max_vcpus: 8
            }
        );
    }

    #[test]
    fn cpus_option_rejects_zero_and_boot_above_max() {
        assert_eq!(
            CpusConfig::parse("boot=0").unwrap_err().to_string(),
            "--cpus boot=0: at least one vCPU is required"
        );
        assert_eq!(
            CpusConfig::parse("boot=4,max=2").unwrap_err().to_string(),
            "--cpus boot=4,max=2: boot vCPUs (4) exceed max vCPUs (2)"
        );
        assert_eq!(
            CpusConfig::parse("bot=1").unwrap_err().to_string(),
            "--cpus: unknown option 'bot'; valid options: boot, max"
        );
    }

    #[test]
    fn memory_option_parses_size_and_switches() {
        assert_eq!(
            MemoryConfig::parse("size=64M,shared=on,hugepages=off").unwrap(),
            MemoryConfig {
                size: 64 << 20,
                shared: true,
                hugepages: false,
                hugepage_size: None,
                host_numa_node: None,
                dma_map: DmaMapOrder::Deferred,
                zones: None,
            }
        );
        assert_eq!(
            MemoryConfig::parse("shared=on").unwrap().size,
            DEFAULT_MEMORY_SIZE
        );
    }

    #[test]
    fn memory_option_takes_a_host_numa_node() {
        let memory = MemoryConfig::parse("size=1G,host_numa_node=1").unwrap();
        assert_eq!(memory.host_numa_node, Some(1));
        assert_eq!(memory.size, 1 << 30);
        assert_eq!(MemoryConfig::parse("size=1G").unwrap().host_numa_node, None);
        assert_eq!(
            MemoryConfig::parse("host_numa_node=-1")
                .unwrap_err()
                .to_string(),
            "--memory host_numa_node=-1: expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            MemoryConfig::parse("host_numa_node=zero")
                .unwrap_err()
                .to_string(),
            "--memory host_numa_node=zero: expected a whole number from 0 to 4294967295"
        );
        // The JSON field is Cloud Hypervisor's name, absent when unset.
        let json = serde_json::to_value(&memory).unwrap();
        assert_eq!(json["host_numa_node"], 1);
        let unset = serde_json::to_value(MemoryConfig::default()).unwrap();
        assert!(unset.get("host_numa_node").is_none(), "{unset}");
        let parsed: MemoryConfig =
            serde_json::from_str(r#"{"size":1073741824,"host_numa_node":0}"#).unwrap();
        assert_eq!(parsed.host_numa_node, Some(0));
    }

    #[test]
    fn memory_option_rejects_bad_sizes_and_keys() {
        assert_eq!(
            MemoryConfig::parse("sizee=1G").unwrap_err().to_string(),
            "--memory: unknown option 'sizee'; valid options: size, shared, hugepages, hugepage_size, host_numa_node, dma_map"
        );
        assert_eq!(
            MemoryConfig::parse("size=0").unwrap_err().to_string(),
            "--memory size=0: memory size must be greater than zero"
        );
        assert_eq!(
            MemoryConfig::parse("size=1000").unwrap_err().to_string(),
            "--memory size=1000: memory size 1000 bytes is not a multiple of 4 KiB"
        );
    }

    #[test]
    fn serial_option_modes() {
        let parse = |s| ConsoleConfig::parse("--serial", s);
        assert_eq!(parse("tty").unwrap().mode, ConsoleOutputMode::Tty);
        assert_eq!(parse("off").unwrap().mode, ConsoleOutputMode::Off);
        assert_eq!(parse("null").unwrap().mode, ConsoleOutputMode::Null);
        assert_eq!(
            parse("file=/tmp/serial.log").unwrap(),
            ConsoleConfig {
                mode: ConsoleOutputMode::File,
                file: Some("/tmp/serial.log".into())
            }
        );
        assert_eq!(
            parse("socket=/x").unwrap_err().to_string(),
            "--serial: unknown output 'socket=/x'; valid: off, null, tty, pty, file=PATH"
        );
        assert_eq!(
            parse("file=").unwrap_err().to_string(),
            "--serial: option 'file' needs a value (file=...)"
        );
    }

    #[test]
    fn device_option_parses_every_key() {
        let device = DeviceConfig::parse(
            "path=/sys/bus/pci/devices/0000:01:00.0,id=gpu0,iommu=off,pci_segment=0,x_nv_gpudirect_clique=7",
        )
        .unwrap();
        assert_eq!(
            device,
            DeviceConfig {
                path: "/sys/bus/pci/devices/0000:01:00.0".into(),
                id: Some("gpu0".into()),
                iommu: false,
                pci_segment: 0,
                numa_node: None,
                x_nv_gpudirect_clique: Some(7),
            }
        );
        let on_node =
            DeviceConfig::parse("path=/sys/bus/pci/devices/0000:01:00.0,numa_node=1").unwrap();
        assert_eq!(on_node.numa_node, Some(1));
        let json = serde_json::to_value(&on_node).unwrap();
        assert_eq!(json["numa_node"], 1);
        let err = DeviceConfig::parse("path=/sys/bus/pci/devices/0000:01:00.0,numa_node=8")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only guest nodes 0 to 7"), "{err}");
        let err = DeviceConfig::parse("path=/sys/bus/pci/devices/0000:01:00.0,iommu=on")
            .unwrap_err()
            .to_string();
        assert!(err.contains("iommu=on"), "{err}");
        assert!(err.contains("is not supported"), "{err}");
        let err = DeviceConfig::parse("path=/sys/bus/pci/devices/0000:01:00.0,pci_segment=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PCI segment 1 does not exist"), "{err}");
        assert_eq!(
            DeviceConfig::parse("id=gpu0").unwrap_err().to_string(),
            "--device: option 'path' is required (path=...)"
        );
    }

    #[test]
    fn a_device_goes_on_a_guest_node_that_exists_and_is_hotplugged_on_node_0_only() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        let device = DeviceConfig {
            path: "/sys/bus/pci/devices/0000:01:00.0".into(),
            numa_node: Some(1),
            ..Default::default()
        };
        config.devices = vec![device.clone()];
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::DeviceNumaNodeUnknown {
                path: device.path.clone(),
                node: 1
            }
        );
        assert!(err.to_string().contains("no guest NUMA node 1"), "{err}");

        let nodes = [
            NumaConfig::parse("guest_numa_id=0,memory_zones=m0").unwrap(),
            NumaConfig::parse("guest_numa_id=1,memory_zones=m1").unwrap(),
        ];
        device.validate_numa_node(Some(&nodes)).unwrap();
        device.validate_numa_node(Some(&nodes[..1])).unwrap_err();
        let err = device.validate_hotplug(Some(&nodes)).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::DeviceNumaNodeHotplug { node: 1, .. }
        ));
        assert!(err.to_string().contains("cold-plugged only"), "{err}");
        let on_node_0 = DeviceConfig {
            numa_node: Some(0),
            ..device.clone()
        };
        on_node_0.validate_hotplug(Some(&nodes)).unwrap();
        assert!(matches!(
            on_node_0.validate_hotplug(None),
            Err(ConfigError::DeviceNumaNodeUnknown { node: 0, .. })
        ));
        let anywhere = DeviceConfig {
            numa_node: None,
            ..device
        };
        anywhere.validate_hotplug(None).unwrap();
    }

    #[test]
    fn validate_accepts_a_bootable_config() {
        let kernel = kernel_file();
        bootable(&kernel.0).validate().unwrap();
    }

    #[test]
    fn validate_requires_an_existing_kernel() {
        assert_eq!(VmConfig::default().validate(), Err(ConfigError::NoKernel));
        let err = bootable(std::path::Path::new("/nonexistent/vmlinux"))
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel /nonexistent/vmlinux: No such file or directory (os error 2)"
        );
        let err = bootable(&std::env::temp_dir()).validate().unwrap_err();
        assert!(err.to_string().ends_with(": not a regular file"), "{err}");
    }

    #[test]
    fn a_boot_disk_stands_in_for_the_kernel() {
        let boot = |path: &str| DiskConfig {
            path: path.into(),
            boot: true,
            ..Default::default()
        };
        let mut config = VmConfig {
            disks: vec![
                DiskConfig::parse("path=/seed").unwrap(),
                boot("/root.qcow2"),
            ],
            ..Default::default()
        };
        config.validate().unwrap();
        assert_eq!(
            config.boot_disk().unwrap().path,
            PathBuf::from("/root.qcow2")
        );
        // The user's cmdline is allowed (appended); an initramfs is not.
        config.payload.cmdline = Some("single".into());
        config.validate().unwrap();
        config.payload.initramfs = Some("/initrd".into());
        assert_eq!(config.validate(), Err(ConfigError::InitramfsWithoutKernel));
        config.payload.initramfs = None;

        config.disks.push(boot("/other.raw"));
        let err = config.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "disks /root.qcow2 and /other.raw both have boot=on; at most one disk boots the VM"
        );
        config.disks.pop();

        let kernel = kernel_file();
        config.payload.kernel = Some(kernel.0.clone());
        assert_eq!(
            config.validate(),
            Err(ConfigError::KernelAndBootDisk("/root.qcow2".into()))
        );
        assert!(config.boot_disk().is_none());

        // JSON: an empty payload.
        let json: VmConfig =
            serde_json::from_str(r#"{"payload":{},"disks":[{"path":"/root.qcow2","boot":true}]}"#)
                .unwrap();
        json.validate().unwrap();
        let text = serde_json::to_string(&json).unwrap();
        assert!(!text.contains("kernel"), "{text}");
        assert!(text.contains(r#""boot":true"#), "{text}");
    }

    #[test]
    fn validate_checks_the_initramfs() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.payload.initramfs = Some("/nonexistent/initrd".into());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::UnusableFile {
                what: "initramfs",
                ..
            })
        ));
    }

    #[test]
    fn validate_rejects_what_json_can_express_but_cannot_boot() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.cpus = CpusConfig {
            boot_vcpus: 0,
            max_vcpus: 0,
        };
        assert_eq!(config.validate(), Err(ConfigError::NoVcpus));

        let mut config = bootable(&kernel.0);
        config.cpus = CpusConfig {
            boot_vcpus: 3,
            max_vcpus: 2,
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::BootAboveMax { boot: 3, max: 2 })
        );

        let mut config = bootable(&kernel.0);
        config.memory.size = 0;
        assert_eq!(config.validate(), Err(ConfigError::ZeroMemory));

        let mut config = bootable(&kernel.0);
        config.serial = ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: None,
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::OutputFileMissing { which: "serial" })
        );

        let mut config = bootable(&kernel.0);
        let device = DeviceConfig {
            path: "/sys/x".into(),
            id: Some("a".into()),
            ..Default::default()
        };
        config.devices = vec![
            device.clone(),
            DeviceConfig {
                path: "/sys/y".into(),
                ..device.clone()
            },
        ];
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateDeviceId("a".into()))
        );
        config.devices = vec![device.clone(), DeviceConfig { id: None, ..device }];
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateDevicePath("/sys/x".into()))
        );
    }

    #[test]
    fn validate_wants_unique_ids_across_every_kind_of_device() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.devices = vec![DeviceConfig {
            path: "/sys/x".into(),
            id: Some("a".into()),
            ..Default::default()
        }];
        config.disks = vec![DiskConfig::parse("path=/img,id=b").unwrap()];
        config.net = vec![NetConfig::parse("tap=tap0,id=c").unwrap()];
        config.validate().unwrap();
        config.net[0].id = Some("a".into());
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateDeviceId("a".into()))
        );
        config.net[0].id = Some("b".into());
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateDeviceId("b".into()))
        );
        config.net[0].id = None;
        config
            .disks
            .push(DiskConfig::parse("path=/img2,id=a").unwrap());
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateDeviceId("a".into()))
        );
    }

    #[test]
    fn validate_refuses_a_disk_tap_fd_or_mac_twice() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.disks = vec![
            DiskConfig::parse("path=/img").unwrap(),
            DiskConfig::parse("path=/img,readonly=on").unwrap(),
        ];
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateDiskPath("/img".into()))
        );

        let mut config = bootable(&kernel.0);
        config.net = vec![
            NetConfig::parse("tap=tap0").unwrap(),
            NetConfig::parse("tap=tap0").unwrap(),
        ];
        assert_eq!(
            config.validate(),
            Err(ConfigError::DuplicateTap("tap0".into()))
        );
        config.net = vec![
            NetConfig::parse("fd=7").unwrap(),
            NetConfig::parse("fd=7").unwrap(),
        ];
        assert_eq!(config.validate(), Err(ConfigError::DuplicateNetFd(7)));
        config.net[1] = NetConfig {
            fds: Some(vec![7]),
            ..Default::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::DuplicateNetFd(7)));
        config.net = vec![
            NetConfig::parse("tap=tap0,mac=52:54:00:00:00:01").unwrap(),
            NetConfig::parse("tap=tap1,mac=52:54:00:00:00:01").unwrap(),
        ];
        let err = config.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "MAC address 52:54:00:00:00:01 is given to more than one network device"
        );
    }

    #[test]
    fn validate_checks_virtio_entries_given_as_json() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.net = vec![NetConfig {
            tap: Some("tap0".into()),
            fd: Some(3),
            ..Default::default()
        }];
        assert_eq!(config.validate(), Err(ConfigError::NetTapOrFd));
        config.net = vec![NetConfig {
            fd: Some(-2),
            ..Default::default()
        }];
        assert_eq!(config.validate(), Err(ConfigError::NetFd(-2)));
        config.net.clear();
        config.disks = vec![DiskConfig::default()];
        assert_eq!(config.validate(), Err(ConfigError::EmptyDiskPath));
        config.disks = vec![DiskConfig {
            path: "/img".into(),
            id: Some(String::new()),
            ..Default::default()
        }];
        assert_eq!(config.validate(), Err(ConfigError::EmptyDeviceId));
        config.disks.clear();
        config.rng = Some(RngConfig { src: "".into() });
        assert_eq!(config.validate(), Err(ConfigError::EmptyRngSource));
    }

    #[test]
    fn serial_and_console_cannot_both_own_the_terminal() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.console = ConsoleConfig::parse("--console", "tty").unwrap();
        assert_eq!(config.validate(), Err(ConfigError::DoubleTty));
        config.serial = ConsoleConfig::off();
        config.validate().unwrap();
    }

    #[test]
    fn virtio_devices_in_the_cloud_hypervisor_shape() {
        let cfg: VmConfig = serde_json::from_str(
            r#"{"payload":{"kernel":"/k"},
                "disks":[{"path":"/img.raw"},{"path":"/seed.img","readonly":true,"id":"seed"}],
                "net":[{"tap":"tap0","mac":"52:54:00:12:34:56"},{"fd":5}],
                "rng":{"src":"/dev/hwrng"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.disks.len(), 2);
        assert!(cfg.disks[1].readonly);
        assert_eq!(cfg.disks[1].id.as_deref(), Some("seed"));
        assert_eq!(cfg.net[0].tap.as_deref(), Some("tap0"));
        assert_eq!(cfg.net[1].fd, Some(5));
        assert_eq!(
            cfg.rng,
            Some(RngConfig {
                src: "/dev/hwrng".into()
            })
        );

        let empty: VmConfig = serde_json::from_str(r#"{"payload":{"kernel":"/k"}}"#).unwrap();
        assert!(empty.disks.is_empty() && empty.net.is_empty() && empty.rng.is_none());
        let json = serde_json::to_string(&empty).unwrap();
        for absent in ["disks", "net", "rng"] {
            assert!(!json.contains(absent), "{json}");
        }
    }

    #[test]
    fn parsed_config_round_trips_through_json() {
        let kernel = kernel_file();
        let mut config = bootable(&kernel.0);
        config.memory = MemoryConfig::parse("size=1G,hugepages=on").unwrap();
        config
            .devices
            .push(DeviceConfig::parse("path=/sys/bus/pci/devices/0000:02:00.0").unwrap());
        config
            .disks
            .push(DiskConfig::parse("path=/img,direct=on").unwrap());
        config
            .net
            .push(NetConfig::parse("tap=tap0,mac=52:54:00:12:34:56").unwrap());
        config.rng = Some(RngConfig::default());
        config.console = ConsoleConfig::parse("--console", "null").unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);
    }
}
