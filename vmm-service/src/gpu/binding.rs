//! Moving a GPU's IOMMU group to vfio-pci and back.
//!
//! The kernel hands an IOMMU group to userspace only whole, so every function in the
//! group moves together; bridges stay on their drivers (VFIO accepts them). Each
//! function moves with `driver_override` + `unbind` + `drivers_probe`, which affects
//! only that function (unlike `new_id`, which captures every device with the same IDs).

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::GpuError;
use super::host::HostPaths;
use super::inventory::{iommu_group_members, PciFunction};
use super::records::{DriverRecord, DriverRecords};
use super::writer::SysfsWriter;
use super::Bdf;

pub const VFIO_PCI: &str = "vfio-pci";

/// How long to wait for `/dev/vfio/<group>` by default; udev usually takes milliseconds.
pub const DEFAULT_VFIO_NODE_TIMEOUT: Duration = Duration::from_secs(5);
const VFIO_NODE_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    /// Bind even a console device or a group shared with devices the host is using.
    pub force: bool,
    pub vfio_node_timeout: Duration,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self {
            force: false,
            vfio_node_timeout: DEFAULT_VFIO_NODE_TIMEOUT,
        }
    }
}

/// One function's driver change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriverChange {
    pub bdf: Bdf,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindOutcome {
    pub iommu_group: u32,
    /// Functions this call moved to vfio-pci, in the order it moved them.
    pub moved: Vec<DriverChange>,
    /// Functions that were on vfio-pci already.
    pub already_bound: Vec<Bdf>,
    /// Bridges in the group, left on their drivers.
    pub bridges: Vec<Bdf>,
    /// The group node a VMM opens.
    pub vfio_node: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseOutcome {
    pub iommu_group: u32,
    /// Functions taken off vfio-pci, with the driver each ended on.
    pub restored: Vec<DriverChange>,
    /// Functions that came back on a different driver than recorded, and why.
    pub warnings: Vec<String>,
}

/// What a function should be on after release.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RestoreTarget {
    /// The recorded driver.
    Driver(String),
    /// It had no driver when it was bound.
    NoDriver,
    /// Nothing was recorded: let the kernel choose.
    KernelDefault,
}

impl RestoreTarget {
    fn from_record(record: Option<DriverRecord>) -> Self {
        match record {
            Some(DriverRecord {
                original_driver: Some(driver),
            }) => Self::Driver(driver),
            Some(DriverRecord {
                original_driver: None,
            }) => Self::NoDriver,
            None => Self::KernelDefault,
        }
    }
}

/// The parts of the host that binding touches.
pub struct GpuBinder<'a> {
    host: &'a HostPaths,
    writer: &'a dyn SysfsWriter,
    records: &'a mut dyn DriverRecords,
}

impl<'a> GpuBinder<'a> {
    pub fn new(
        host: &'a HostPaths,
        writer: &'a dyn SysfsWriter,
        records: &'a mut dyn DriverRecords,
    ) -> Self {
        Self {
            host,
            writer,
            records,
        }
    }

    /// Binds the IOMMU group of GPU `bdf` to vfio-pci and waits for its VFIO node.
    /// Binding a group that is already on vfio-pci changes nothing. If any step fails,
    /// the functions moved so far go back to their drivers before the error returns.
    pub fn bind(&mut self, bdf: &Bdf, options: &BindOptions) -> Result<BindOutcome, GpuError> {
        self.require_gpu(bdf)?;
        self.bind_group(bdf, options, &[])
    }

    /// [`GpuBinder::bind`] for the IOMMU group of any function: the service binds a
    /// companion device's group (a NIC, an NVSwitch) the same way, once its own checks
    /// (the operator's class allow-list) let it. `approved`: functions in other slots
    /// of the group that the caller decided go to the VM too, so their host drivers
    /// do not make the group "shared with the host" (the console is refused still).
    pub fn bind_group(
        &mut self,
        bdf: &Bdf,
        options: &BindOptions,
        approved: &[Bdf],
    ) -> Result<BindOutcome, GpuError> {
        let (group, members) = self.group_of(bdf)?;
        let vfio_dir = self.host.driver_dir(VFIO_PCI);
        if !vfio_dir.is_dir() {
            return Err(GpuError::VfioPciMissing { path: vfio_dir });
        }
        let (bridges, functions): (Vec<PciFunction>, Vec<PciFunction>) =
            members.into_iter().partition(PciFunction::is_bridge);
        let (already, to_move): (Vec<PciFunction>, Vec<PciFunction>) = functions
            .into_iter()
            .partition(|f| f.driver.as_deref() == Some(VFIO_PCI));
        if !options.force {
            refuse_unsafe(bdf, group, &to_move, approved)?;
        }

        let mut moved = Vec::new();
        for function in &to_move {
            // Recorded before any write, so even a crash part-way leaves the way back.
            let record = DriverRecord {
                original_driver: function.driver.clone(),
            };
            if let Err(cause) = self.records.put(function.bdf, record) {
                return Err(self.roll_back(&moved, cause));
            }
            if let Err(cause) = self.move_to_vfio(function) {
                // The failing function may be half-way (override set, driver unbound).
                moved.push(DriverChange {
                    bdf: function.bdf,
                    from: function.driver.clone(),
                    to: None,
                });
                return Err(self.roll_back(&moved, cause));
            }
            moved.push(DriverChange {
                bdf: function.bdf,
                from: function.driver.clone(),
                to: Some(VFIO_PCI.to_string()),
            });
        }

        let vfio_node = self.host.vfio_group_node(group);
        if let Err(cause) = wait_for(&vfio_node, group, options.vfio_node_timeout) {
            return Err(self.roll_back(&moved, cause));
        }
        Ok(BindOutcome {
            iommu_group: group,
            moved,
            already_bound: already.iter().map(|f| f.bdf).collect(),
            bridges: bridges.iter().map(|f| f.bdf).collect(),
            vfio_node,
        })
    }

    /// Takes the IOMMU group of GPU `bdf` off vfio-pci, returning each function to the
    /// driver recorded when it was bound (or, with no record, to whatever the kernel
    /// probes). Releasing a group that is not on vfio-pci changes nothing.
    pub fn release(&mut self, bdf: &Bdf) -> Result<ReleaseOutcome, GpuError> {
        self.require_gpu(bdf)?;
        self.release_group(bdf)
    }

    /// [`GpuBinder::release`] for the IOMMU group of any function.
    pub fn release_group(&mut self, bdf: &Bdf) -> Result<ReleaseOutcome, GpuError> {
        let (group, members) = self.group_of(bdf)?;
        let mut restored = Vec::new();
        let mut warnings = Vec::new();
        for function in members.iter().filter(|f| !f.is_bridge()) {
            let on_vfio = function.driver.as_deref() == Some(VFIO_PCI)
                || function.driver_override.as_deref() == Some(VFIO_PCI);
            if !on_vfio {
                continue;
            }
            let target = RestoreTarget::from_record(self.records.get(&function.bdf)?);
            let (change, warning) = self.restore(&function.bdf, &target)?;
            self.records.remove(&function.bdf)?;
            restored.push(change);
            warnings.extend(warning);
        }
        Ok(ReleaseOutcome {
            iommu_group: group,
            restored,
            warnings,
        })
    }

    fn require_gpu(&self, bdf: &Bdf) -> Result<(), GpuError> {
        let target = PciFunction::read(self.host, bdf)?;
        if !target.is_gpu() {
            return Err(GpuError::NotAGpu {
                bdf: *bdf,
                class: target.class,
            });
        }
        Ok(())
    }

    /// Reads a function and the members of its IOMMU group.
    fn group_of(&self, bdf: &Bdf) -> Result<(u32, Vec<PciFunction>), GpuError> {
        let target = PciFunction::read(self.host, bdf)?;
        let group = target
            .iommu_group
            .ok_or(GpuError::NoIommuGroup { bdf: *bdf })?;
        let members = iommu_group_members(self.host, group)?
            .iter()
            .map(|member| PciFunction::read(self.host, member))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((group, members))
    }

    fn move_to_vfio(&self, function: &PciFunction) -> Result<(), GpuError> {
        let bdf = function.bdf;
        let address = bdf.to_string();
        self.write(self.host.device_dir(&bdf).join("driver_override"), VFIO_PCI)?;
        if let Some(driver) = &function.driver {
            self.write(self.host.driver_dir(driver).join("unbind"), &address)?;
        }
        self.write(self.host.drivers_probe(), &address)?;
        let now = PciFunction::read(self.host, &bdf)?.driver;
        if now.as_deref() != Some(VFIO_PCI) {
            return Err(GpuError::DriverDidNotTake {
                bdf,
                expected: VFIO_PCI.to_string(),
                actual: now.unwrap_or_else(|| "none".to_string()),
            });
        }
        Ok(())
    }

    /// Puts back, newest first, the functions a failed bind touched. Every function is
    /// attempted even if one fails, so as much as possible returns to the host.
    fn roll_back(&mut self, touched: &[DriverChange], cause: GpuError) -> GpuError {
        let mut failures = Vec::new();
        for change in touched.iter().rev() {
            let target = match &change.from {
                Some(driver) => RestoreTarget::Driver(driver.clone()),
                None => RestoreTarget::NoDriver,
            };
            match self.restore(&change.bdf, &target) {
                Ok((_, Some(warning))) => failures.push(warning),
                Ok((_, None)) => {}
                Err(e) => failures.push(format!("{}: {e}", change.bdf)),
            }
            if let Err(e) = self.records.remove(&change.bdf) {
                failures.push(e.to_string());
            }
        }
        if failures.is_empty() {
            cause
        } else {
            GpuError::RollbackFailed {
                cause: Box::new(cause),
                rollback: failures.join("; "),
            }
        }
    }

    /// Clears the override, unbinds from the current driver, and lets the kernel probe
    /// (binding the recorded driver by name if the probe picked none). Returns the
    /// change and, if the function did not end on the recorded driver, a warning.
    fn restore(
        &mut self,
        bdf: &Bdf,
        target: &RestoreTarget,
    ) -> Result<(DriverChange, Option<String>), GpuError> {
        let address = bdf.to_string();
        let before = PciFunction::read(self.host, bdf)?;
        if before.driver_override.is_some() {
            self.write(self.host.device_dir(bdf).join("driver_override"), "\n")?;
        }
        let wanted = match target {
            RestoreTarget::Driver(driver) => Some(driver.as_str()),
            RestoreTarget::NoDriver | RestoreTarget::KernelDefault => None,
        };
        if let Some(current) = &before.driver {
            if Some(current.as_str()) != wanted {
                self.write(self.host.driver_dir(current).join("unbind"), &address)?;
            }
        }
        if *target != RestoreTarget::NoDriver && self.driver_of(bdf)?.is_none() {
            self.write(self.host.drivers_probe(), &address)?;
        }
        if let Some(driver) = wanted {
            let bind = self.host.driver_dir(driver).join("bind");
            if self.driver_of(bdf)?.is_none() && bind.exists() {
                self.write(bind, &address)?;
            }
        }
        let after = self.driver_of(bdf)?;
        let warning = match wanted {
            Some(driver) if after.as_deref() != Some(driver) => Some(format!(
                "{bdf} was on {driver} before binding but is now on {}; load {driver} and run `echo {bdf} > /sys/bus/pci/drivers/{driver}/bind`",
                after.as_deref().unwrap_or("no driver")
            )),
            _ => None,
        };
        Ok((
            DriverChange {
                bdf: *bdf,
                from: before.driver,
                to: after,
            },
            warning,
        ))
    }

    fn driver_of(&self, bdf: &Bdf) -> Result<Option<String>, GpuError> {
        Ok(PciFunction::read(self.host, bdf)?.driver)
    }

    fn write(&self, path: PathBuf, value: &str) -> Result<(), GpuError> {
        log::debug!("write {value:?} > {}", path.display());
        self.writer
            .write(&path, value)
            .map_err(|source| GpuError::Write {
                path,
                value: match value.trim_end() {
                    "" => "\\n".to_string(),
                    shown => shown.to_string(),
                },
                source,
            })
    }
}

/// Refuses what would take something from the host that it is visibly using: the
/// console device, and other slots' devices in the group that have a host driver.
fn refuse_unsafe(
    gpu: &Bdf,
    group: u32,
    to_move: &[PciFunction],
    approved: &[Bdf],
) -> Result<(), GpuError> {
    if let Some(console) = to_move.iter().find(|f| f.boot_vga) {
        return Err(GpuError::ConsoleDevice { bdf: console.bdf });
    }
    let in_use: Vec<String> = to_move
        .iter()
        .filter(|f| !f.bdf.same_slot(gpu) && !approved.contains(&f.bdf))
        .filter_map(|f| {
            f.driver
                .as_ref()
                .map(|driver| format!("{} (driver {driver})", f.bdf))
        })
        .collect();
    if !in_use.is_empty() {
        return Err(GpuError::SharedGroup {
            gpu: *gpu,
            group,
            others: in_use.join(", "),
        });
    }
    Ok(())
}

fn wait_for(node: &std::path::Path, group: u32, timeout: Duration) -> Result<(), GpuError> {
    let start = Instant::now();
    loop {
        if node.exists() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(GpuError::VfioNodeMissing {
                group,
                path: node.to_path_buf(),
                waited_ms: timeout.as_millis(),
            });
        }
        thread::sleep(VFIO_NODE_POLL);
    }
}
