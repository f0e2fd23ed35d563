//! `doctor`: is this host ready to pass GPUs to VMs? Each finding says what was seen
//! and, when something is wrong, what to do.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::binding::VFIO_PCI;
use super::format_bytes;
use super::host::{parse_hex, read_attr, HostPaths};
use super::inventory::{list_gpus, GpuInfo, NoOwners};

mod node_pools;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    /// The host could not be asked; nothing is known to be wrong.
    Unknown,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable name of the check (`iommu`, `vfio_pci`, ...).
    pub check: &'static str,
    pub severity: Severity,
    pub summary: String,
    /// What to do, when there is something to do.
    pub remedy: Option<String>,
}

impl Finding {
    fn new(check: &'static str, severity: Severity, summary: impl Into<String>) -> Self {
        Self {
            check,
            severity,
            summary: summary.into(),
            remedy: None,
        }
    }

    fn fix(mut self, remedy: impl Into<String>) -> Self {
        self.remedy = Some(remedy.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    pub fn worst(&self) -> Severity {
        self.findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    pub fn finding(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }
}

/// The locked-memory limit of the process that will run VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockLimit {
    /// Soft limit in bytes; `None` is unlimited.
    pub bytes: Option<u64>,
    /// CAP_IPC_LOCK lets a process pin memory past the limit.
    pub has_cap_ipc_lock: bool,
}

impl MemlockLimit {
    /// This process's limit (`getrlimit`) and capability (`/proc/self/status`).
    pub fn of_current_process(host: &HostPaths) -> Option<Self> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into the rlimit we pass.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if rc != 0 {
            return None;
        }
        let bytes = (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
        Some(Self {
            bytes,
            has_cap_ipc_lock: has_cap_ipc_lock(host),
        })
    }
}

const CAP_IPC_LOCK: u32 = 14;

fn has_cap_ipc_lock(host: &HostPaths) -> bool {
    let Ok(status) = fs::read_to_string(host.procfs.join("self/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoctorInputs {
    /// Guest memory the VM is meant to have, to size the memlock and hugepage checks.
    pub vm_memory: Option<u64>,
    /// `None` when the limit could not be read.
    pub memlock: Option<MemlockLimit>,
}

/// Runs every check.
pub fn doctor(host: &HostPaths, inputs: &DoctorInputs) -> DoctorReport {
    let gpus = list_gpus(host, &NoOwners).ok();
    let mut findings = vec![
        check_iommu(host),
        check_vfio_pci(host),
        check_interrupt_remapping(host),
        check_memlock(inputs),
        check_hugepages(host, inputs.vm_memory),
    ];
    findings.extend(node_pools::check_node_hugepages(host, inputs.vm_memory));
    findings.extend([check_address_bits(host, gpus.as_deref(), inputs.vm_memory)]);
    findings.extend(check_iommu_address_width(
        host,
        gpus.as_deref(),
        inputs.vm_memory,
    ));
    findings.extend(gpus.as_deref().map(check_resets));
    DoctorReport { findings }
}

fn check_iommu(host: &HostPaths) -> Finding {
    let dir = host.iommu_groups_dir();
    let groups = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    if groups > 0 {
        return Finding::new("iommu", Severity::Ok, format!("IOMMU on: {groups} groups"));
    }
    Finding::new(
        "iommu",
        Severity::Error,
        format!("IOMMU off: no groups under {}", dir.display()),
    )
    .fix("enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD), plus iommu=pt for host performance")
}

fn check_vfio_pci(host: &HostPaths) -> Finding {
    if host.driver_dir(VFIO_PCI).is_dir() {
        return Finding::new("vfio_pci", Severity::Ok, "vfio-pci driver loaded");
    }
    let release = read_attr(&host.procfs.join("sys/kernel/osrelease"))
        .ok()
        .flatten();
    let Some(release) = release else {
        return Finding::new(
            "vfio_pci",
            Severity::Warning,
            "vfio-pci driver not loaded (kernel release unknown, so whether it can be loaded is unknown)",
        )
        .fix("run `modprobe vfio-pci`");
    };
    let modules = host.modules.join(&release);
    let listed = |file: &str| {
        fs::read_to_string(modules.join(file))
            .map(|text| {
                text.lines().any(|line| {
                    line.split(':')
                        .next()
                        .unwrap_or("")
                        .contains("/vfio-pci.ko")
                })
            })
            .unwrap_or(false)
    };
    if listed("modules.dep") || listed("modules.builtin") {
        Finding::new(
            "vfio_pci",
            Severity::Warning,
            format!("vfio-pci is available for kernel {release} but not loaded"),
        )
        .fix("run `modprobe vfio-pci`, and list it in /etc/modules-load.d/ to load it at boot")
    } else {
        Finding::new(
            "vfio_pci",
            Severity::Error,
            format!("kernel {release} has no vfio-pci module"),
        )
        .fix("install a kernel built with CONFIG_VFIO_PCI (every distribution kernel is), then `modprobe vfio-pci`")
    }
}

fn check_interrupt_remapping(host: &HostPaths) -> Finding {
    const CHECK: &str = "interrupt_remapping";
    if let Ok(interrupts) = fs::read_to_string(host.procfs.join("interrupts")) {
        if interrupts.contains("IR-") {
            return Finding::new(
                CHECK,
                Severity::Ok,
                "interrupt remapping on (IR- interrupts in /proc/interrupts)",
            );
        }
        if interrupts.contains("-MSI") {
            return Finding::new(
                CHECK,
                Severity::Warning,
                "interrupt remapping off: MSI interrupts are not remapped",
            )
            .fix("enable interrupt remapping (x2APIC and VT-d/AMD-Vi in the firmware; do not boot with intremap=off); without it vfio refuses devices unless vfio_iommu_type1 allow_unsafe_interrupts=1, which lets a guest forge host interrupts");
        }
    }
    // Intel: bit 3 of the extended capability register says the hardware can remap.
    let supports = intel_iommu_registers(host, "ecap")
        .iter()
        .any(|ecap| ecap & (1 << 3) != 0);
    if supports {
        return Finding::new(
            CHECK,
            Severity::Ok,
            "the IOMMU supports interrupt remapping (VT-d ecap.IR)",
        );
    }
    Finding::new(
        CHECK,
        Severity::Unknown,
        "cannot tell whether interrupts are remapped",
    )
    .fix("look for IR-PCI-MSI in /proc/interrupts as root")
}

/// The values of one register (`cap`, `ecap`) of every Intel IOMMU unit.
fn intel_iommu_registers(host: &HostPaths, register: &str) -> Vec<u64> {
    let Ok(units) = fs::read_dir(host.sysfs.join("class/iommu")) else {
        return Vec::new();
    };
    units
        .filter_map(Result::ok)
        .filter_map(|unit| read_attr(&unit.path().join("intel-iommu").join(register)).ok()?)
        .filter_map(|text| parse_hex(&text))
        .collect()
}

fn check_memlock(inputs: &DoctorInputs) -> Finding {
    const CHECK: &str = "memlock";
    let Some(limit) = inputs.memlock else {
        return Finding::new(CHECK, Severity::Unknown, "RLIMIT_MEMLOCK could not be read");
    };
    let shown = limit.bytes.map_or("unlimited".to_string(), format_bytes);
    let Some(memory) = inputs.vm_memory else {
        return Finding::new(
            CHECK,
            Severity::Ok,
            format!("RLIMIT_MEMLOCK {shown} (give --memory to check it against a VM)"),
        );
    };
    // VFIO pins all guest RAM for DMA; a little more covers the VMM's own pinned pages.
    let needed = memory.saturating_add(64 << 20);
    match limit.bytes {
        None => Finding::new(CHECK, Severity::Ok, "RLIMIT_MEMLOCK unlimited"),
        Some(bytes) if bytes >= needed => Finding::new(
            CHECK,
            Severity::Ok,
            format!("RLIMIT_MEMLOCK {shown} covers {} of guest RAM", format_bytes(memory)),
        ),
        Some(_) if limit.has_cap_ipc_lock => Finding::new(
            CHECK,
            Severity::Ok,
            format!("RLIMIT_MEMLOCK {shown} is below {} but CAP_IPC_LOCK lifts it", format_bytes(memory)),
        ),
        Some(_) => Finding::new(
            CHECK,
            Severity::Error,
            format!(
                "RLIMIT_MEMLOCK {shown} is below the {} a VM with {} of RAM pins for VFIO",
                format_bytes(needed),
                format_bytes(memory)
            ),
        )
        .fix("run the service with LimitMEMLOCK=infinity (systemd) or `ulimit -l unlimited`, or grant CAP_IPC_LOCK"),
    }
}

/// One hugepage pool: page size and free pages.
struct HugepagePool {
    page_bytes: u64,
    total: u64,
    free: u64,
}

fn hugepage_pools(host: &HostPaths) -> Option<Vec<HugepagePool>> {
    hugepage_pools_in(&host.sysfs.join("kernel/mm/hugepages"))
}

/// The pools under a `hugepages` directory (the host's, or a node's), smallest
/// page first.
fn hugepage_pools_in(dir: &Path) -> Option<Vec<HugepagePool>> {
    let mut pools: Vec<HugepagePool> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kib: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let count = |file: &str| -> Option<u64> {
                read_attr(&entry.path().join(file)).ok()??.parse().ok()
            };
            Some(HugepagePool {
                page_bytes: kib.checked_mul(1024)?,
                total: count("nr_hugepages")?,
                free: count("free_hugepages")?,
            })
        })
        .collect();
    pools.sort_by_key(|p| p.page_bytes);
    Some(pools)
}

fn check_hugepages(host: &HostPaths, vm_memory: Option<u64>) -> Finding {
    const CHECK: &str = "hugepages";
    let Some(pools) = hugepage_pools(host).filter(|p| !p.is_empty()) else {
        return Finding::new(CHECK, Severity::Unknown, "no hugepage pools in sysfs");
    };
    let described = pools
        .iter()
        .map(|p| {
            format!(
                "{}: {} of {} free",
                format_bytes(p.page_bytes),
                p.free,
                p.total
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let Some(memory) = vm_memory else {
        return Finding::new(CHECK, Severity::Ok, format!("hugepages {described}"));
    };
    let fits = pools
        .iter()
        .any(|p| p.free.saturating_mul(p.page_bytes) >= memory);
    if fits {
        return Finding::new(
            CHECK,
            Severity::Ok,
            format!("hugepages {described}: enough for {}", format_bytes(memory)),
        );
    }
    let largest = pools.last().map_or(2 << 20, |p| p.page_bytes);
    let pages = memory.div_ceil(largest);
    Finding::new(
        CHECK,
        Severity::Warning,
        format!(
            "hugepages {described}: not enough free for {} of guest RAM, which would use 4 KiB pages (slower, and more IOMMU mappings)",
            format_bytes(memory)
        ),
    )
    .fix(format!(
        "reserve them: `echo {pages} > /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages` (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages={pages})",
        largest / 1024
    ))
}

fn host_physical_bits(host: &HostPaths) -> Option<u32> {
    let cpuinfo = fs::read_to_string(host.procfs.join("cpuinfo")).ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with("address sizes"))?
        .split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Highest guest-physical address (exclusive) a VM with `memory` of RAM and these GPUs
/// needs: RAM above the 4 GiB boundary (assumed all of it, the worst case), then the
/// 64-bit BARs, the window aligned to the largest BAR (BARs are naturally aligned).
fn highest_address_needed(memory: u64, gpus: &[&GpuInfo]) -> u64 {
    let ram_top = (4u64 << 30).saturating_add(memory);
    let largest = gpus
        .iter()
        .map(|g| g.largest_bar())
        .max()
        .unwrap_or(0)
        .max(1);
    let window: u64 = gpus
        .iter()
        .fold(0u64, |sum, g| sum.saturating_add(g.bar64_bytes()));
    ram_top
        .checked_next_multiple_of(largest)
        .unwrap_or(u64::MAX)
        .saturating_add(window)
}

fn address_limit(bits: u32) -> u64 {
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

fn check_address_bits(
    host: &HostPaths,
    gpus: Option<&[GpuInfo]>,
    vm_memory: Option<u64>,
) -> Finding {
    const CHECK: &str = "physical_address_bits";
    let Some(bits) = host_physical_bits(host) else {
        return Finding::new(
            CHECK,
            Severity::Unknown,
            "no 'address sizes' in /proc/cpuinfo",
        );
    };
    let Some(gpus) = gpus else {
        return Finding::new(
            CHECK,
            Severity::Unknown,
            format!("{bits} physical address bits; the GPUs' BARs could not be read from sysfs"),
        )
        .fix("run `vmm-service gpu list` to see why");
    };
    let gpus: Vec<&GpuInfo> = gpus.iter().collect();
    let limit = address_limit(bits);
    let memory = vm_memory.unwrap_or(0);
    let Some(biggest) = gpus.iter().copied().max_by_key(|g| g.bar64_bytes()) else {
        return Finding::new(
            CHECK,
            Severity::Ok,
            format!(
                "{bits} physical address bits ({}); no GPUs to place",
                format_bytes(limit)
            ),
        );
    };
    let one = highest_address_needed(memory, &[biggest]);
    let all = highest_address_needed(memory, &gpus);
    if one > limit {
        return Finding::new(
            CHECK,
            Severity::Error,
            format!(
                "{bits} physical address bits ({}) cannot hold {}'s {} BAR ({} in 64-bit BARs) above {} of RAM",
                format_bytes(limit),
                biggest.bdf(),
                format_bytes(biggest.largest_bar()),
                format_bytes(biggest.bar64_bytes()),
                format_bytes(memory)
            ),
        )
        .fix("use a host CPU with more physical address bits, or give the VM less memory");
    }
    if all > limit {
        return Finding::new(
            CHECK,
            Severity::Warning,
            format!(
                "{bits} physical address bits ({}) hold one GPU's BARs but not all {} GPUs' in one VM",
                format_bytes(limit),
                gpus.len()
            ),
        )
        .fix("split the GPUs across VMs");
    }
    Finding::new(
        CHECK,
        Severity::Ok,
        format!(
            "{bits} physical address bits ({}): all {} GPUs' BARs ({} in 64-bit BARs) fit in one VM",
            format_bytes(limit),
            gpus.len(),
            format_bytes(gpus.iter().fold(0u64, |s, g| s.saturating_add(g.bar64_bytes())))
        ),
    )
}

/// The IOMMU must reach guest addresses too (DMA between devices targets the BARs):
/// an IOMMU narrower than the CPU (e.g. 39 bits, QEMU's default) limits the layout.
fn check_iommu_address_width(
    host: &HostPaths,
    gpus: Option<&[GpuInfo]>,
    vm_memory: Option<u64>,
) -> Option<Finding> {
    const CHECK: &str = "iommu_address_width";
    // VT-d capability register bits 21:16 hold the maximum guest address width minus one.
    let width = intel_iommu_registers(host, "cap")
        .iter()
        .map(|cap| ((cap >> 16) & 0x3f) as u32 + 1)
        .min()?;
    let gpus: Vec<&GpuInfo> = gpus.unwrap_or(&[]).iter().collect();
    let biggest = gpus.iter().copied().max_by_key(|g| g.bar64_bytes());
    let needed = biggest.map_or(0, |g| highest_address_needed(vm_memory.unwrap_or(0), &[g]));
    let limit = address_limit(width);
    if needed > limit {
        return Some(
            Finding::new(
                CHECK,
                Severity::Warning,
                format!(
                    "the IOMMU reaches {width} bits ({}), below the {} a VM with one GPU needs",
                    format_bytes(limit),
                    format_bytes(needed)
                ),
            )
            .fix("peer-to-peer DMA to BARs above the IOMMU's reach fails; keep the VM's 64-bit window below it or give the VM less memory"),
        );
    }
    Some(Finding::new(
        CHECK,
        Severity::Ok,
        format!("the IOMMU reaches {width} bits ({})", format_bytes(limit)),
    ))
}

/// Used by the CLI to print findings as text.
/// Whether the kernel can reset every GPU: the service refuses to give a VM one it
/// cannot (its state would reach the next VM) unless the operator allows it.
fn check_resets(gpus: &[GpuInfo]) -> Finding {
    let missing: Vec<String> = gpus
        .iter()
        .filter(|gpu| gpu.reset_method.is_none())
        .map(|gpu| gpu.bdf().to_string())
        .collect();
    if missing.is_empty() {
        let methods: Vec<String> = gpus
            .iter()
            .map(|gpu| {
                format!(
                    "{} {}",
                    gpu.bdf(),
                    gpu.reset_method.as_deref().unwrap_or("")
                )
            })
            .collect();
        return Finding::new(
            "reset",
            Severity::Ok,
            format!("every GPU can be reset ({})", methods.join(", ")),
        );
    }
    Finding::new(
        "reset",
        Severity::Warning,
        format!(
            "the kernel has no reset method for {} (no reset_method or reset in sysfs); the service will not give {} to a VM",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        ),
    )
    .fix(format!(
        "check the device's firmware and slot (a GPU alone on its bus gets a bus reset); to pass it anyway, start the service with --allow-no-reset {}",
        missing.join(" --allow-no-reset ")
    ))
}

pub fn render(report: &DoctorReport) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let tag = match finding.severity {
            Severity::Ok => "ok",
            Severity::Unknown => "unknown",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        };
        out.push_str(&format!(
            "[{tag:^7}] {}: {}\n",
            finding.check, finding.summary
        ));
        if let Some(remedy) = &finding.remedy {
            out.push_str(&format!("          fix: {remedy}\n"));
        }
    }
    out
}
