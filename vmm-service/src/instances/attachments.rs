//! A VM's disks and network interfaces: checks on what the operator gave, and the
//! host-side names the service derives for each interface.

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
    let boot: Vec<usize> = (0..disks.len()).filter(|&i| disks[i].boot).collect();
    if boot.len() > 1 {
        return Err(InstanceError::Invalid(format!(
            "disks {boot:?} are all marked boot; a VM boots from one disk: mark one"
        )));
    }
    for (i, disk) in disks.iter().enumerate() {
        // Where the file is, and what it is, is checked when it is opened
        // (`ImagePolicy`): only inside the operator's image directories.
        let field = format!("disks[{i}].path");
        if disks[..i].iter().any(|earlier| earlier.path == disk.path) {
            return Err(InstanceError::Invalid(format!(
                "{field}: '{}' is listed twice; a disk image can be attached once",
                disk.path
            )));
        }
    }
    Ok(())
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
            boot: false,
            format: None,
        }
    }

    #[test]
    fn a_vm_boots_from_one_disk_at_most() {
        let mut disks = vec![disk("/a.qcow2"), disk("/b.raw")];
        assert!(validate_disks(&disks).is_ok());
        disks[0].boot = true;
        assert!(validate_disks(&disks).is_ok());
        disks[1].boot = true;
        let message = invalid(validate_disks(&disks));
        assert!(
            message.contains("[0, 1]") && message.contains("one disk"),
            "{message}"
        );
    }

    fn invalid(result: Result<(), InstanceError>) -> String {
        match result {
            Err(InstanceError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn disks_are_listed_once_and_at_most_sixteen() {
        validate_disks(&[disk("/images/a.raw"), disk("/images/b.raw")]).unwrap();
        let message = invalid(validate_disks(&[
            disk("/images/a.raw"),
            disk("/images/a.raw"),
        ]));
        assert!(
            message.contains("disks[1].path") && message.contains("twice"),
            "{message}"
        );
        let many: Vec<DiskConfig> = (0..=MAX_DISKS_PER_VM)
            .map(|i| disk(&format!("/images/{i}.raw")))
            .collect();
        assert!(invalid(validate_disks(&many)).contains("at most"));
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
