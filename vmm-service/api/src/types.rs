//! Request and response bodies of the service API (`docs/service-api.md`).
//!
//! Shared with `form-vmm-ctl`, so everything here is plain serde data with no
//! dependency on the server's internals. Sizes are in bytes, times in seconds since
//! the Unix epoch, PCI addresses in the full `0000:01:00.0` form.

pub use form_vmm_api::config::DiskFormat;
use serde::{Deserialize, Serialize};

pub use crate::devices::{
    AddDevicesRequest, AssignedDevice, DeviceEntry, DeviceKind, DeviceList, DeviceRole, NicRequest,
};

/// Path prefix of every route.
pub const API_PREFIX: &str = "/v1";

/// Guest memory when a create request names none: 512 MiB, as form-vmm's default.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// The most bytes of a VM's serial log one `GET /v1/vms/{name}/console` answers with:
/// enough for a whole boot, small enough that one answer never holds a GPU host's
/// service for long.
pub const CONSOLE_MAX_BYTES: u64 = 4 << 20;
/// How much of the log's end the console route answers when asked neither `tail` nor
/// `from`.
pub const CONSOLE_DEFAULT_TAIL: u64 = 64 << 10;
/// Console answer header: the offset just past the bytes answered, the next `from`.
pub const CONSOLE_OFFSET_HEADER: &str = "x-console-offset";
/// Console answer header: the log's size when it was read (more than the offset when
/// the answer was capped).
pub const CONSOLE_SIZE_HEADER: &str = "x-console-size";
/// Console answer header, `1` when `from` was past the end: the log was restarted
/// (each form-vmm process truncates it when it first opens it: a boot after a stop),
/// so the answer starts at 0.
pub const CONSOLE_RESET_HEADER: &str = "x-console-reset";

/// A VM as the operator describes it; the body of `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInstanceConfig {
    /// 1 to 63 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
    pub name: String,
    /// Absolute path of the guest kernel (ELF or bzImage) on the host. Left out,
    /// the VM boots the default entry of its boot disk's own boot configuration
    /// (the one disk with `boot`), as the image's boot loader would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM in bytes: a multiple of 4 KiB.
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// GPUs by PCI address (`0000:01:00.0`, `01:00.0`) or sysfs path
    /// (`/sys/bus/pci/devices/0000:01:00.0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_devices: Vec<String>,
    /// GPUs by model and count ("H100 x 2"); exclusive with `gpu_devices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_request: Option<GpuRequest>,
    /// Companion devices (NVSwitches, NICs, NVMe drives) by PCI address or sysfs
    /// path; each class must be on the service's allow-list (`--allow-class`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default)]
    pub gpu_options: GpuOptions,
    /// Back guest RAM with huge pages, checked against the host's pools before
    /// anything is bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hugepages: bool,
    /// `2M` or `1G`; left out, the host's default size (`Hugepagesize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<HugepageSize>,
    /// The guest's NUMA shape when its GPUs sit on several host nodes; left out,
    /// `mirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<NumaMode>,
    /// With `mirror`: the vCPUs of each guest node, in the order of the host nodes
    /// they mirror (lowest first); left out, in proportion to the GPUs per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa_vcpus: Vec<u32>,
    /// Boot the VM right after creating it.
    #[serde(default)]
    pub boot: bool,
    /// Raw disk images, in the order the guest sees them (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// Network interfaces: one tap device each, created by form-vmm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkConfig>,
    /// When present, a NoCloud seed disk (FAT, label `CIDATA`) is attached read-only
    /// after the disks above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitConfig>,
}

/// A raw disk image on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Absolute path of a raw or qcow2 image (or an allowed block device).
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
    /// Boot from this disk: form-vmm reads the kernel, initrd and command line
    /// of the default entry of its grub.cfg or BLS entries (or its newest
    /// `/boot/vmlinuz-*`) at each start. At most one disk, and only without
    /// `kernel`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
    /// `raw` or `qcow2`. Left out, the service reads it from the image's first
    /// bytes when the VM is created and records it, so the guest, which writes
    /// those bytes, cannot change how its disk is opened at a later start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
}

/// One network interface of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// A Linux bridge to attach the interface's tap to; without one the tap is left
    /// unattached for the host to configure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `52:54:00:12:34:56`; without one the service derives a stable address from the
    /// VM's name and the interface's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// What the guest's cloud-init is told through the seed disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInitConfig {
    /// The guest's host name (an RFC 1123 label); defaults to the VM's name, made
    /// into a label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// A user to create with the SSH keys and passwordless sudo; without one the keys
    /// go to the image's default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Public keys, one `ssh-ed25519 AAAA... comment` line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Shell commands run once, on first boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<String>,
    /// Raw `user-data`. Alone (or with just a hostname) it is the seed's user-data as
    /// given; beside a user, keys, packages or commands, both go into a MIME
    /// multipart archive, the operator's part merged after the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Raw `network-config`, instead of DHCP on every ethernet interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

fn default_vcpus() -> u32 {
    1
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}

/// A huge page size of x86-64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugepageSize {
    #[serde(rename = "2M")]
    M2,
    #[serde(rename = "1G")]
    G1,
}

impl HugepageSize {
    pub fn bytes(self) -> u64 {
        match self {
            Self::M2 => 2 << 20,
            Self::G1 => 1 << 30,
        }
    }

    pub fn from_bytes(bytes: u64) -> Option<Self> {
        [Self::M2, Self::G1]
            .into_iter()
            .find(|s| s.bytes() == bytes)
    }

    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::M2 => "2M",
            Self::G1 => "1G",
        }
    }
}

impl std::str::FromStr for HugepageSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "2M" => Ok(Self::M2),
            "1G" => Ok(Self::G1),
            other => Err(format!("'{other}': huge pages are 2M or 1G")),
        }
    }
}

/// How a VM whose GPUs sit on several host NUMA nodes is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumaMode {
    /// One guest node per host node holding its GPUs, each bound to its host node.
    Mirror,
    /// One guest node, bound to no host node.
    Flat,
}

impl std::str::FromStr for NumaMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "mirror" => Ok(Self::Mirror),
            "flat" => Ok(Self::Flat),
            other => Err(format!("'{other}': numa is mirror or flat")),
        }
    }
}

/// One guest NUMA node of a VM that mirrors its GPUs' host nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNumaNode {
    pub guest_node: u32,
    /// Where the node's RAM comes from and its vCPUs run.
    pub host_node: u32,
    /// vCPU ids.
    pub vcpus: Vec<u32>,
    /// Bytes of RAM.
    pub memory: u64,
    /// The GPUs on its host node.
    pub gpus: Vec<String>,
    /// To every guest node, itself (10) included, in guest node order.
    pub distances: Vec<u8>,
}

/// GPUs by model: `count` free GPUs whose device name contains `model`, compared
/// case-insensitively (`"h100"` matches "GH100 [H100 SXM5 80GB]").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    pub model: String,
    pub count: u32,
    /// Also give the VM every NVSwitch of the host (HGX full passthrough: the
    /// guest's fabric manager needs all of them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nvswitches: bool,
    /// Also give the VM NICs, behind the chosen GPUs' PCIe switches first, then on
    /// their NUMA node (GPUDirect RDMA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<NicRequest>,
}

impl GpuRequest {
    /// `count` GPUs matching `model`, without companions.
    pub fn new(model: impl Into<String>, count: u32) -> Self {
        Self {
            model: model.into(),
            count,
            nvswitches: false,
            nics: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuOptions {
    /// Tell the guest driver which GPUs may use peer-to-peer DMA (GPUDirect).
    #[serde(default)]
    pub enable_nvidia_gpudirect: bool,
    /// The GPUDirect clique id given to every GPU of this VM (0..=15).
    #[serde(default)]
    pub nvidia_gpudirect_clique: u8,
    /// Give the GPUs back to their original host drivers when the VM stops.
    #[serde(default = "default_true")]
    pub unbind_on_shutdown: bool,
    /// On a host with several NUMA nodes, take the VM's RAM from, and run its
    /// vCPUs on, the node all its GPUs sit on (form-vmm's `memory.host_numa_node`).
    #[serde(default = "default_true")]
    pub numa_affinity: bool,
}

fn default_true() -> bool {
    true
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            enable_nvidia_gpudirect: false,
            nvidia_gpudirect_clique: 0,
            unbind_on_shutdown: true,
            numa_affinity: true,
        }
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Recorded; no VMM runs for it.
    Stopped,
    /// A form-vmm process runs and holds the VM's configuration, not yet booted.
    Created,
    /// The guest runs.
    Running,
}

/// How the last VMM process of a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit status, when the process exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// What happened, for a person ("guest powered off", "killed by signal 9", ...).
    pub reason: String,
    pub at: u64,
}

/// A GPU held by a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedGpu {
    pub bdf: String,
    /// The device id form-vmm knows it by (`gpu0`, `gpu1`, ...).
    pub device_id: String,
    pub name: Option<String>,
    pub numa_node: Option<u32>,
    /// The other functions that went to the VM with this GPU (its slot's functions,
    /// its IOMMU group's members); `devices` has the details.
    #[serde(default)]
    pub functions: Vec<String>,
}

/// A VM: `GET /v1/vms/{name}` and the answer of every action on one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub config: VmInstanceConfig,
    /// GPUs the VM holds now (empty while stopped).
    pub gpus: Vec<AssignedGpu>,
    /// Every PCI function the VM holds now: its GPUs, the functions and group
    /// members that came with them, and companion devices.
    #[serde(default)]
    pub devices: Vec<AssignedDevice>,
    /// The form-vmm process, while one runs.
    pub pid: Option<u32>,
    /// The uid that process runs as (0: it kept root; see `serve --vmm-uid-range`),
    /// read from the host while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_uid: Option<u32>,
    /// Its cgroup (v2, as `/proc/PID/cgroup` says), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_cgroup: Option<String>,
    pub api_socket: Option<String>,
    /// Where the guest's serial console goes.
    pub serial_log: String,
    /// The VM's network interfaces as the host sees them, in `config.networks` order.
    #[serde(default)]
    pub networks: Vec<NetworkInfo>,
    /// The cloud-init seed image, when the VM has `cloud_init`.
    #[serde(default)]
    pub seed_image: Option<String>,
    /// The host NUMA node the running VM's RAM and vCPUs are bound to; none when
    /// stopped or not bound (see `gpu_options.numa_affinity`).
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// The guest NUMA nodes of a running VM whose GPUs span host nodes (`numa`
    /// `mirror`); empty when it has one node.
    #[serde(default)]
    pub guest_numa: Vec<GuestNumaNode>,
    pub last_exit: Option<ExitInfo>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// One network interface of a VM, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The device id form-vmm knows it by (`net0`, `net1`, ...).
    pub id: String,
    /// The host's tap device (`fv` + 8 hex digits + index).
    pub tap: String,
    pub mac: String,
    pub bridge: Option<String>,
}

/// `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmList {
    pub vms: Vec<VmInfo>,
}

/// `POST /v1/vms/{name}/gpus`: one GPU by address, or `count` (default 1) by model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddGpuRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// `POST /v1/gpus/{bdf}/bind` (the body may be left out): moves a GPU nobody holds to
/// vfio-pci ahead of time. The answer is the gpu module's bind outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindGpuRequest {
    /// Also bind the console GPU or a group shared with devices the host uses.
    #[serde(default)]
    pub force: bool,
}

/// One GPU of the host: `GET /v1/gpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuEntry {
    pub bdf: String,
    pub name: String,
    pub vendor_id: u16,
    pub device_id: u16,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<u32>,
    /// The PCI bridge (switch port) above the GPU, from its sysfs path.
    pub parent_bridge: Option<String>,
    pub boot_vga: bool,
    /// The VM holding it.
    pub owner: Option<String>,
    /// As in [`DeviceEntry::reset_method`].
    #[serde(default)]
    pub reset_method: Option<String>,
}

/// `GET /v1/gpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuList {
    pub gpus: Vec<GpuEntry>,
}

/// One check of `GET /v1/doctor`; `severity` is `ok`, `unknown`, `warning` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorFinding {
    pub check: String,
    pub severity: String,
    pub summary: String,
    pub remedy: Option<String>,
}

/// `GET /v1/doctor[?memory=BYTES]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorResponse {
    /// The worst severity among the findings.
    pub worst: String,
    pub findings: Vec<DoctorFinding>,
    /// The service's admission limits and their use (absent from older services and
    /// from the local `vmm-service doctor`, which knows no service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ServiceLimits>,
}

/// `DoctorResponse.limits`: what the operator allows (`null`: no limit) and what the
/// VMs use now. Memory and vCPUs count VMs with a VMM (created or running); the VM
/// count counts every recorded VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLimits {
    pub max_vms: Option<u32>,
    pub vms: u32,
    pub max_memory: Option<u64>,
    pub memory: u64,
    pub max_vcpus: Option<u32>,
    pub vcpus: u32,
    /// Where kernels, initramfs and disk images may come from.
    pub image_dirs: Vec<String>,
    /// Block devices VMs may have as disks.
    pub block_devices: Vec<String>,
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    pub version: String,
    pub pid: u32,
}

/// Stable error codes; clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON or not the expected shape, or a query parameter is
    /// malformed.
    BadRequest,
    /// 400: a field is out of range or malformed (name, vcpus, memory, cmdline...).
    InvalidConfig,
    /// 400: memory is more than this host has.
    InsufficientMemory,
    /// 400: the kernel or initramfs does not exist or is not a file.
    PayloadNotFound,
    /// 400: a GPU address or sysfs path cannot be parsed, or leaves sysfs.
    InvalidDevice,
    /// 400: the device exists but is not a GPU or accelerator.
    NotAGpu,
    /// 400: the device's class is not on the service's allow-list (`--allow-class`).
    ClassNotAllowed,
    /// 400: form-vmm refused the request for its content; the message carries its
    /// answer and `vmm_code` its code. Nothing stays changed.
    VmmRefused,
    /// 404: no such PCI device on this host.
    UnknownGpu,
    /// 409: the GPU belongs to another VM.
    GpuInUse,
    /// 409: not enough free GPUs match the model request.
    GpusUnavailable,
    /// 409: another member of the device's IOMMU group belongs to a VM.
    GroupInUse,
    /// 409: not enough free companion devices (NVSwitches, NICs) for the request.
    DevicesUnavailable,
    /// 409: the kernel cannot reset the device, and the operator did not allow it
    /// (`--allow-no-reset`).
    NoResetMethod,
    /// 409: a GPU cannot be given to a VM (console GPU, shared IOMMU group, no IOMMU).
    GpuNotAssignable,
    /// 404: no VM by that name.
    VmNotFound,
    /// 409: a VM by that name exists.
    VmExists,
    /// 409: the VM is not in a state that allows the action.
    InvalidState,
    /// 409: the guest did not eject the GPU within its deadline; the GPU stays in
    /// the VM (retry, remove it with `force`, or shut the VM down).
    EjectTimeout,
    /// 504: the VM's form-vmm did not answer within its deadline; what it holds is
    /// left recorded with the VM until it answers or the VM is deleted.
    VmmUnresponsive,
    /// 500: moving a GPU to or from vfio-pci failed.
    GpuBindFailed,
    /// 502: the VM's form-vmm could not be started, ended, or failed a request
    /// (answered 5xx or something unreadable).
    VmmFailed,
    /// 501: the VMM cannot do this yet (GPU hotplug).
    NotSupported,
    /// 401: TCP listener without a valid bearer token.
    Unauthorized,
    /// 403: a kernel, initramfs or disk path outside the directories the operator
    /// allows (`serve --image-dir`), leading out of them through a symlink or `..`,
    /// or a block device not on `--allow-block-device`.
    PathNotAllowed,
    /// 403: `force` binding asked for over TCP; only the local unix socket may.
    ForceNotAllowed,
    /// 409: a huge page pool the VM draws on has too few free pages; the message
    /// names the node, the page size, the pages needed and free, and how to
    /// reserve more.
    HugepagesShort,
    /// 409: an admission limit of the operator's (`--max-vms`, `--max-memory`,
    /// `--max-vcpus`) would be exceeded; the message names the limit and its use.
    LimitReached,
    /// 408: the client did not send its request (headers or body) in time.
    RequestTimeout,
    /// 413: the request body is larger than the route accepts.
    BodyTooLarge,
    /// 503: the listener holds as many connections as it allows (`--max-connections`).
    TooManyConnections,
    /// 500: anything else; the message says what.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest
            | Self::InvalidConfig
            | Self::InsufficientMemory
            | Self::PayloadNotFound
            | Self::InvalidDevice
            | Self::NotAGpu
            | Self::ClassNotAllowed
            | Self::VmmRefused => 400,
            Self::Unauthorized => 401,
            Self::PathNotAllowed | Self::ForceNotAllowed => 403,
            Self::UnknownGpu | Self::VmNotFound => 404,
            Self::RequestTimeout => 408,
            Self::BodyTooLarge => 413,
            Self::GpuInUse
            | Self::GpusUnavailable
            | Self::GroupInUse
            | Self::DevicesUnavailable
            | Self::NoResetMethod
            | Self::GpuNotAssignable
            | Self::VmExists
            | Self::InvalidState
            | Self::EjectTimeout
            | Self::HugepagesShort
            | Self::LimitReached => 409,
            Self::GpuBindFailed | Self::Internal => 500,
            Self::NotSupported => 501,
            Self::VmmFailed => 502,
            Self::TooManyConnections => 503,
            Self::VmmUnresponsive => 504,
        }
    }
}

/// The body of every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// form-vmm's own error code, with `vmm_refused` (`invalid_device`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_code: Option<String>,
}
