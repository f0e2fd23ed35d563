//! GPUs on the host: inventory from sysfs, binding IOMMU groups to vfio-pci and back,
//! and a readiness check (`doctor`).
//!
//! Everything reads under a [`HostPaths`] (default `/sys`, `/proc`, `/dev`) and writes
//! through a [`SysfsWriter`], so tests run against generated fixture trees with a
//! writer that plays the kernel.

mod binding;
pub mod class;
mod doctor;
mod error;
mod host;
mod inventory;
mod names;
mod policy;
mod records;
mod reset;
mod resource;
mod writer;

pub use binding::{
    BindOptions, BindOutcome, DriverChange, GpuBinder, ReleaseOutcome, DEFAULT_VFIO_NODE_TIMEOUT,
    VFIO_PCI,
};
pub use class::{is_bridge, is_gpu};
pub use doctor::{doctor, render, DoctorInputs, DoctorReport, Finding, MemlockLimit, Severity};
pub use error::GpuError;
pub use form_service_api::{format_bytes, parse_size, Bdf, BdfError};
pub use host::HostPaths;
pub use inventory::{
    gpu_info, iommu_group_members, list_functions, list_gpus, FunctionSummary, GpuInfo, NoOwners,
    OwnerLookup, PciFunction, PcieLink,
};
pub use names::{class_name, device_name, vendor_name};
pub use policy::{parse_classes, ClassRule, DevicePolicy, CLASS_NAMES, DEFAULT_CLASSES};
pub use records::{
    DriverRecord, DriverRecords, JsonFileRecords, MemoryRecords, DEFAULT_RECORDS_PATH,
};
pub use reset::{reset_function, ResetMethod, UNNAMED_RESET};
pub use resource::{Bar, BarKind};
pub use writer::{KernelSysfs, SysfsWriter};
