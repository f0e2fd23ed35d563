//! A VM's disks and network interfaces: checks on what the operator gave, and the
//! host-side names the service derives for each interface.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::api::types::{DiskConfig, NetworkConfig, NetworkInfo, VmInstanceConfig};
use crate::net::{default_mac, parse_mac, tap_name, validate_ifname, MAX_NETWORKS_PER_VM};

use super::error::InstanceError;

/// With the seed disk and virtio's one PCI slot per device, this leaves slots free
/// for GPUs.
pub const MAX_DISKS_PER_VM: usize = 16;

pub fn validate_disks(disks: &[DiskConfig]) -> Result<(), InstanceError> {
    if disks.len() > MAX_DISKS_PER_VM {
        return Err(InstanceError::Invalid(format!(
            "disks: {} disks, at most {MAX_DISKS_PER_VM}",
            disks.len()
        )));
    }
    for (i, disk) in disks.iter().enumerate() {
        let field = format!("disks[{i}].path");
        check_disk_file(&field, &disk.path)?;
        if disks[..i].iter().any(|earlier| earlier.path == disk.path) {
            return Err(InstanceError::Invalid(format!(
                "{field}: '{}' is listed twice; a disk image can be attached once",
                disk.path
            )));
        }
    }
    Ok(())
}

fn check_disk_file(field: &str, path: &str) -> Result<(), InstanceError> {
    let invalid = |why: String| InstanceError::Invalid(format!("{field}: '{path}' {why}"));
    if !Path::new(path).is_absolute() {
        return Err(invalid(
            "is not an absolute path; the service does not share your working directory".into(),
        ));
    }
    match std::fs::metadata(path) {
        // A block device (an LVM volume, a partition, an NVMe namespace) serves as
        // a raw disk too; form-vmm refuses one the host has mounted or holds.
        Ok(meta) if meta.is_file() || meta.file_type().is_block_device() => Ok(()),
        Ok(meta) if meta.is_dir() => Err(invalid("is a directory, not a disk image".into())),
        Ok(_) => Err(invalid(
            "is neither a regular file nor a block device; give a raw disk image file or a block device".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(invalid(
            "does not exist; create it (e.g. qemu-img create -f raw IMG 10G) or fix the path"
                .into(),
        )),
        Err(e) => Err(invalid(format!("cannot be read: {e}"))),
    }
}

pub fn validate_networks(networks: &[NetworkConfig]) -> Result<(), InstanceError> {
    if networks.len() > MAX_NETWORKS_PER_VM {
        return Err(InstanceError::Invalid(format!(
            "networks: {} interfaces, at most {MAX_NETWORKS_PER_VM}",
            networks.len()
        )));
    }
    let mut macs: Vec<[u8; 6]> = Vec::new();
    for (i, network) in networks.iter().enumerate() {
        if let Some(bridge) = &network.bridge {
            validate_ifname(bridge)
                .map_err(|why| InstanceError::Invalid(format!("networks[{i}].bridge: {why}")))?;
        }
        if let Some(mac) = &network.mac {
            let bytes = parse_mac(mac)
                .map_err(|e| InstanceError::Invalid(format!("networks[{i}].mac: {e}")))?;
            if macs.contains(&bytes) {
                return Err(InstanceError::Invalid(format!(
                    "networks[{i}].mac: {mac} is given to another interface of this VM"
                )));
            }
            macs.push(bytes);
        }
    }
    Ok(())
}

/// The VM's interfaces as the host sees them: `net<i>`, its tap, its MAC (given or
/// derived) and bridge.
pub fn network_infos(config: &VmInstanceConfig) -> Vec<NetworkInfo> {
    config
        .networks
        .iter()
        .enumerate()
        .map(|(i, network)| NetworkInfo {
            id: format!("net{i}"),
            tap: tap_name(&config.name, i),
            mac: network
                .mac
                .as_ref()
                .map(|mac| mac.to_ascii_lowercase())
                .unwrap_or_else(|| default_mac(&config.name, i)),
            bridge: network.bridge.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str) -> DiskConfig {
        DiskConfig {
            path: path.into(),
            readonly: false,
        }
    }

    fn invalid(result: Result<(), InstanceError>) -> String {
        match result {
            Err(InstanceError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn disk_paths_must_be_absolute_existing_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.raw");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let image = image.display().to_string();
        validate_disks(&[disk(&image)]).unwrap();
        let message = invalid(validate_disks(&[disk(&image), disk("a.raw")]));
        assert!(
            message.starts_with("disks[1].path: 'a.raw' is not an absolute path"),
            "{message}"
        );
        let missing = format!("{image}.missing");
        let message = invalid(validate_disks(&[disk(&missing)]));
        assert!(
            message.contains("disks[0].path") && message.contains("does not exist"),
            "{message}"
        );
        let message = invalid(validate_disks(&[disk(&dir.path().display().to_string())]));
        assert!(message.contains("is a directory"), "{message}");
        let message = invalid(validate_disks(&[disk(&image), disk(&image)]));
        assert!(
            message.contains("disks[1].path") && message.contains("twice"),
            "{message}"
        );
        // /dev/null is a character device: neither an image nor a block device.
        let message = invalid(validate_disks(&[disk("/dev/null")]));
        assert!(
            message.contains("neither a regular file nor a block device"),
            "{message}"
        );
    }

    #[test]
    fn a_block_device_is_a_disk() {
        // Any block device the host has will do; the check reads its type only.
        let Some(device) = std::fs::read_dir("/dev")
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        else {
            eprintln!("skipping a_block_device_is_a_disk: no block device under /dev");
            return;
        };
        let path = device.path().display().to_string();
        validate_disks(&[disk(&path)]).unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    #[test]
    fn bridges_and_macs_are_checked_per_interface() {
        let net = |bridge: Option<&str>, mac: Option<&str>| NetworkConfig {
            bridge: bridge.map(str::to_string),
            mac: mac.map(str::to_string),
        };
        validate_networks(&[net(Some("br0"), Some("52:54:00:00:00:01")), net(None, None)]).unwrap();
        let message = invalid(validate_networks(&[
            net(None, None),
            net(Some("br 0"), None),
        ]));
        assert!(message.starts_with("networks[1].bridge"), "{message}");
        let message = invalid(validate_networks(&[net(None, Some("52:54:00:00:00"))]));
        assert!(message.starts_with("networks[0].mac"), "{message}");
        let message = invalid(validate_networks(&[
            net(None, Some("52:54:00:00:00:01")),
            net(None, Some("52:54:00:00:00:01")),
        ]));
        assert!(message.contains("another interface"), "{message}");
        let many = vec![net(None, None); MAX_NETWORKS_PER_VM + 1];
        assert!(invalid(validate_networks(&many)).contains("at most"));
    }

    #[test]
    fn interfaces_get_taps_ids_and_macs() {
        let mut config: VmInstanceConfig =
            serde_json::from_value(serde_json::json!({"name": "vm1", "kernel": "/k"})).unwrap();
        config.networks = vec![
            NetworkConfig {
                bridge: Some("br0".into()),
                mac: Some("52:54:00:AA:BB:CC".into()),
            },
            NetworkConfig {
                bridge: None,
                mac: None,
            },
        ];
        let infos = network_infos(&config);
        assert_eq!(infos[0].id, "net0");
        assert_eq!(infos[0].tap, tap_name("vm1", 0));
        assert_eq!(infos[0].mac, "52:54:00:aa:bb:cc");
        assert_eq!(infos[0].bridge.as_deref(), Some("br0"));
        assert_eq!(infos[1].id, "net1");
        assert_eq!(infos[1].tap, tap_name("vm1", 1));
        assert_eq!(infos[1].mac, default_mac("vm1", 1));
        assert_eq!(infos[1].bridge, None);
    }
}
