//! Generated host trees (sysfs, procfs, dev, modules) modelled on real machines, and a
//! sysfs writer that plays the kernel's part on them: it records every write and moves
//! `driver` symlinks the way the PCI core would.

#![allow(dead_code)] // each test binary uses a different part

pub mod hgx;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use vmm_service::gpu::{Bdf, HostPaths, SysfsWriter};

const MEM32: u64 = 0x0004_0200;
const MEM64_PREF: u64 = 0x0014_220c;
const IO: u64 = 0x0004_0101;

pub fn bdf(text: &str) -> Bdf {
    text.parse().expect("fixture BDF")
}

/// One PCI function of a fixture host.
#[derive(Clone)]
pub struct Function {
    bdf: Bdf,
    class: u32,
    vendor: u16,
    device: u16,
    subsystem: (u16, u16),
    driver: Option<String>,
    group: Option<u32>,
    numa: i32,
    bars: Vec<(u8, u64, u64, u64)>,
    link: Option<(String, u32, String, u32)>,
    boot_vga: Option<bool>,
    parent: Option<Bdf>,
    /// `reset_method`'s content; `None`: neither `reset_method` nor `reset`.
    reset_method: Option<String>,
}

impl Function {
    pub fn new(address: &str, class: u32, vendor: u16, device: u16) -> Self {
        Self {
            bdf: bdf(address),
            class,
            vendor,
            device,
            subsystem: (vendor, 0),
            driver: None,
            group: None,
            numa: -1,
            bars: Vec::new(),
            link: None,
            // The kernel gives every VGA-class function a boot_vga attribute.
            boot_vga: ((class >> 8) == 0x0300).then_some(false),
            parent: None,
            // What a PCIe endpoint with function-level reset shows on Linux >= 5.15.
            reset_method: Some("flr".to_string()),
        }
    }

    pub fn bridge(address: &str, vendor: u16, device: u16) -> Self {
        Self::new(address, 0x060400, vendor, device).driver("pcieport")
    }

    pub fn driver(mut self, driver: &str) -> Self {
        self.driver = Some(driver.to_string());
        self
    }

    pub fn group(mut self, group: u32) -> Self {
        self.group = Some(group);
        self
    }

    pub fn numa(mut self, node: i32) -> Self {
        self.numa = node;
        self
    }

    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.subsystem = (vendor, device);
        self
    }

    pub fn mem32(mut self, index: u8, start: u64, size: u64) -> Self {
        self.bars.push((index, start, size, MEM32));
        self
    }

    pub fn mem64_pref(mut self, index: u8, start: u64, size: u64) -> Self {
        self.bars.push((index, start, size, MEM64_PREF));
        self
    }

    pub fn io(mut self, index: u8, start: u64, size: u64) -> Self {
        self.bars.push((index, start, size, IO));
        self
    }

    pub fn link(mut self, speed: &str, width: u32, max_speed: &str, max_width: u32) -> Self {
        self.link = Some((speed.into(), width, max_speed.into(), max_width));
        self
    }

    pub fn boot_vga(mut self, on: bool) -> Self {
        self.boot_vga = Some(on);
        self
    }

    pub fn address(&self) -> String {
        self.bdf.to_string()
    }

    /// The kernel cannot reset this function: no `reset_method`, no `reset`.
    pub fn no_reset(mut self) -> Self {
        self.reset_method = None;
        self
    }

    pub fn parent(mut self, address: &str) -> Self {
        self.parent = Some(bdf(address));
        self
    }

    fn resource_file(&self) -> String {
        // 13 lines, as a kernel with SR-IOV support prints for an endpoint.
        let mut lines = vec![(0u64, 0u64, 0u64); 13];
        for &(index, start, size, flags) in &self.bars {
            lines[usize::from(index)] = (start, start + size - 1, flags);
        }
        lines
            .iter()
            .map(|(s, e, f)| format!("0x{s:016x} 0x{e:016x} 0x{f:016x}\n"))
            .collect()
    }
}

/// A host to generate.
pub struct HostBuilder {
    functions: Vec<Function>,
    vfio_pci_loaded: bool,
    extra_drivers: Vec<String>,
    cpu_address_bits: Option<u32>,
    interrupts: Option<String>,
    hugepages: Vec<(u64, u64, u64)>,
    intel_iommus: Vec<(u64, u64)>,
    amd_iommus: usize,
    os_release: String,
    vfio_pci_module: bool,
    numa_nodes: usize,
    node_hugepages: Vec<(u32, u64, u64, u64)>,
    slit: Vec<Vec<u8>>,
}

impl HostBuilder {
    pub fn new() -> Self {
        Self {
            functions: Vec::new(),
            vfio_pci_loaded: true,
            extra_drivers: Vec::new(),
            cpu_address_bits: Some(46),
            interrupts: Some(interrupts(true)),
            hugepages: vec![(2048, 0, 0), (1_048_576, 0, 0)],
            intel_iommus: Vec::new(),
            amd_iommus: 0,
            os_release: "6.1.0-28-amd64".into(),
            vfio_pci_module: true,
            numa_nodes: 0,
            node_hugepages: Vec::new(),
            slit: Vec::new(),
        }
    }

    pub fn function(mut self, function: Function) -> Self {
        self.functions.push(function);
        self
    }

    pub fn vfio_pci_loaded(mut self, loaded: bool) -> Self {
        self.vfio_pci_loaded = loaded;
        self
    }

    /// Whether modules.dep lists vfio-pci.ko.
    pub fn vfio_pci_module(mut self, present: bool) -> Self {
        self.vfio_pci_module = present;
        self
    }

    pub fn extra_driver(mut self, name: &str) -> Self {
        self.extra_drivers.push(name.into());
        self
    }

    pub fn cpu_address_bits(mut self, bits: Option<u32>) -> Self {
        self.cpu_address_bits = bits;
        self
    }

    pub fn interrupts(mut self, text: Option<String>) -> Self {
        self.interrupts = text;
        self
    }

    /// (page size in KiB, total, free)
    pub fn hugepages(mut self, pools: &[(u64, u64, u64)]) -> Self {
        self.hugepages = pools.to_vec();
        self
    }

    /// (node, page size in KiB, total, free): a node's own pool, under
    /// /sys/devices/system/node/nodeN/hugepages.
    pub fn node_hugepages(mut self, pools: &[(u32, u64, u64, u64)]) -> Self {
        self.node_hugepages = pools.to_vec();
        self
    }

    /// The SLIT: row N is node N's `distance` file.
    pub fn slit(mut self, rows: &[&[u8]]) -> Self {
        self.slit = rows.iter().map(|row| row.to_vec()).collect();
        self
    }

    /// One VT-d unit per (cap, ecap).
    pub fn intel_iommus(mut self, units: &[(u64, u64)]) -> Self {
        self.intel_iommus = units.to_vec();
        self
    }

    /// `node0` .. `node{count-1}` under /sys/devices/system/node; none by default,
    /// as on a kernel without NUMA.
    pub fn numa_nodes(mut self, count: usize) -> Self {
        self.numa_nodes = count;
        self
    }

    pub fn amd_iommus(mut self, count: usize) -> Self {
        self.amd_iommus = count;
        self
    }

    pub fn functions_mut(&mut self) -> &mut Vec<Function> {
        &mut self.functions
    }

    pub fn build(self) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let host = HostPaths {
            sysfs: root.join("sys"),
            procfs: root.join("proc"),
            dev: root.join("dev"),
            modules: root.join("lib/modules"),
        };
        let sys = &host.sysfs;
        mkdir(&host.pci_devices_dir());
        mkdir(&host.iommu_groups_dir());
        mkdir(&host.dev.join("vfio"));
        write(&host.dev.join("vfio/vfio"), "");
        write(&host.drivers_probe(), "");
        write(&sys.join("bus/pci/rescan"), "");

        let mut drivers: BTreeSet<String> = self.extra_drivers.iter().cloned().collect();
        drivers.extend(self.functions.iter().filter_map(|f| f.driver.clone()));
        if self.vfio_pci_loaded {
            drivers.insert("vfio-pci".into());
        }
        for driver in &drivers {
            let dir = host.driver_dir(driver);
            for file in ["bind", "unbind", "new_id", "remove_id"] {
                write(&dir.join(file), "");
            }
        }

        let by_bdf: BTreeMap<Bdf, Function> =
            self.functions.iter().map(|f| (f.bdf, f.clone())).collect();
        let mut defaults = BTreeMap::new();
        for function in &self.functions {
            let device_dir = real_device_dir(&host, &by_bdf, &function.bdf);
            mkdir(&device_dir);
            let hex16 = |v: u16| format!("0x{v:04x}\n");
            write(&device_dir.join("vendor"), &hex16(function.vendor));
            write(&device_dir.join("device"), &hex16(function.device));
            write(
                &device_dir.join("subsystem_vendor"),
                &hex16(function.subsystem.0),
            );
            write(
                &device_dir.join("subsystem_device"),
                &hex16(function.subsystem.1),
            );
            write(
                &device_dir.join("class"),
                &format!("0x{:06x}\n", function.class),
            );
            write(
                &device_dir.join("numa_node"),
                &format!("{}\n", function.numa),
            );
            write(&device_dir.join("driver_override"), "(null)\n");
            write(&device_dir.join("resource"), &function.resource_file());
            if let Some(methods) = &function.reset_method {
                write(&device_dir.join("reset_method"), &format!("{methods}\n"));
                write(&device_dir.join("reset"), "");
            }
            if let Some(on) = function.boot_vga {
                write(&device_dir.join("boot_vga"), if on { "1\n" } else { "0\n" });
            }
            if let Some((speed, width, max_speed, max_width)) = &function.link {
                write(
                    &device_dir.join("current_link_speed"),
                    &format!("{speed}\n"),
                );
                write(
                    &device_dir.join("current_link_width"),
                    &format!("{width}\n"),
                );
                write(
                    &device_dir.join("max_link_speed"),
                    &format!("{max_speed}\n"),
                );
                write(
                    &device_dir.join("max_link_width"),
                    &format!("{max_width}\n"),
                );
            }
            link(&device_dir, &host.device_dir(&function.bdf));
            if let Some(driver) = &function.driver {
                link(&host.driver_dir(driver), &device_dir.join("driver"));
                if driver != "vfio-pci" {
                    defaults.insert(function.bdf, driver.clone());
                }
            }
            if let Some(group) = function.group {
                let group_dir = host.iommu_groups_dir().join(group.to_string());
                mkdir(&group_dir.join("devices"));
                link(&group_dir, &device_dir.join("iommu_group"));
                link(
                    &device_dir,
                    &group_dir.join("devices").join(function.bdf.to_string()),
                );
                if function.driver.as_deref() == Some("vfio-pci") {
                    write(&host.vfio_group_node(group), "");
                }
            }
        }

        self.write_procfs(&host);
        self.write_host_sysfs(&host);
        let kernel = SimulatedKernel::new(host.clone(), defaults);
        Fixture {
            _dir: dir,
            host,
            kernel,
        }
    }

    fn write_procfs(&self, host: &HostPaths) {
        let proc = &host.procfs;
        mkdir(proc);
        if let Some(bits) = self.cpu_address_bits {
            let cpu = |n: u32| {
                format!(
                    "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Fixture CPU\naddress sizes\t: {bits} bits physical, 57 bits virtual\npower management:\n\n"
                )
            };
            write(&proc.join("cpuinfo"), &(cpu(0) + &cpu(1)));
        }
        if let Some(text) = &self.interrupts {
            write(&proc.join("interrupts"), text);
        }
        write(
            &proc.join("sys/kernel/osrelease"),
            &format!("{}\n", self.os_release),
        );
        let mut dep = String::from("kernel/drivers/vfio/vfio.ko: kernel/drivers/vfio/vfio_iommu_type1.ko\nkernel/drivers/net/ethernet/intel/igb/igb.ko:\n");
        if self.vfio_pci_module {
            dep.push_str("kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko\n");
        }
        write(
            &host.modules.join(&self.os_release).join("modules.dep"),
            &dep,
        );
    }

    fn write_host_sysfs(&self, host: &HostPaths) {
        for &(kib, total, free) in &self.hugepages {
            let dir = host
                .sysfs
                .join(format!("kernel/mm/hugepages/hugepages-{kib}kB"));
            write(&dir.join("nr_hugepages"), &format!("{total}\n"));
            write(&dir.join("free_hugepages"), &format!("{free}\n"));
        }
        for (i, (cap, ecap)) in self.intel_iommus.iter().enumerate() {
            let dir = host.sysfs.join(format!("class/iommu/dmar{i}/intel-iommu"));
            write(&dir.join("cap"), &format!("{cap:x}\n"));
            write(&dir.join("ecap"), &format!("{ecap:x}\n"));
        }
        for i in 0..self.amd_iommus {
            mkdir(&host.sysfs.join(format!("class/iommu/ivhd{i}/amd-iommu")));
        }
        let nodes = host.sysfs.join("devices/system/node");
        for i in 0..self.numa_nodes {
            mkdir(&nodes.join(format!("node{i}")));
        }
        let list = match self.numa_nodes {
            0 => None,
            1 => Some("0\n".to_string()),
            n => Some(format!("0-{}\n", n - 1)),
        };
        if let Some(list) = list {
            write(&nodes.join("online"), &list);
            write(&nodes.join("has_memory"), &list);
        }
        for &(node, kib, total, free) in &self.node_hugepages {
            let dir = nodes.join(format!("node{node}/hugepages/hugepages-{kib}kB"));
            write(&dir.join("nr_hugepages"), &format!("{total}\n"));
            write(&dir.join("free_hugepages"), &format!("{free}\n"));
        }
        for (node, row) in self.slit.iter().enumerate() {
            let row: Vec<String> = row.iter().map(u8::to_string).collect();
            write(
                &nodes.join(format!("node{node}/distance")),
                &format!("{}\n", row.join(" ")),
            );
        }
    }
}

impl Default for HostBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The sysfs directory under `devices/`, nested under its parent bridge as on a real host.
fn real_device_dir(host: &HostPaths, all: &BTreeMap<Bdf, Function>, bdf: &Bdf) -> PathBuf {
    match all.get(bdf).and_then(|f| f.parent) {
        Some(parent) => real_device_dir(host, all, &parent).join(bdf.to_string()),
        None => host.sysfs.join(format!(
            "devices/pci{:04x}:{:02x}/{bdf}",
            bdf.segment(),
            bdf.bus()
        )),
    }
}

pub fn interrupts(remapped: bool) -> String {
    let prefix = if remapped { "IR-" } else { "" };
    format!(
        "            CPU0       CPU1\n   0:         40          0  {prefix}IO-APIC    2-edge      timer\n 120:          0     182733  {prefix}PCI-MSI-0000:18:00.0   0-edge      nvidia\nNMI:          0          0   Non-maskable interrupts\n"
    )
}

/// A generated host, and the writer that reacts to sysfs writes on it.
pub struct Fixture {
    _dir: TempDir,
    pub host: HostPaths,
    pub kernel: SimulatedKernel,
}

impl Fixture {
    pub fn driver_of(&self, address: &str) -> Option<String> {
        driver_link(&self.host, &bdf(address))
    }

    pub fn override_of(&self, address: &str) -> String {
        read(&self.host.device_dir(&bdf(address)).join("driver_override"))
    }

    pub fn vfio_node_exists(&self, group: u32) -> bool {
        self.host.vfio_group_node(group).exists()
    }

    /// Every write so far, as (path relative to the sysfs root, value).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.kernel.writes.borrow().clone()
    }

    pub fn clear_writes(&self) {
        self.kernel.writes.borrow_mut().clear();
    }

    /// Moves a function to a driver behind the module's back (as an operator would).
    pub fn set_driver(&self, address: &str, driver: Option<&str>) {
        let bdf = bdf(address);
        let link_path = self.host.device_dir(&bdf).join("driver");
        let _ = fs::remove_file(&link_path);
        if let Some(driver) = driver {
            link(&self.host.driver_dir(driver), &link_path);
        }
    }
}

fn driver_link(host: &HostPaths, bdf: &Bdf) -> Option<String> {
    fs::read_link(host.device_dir(bdf).join("driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Plays the PCI core: `driver_override`, `drivers/<name>/{bind,unbind}` and
/// `drivers_probe` change the tree as the kernel would change sysfs.
pub struct SimulatedKernel {
    host: HostPaths,
    /// The driver a probe picks for a function with no override (its native driver).
    defaults: RefCell<BTreeMap<Bdf, String>>,
    writes: RefCell<Vec<(String, String)>>,
    failures: RefCell<Vec<(String, Option<String>)>>,
    refuse_vfio: RefCell<BTreeSet<Bdf>>,
    vfio_nodes: RefCell<bool>,
}

impl SimulatedKernel {
    fn new(host: HostPaths, defaults: BTreeMap<Bdf, String>) -> Self {
        Self {
            host,
            defaults: RefCell::new(defaults),
            writes: RefCell::new(Vec::new()),
            failures: RefCell::new(Vec::new()),
            refuse_vfio: RefCell::new(BTreeSet::new()),
            vfio_nodes: RefCell::new(true),
        }
    }

    /// Makes the next write to a path ending in `path_suffix` (with this value, if
    /// given) fail with EBUSY; later writes to it succeed.
    pub fn fail_write(&self, path_suffix: &str, value: Option<&str>) {
        self.failures
            .borrow_mut()
            .push((path_suffix.to_string(), value.map(str::to_string)));
    }

    /// vfio-pci's probe of this function fails (as it does for a device it cannot reset
    /// or whose group is not viable), leaving it without a driver.
    pub fn refuse_vfio(&self, address: &str) {
        self.refuse_vfio.borrow_mut().insert(bdf(address));
    }

    /// Which driver a probe picks for this function when it has no override.
    pub fn set_default(&self, address: &str, driver: Option<&str>) {
        let mut defaults = self.defaults.borrow_mut();
        match driver {
            Some(driver) => defaults.insert(bdf(address), driver.to_string()),
            None => defaults.remove(&bdf(address)),
        };
    }

    /// udev never creates `/dev/vfio/<group>`.
    pub fn no_vfio_nodes(&self) {
        *self.vfio_nodes.borrow_mut() = false;
    }

    fn group_of(&self, bdf: &Bdf) -> Option<u32> {
        fs::read_link(self.host.device_dir(bdf).join("iommu_group"))
            .ok()?
            .file_name()?
            .to_str()?
            .parse()
            .ok()
    }

    fn bind(&self, bdf: &Bdf, driver: &str) {
        link(
            &self.host.driver_dir(driver),
            &self.host.device_dir(bdf).join("driver"),
        );
        if driver == "vfio-pci" && *self.vfio_nodes.borrow() {
            if let Some(group) = self.group_of(bdf) {
                write(&self.host.vfio_group_node(group), "");
            }
        }
    }

    fn unbind(&self, bdf: &Bdf, driver: &str) {
        fs::remove_file(self.host.device_dir(bdf).join("driver")).expect("unlink driver");
        if driver != "vfio-pci" {
            return;
        }
        let Some(group) = self.group_of(bdf) else {
            return;
        };
        let group_dir = self
            .host
            .iommu_groups_dir()
            .join(group.to_string())
            .join("devices");
        let any_left = fs::read_dir(group_dir).expect("group dir").any(|entry| {
            let name = entry.expect("entry").file_name();
            let member: Bdf = name.to_str().expect("utf8").parse().expect("bdf");
            driver_link(&self.host, &member).as_deref() == Some("vfio-pci")
        });
        if !any_left {
            let _ = fs::remove_file(self.host.vfio_group_node(group));
        }
    }

    fn override_of(&self, bdf: &Bdf) -> Option<String> {
        let text = read(&self.host.device_dir(bdf).join("driver_override"));
        let text = text.trim();
        (!text.is_empty() && text != "(null)").then(|| text.to_string())
    }

    fn react(&self, relative: &str, value: &str) -> io::Result<()> {
        let no_device = || io::Error::from_raw_os_error(libc::ENODEV);
        let parts: Vec<&str> = relative.split('/').collect();
        match parts.as_slice() {
            ["bus", "pci", "devices", address, "driver_override"] => {
                let bdf: Bdf = address.parse().map_err(|_| no_device())?;
                let value = value.trim_end_matches('\n');
                let shown = if value.is_empty() { "(null)" } else { value };
                write(
                    &self.host.device_dir(&bdf).join("driver_override"),
                    &format!("{shown}\n"),
                );
                Ok(())
            }
            ["bus", "pci", "devices", address, "reset"] => {
                // The kernel resets the function; the write is what tests look at.
                let bdf: Bdf = address.parse().map_err(|_| no_device())?;
                if value != "1" || !self.host.device_dir(&bdf).join("reset").exists() {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                Ok(())
            }
            ["bus", "pci", "drivers", driver, "unbind"] => {
                let bdf: Bdf = value.trim().parse().map_err(|_| no_device())?;
                if driver_link(&self.host, &bdf).as_deref() != Some(*driver) {
                    return Err(no_device());
                }
                self.unbind(&bdf, driver);
                Ok(())
            }
            ["bus", "pci", "drivers", driver, "bind"] => {
                let bdf: Bdf = value.trim().parse().map_err(|_| no_device())?;
                let matches_override = self.override_of(&bdf).is_none_or(|o| o == *driver);
                if driver_link(&self.host, &bdf).is_some() || !matches_override {
                    return Err(no_device());
                }
                self.bind(&bdf, driver);
                Ok(())
            }
            ["bus", "pci", "drivers_probe"] => {
                let bdf: Bdf = value.trim().parse().map_err(|_| no_device())?;
                if !self.host.device_dir(&bdf).exists() {
                    return Err(no_device());
                }
                if driver_link(&self.host, &bdf).is_some() {
                    return Ok(());
                }
                let choice = self
                    .override_of(&bdf)
                    .or_else(|| self.defaults.borrow().get(&bdf).cloned());
                let Some(choice) = choice else {
                    return Ok(());
                };
                let refused = choice == "vfio-pci" && self.refuse_vfio.borrow().contains(&bdf);
                if self.host.driver_dir(&choice).is_dir() && !refused {
                    self.bind(&bdf, &choice);
                }
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the simulated kernel has no writable {relative}"),
            )),
        }
    }
}

impl SysfsWriter for SimulatedKernel {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let relative = path
            .strip_prefix(&self.host.sysfs)
            .map_err(|_| io::Error::new(io::ErrorKind::PermissionDenied, "write outside sysfs"))?
            .to_string_lossy()
            .into_owned();
        self.writes
            .borrow_mut()
            .push((relative.clone(), value.to_string()));
        let mut failures = self.failures.borrow_mut();
        let failing = failures.iter().position(|(suffix, wanted)| {
            relative.ends_with(suffix.as_str()) && wanted.as_deref().is_none_or(|w| w == value)
        });
        if let Some(index) = failing {
            failures.remove(index);
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        drop(failures);
        self.react(&relative, value)
    }
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        mkdir(parent);
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn link(target: &Path, at: &Path) {
    if let Some(parent) = at.parent() {
        mkdir(parent);
    }
    symlink(target, at).unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
}

// ---------------------------------------------------------------------------------
// Hosts modelled on real machines.

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// VT-d registers as a recent Xeon reports them: 57-bit MGAW, interrupt remapping.
pub const XEON_DMAR_CAP: u64 = 0x19ed_008c_4078_0466;
pub const XEON_DMAR_ECAP: u64 = 0x03ef_9ff0_505e;
/// VT-d with a 39-bit MGAW (desktop parts; QEMU's intel-iommu default).
pub const NARROW_DMAR_CAP: u64 = 0x00d2_008c_4066_0462;
pub const NARROW_DMAR_ECAP: u64 = 0x00f0_50da;

/// GPU bus, NUMA node of each H100 on an HGX H100 8-GPU board (as on Dell XE9680-class
/// servers: four GPUs per socket, each behind its own PCIe switch).
pub const HGX_GPUS: [(u8, i32); 8] = [
    (0x18, 0),
    (0x2a, 0),
    (0x3a, 0),
    (0x5d, 0),
    (0x9a, 1),
    (0xab, 1),
    (0xba, 1),
    (0xdb, 1),
];

/// IOMMU group of the i-th H100.
pub fn hgx_gpu_group(i: usize) -> u32 {
    13 + 4 * i as u32
}

/// HGX H100 8-GPU: 8 × H100 SXM5 80GB (3D controllers, own groups, behind a root port
/// and a Broadcom PCIe switch each), 4 NVSwitches, and the BMC's ASPEED VGA, which has
/// the console and shares a group with its bridge.
pub fn hgx_h100() -> HostBuilder {
    let mut host = HostBuilder::new()
        .intel_iommus(&[(XEON_DMAR_CAP, XEON_DMAR_ECAP); 4])
        .hugepages(&[(2048, 0, 0), (1_048_576, 1800, 1800)])
        .cpu_address_bits(Some(46))
        .function(Function::bridge("0000:00:1c.0", 0x8086, 0x1bb8).group(4))
        .function(
            Function::bridge("0000:02:00.0", 0x1a03, 0x1150)
                .parent("0000:00:1c.0")
                .group(5),
        )
        .function(
            Function::new("0000:03:00.0", 0x030000, 0x1a03, 0x2000)
                .parent("0000:02:00.0")
                .driver("ast")
                .group(5)
                .numa(0)
                .boot_vga(true)
                .mem32(0, 0x9400_0000, 64 * MIB)
                .mem32(1, 0x9800_0000, 256 * 1024)
                .io(2, 0x3000, 128),
        );
    for (i, &(bus, node)) in HGX_GPUS.iter().enumerate() {
        let group = hgx_gpu_group(i);
        let root_port = format!("0000:{:02x}:01.0", bus - 3);
        let upstream = format!("0000:{:02x}:00.0", bus - 2);
        let downstream = format!("0000:{:02x}:00.0", bus - 1);
        let gpu = format!("0000:{bus:02x}:00.0");
        let bar1 = 0x2000_0000_0000 + (i as u64) * 256 * GIB;
        host = host
            .function(
                Function::bridge(&root_port, 0x8086, 0x352a)
                    .group(group - 3)
                    .numa(node),
            )
            .function(
                Function::bridge(&upstream, 0x1000, 0xc030)
                    .parent(&root_port)
                    .group(group - 2)
                    .numa(node),
            )
            .function(
                Function::bridge(&downstream, 0x1000, 0xc030)
                    .parent(&upstream)
                    .group(group - 1)
                    .numa(node),
            )
            .function(
                Function::new(&gpu, 0x030200, 0x10de, 0x2330)
                    .subsystem(0x10de, 0x16c1)
                    .parent(&downstream)
                    .driver("nvidia")
                    .group(group)
                    .numa(node)
                    .mem32(0, 0xa000_0000 + (i as u64) * 0x0200_0000, 16 * MIB)
                    .mem64_pref(1, bar1, 128 * GIB)
                    .mem64_pref(3, bar1 + 128 * GIB, 32 * MIB)
                    .link("32.0 GT/s PCIe", 16, "32.0 GT/s PCIe", 16),
            );
    }
    for (i, node) in [0, 0, 1, 1].into_iter().enumerate() {
        let nvswitch = format!("0000:{:02x}:00.0", 0xc0 + i);
        host = host.function(
            Function::new(&nvswitch, 0x068000, 0x10de, 0x22a3)
                .driver("nvidia")
                .group(60 + i as u32)
                .numa(node)
                .mem32(0, 0xe000_0000 + (i as u64) * 0x0200_0000, 32 * MIB)
                .link("16.0 GT/s PCIe", 2, "16.0 GT/s PCIe", 2),
        );
    }
    host
}

/// A workstation: RTX 4090 (VGA, the console) and its HDMI audio function in one group
/// with the CPU's root port; a NIC and a USB controller elsewhere; 39-bit desktop CPU;
/// vfio-pci available but not loaded.
pub fn workstation() -> HostBuilder {
    HostBuilder::new()
        .cpu_address_bits(Some(39))
        .intel_iommus(&[(NARROW_DMAR_CAP, NARROW_DMAR_ECAP)])
        .vfio_pci_loaded(false)
        .extra_driver("nouveau")
        .function(Function::bridge("0000:00:01.0", 0x8086, 0xa70d).group(1))
        .function(
            Function::new("0000:01:00.0", 0x030000, 0x10de, 0x2684)
                .subsystem(0x10de, 0x167c)
                .parent("0000:00:01.0")
                .driver("nvidia")
                .group(1)
                .boot_vga(true)
                .mem32(0, 0x6e00_0000, 16 * MIB)
                .mem64_pref(1, 0x40_0000_0000, 32 * GIB)
                .mem64_pref(3, 0x48_0000_0000, 32 * MIB)
                .io(5, 0x4000, 128)
                .link("2.5 GT/s PCIe", 16, "16.0 GT/s PCIe", 16),
        )
        .function(
            Function::new("0000:01:00.1", 0x040300, 0x10de, 0x22ba)
                .subsystem(0x10de, 0x167c)
                .parent("0000:00:01.0")
                .driver("snd_hda_intel")
                .group(1)
                .mem32(0, 0x6f08_0000, 16 * 1024)
                .link("2.5 GT/s PCIe", 16, "16.0 GT/s PCIe", 16),
        )
        .function(
            Function::new("0000:00:14.0", 0x0c0330, 0x8086, 0x7a60)
                .driver("xhci_hcd")
                .group(7)
                .mem64_pref(0, 0x6f10_0000, 64 * 1024),
        )
        .function(
            Function::new("0000:05:00.0", 0x020000, 0x8086, 0x125c)
                .driver("igc")
                .group(15)
                .mem32(0, 0x6f20_0000, MIB),
        )
}

/// An AMD Instinct host: two MI300X (processing accelerators) and an MI210 (display
/// controller class) on amdgpu; AMD IOMMU; no /proc/interrupts to read; a kernel
/// without vfio-pci.
pub fn amd_instinct() -> HostBuilder {
    let mi300x = |address: &str, group: u32, node: i32, base: u64| {
        Function::new(address, 0x120000, 0x1002, 0x74a1)
            .subsystem(0x1002, 0x74a1)
            .driver("amdgpu")
            .group(group)
            .numa(node)
            .mem64_pref(0, base, 256 * GIB)
            .mem64_pref(2, base + 256 * GIB, 2 * MIB)
            .mem32(5, 0xb000_0000 + u64::from(group) * MIB, 512 * 1024)
            .link("32.0 GT/s PCIe", 16, "32.0 GT/s PCIe", 16)
    };
    HostBuilder::new()
        .cpu_address_bits(Some(52))
        .amd_iommus(2)
        .interrupts(None)
        .vfio_pci_loaded(false)
        .vfio_pci_module(false)
        .hugepages(&[(2048, 0, 0), (1_048_576, 64, 16)])
        .function(mi300x("0000:11:00.0", 40, 0, 0x1_0000_0000_0000))
        .function(mi300x("0000:91:00.0", 80, 1, 0x2_0000_0000_0000))
        .function(
            Function::new("0000:c1:00.0", 0x038000, 0x1002, 0x740f)
                .driver("amdgpu")
                .group(90)
                .numa(1)
                .mem64_pref(0, 0x3_0000_0000_0000, 64 * GIB)
                .mem64_pref(2, 0x3_0010_0000_0000, 2 * MIB)
                .io(4, 0xf000, 256)
                .mem32(5, 0xc000_0000, 512 * 1024)
                .link("16.0 GT/s PCIe", 16, "16.0 GT/s PCIe", 16),
        )
}

/// A Tesla T4 behind a PCIe switch without ACS: the switch ports, the GPU and an
/// unrelated two-port I350 NIC (one port on igb, one unbound) all share group 30.
/// Interrupts are not remapped.
pub fn shared_group() -> HostBuilder {
    HostBuilder::new()
        .interrupts(Some(interrupts(false)))
        .hugepages(&[(2048, 512, 512)])
        .function(Function::bridge("0000:00:03.0", 0x8086, 0x2f08).group(30))
        .function(
            Function::bridge("0000:02:00.0", 0x10b5, 0x8747)
                .parent("0000:00:03.0")
                .group(30),
        )
        .function(
            Function::bridge("0000:03:08.0", 0x10b5, 0x8747)
                .parent("0000:02:00.0")
                .group(30),
        )
        .function(
            Function::bridge("0000:03:10.0", 0x10b5, 0x8747)
                .parent("0000:02:00.0")
                .group(30),
        )
        .function(
            Function::new("0000:04:00.0", 0x030200, 0x10de, 0x1eb8)
                .parent("0000:03:08.0")
                .driver("nvidia")
                .group(30)
                .mem32(0, 0xfa00_0000, 16 * MIB)
                .mem64_pref(1, 0x380_0000_0000, 256 * MIB)
                .mem64_pref(3, 0x380_1000_0000, 32 * MIB)
                .link("8.0 GT/s PCIe", 16, "8.0 GT/s PCIe", 16),
        )
        .function(
            Function::new("0000:05:00.0", 0x020000, 0x8086, 0x1521)
                .subsystem(0x1028, 0x0602)
                .parent("0000:03:10.0")
                .driver("igb")
                .group(30)
                .mem32(0, 0xf900_0000, MIB),
        )
        .function(
            Function::new("0000:05:00.1", 0x020000, 0x8086, 0x1521)
                .subsystem(0x1028, 0x0602)
                .parent("0000:03:10.0")
                .group(30)
                .mem32(0, 0xf910_0000, MIB),
        )
}

/// The VFIO lab's L1 host (QEMU q35 with intel-iommu): std VGA on bochs-drm holding the
/// console, bochs-display, edu and an unbound e1000e; 39-bit IOMMU.
pub fn vfio_lab() -> HostBuilder {
    HostBuilder::new()
        .cpu_address_bits(Some(40))
        .intel_iommus(&[(NARROW_DMAR_CAP, NARROW_DMAR_ECAP)])
        .function(Function::new("0000:00:00.0", 0x060000, 0x8086, 0x29c0).group(0))
        .function(
            Function::new("0000:00:01.0", 0x030000, 0x1234, 0x1111)
                .subsystem(0x1af4, 0x1100)
                .driver("bochs-drm")
                .group(1)
                .boot_vga(true)
                .mem32(0, 0xfd00_0000, 16 * MIB)
                .mem32(2, 0xfebf_0000, 4096),
        )
        .function(
            Function::new("0000:00:02.0", 0x020000, 0x8086, 0x10d3)
                .group(2)
                .mem32(0, 0xfeb8_0000, 128 * 1024),
        )
        .function(
            Function::new("0000:00:03.0", 0x00ff00, 0x1234, 0x11e8)
                .group(3)
                .mem32(0, 0xfea0_0000, MIB),
        )
        .function(
            Function::new("0000:00:04.0", 0x038000, 0x1234, 0x1111)
                .subsystem(0x1af4, 0x1100)
                .driver("bochs-drm")
                .group(4)
                .mem32(0, 0xfc00_0000, 16 * MIB)
                .mem32(2, 0xfebf_1000, 4096),
        )
}
