//! What the host has and who holds it, as the API shows it: the GPUs, every PCI
//! function that could go to a VM, and the functions each VM holds.

use crate::api::types::{
    AssignedDevice, AssignedGpu, DeviceEntry, DeviceKind, DeviceRole, GpuEntry,
};
use crate::gpu::{self, class, Bdf, PciFunction, ResetMethod};
use crate::instances::allocate::{switch_of, upstream_bridges};
use crate::instances::{is_nic, is_nvswitch};
use crate::state::GpuAssignment;

use super::{InstanceError, Manager};

impl Manager {
    pub fn gpus(&self) -> Result<Vec<GpuEntry>, InstanceError> {
        let assignments = self.store().all_gpus()?;
        let owners = |bdf: &Bdf| owner(&assignments, bdf);
        let host = &self.config.host;
        let gpus =
            gpu::list_gpus(host, &owners).map_err(|e| InstanceError::Internal(e.to_string()))?;
        Ok(gpus
            .iter()
            .map(|info| GpuEntry {
                bdf: info.bdf().to_string(),
                name: info.display_name(),
                vendor_id: info.function.vendor_id,
                device_id: info.function.device_id,
                driver: info.function.driver.clone(),
                iommu_group: info.function.iommu_group,
                numa_node: info.function.numa_node,
                parent_bridge: upstream_bridges(host, &info.bdf())
                    .last()
                    .map(Bdf::to_string),
                boot_vga: info.function.boot_vga,
                owner: info.owner.clone(),
                reset_method: ResetMethod::read(host, &info.bdf()).describe(),
            })
            .collect())
    }

    /// Every PCI function of the host but its bridges (PCI-to-PCI and host
    /// bridges never go to a VM; an NVSwitch, an "other bridge", may).
    pub fn devices(&self) -> Result<Vec<DeviceEntry>, InstanceError> {
        let assignments = self.store().all_gpus()?;
        let host = &self.config.host;
        let functions = crate::instances::companions::all_functions(host)?;
        Ok(functions
            .iter()
            .filter(|f| !f.is_bridge() && class::base_and_sub(f.class) != HOST_BRIDGE)
            .map(|f| {
                let bridges = upstream_bridges(host, &f.bdf);
                DeviceEntry {
                    bdf: f.bdf.to_string(),
                    kind: kind_of(f),
                    class: f.class,
                    class_name: gpu::class_name(f.class).map(str::to_string),
                    name: display_name(f),
                    vendor_id: f.vendor_id,
                    device_id: f.device_id,
                    driver: f.driver.clone(),
                    iommu_group: f.iommu_group,
                    numa_node: f.numa_node,
                    parent_bridge: bridges.last().map(Bdf::to_string),
                    switch: switch_of(&bridges).map(|b| b.to_string()),
                    reset_method: ResetMethod::read(host, &f.bdf).describe(),
                    class_allowed: self.config.policy.class_allowed(f.class),
                    owner: owner(&assignments, &f.bdf),
                }
            })
            .collect())
    }

    /// A VM's rows as the API shows them: its GPUs, each with the functions that
    /// came with it, and every function.
    pub(super) fn assigned(
        &self,
        rows: &[GpuAssignment],
    ) -> (Vec<AssignedGpu>, Vec<AssignedDevice>) {
        let host = &self.config.host;
        let devices: Vec<AssignedDevice> = rows
            .iter()
            .map(|a| {
                let function = PciFunction::read(host, &a.bdf).ok();
                AssignedDevice {
                    bdf: a.bdf.to_string(),
                    device_id: a.device_id.clone(),
                    unit: a.unit.clone(),
                    role: a.role,
                    class: function.as_ref().map(|f| f.class),
                    name: function.as_ref().map(display_name),
                    numa_node: function.and_then(|f| f.numa_node),
                }
            })
            .collect();
        let gpus = devices
            .iter()
            .filter(|d| d.role == DeviceRole::Gpu)
            .map(|d| AssignedGpu {
                bdf: d.bdf.clone(),
                device_id: d.device_id.clone(),
                name: d.name.clone(),
                numa_node: d.numa_node,
                functions: devices
                    .iter()
                    .filter(|other| other.unit == d.unit && other.device_id != d.device_id)
                    .map(|other| other.bdf.clone())
                    .collect(),
            })
            .collect();
        (gpus, devices)
    }
}

const HOST_BRIDGE: u16 = 0x0600;

fn owner(assignments: &[GpuAssignment], bdf: &Bdf) -> Option<String> {
    assignments
        .iter()
        .find(|a| a.bdf == *bdf)
        .map(|a| a.instance.clone())
}

fn kind_of(function: &PciFunction) -> DeviceKind {
    if function.is_gpu() {
        DeviceKind::Gpu
    } else if is_nvswitch(function) {
        DeviceKind::Nvswitch
    } else if is_nic(function) {
        DeviceKind::Nic
    } else {
        match class::base_and_sub(function.class) {
            0x0108 => DeviceKind::Nvme,
            0x0403 => DeviceKind::Audio,
            _ => DeviceKind::Other,
        }
    }
}

/// "NVIDIA Corporation GH100 [H100 SXM5 80GB]", as the GPU list names GPUs; the raw
/// IDs when the database does not know the device.
fn display_name(function: &PciFunction) -> String {
    let (vendor, device) = (function.vendor_id, function.device_id);
    match (gpu::vendor_name(vendor), gpu::device_name(vendor, device)) {
        (Some(v), Some(d)) => format!("{v} {d}"),
        (None, Some(d)) => d.to_string(),
        _ => format!("{vendor:04x}:{device:04x}"),
    }
}
