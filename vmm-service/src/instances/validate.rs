//! Checks on a VM configuration that need no lock: shape, ranges, files, GPU syntax.
//! What depends on other VMs (names, GPU owners) is checked under the manager's lock.

use std::path::Path;

use crate::api::types::{GpuRequest, NumaMode, VmInstanceConfig};
use crate::cloud_init;
use crate::gpu::Bdf;

use super::attachments::{validate_disks, validate_networks};
use super::error::InstanceError;

pub const MAX_NAME_LEN: usize = 63;
/// Below this no kernel boots; it also catches sizes given in MiB instead of bytes.
pub const MIN_MEMORY: u64 = 16 << 20;
/// form-vmm numbers vCPUs with 8-bit APIC ids.
pub const MAX_VCPUS: u32 = 255;
pub const MAX_CMDLINE_LEN: usize = 4096;
/// NVIDIA's driver reads the clique id from a 4-bit field.
pub const MAX_GPUDIRECT_CLIQUE: u8 = 15;
pub const MAX_GPUS_PER_VM: u32 = 16;
const PAGE: u64 = 4096;

/// What the host offers, read once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub memory_bytes: u64,
    pub cpus: u32,
}

impl HostLimits {
    /// `MemTotal` from `<procfs>/meminfo` and the CPUs this process may run on.
    pub fn probe(procfs: &Path) -> Self {
        let memory_bytes = std::fs::read_to_string(procfs.join("meminfo"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("MemTotal:"))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            })
            .map_or(u64::MAX, |kib| kib.saturating_mul(1024));
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        Self { memory_bytes, cpus }
    }
}

/// How a VM asks for GPUs, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    None,
    Devices(Vec<Bdf>),
    Model(GpuRequest),
}

/// Checks everything about `config` that does not depend on other VMs, and parses its
/// GPU addresses.
pub fn validate(
    config: &VmInstanceConfig,
    host: &HostLimits,
) -> Result<GpuSelection, InstanceError> {
    validate_name(&config.name)?;
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS.min(host.cpus) {
        return Err(InstanceError::Invalid(format!(
            "vcpus is {}: it must be between 1 and {} (this host has {} CPUs)",
            config.vcpus,
            MAX_VCPUS.min(host.cpus),
            host.cpus
        )));
    }
    if config.memory < MIN_MEMORY || config.memory & (PAGE - 1) != 0 {
        return Err(InstanceError::Invalid(format!(
            "memory is {} bytes: it must be a multiple of 4096 and at least {} bytes (16 MiB)",
            config.memory, MIN_MEMORY
        )));
    }
    if config.memory > host.memory_bytes {
        return Err(InstanceError::InsufficientMemory {
            asked: config.memory,
            host: host.memory_bytes,
        });
    }
    // The kernel, initramfs and disk files are checked where they are opened
    // (`ImagePolicy::open_all`): only inside the operator's image directories.
    if let Some(cmdline) = &config.cmdline {
        if cmdline.len() > MAX_CMDLINE_LEN || cmdline.contains('\0') {
            return Err(InstanceError::Invalid(format!(
                "cmdline must be at most {MAX_CMDLINE_LEN} bytes without NUL characters"
            )));
        }
    }
    validate_disks(&config.disks)?;
    validate_payload(config)?;
    validate_networks(&config.networks)?;
    if let Some(cloud_init) = &config.cloud_init {
        cloud_init::validate(cloud_init).map_err(InstanceError::Invalid)?;
    }
    if config.gpu_options.nvidia_gpudirect_clique > MAX_GPUDIRECT_CLIQUE {
        return Err(InstanceError::Invalid(format!(
            "nvidia_gpudirect_clique is {}: it must be between 0 and {MAX_GPUDIRECT_CLIQUE}",
            config.gpu_options.nvidia_gpudirect_clique
        )));
    }
    validate_numa_options(config)?;
    parse_companions(&config.devices)?;
    match (&config.gpu_devices[..], &config.gpu_request) {
        ([], None) => Ok(GpuSelection::None),
        ([], Some(request)) => {
            validate_request(request)?;
            Ok(GpuSelection::Model(request.clone()))
        }
        (devices, None) => Ok(GpuSelection::Devices(parse_devices(devices)?)),
        (_, Some(_)) => Err(InstanceError::Invalid(
            "give either gpu_devices or gpu_request, not both: with both, which GPUs the VM gets is ambiguous".into(),
        )),
    }
}

/// `hugepage_size`, `numa` and `numa_vcpus` against each other and the VM; how
/// many host nodes there are to mirror is known once its GPUs are chosen.
fn validate_numa_options(config: &VmInstanceConfig) -> Result<(), InstanceError> {
    let invalid = |message: String| Err(InstanceError::Invalid(message));
    if let (Some(size), false) = (config.hugepage_size, config.hugepages) {
        return invalid(format!(
            "hugepage_size is {} but hugepages is off: add \"hugepages\": true, or leave hugepage_size out",
            size.as_str()
        ));
    }
    let affinity = config.gpu_options.numa_affinity;
    if config.numa == Some(NumaMode::Mirror) && !affinity {
        return invalid(
            "numa is mirror but gpu_options.numa_affinity is false, which binds the VM to no host node: leave out one of them".into(),
        );
    }
    if config.numa_vcpus.is_empty() {
        return Ok(());
    }
    if config.numa == Some(NumaMode::Flat) || !affinity {
        return invalid(
            "numa_vcpus shares the vCPUs between mirrored guest NUMA nodes, but the VM has one node (numa flat or gpu_options.numa_affinity false): leave numa_vcpus out".into(),
        );
    }
    let sum: u64 = config.numa_vcpus.iter().map(|&n| u64::from(n)).sum();
    if config.numa_vcpus.contains(&0) || sum != u64::from(config.vcpus) {
        let counts: Vec<String> = config.numa_vcpus.iter().map(u32::to_string).collect();
        return invalid(format!(
            "numa_vcpus is [{}]: each guest node needs at least one vCPU and the counts must add up to vcpus ({})",
            counts.join(", "),
            config.vcpus
        ));
    }
    Ok(())
}

/// A kernel, or a boot disk to read one from: exactly one of the two.
fn validate_payload(config: &VmInstanceConfig) -> Result<(), InstanceError> {
    let boot_disk = config.disks.iter().any(|d| d.boot);
    match (&config.kernel, boot_disk) {
        (Some(_), true) => Err(InstanceError::Invalid(
            "a kernel and a boot disk were both given: the VM starts either the kernel or its disk's own boot entry; leave out one".into(),
        )),
        (None, false) => Err(InstanceError::Invalid(
            "no kernel and no boot disk: give kernel, or mark the disk holding the image's /boot with boot (form-vmm-ctl create --image IMG)".into(),
        )),
        (None, true) if config.initramfs.is_some() => Err(InstanceError::Invalid(
            "an initramfs without a kernel: a VM booting from its disk takes the initrd of the disk's boot entry; leave initramfs out".into(),
        )),
        _ => Ok(()),
    }
}

pub fn validate_name(name: &str) -> Result<(), InstanceError> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !first_ok || !all_ok {
        return Err(InstanceError::Invalid(format!(
            "VM name '{}' is not allowed: use 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -, beginning with a letter or digit",
            name.escape_default()
        )));
    }
    Ok(())
}

pub fn validate_request(request: &GpuRequest) -> Result<(), InstanceError> {
    if request.model.trim().is_empty() {
        return Err(InstanceError::Invalid("gpu_request.model is empty".into()));
    }
    if request.count == 0 || request.count > MAX_GPUS_PER_VM {
        return Err(InstanceError::Invalid(format!(
            "gpu_request.count is {}: it must be between 1 and {MAX_GPUS_PER_VM}",
            request.count
        )));
    }
    if let Some(nics) = &request.nics {
        if nics.count == 0 || nics.count > MAX_GPUS_PER_VM {
            return Err(InstanceError::Invalid(format!(
                "gpu_request.nics.count is {}: it must be between 1 and {MAX_GPUS_PER_VM}",
                nics.count
            )));
        }
        if nics.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(InstanceError::Invalid(
                "gpu_request.nics.model is empty; leave it out for any NIC".into(),
            ));
        }
    }
    Ok(())
}

/// Parses the companion devices' addresses, as [`parse_devices`] does GPUs'.
pub fn parse_companions(devices: &[String]) -> Result<Vec<Bdf>, InstanceError> {
    parse_addresses(devices, "device")
}

/// Parses GPU addresses or sysfs paths; the gpu module's parser refuses paths that
/// leave sysfs, so nothing here ever opens a path the caller chose.
pub fn parse_devices(devices: &[String]) -> Result<Vec<Bdf>, InstanceError> {
    parse_addresses(devices, "GPU")
}

fn parse_addresses(devices: &[String], what: &str) -> Result<Vec<Bdf>, InstanceError> {
    if devices.len() > MAX_GPUS_PER_VM as usize {
        return Err(InstanceError::Invalid(format!(
            "{} {what}s asked for: at most {MAX_GPUS_PER_VM} per VM",
            devices.len()
        )));
    }
    let mut out: Vec<Bdf> = Vec::with_capacity(devices.len());
    for device in devices {
        let bdf = Bdf::from_user_input(device).map_err(InstanceError::BadDevice)?;
        if out.contains(&bdf) {
            return Err(InstanceError::Invalid(format!(
                "{what} {bdf} is listed twice"
            )));
        }
        out.push(bdf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> VmInstanceConfig {
        serde_json::from_value(json).unwrap()
    }

    fn check(json: serde_json::Value) -> Result<GpuSelection, InstanceError> {
        let host = HostLimits {
            memory_bytes: 64 << 30,
            cpus: 8,
        };
        validate(&config(json), &host)
    }

    fn message(result: Result<GpuSelection, InstanceError>) -> String {
        match result {
            Err(InstanceError::Invalid(message)) => message,
            other => panic!("expected invalid_config, got {other:?}"),
        }
    }

    #[test]
    fn a_vm_has_a_kernel_or_a_boot_disk_never_both() {
        let image = serde_json::json!([{"path": "/img/u.qcow2", "boot": true}]);
        assert!(check(serde_json::json!({"name": "a", "kernel": "/k"})).is_ok());
        assert!(check(serde_json::json!({"name": "a", "disks": image})).is_ok());
        let none = message(check(serde_json::json!({"name": "a"})));
        assert!(none.contains("--image"), "{none}");
        let both = message(check(
            serde_json::json!({"name": "a", "kernel": "/k", "disks": image}),
        ));
        assert!(both.contains("both"), "{both}");
        let initrd = message(check(
            serde_json::json!({"name": "a", "initramfs": "/i", "disks": image}),
        ));
        assert!(initrd.contains("initramfs"), "{initrd}");
    }

    #[test]
    fn numa_and_hugepage_options_must_agree() {
        let vm = |extra: serde_json::Value| {
            let mut body = serde_json::json!({"name": "a", "kernel": "/k", "vcpus": 8});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            check(body)
        };
        assert!(vm(serde_json::json!({"hugepages": true, "hugepage_size": "1G", "numa": "mirror", "numa_vcpus": [6, 2]})).is_ok());
        assert!(
            vm(serde_json::json!({"numa": "flat", "gpu_options": {"numa_affinity": false}}))
                .is_ok()
        );
        for (extra, expected) in [
            (
                serde_json::json!({"hugepage_size": "2M"}),
                "hugepage_size is 2M but hugepages is off",
            ),
            (
                serde_json::json!({"numa": "mirror", "gpu_options": {"numa_affinity": false}}),
                "numa is mirror but gpu_options.numa_affinity is false",
            ),
            (
                serde_json::json!({"numa": "flat", "numa_vcpus": [4, 4]}),
                "leave numa_vcpus out",
            ),
            (
                serde_json::json!({"numa_vcpus": [4, 4], "gpu_options": {"numa_affinity": false}}),
                "leave numa_vcpus out",
            ),
            (
                serde_json::json!({"numa_vcpus": [8, 0]}),
                "numa_vcpus is [8, 0]: each guest node needs at least one vCPU",
            ),
            (
                serde_json::json!({"numa_vcpus": [4, 3]}),
                "must add up to vcpus (8)",
            ),
        ] {
            let text = message(vm(extra.clone()));
            assert!(text.contains(expected), "{extra}: {text}");
        }
    }
}
