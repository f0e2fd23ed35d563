//! Tables of PCI functions other than GPUs themselves: the host's inventory
//! (`device list`) and what came into a VM with its GPUs or as companions.

use std::fmt::Write as _;

use form_service_api::types::{DeviceKind, DeviceList, DeviceRole, VmInfo};

use crate::table::{Table, NONE};

fn or_none<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| NONE.to_string(), |v| v.to_string())
}

fn kind(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Gpu => "gpu",
        DeviceKind::Nvswitch => "nvswitch",
        DeviceKind::Nic => "nic",
        DeviceKind::Nvme => "nvme",
        DeviceKind::Audio => "audio",
        DeviceKind::Other => "other",
    }
}

fn role(role: DeviceRole) -> &'static str {
    match role {
        DeviceRole::Gpu => "gpu",
        DeviceRole::Companion => "companion",
        DeviceRole::Function => "function",
        DeviceRole::GroupMember => "group member",
    }
}

/// `device list`: one row per function; `RESET -` marks a device the service
/// refuses unless the operator allows it, `CLASS` one whose class is not allowed.
pub fn device_list(list: &DeviceList) -> String {
    if list.devices.is_empty() {
        return "no PCI devices on this host\n".to_string();
    }
    let mut table = Table::new(&[
        "BDF", "KIND", "CLASS", "NAME", "DRIVER", "IOMMU", "NUMA", "SWITCH", "RESET", "OWNER",
    ]);
    for device in &list.devices {
        let class = if device.class_allowed {
            format!("{:06x}", device.class)
        } else {
            format!("{:06x} (not allowed)", device.class)
        };
        table.row(vec![
            device.bdf.clone(),
            kind(device.kind).to_string(),
            class,
            device.name.clone(),
            or_none(device.driver.as_ref()),
            or_none(device.iommu_group),
            or_none(device.numa_node),
            or_none(device.switch.as_ref()),
            or_none(device.reset_method.as_ref()),
            or_none(device.owner.as_ref()),
        ]);
    }
    table.render()
}

/// The functions of a VM other than its GPUs, under a heading; nothing when it
/// has none.
pub fn vm_devices(vm: &VmInfo) -> String {
    let others: Vec<_> = vm
        .devices
        .iter()
        .filter(|d| d.role != DeviceRole::Gpu)
        .collect();
    if others.is_empty() {
        return String::new();
    }
    let mut table = Table::new(&["DEVICE", "BDF", "ROLE", "WITH", "NAME"]);
    for device in others {
        table.row(vec![
            device.device_id.clone(),
            device.bdf.clone(),
            role(device.role).to_string(),
            device.unit.clone(),
            or_none(device.name.as_ref()),
        ]);
    }
    let mut out = "devices:\n".to_string();
    for line in table.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, DeviceCommand};
    use crate::commands::create_config;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("form-vmm-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn create_asks_for_companions_by_address_and_by_request() {
        let cli = parse(&[
            "create",
            "--name",
            "hgx",
            "--kernel",
            "/k",
            "--gpu-model",
            "h100",
            "--gpu-count",
            "8",
            "--nvswitches",
            "--nic-count",
            "4",
            "--nic-model",
            "ConnectX-7",
            "--device",
            "1b:00.0",
            "--device",
            "0000:1c:00.1",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        let config = create_config(&args).unwrap();
        let request = config.gpu_request.unwrap();
        assert!(request.nvswitches);
        let nics = request.nics.unwrap();
        assert_eq!((nics.model.as_deref(), nics.count), (Some("ConnectX-7"), 4));
        assert_eq!(config.devices, ["0000:1b:00.0", "0000:1c:00.1"]);
        for lonely in [&["--nvswitches"][..], &["--nic-count", "2"]] {
            let args: Vec<&str> = ["create", "--name", "a", "--kernel", "/k"]
                .iter()
                .chain(lonely)
                .copied()
                .collect();
            assert!(parse(&args).is_err(), "{lonely:?} needs --gpu-model");
        }
    }

    #[test]
    fn devices_are_added_removed_and_listed() {
        let Command::AddDevice(args) = parse(&["add-device", "vm1", "--device", "1b:00.0"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(args.device, ["0000:1b:00.0".parse().unwrap()]);
        assert!(parse(&[
            "add-device",
            "vm1",
            "--device",
            "1b:00.0",
            "--gpu",
            "01:00.0"
        ])
        .is_err());
        let Command::RemoveDevice(args) = parse(&["remove-device", "vm1", "--device", "01:00.1"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(args.device, Some("0000:01:00.1".parse().unwrap()));
        assert!(matches!(
            parse(&["device", "list"]).unwrap().command,
            Command::Device {
                action: DeviceCommand::List
            }
        ));
    }

    #[test]
    fn a_vm_shows_the_audio_function_with_its_gpu() {
        let vm: VmInfo = serde_json::from_value(serde_json::json!({
            "name": "vm1", "state": "running",
            "config": {"name": "vm1", "kernel": "/k"},
            "gpus": [{"bdf": "0000:01:00.0", "device_id": "gpu0", "name": "RTX", "numa_node": null,
                      "functions": ["0000:01:00.1"]}],
            "devices": [
                {"bdf": "0000:01:00.0", "device_id": "gpu0", "unit": "gpu0", "role": "gpu",
                 "class": 196608, "name": "RTX", "numa_node": null},
                {"bdf": "0000:01:00.1", "device_id": "gpu0-f1", "unit": "gpu0", "role": "function",
                 "class": 262912, "name": "HDMI audio", "numa_node": null}],
            "pid": 1, "api_socket": null, "serial_log": "/l", "last_exit": null,
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        let text = vm_devices(&vm);
        assert!(text.starts_with("devices:\n"), "{text}");
        assert!(
            text.contains("gpu0-f1  0000:01:00.1  function  gpu0  HDMI audio"),
            "{text}"
        );
        assert!(
            !text.contains("  gpu0  0000:01:00.0"),
            "the GPU is in the gpus table: {text}"
        );
    }

    #[test]
    fn an_older_service_without_devices_shows_none() {
        let vm: VmInfo = serde_json::from_value(serde_json::json!({
            "name": "vm1", "state": "stopped", "config": {"name": "vm1", "kernel": "/k"},
            "gpus": [{"bdf": "0000:01:00.0", "device_id": "gpu0", "name": null, "numa_node": null}],
            "pid": null, "api_socket": null, "serial_log": "/l", "last_exit": null,
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        assert!(vm.gpus[0].functions.is_empty());
        assert_eq!(vm_devices(&vm), "");
    }
}
