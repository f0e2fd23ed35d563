//! The form-vmm configuration of a VM: what the service sends with `vm.create` and
//! `vm.add-device`.

use crate::api::types::VmInstanceConfig;
use crate::gpu::HostPaths;
use crate::instances::network_infos;
use crate::state::GpuAssignment;
use crate::supervisor::VmPaths;
use crate::vmm_client::{
    ConsoleConfig, CpusConfig, DeviceConfig, DiskConfig, MemoryConfig, NetConfig, PayloadConfig,
    RngConfig, VmConfig,
};

/// Where every VM's virtio-rng draws from. A cloud image generates its SSH host keys
/// on first boot; without an entropy device an early-boot guest can stall waiting
/// for its random pool, and /dev/urandom never blocks the VMM.
pub(super) const RNG_SOURCE: &str = "/dev/urandom";

/// The device id of the cloud-init seed disk in form-vmm.
pub(super) const SEED_DISK_ID: &str = "cidata";

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

/// `numa_node` is where the VM's RAM and vCPUs go, chosen by the caller from
/// its GPUs (`numa_placement`).
pub(super) fn vmm_config(
    config: &VmInstanceConfig,
    paths: &VmPaths,
    gpus: &[GpuAssignment],
    host: &HostPaths,
    numa_node: Option<u32>,
) -> VmConfig {
    VmConfig {
        cpus: CpusConfig {
            boot_vcpus: config.vcpus,
            max_vcpus: config.vcpus,
        },
        memory: MemoryConfig {
            size: config.memory,
            host_numa_node: numa_node,
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
        disks: disks(config, paths),
        net: network_infos(config)
            .into_iter()
            .map(|info| NetConfig {
                tap: info.tap,
                mac: info.mac,
                id: info.id,
            })
            .collect(),
        rng: Some(RngConfig {
            src: RNG_SOURCE.into(),
        }),
    }
}

/// The operator's disks in order, then the seed disk: the guest's first disks keep
/// the names the operator expects (`/dev/vda` is the first image given).
fn disks(config: &VmInstanceConfig, paths: &VmPaths) -> Vec<DiskConfig> {
    let mut disks: Vec<DiskConfig> = config
        .disks
        .iter()
        .enumerate()
        .map(|(i, disk)| DiskConfig {
            path: disk.path.clone(),
            readonly: disk.readonly,
            id: format!("disk{i}"),
        })
        .collect();
    if config.cloud_init.is_some() {
        disks.push(DiskConfig {
            path: paths.seed_image.display().to_string(),
            readonly: true,
            id: SEED_DISK_ID.to_string(),
        });
    }
    disks
}
