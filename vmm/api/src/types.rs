//! The JSON that form-vmm's endpoints take and return, besides the VM
//! configuration (`docs/api.md`): Cloud Hypervisor's shapes where it has them.

use crate::config::{DeviceConfig, VmConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long `vm.remove-device` waits for a running guest that does not even read the
/// removal request (no ACPI PCI hotplug: a guest without acpiphp) before detaching
/// the device anyway; with `require_eject` it waits [`EJECT_GIVE_UP_AFTER`] instead,
/// since a slow guest must not lose its device to a short wait.
pub const EJECT_IGNORED_AFTER: Duration = Duration::from_secs(1);
/// How long `vm.remove-device` waits for a guest that read the request to run the
/// slot's `_EJ0` (its driver unbinding the device first).
pub const EJECT_GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// The body of vm.remove-device: Cloud Hypervisor's VmRemoveDeviceData, plus
/// `require_eject`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRemoveDeviceData {
    pub id: String,
    /// A running guest that does not eject the device in time keeps it, and the
    /// request fails with 409 `eject_timeout`. Without it (the default, as in Cloud
    /// Hypervisor's body) the device is detached anyway, as when it is pulled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_eject: bool,
}

/// The body of vm.add-devices: host devices hot-plugged together, all or none.
/// Functions of one host slot (`0000:01:00.0` and `0000:01:00.1`: a GPU and its
/// audio function) share one guest slot and keep their function numbers, which
/// `vm.add-device`, one device per call, cannot do: the guest scans a slot once,
/// when it is told of it. The answer is a JSON array of [`PciDeviceInfo`], in the
/// order of `devices`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmAddDevicesData {
    pub devices: Vec<DeviceConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
}

/// Where a device landed, as the API reports it (Cloud Hypervisor's PciDeviceInfo).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    pub id: String,
    pub bdf: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub config: VmConfig,
    pub state: VmState,
    pub memory_actual_size: u64,
    /// Every device on the guest's PCI bus (passed-through and virtio) with its
    /// guest address, in slot order; empty while the VM is shut down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_devices: Vec<PciDeviceInfo>,
    /// What a VM without a kernel booted from its boot disk (as of its last
    /// build: `vm.create`, `vm.boot` after a shutdown, `vm.reboot`); absent for a
    /// VM given `payload.kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSource>,
}

/// The boot entry read from a disk with `boot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// The disk's id.
    pub disk: String,
    /// The partition the kernel and initrd were read from (1-based, as Linux
    /// numbers them; 0 for a disk without a partition table).
    pub partition: u32,
    /// What chose the entry: `grub.cfg`, `bls` or `newest-kernel`.
    pub config: String,
    /// The configuration file (grub.cfg, the BLS entry) or, for
    /// `newest-kernel`, the directory searched; on `config_partition`.
    pub config_path: String,
    pub config_partition: u32,
    /// The entry's title.
    pub title: String,
    /// Paths inside the partition.
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrd: Vec<String>,
    /// The command line the guest got: the entry's, `console=ttyS0` when it
    /// names no console, then `payload.cmdline`.
    pub cmdline: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPing {
    pub build_version: String,
    pub version: String,
    pub pid: u32,
    pub features: Vec<String>,
    /// How this form-vmm is confined; absent from builds older than it (and from
    /// Cloud Hypervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxStatus>,
}

/// How a form-vmm process is confined (docs/security.md, "form-vmm's sandbox").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// `kill` (a call outside a thread's filter kills the VMM), `log` or `off`.
    pub seccomp: String,
    /// `enforced`, `partial` (the kernel's Landlock ABI is older than form-vmm's
    /// rules), `unsupported` (no Landlock in this kernel), `pending` (until the first
    /// VM is built) or `off`.
    pub landlock: String,
    /// In a mount namespace of its own (`--mount-ns`).
    pub mount_ns: bool,
    /// The effective uid now: 0 until it gives root up (`--uid`, `--user`).
    pub uid: u32,
}

/// The body of every error answer: a message for people, a stable code for
/// programs (docs/api.md lists the codes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// Absent in answers of form-vmm builds older than the codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}
