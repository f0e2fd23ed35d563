//! The bodies about PCI functions other than a VM's GPUs themselves: the members of a
//! GPU's IOMMU group that go to the VM with it, companion devices (NVSwitches, NICs,
//! NVMe drives), and the host's inventory of everything that could be assigned.

use serde::{Deserialize, Serialize};

/// `gpu_request.nics`: NICs placed next to the VM's GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    /// A substring of the NIC's name, case-insensitive (`ConnectX-7`); any network
    /// controller (class 0x02) without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub count: u32,
}

/// What a PCI function held by a VM is to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRole {
    /// A GPU or accelerator the VM asked for (by address, model or hotplug).
    Gpu,
    /// A companion device the VM asked for (`devices`, `nvswitches`, `nics`).
    Companion,
    /// Another function of the same slot as the GPU or companion (the HDMI audio
    /// function next to a GPU): always goes with it, into the same guest slot.
    Function,
    /// A device in another slot of the same IOMMU group (behind a PCIe switch
    /// without access control): the kernel hands the group to one VM whole.
    GroupMember,
}

/// One PCI function a VM holds. Functions that went to the VM together (a GPU and
/// its group) share `unit`: the device id of the GPU or companion that was asked
/// for, and they leave the VM together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedDevice {
    pub bdf: String,
    /// The device id form-vmm knows it by: `gpu0`, `gpu0-f1` (function 1 of gpu0's
    /// slot), `gpu0-m1` (a group member in another slot), `dev0` (a companion).
    pub device_id: String,
    pub unit: String,
    pub role: DeviceRole,
    /// The 24-bit PCI class code; none when the device can no longer be read.
    pub class: Option<u32>,
    pub name: Option<String>,
    pub numa_node: Option<u32>,
}

/// `POST /v1/vms/{name}/devices`: companion devices by address, each with its IOMMU
/// group, hot-plugged into a VM whose VMM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevicesRequest {
    pub devices: Vec<String>,
}

/// What kind of device a PCI function is, as the inventory sorts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// Display controller or processing accelerator (0x03xx, 0x12xx).
    Gpu,
    /// NVIDIA NVSwitch (other bridge, 0x0680, vendor 0x10de).
    Nvswitch,
    /// Network controller, Ethernet or InfiniBand, physical or virtual function (0x02xx).
    Nic,
    /// NVMe controller (0x0108).
    Nvme,
    /// Audio device (0x0403), usually a GPU's HDMI function.
    Audio,
    Other,
}

/// One PCI function of the host: `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub bdf: String,
    pub kind: DeviceKind,
    pub class: u32,
    pub class_name: Option<String>,
    pub name: String,
    pub vendor_id: u16,
    pub device_id: u16,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<u32>,
    /// The PCI bridge (switch port) right above the function.
    pub parent_bridge: Option<String>,
    /// The upstream port of the PCIe switch the function sits behind (the root port
    /// for a function right under one): devices sharing it reach each other without
    /// crossing the root complex.
    pub switch: Option<String>,
    /// The kernel's reset methods (`"flr bus"`), `"reset"` for a kernel that offers
    /// a reset without naming it, none when it cannot reset the function.
    pub reset_method: Option<String>,
    /// Whether the operator's class allow-list lets it go to a VM.
    pub class_allowed: bool,
    /// The VM holding it.
    pub owner: Option<String>,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceEntry>,
}
