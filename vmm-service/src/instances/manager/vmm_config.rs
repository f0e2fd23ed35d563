//! The form-vmm configuration of a VM: what the service sends with `vm.create` and
//! `vm.add-device`.

use crate::api::types::VmInstanceConfig;
use crate::gpu::HostPaths;
use crate::state::GpuAssignment;
use crate::supervisor::VmPaths;
use crate::vmm_client::{
    ConsoleConfig, CpusConfig, DeviceConfig, MemoryConfig, PayloadConfig, VmConfig,
};

pub(super) fn device_config(
    assignment: &GpuAssignment,
    config: &VmInstanceConfig,
    host: &HostPaths,
) -> DeviceConfig {
    let options = &config.gpu_options;
    DeviceConfig {
        // The canonical sysfs path on the real host, never one the user typed.
        path: format!("/sys/bus/pci/devices/{}", assignment.bdf),
        id: assignment.device_id.clone(),
        x_nv_gpudirect_clique: options
            .enable_nvidia_gpudirect
            .then_some(options.nvidia_gpudirect_clique),
    }
    .relative_to(host)
}

impl DeviceConfig {
    /// Points the device path at the service's sysfs root (a fixture tree in tests).
    fn relative_to(mut self, host: &HostPaths) -> Self {
        if let Some(rest) = self.path.strip_prefix("/sys") {
            self.path = format!("{}{rest}", host.sysfs.display());
        }
        self
    }
}

pub(super) fn vmm_config(
    config: &VmInstanceConfig,
    paths: &VmPaths,
    gpus: &[GpuAssignment],
    host: &HostPaths,
) -> VmConfig {
    VmConfig {
        cpus: CpusConfig {
            boot_vcpus: config.vcpus,
            max_vcpus: config.vcpus,
        },
        memory: MemoryConfig {
            size: config.memory,
        },
        payload: PayloadConfig {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            cmdline: config.cmdline.clone(),
        },
        serial: ConsoleConfig {
            mode: "File".into(),
            file: Some(paths.serial_log.display().to_string()),
        },
        console: ConsoleConfig {
            mode: "Off".into(),
            file: None,
        },
        devices: gpus
            .iter()
            .map(|a| device_config(a, config, host))
            .collect(),
    }
}
