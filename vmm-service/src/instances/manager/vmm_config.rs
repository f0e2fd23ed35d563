//! The form-vmm configuration of a VM: what the service sends with `vm.create` and
//! `vm.add-device(s)`.

use crate::api::types::VmInstanceConfig;
use crate::gpu::HostPaths;
use crate::instances::guest_numa::{Layout, Placement};
use crate::instances::{network_infos, OpenedImage, OpenedImages};
use crate::state::GpuAssignment;
use crate::supervisor::VmPaths;
use form_vmm_api::config::{
    ConsoleConfig, ConsoleOutputMode, CpusConfig, DeviceConfig, DiskConfig, MemoryConfig,
    MemoryZoneConfig, NetConfig, NumaConfig, NumaDistance, PayloadConfig, RngConfig, VmConfig,
};

/// Where every VM's virtio-rng draws from. A cloud image generates its SSH host keys
/// on first boot; without an entropy device an early-boot guest can stall waiting
/// for its random pool, and /dev/urandom never blocks the VMM.
pub(super) const RNG_SOURCE: &str = "/dev/urandom";

/// The device id of the cloud-init seed disk in form-vmm.
pub(super) const SEED_DISK_ID: &str = "cidata";

///
/// `layout` places the device in a mirrored VM: on the root bus of the guest node
/// of its host node, so the guest's `numa_node` for it is right. Hotplug passes
/// `None` (form-vmm takes hot-added devices on guest node 0's bus only).
pub(super) fn device_config(
    assignment: &GpuAssignment,
    config: &VmInstanceConfig,
    host: &HostPaths,
    layout: Option<&Layout>,
) -> DeviceConfig {
    let options = &config.gpu_options;
    let function = crate::gpu::PciFunction::read(host, &assignment.bdf).ok();
    // The clique is NVIDIA's GPU capability: an audio function or a NIC that came
    // with the GPU gets none (form-vmm would put it on any NVIDIA function).
    let is_gpu = function.as_ref().is_some_and(|f| f.is_gpu());
    let numa_node = match (layout, function.and_then(|f| f.numa_node)) {
        (Some(Layout::Mirrored(nodes)), Some(host_node)) => nodes
            .iter()
            .position(|n| n.host_node == host_node)
            .map(|guest| guest as u32),
        _ => None,
    };
    DeviceConfig {
        // The canonical sysfs path on the real host, never one the user typed; under
        // the service's sysfs root (a fixture tree in tests).
        path: host
            .sysfs
            .join(format!("bus/pci/devices/{}", assignment.bdf)),
        id: Some(assignment.device_id.clone()),
        x_nv_gpudirect_clique: (options.enable_nvidia_gpudirect && is_gpu)
            .then_some(options.nvidia_gpudirect_clique),
        // Guest node 0 is bus 0, where devices go anyway.
        numa_node: numa_node.filter(|&node| node > 0),
        ..DeviceConfig::default()
    }
}

/// `placement` is where the VM's RAM and vCPUs go and what backs its RAM, chosen
/// by the caller from its GPUs (`Manager::placement`).
pub(super) fn vmm_config(
    config: &VmInstanceConfig,
    paths: &VmPaths,
    gpus: &[GpuAssignment],
    host: &HostPaths,
    placement: &Placement,
    images: &OpenedImages,
) -> VmConfig {
    // The service caps vcpus at 255 (validate), form-vmm's limit.
    let vcpus = u8::try_from(config.vcpus).unwrap_or(u8::MAX);
    let (memory, numa) = memory_and_numa(config.memory, placement);
    VmConfig {
        cpus: CpusConfig {
            boot_vcpus: vcpus,
            max_vcpus: vcpus,
        },
        memory,
        payload: PayloadConfig {
            // The files the service checked, by the descriptors the VMM inherited
            // (`ImagePolicy`), never the client's paths.
            // None: form-vmm reads it from the disk marked boot.
            kernel: images.kernel.as_ref().map(OpenedImage::vmm_path),
            initramfs: images.initramfs.as_ref().map(|i| i.vmm_path()),
            cmdline: config.cmdline.clone(),
        },
        serial: ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(paths.serial_log.clone()),
        },
        console: ConsoleConfig::off(),
        devices: gpus
            .iter()
            .map(|a| device_config(a, config, host, Some(&placement.layout)))
            .collect(),
        disks: disks(config, paths, images),
        net: network_infos(config)
            .into_iter()
            .map(|info| NetConfig {
                tap: Some(info.tap),
                mac: Some(info.mac),
                id: Some(info.id),
                ..NetConfig::default()
            })
            .collect(),
        rng: Some(RngConfig {
            src: RNG_SOURCE.into(),
        }),
        numa,
    }
}

/// Guest RAM, one piece or a zone per mirrored node, and the guest nodes.
fn memory_and_numa(size: u64, placement: &Placement) -> (MemoryConfig, Option<Vec<NumaConfig>>) {
    let hugepages = placement.hugepage.is_some();
    let nodes = match &placement.layout {
        Layout::Flat | Layout::Node(_) => {
            let memory = MemoryConfig {
                size,
                hugepages,
                hugepage_size: placement.hugepage,
                host_numa_node: placement.numa_node(),
                ..MemoryConfig::default()
            };
            return (memory, None);
        }
        Layout::Mirrored(nodes) => nodes,
    };
    let zone_id = |guest: usize| format!("mem{guest}");
    let zones = nodes
        .iter()
        .enumerate()
        .map(|(guest, node)| MemoryZoneConfig {
            id: zone_id(guest),
            size: node.memory,
            hugepages,
            hugepage_size: placement.hugepage,
            host_numa_node: Some(node.host_node),
            ..MemoryZoneConfig::default()
        })
        .collect();
    let numa = nodes
        .iter()
        .enumerate()
        .map(|(guest, node)| NumaConfig {
            guest_numa_id: guest as u32,
            // vCPU ids are below 255 (validate), so they fit.
            cpus: Some(node.cpus.clone().map(|cpu| cpu as u8).collect()),
            // Each pair once, from the lower node: form-vmm mirrors it.
            distances: Some(
                node.distances
                    .iter()
                    .enumerate()
                    .skip(guest + 1)
                    .map(|(other, &distance)| NumaDistance {
                        destination: other as u32,
                        distance,
                    })
                    .collect::<Vec<_>>(),
            )
            .filter(|d| !d.is_empty()),
            memory_zones: Some(vec![zone_id(guest)]),
            pci_segments: None,
        })
        .collect();
    let memory = MemoryConfig {
        // The zones' total (form-vmm also takes 0), so the size reads the same
        // whatever the layout.
        size,
        zones: Some(zones),
        ..MemoryConfig::default()
    };
    (memory, Some(numa))
}

/// The operator's disks in order, then the seed disk: the guest's first disks keep
/// the names the operator expects (`/dev/vda` is the first image given).
fn disks(config: &VmInstanceConfig, paths: &VmPaths, images: &OpenedImages) -> Vec<DiskConfig> {
    let mut disks: Vec<DiskConfig> = config
        .disks
        .iter()
        .zip(&images.disks)
        .enumerate()
        .map(|(i, (disk, opened))| DiskConfig {
            path: opened.vmm_path(),
            readonly: disk.readonly,
            boot: disk.boot,
            // Recorded at create; a record from before that is read from the
            // image now, as it was then.
            format: disk.format,
            id: Some(format!("disk{i}")),
            ..DiskConfig::default()
        })
        .collect();
    if config.cloud_init.is_some() {
        disks.push(DiskConfig {
            path: paths.seed_image.clone(),
            readonly: true,
            id: Some(SEED_DISK_ID.to_string()),
            ..DiskConfig::default()
        });
    }
    disks
}
