//! What the host has: PCI functions read from sysfs, and the GPUs among them with
//! everything a placement or passthrough decision needs.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::class;
use super::error::GpuError;
use super::host::{link_name, parse_hex, read_attr, HostPaths};
use super::names;
use super::resource::{parse_bars, Bar};
use super::Bdf;

/// Tells which VM holds a device; the service answers from its state, the CLI has none.
pub trait OwnerLookup {
    fn owner_of(&self, bdf: &Bdf) -> Option<String>;
}

/// No device is owned by any VM.
pub struct NoOwners;

impl OwnerLookup for NoOwners {
    fn owner_of(&self, _bdf: &Bdf) -> Option<String> {
        None
    }
}

impl<F: Fn(&Bdf) -> Option<String>> OwnerLookup for F {
    fn owner_of(&self, bdf: &Bdf) -> Option<String> {
        self(bdf)
    }
}

/// The sysfs attributes of one PCI function that binding decisions use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciFunction {
    pub bdf: Bdf,
    /// 24-bit class code (base, subclass, programming interface).
    pub class: u32,
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: Option<u16>,
    pub subsystem_device_id: Option<u16>,
    /// The driver bound now, if any.
    pub driver: Option<String>,
    /// `driver_override`, if set.
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    /// `None` on single-node hosts (the kernel reports -1).
    pub numa_node: Option<u32>,
    /// The firmware's console device (`boot_vga` = 1; only VGA-class functions have it).
    pub boot_vga: bool,
}

impl PciFunction {
    /// Reads a function's attributes from `<sysfs>/bus/pci/devices/<bdf>`.
    pub fn read(host: &HostPaths, bdf: &Bdf) -> Result<Self, GpuError> {
        let dir = host.device_dir(bdf);
        if !dir.exists() {
            return Err(GpuError::NoSuchDevice {
                bdf: *bdf,
                path: dir,
            });
        }
        let class = required_hex(&dir.join("class"))?;
        let vendor_id = required_hex(&dir.join("vendor"))?;
        let device_id = required_hex(&dir.join("device"))?;
        let subsystem_vendor_id = optional_hex(&dir.join("subsystem_vendor"))?;
        let subsystem_device_id = optional_hex(&dir.join("subsystem_device"))?;
        let driver = read_link(&dir.join("driver"))?;
        let driver_override = read_text(&dir.join("driver_override"))?
            .filter(|value| !value.is_empty() && value != "(null)");
        let iommu_group = match read_link(&dir.join("iommu_group"))? {
            Some(name) => Some(name.parse().map_err(|_| GpuError::Unparseable {
                path: dir.join("iommu_group"),
                value: name,
            })?),
            None => None,
        };
        let numa_node = read_text(&dir.join("numa_node"))?
            .and_then(|text| text.parse::<i64>().ok())
            .and_then(|node| u32::try_from(node).ok());
        let boot_vga = read_text(&dir.join("boot_vga"))?.as_deref() == Some("1");
        Ok(Self {
            bdf: *bdf,
            class: narrow(class, &dir.join("class"))?,
            vendor_id: narrow(vendor_id, &dir.join("vendor"))?,
            device_id: narrow(device_id, &dir.join("device"))?,
            subsystem_vendor_id: subsystem_vendor_id.and_then(|v| u16::try_from(v).ok()),
            subsystem_device_id: subsystem_device_id.and_then(|v| u16::try_from(v).ok()),
            driver,
            driver_override,
            iommu_group,
            numa_node,
            boot_vga,
        })
    }

    pub fn is_gpu(&self) -> bool {
        class::is_gpu(self.class)
    }

    pub fn is_bridge(&self) -> bool {
        class::is_bridge(self.class)
    }
}

/// A short description of a function that shares a group or a slot with a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionSummary {
    pub bdf: Bdf,
    pub class: u32,
    pub class_name: Option<String>,
    pub vendor_id: u16,
    pub device_id: u16,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub is_bridge: bool,
}

impl FunctionSummary {
    fn of(function: &PciFunction) -> Self {
        Self {
            bdf: function.bdf,
            class: function.class,
            class_name: names::class_name(function.class).map(str::to_string),
            vendor_id: function.vendor_id,
            device_id: function.device_id,
            name: names::device_name(function.vendor_id, function.device_id).map(str::to_string),
            driver: function.driver.clone(),
            is_bridge: function.is_bridge(),
        }
    }
}

/// PCIe link state, as the kernel reports it (`16.0 GT/s PCIe`, width in lanes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcieLink {
    pub current_speed: Option<String>,
    pub current_width: Option<u32>,
    pub max_speed: Option<String>,
    pub max_width: Option<u32>,
}

/// One GPU or accelerator and its surroundings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    #[serde(flatten)]
    pub function: PciFunction,
    pub class_name: Option<String>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub subsystem_name: Option<String>,
    /// Every function in the IOMMU group, this one included, in address order.
    pub iommu_group_members: Vec<FunctionSummary>,
    /// Other functions of the same slot (HDMI audio, USB-C controller).
    pub companions: Vec<FunctionSummary>,
    pub bars: Vec<Bar>,
    pub link: Option<PcieLink>,
    /// The kernel's reset methods (`flr bus`), `reset` when it offers a reset
    /// without naming it, none when it cannot reset the GPU.
    pub reset_method: Option<String>,
    /// The VM that holds the GPU, if any.
    pub owner: Option<String>,
}

impl GpuInfo {
    pub fn bdf(&self) -> Bdf {
        self.function.bdf
    }

    /// A one-line name for tables: the database name, else the raw IDs.
    pub fn display_name(&self) -> String {
        match (&self.device_name, &self.vendor_name) {
            (Some(device), Some(vendor)) => format!("{vendor} {device}"),
            (Some(device), None) => device.clone(),
            _ => format!(
                "{:04x}:{:04x}",
                self.function.vendor_id, self.function.device_id
            ),
        }
    }

    /// Bytes of 64-bit memory BARs: what the guest's high MMIO window must hold.
    pub fn bar64_bytes(&self) -> u64 {
        self.bars
            .iter()
            .filter(|bar| bar.kind == super::resource::BarKind::Memory64)
            .fold(0u64, |sum, bar| sum.saturating_add(bar.size))
    }

    /// The largest single BAR (its size is also the alignment it needs).
    pub fn largest_bar(&self) -> u64 {
        self.bars.iter().map(|bar| bar.size).max().unwrap_or(0)
    }
}

/// Every GPU and accelerator on the host, in address order.
pub fn list_gpus(host: &HostPaths, owners: &dyn OwnerLookup) -> Result<Vec<GpuInfo>, GpuError> {
    // Listed once for every GPU's slot mates: re-reading the directory per GPU made
    // the inventory quadratic in the number of PCI functions.
    let functions = list_functions(host)?;
    let mut gpus = Vec::new();
    for bdf in &functions {
        let function = PciFunction::read(host, bdf)?;
        if function.is_gpu() {
            gpus.push(describe(host, function, &functions, owners)?);
        }
    }
    Ok(gpus)
}

/// One GPU; fails for functions that are not GPUs or accelerators.
pub fn gpu_info(
    host: &HostPaths,
    bdf: &Bdf,
    owners: &dyn OwnerLookup,
) -> Result<GpuInfo, GpuError> {
    let function = PciFunction::read(host, bdf)?;
    if !function.is_gpu() {
        return Err(GpuError::NotAGpu {
            bdf: *bdf,
            class: function.class,
        });
    }
    describe(host, function, &list_functions(host)?, owners)
}

/// Addresses of every PCI function on the host, sorted. Entries whose names are not
/// addresses are skipped: sysfs never has them, so they can only be debris.
pub fn list_functions(host: &HostPaths) -> Result<Vec<Bdf>, GpuError> {
    let dir = host.pci_devices_dir();
    let mut functions = bdfs_in(&dir)?;
    functions.sort();
    Ok(functions)
}

/// Addresses of the functions in an IOMMU group, sorted.
pub fn iommu_group_members(host: &HostPaths, group: u32) -> Result<Vec<Bdf>, GpuError> {
    let dir = host
        .iommu_groups_dir()
        .join(group.to_string())
        .join("devices");
    let mut members = bdfs_in(&dir)?;
    members.sort();
    Ok(members)
}

/// `functions`: every PCI function on the host, where the GPU's slot mates are found.
fn describe(
    host: &HostPaths,
    function: PciFunction,
    functions: &[Bdf],
    owners: &dyn OwnerLookup,
) -> Result<GpuInfo, GpuError> {
    let dir = host.device_dir(&function.bdf);
    let iommu_group_members = match function.iommu_group {
        Some(group) => summaries(host, &iommu_group_members(host, group)?)?,
        None => Vec::new(),
    };
    let slot_mates: Vec<Bdf> = functions
        .iter()
        .filter(|other| other.same_slot(&function.bdf) && **other != function.bdf)
        .copied()
        .collect();
    let companions = summaries(host, &slot_mates)?;
    let bars = match read_text(&dir.join("resource"))? {
        Some(text) => parse_bars(&text),
        None => Vec::new(),
    };
    let link = read_link_state(&dir)?;
    let (vendor, device) = (function.vendor_id, function.device_id);
    let subsystem_name = match (function.subsystem_vendor_id, function.subsystem_device_id) {
        (Some(sv), Some(sd)) => names::subsystem_name(vendor, device, sv, sd).map(str::to_string),
        _ => None,
    };
    Ok(GpuInfo {
        class_name: names::class_name(function.class).map(str::to_string),
        vendor_name: names::vendor_name(vendor).map(str::to_string),
        device_name: names::device_name(vendor, device).map(str::to_string),
        subsystem_name,
        iommu_group_members,
        companions,
        bars,
        link,
        reset_method: super::reset::ResetMethod::read(host, &function.bdf).describe(),
        owner: owners.owner_of(&function.bdf),
        function,
    })
}

fn summaries(host: &HostPaths, bdfs: &[Bdf]) -> Result<Vec<FunctionSummary>, GpuError> {
    bdfs.iter()
        .map(|bdf| PciFunction::read(host, bdf).map(|f| FunctionSummary::of(&f)))
        .collect()
}

fn read_link_state(dir: &Path) -> Result<Option<PcieLink>, GpuError> {
    let width = |name: &str| -> Result<Option<u32>, GpuError> {
        Ok(read_text(&dir.join(name))?.and_then(|text| text.trim_start_matches('x').parse().ok()))
    };
    let link = PcieLink {
        current_speed: read_text(&dir.join("current_link_speed"))?,
        current_width: width("current_link_width")?,
        max_speed: read_text(&dir.join("max_link_speed"))?,
        max_width: width("max_link_width")?,
    };
    let known = link.current_speed.is_some()
        || link.current_width.is_some()
        || link.max_speed.is_some()
        || link.max_width.is_some();
    Ok(known.then_some(link))
}

fn bdfs_in(dir: &Path) -> Result<Vec<Bdf>, GpuError> {
    let entries = fs::read_dir(dir).map_err(|e| GpuError::read(dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| GpuError::read(dir, e))?;
        match entry.file_name().to_str().map(str::parse::<Bdf>) {
            Some(Ok(bdf)) => found.push(bdf),
            _ => log::warn!("ignoring {:?} in {}", entry.file_name(), dir.display()),
        }
    }
    Ok(found)
}

fn read_text(path: &Path) -> Result<Option<String>, GpuError> {
    read_attr(path).map_err(|e| GpuError::read(path, e))
}

fn read_link(path: &Path) -> Result<Option<String>, GpuError> {
    link_name(path).map_err(|e| GpuError::read(path, e))
}

fn optional_hex(path: &Path) -> Result<Option<u64>, GpuError> {
    match read_text(path)? {
        Some(text) => parse_hex(&text)
            .map(Some)
            .ok_or_else(|| GpuError::Unparseable {
                path: path.to_path_buf(),
                value: text,
            }),
        None => Ok(None),
    }
}

fn required_hex(path: &Path) -> Result<u64, GpuError> {
    optional_hex(path)?.ok_or_else(|| {
        GpuError::read(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "attribute missing"),
        )
    })
}

fn narrow<T: TryFrom<u64>>(value: u64, path: &Path) -> Result<T, GpuError> {
    T::try_from(value).map_err(|_| GpuError::Unparseable {
        path: path.to_path_buf(),
        value: format!("{value:#x}"),
    })
}
