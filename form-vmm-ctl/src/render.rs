//! How answers look to people. Pure functions from the service's types to text, so
//! every view is tested without a service.

use std::fmt::Write as _;

use form_service_api::format_bytes;
use form_service_api::types::{
    CloudInitConfig, DoctorResponse, GpuList, NumaMode, VmInfo, VmInstanceConfig, VmList, VmState,
};

use crate::table::{or_none, Table, NONE};

pub fn state(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Created => "created",
        VmState::Running => "running",
    }
}

/// `list`: one row per VM.
pub fn vm_list(list: &VmList) -> String {
    if list.vms.is_empty() {
        return "no VMs; create one with `form-vmm-ctl create`\n".to_string();
    }
    let mut table = Table::new(&[
        "NAME", "STATE", "VCPUS", "MEMORY", "GPUS", "DISKS", "NETS", "PID",
    ]);
    for vm in &list.vms {
        table.row(vec![
            vm.name.clone(),
            state(vm.state).to_string(),
            vm.config.vcpus.to_string(),
            format_bytes(vm.config.memory),
            vm.gpus.len().to_string(),
            vm.config.disks.len().to_string(),
            vm.config.networks.len().to_string(),
            or_none(vm.pid),
        ]);
    }
    table.render()
}

/// `info` and `create`: everything about one VM.
pub fn vm_details(vm: &VmInfo) -> String {
    let config = &vm.config;
    let mut fields: Vec<(&str, String)> = vec![
        ("name", vm.name.clone()),
        ("state", state(vm.state).to_string()),
        ("vcpus", config.vcpus.to_string()),
        ("memory", format_bytes(config.memory)),
        (
            "kernel",
            config
                .kernel
                .clone()
                .unwrap_or_else(|| "from the boot disk".to_string()),
        ),
        ("initramfs", or_none(config.initramfs.as_ref())),
        ("cmdline", or_none(config.cmdline.as_ref())),
        ("gpu request", gpu_request(config)),
        ("gpudirect", gpudirect(config)),
        (
            "unbind on shutdown",
            yes_no(config.gpu_options.unbind_on_shutdown).to_string(),
        ),
        ("numa node", numa_node(vm)),
    ];
    if config.hugepages {
        let size = config
            .hugepage_size
            .map_or("the host's default size", |size| size.as_str());
        fields.push(("hugepages", size.to_string()));
    }
    fields.extend([
        ("pid", or_none(vm.pid)),
        ("vmm uid", or_none(vm.vmm_uid)),
        ("vmm cgroup", or_none(vm.vmm_cgroup.as_ref())),
        ("api socket", or_none(vm.api_socket.as_ref())),
        ("serial log", vm.serial_log.clone()),
    ]);
    if let Some(cloud_init) = &config.cloud_init {
        fields.push(("cloud-init", cloud_init_summary(cloud_init)));
        fields.push(("seed image", or_none(vm.seed_image.as_ref())));
    }
    if let Some(exit) = &vm.last_exit {
        fields.push((
            "last exit",
            format!("{} ({})", exit.reason, timestamp(exit.at)),
        ));
    }
    fields.push(("created", timestamp(vm.created_at)));
    fields.push(("updated", timestamp(vm.updated_at)));

    let width = fields.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in &fields {
        let label = format!("{key}:");
        let _ = writeln!(out, "{label:<width$} {value}");
    }
    out.push_str(&vm_gpus(vm));
    out.push_str(&guest_numa(vm));
    out.push_str(&vm_disks(vm));
    out.push_str(&vm_networks(vm));
    out
}

/// The node the VM is bound to; "off" and "flat" say the VM asked not to be, so
/// an empty field is not mistaken for a host that could not place it.
fn numa_node(vm: &VmInfo) -> String {
    if !vm.guest_numa.is_empty() {
        let hosts: Vec<String> = vm
            .guest_numa
            .iter()
            .map(|n| n.host_node.to_string())
            .collect();
        return format!("mirrored on host nodes {}", hosts.join(", "));
    }
    match vm.numa_node {
        Some(node) => node.to_string(),
        None if !vm.config.gpu_options.numa_affinity => "off".to_string(),
        None if vm.config.numa == Some(NumaMode::Flat) => "flat".to_string(),
        None => "-".to_string(),
    }
}

/// The guest NUMA nodes of a mirrored VM; nothing for a VM of one node.
fn guest_numa(vm: &VmInfo) -> String {
    if vm.guest_numa.is_empty() {
        return String::new();
    }
    let mut table = Table::new(&["NODE", "HOST NODE", "VCPUS", "MEMORY", "GPUS", "DISTANCES"]);
    for node in &vm.guest_numa {
        let distances: Vec<String> = node.distances.iter().map(u8::to_string).collect();
        table.row(vec![
            node.guest_node.to_string(),
            node.host_node.to_string(),
            id_ranges(&node.vcpus),
            format_bytes(node.memory),
            node.gpus.len().to_string(),
            distances.join(" "),
        ]);
    }
    indented_section("guest numa", table)
}

/// `0-3,8` for 0, 1, 2, 3, 8.
fn id_ranges(ids: &[u32]) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &id in ids {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => ranges.push((id, id)),
        }
    }
    ranges
        .iter()
        .map(|&(start, end)| match start == end {
            true => start.to_string(),
            false => format!("{start}-{end}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The VM's disks, the seed disk last, as form-vmm is given them.
pub fn vm_disks(vm: &VmInfo) -> String {
    let mut table = Table::new(&["ID", "PATH", "MODE"]);
    for (i, disk) in vm.config.disks.iter().enumerate() {
        let mode = if disk.readonly { "ro" } else { "rw" };
        table.row(vec![
            format!("disk{i}"),
            disk.path.clone(),
            mode.to_string(),
        ]);
    }
    if let Some(seed) = &vm.seed_image {
        table.row(vec![
            "cidata".to_string(),
            seed.clone(),
            "ro (cloud-init)".to_string(),
        ]);
    }
    indented_section("disks", table)
}

/// The VM's interfaces with the host's tap names.
pub fn vm_networks(vm: &VmInfo) -> String {
    let mut table = Table::new(&["ID", "TAP", "MAC", "BRIDGE"]);
    for net in &vm.networks {
        table.row(vec![
            net.id.clone(),
            net.tap.clone(),
            net.mac.clone(),
            or_none(net.bridge.as_ref()),
        ]);
    }
    indented_section("networks", table)
}

fn indented_section(heading: &str, table: Table) -> String {
    if table.is_empty() {
        return format!("{heading}: none\n");
    }
    let mut out = format!("{heading}:\n");
    for line in table.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn cloud_init_summary(config: &CloudInitConfig) -> String {
    let mut parts = Vec::new();
    if let Some(hostname) = &config.hostname {
        parts.push(format!("hostname {hostname}"));
    }
    if let Some(user) = &config.user {
        parts.push(format!("user {user}"));
    }
    if !config.ssh_authorized_keys.is_empty() {
        parts.push(format!("{} ssh keys", config.ssh_authorized_keys.len()));
    }
    if !config.packages.is_empty() {
        parts.push(format!("{} packages", config.packages.len()));
    }
    if !config.runcmd.is_empty() {
        parts.push(format!("{} commands", config.runcmd.len()));
    }
    if config.user_data.is_some() {
        parts.push("own user-data".to_string());
    }
    if config.network_config.is_some() {
        parts.push("own network-config".to_string());
    }
    if parts.is_empty() {
        "defaults".to_string()
    } else {
        parts.join(", ")
    }
}

/// The GPUs a VM holds, as a table under a heading.
pub fn vm_gpus(vm: &VmInfo) -> String {
    if vm.gpus.is_empty() {
        return format!("gpus: none\n{}", crate::devices::vm_devices(vm));
    }
    let mut table = Table::new(&["DEVICE", "BDF", "NAME", "NUMA"]);
    for gpu in &vm.gpus {
        table.row(vec![
            gpu.device_id.clone(),
            gpu.bdf.clone(),
            or_none(gpu.name.as_ref()),
            or_none(gpu.numa_node),
        ]);
    }
    let mut out = "gpus:\n".to_string();
    for line in table.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str(&crate::devices::vm_devices(vm));
    out
}

fn gpu_request(config: &VmInstanceConfig) -> String {
    match &config.gpu_request {
        Some(request) => format!("{} x {}", request.model, request.count),
        None if config.gpu_devices.is_empty() => NONE.to_string(),
        None => config.gpu_devices.join(", "),
    }
}

fn gpudirect(config: &VmInstanceConfig) -> String {
    let options = &config.gpu_options;
    if options.enable_nvidia_gpudirect {
        format!("clique {}", options.nvidia_gpudirect_clique)
    } else {
        "off".to_string()
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// `gpu list`.
pub fn gpu_list(list: &GpuList) -> String {
    if list.gpus.is_empty() {
        return "no GPUs or accelerators on this host\n".to_string();
    }
    let mut table = Table::new(&["BDF", "NAME", "DRIVER", "IOMMU", "NUMA", "OWNER"]);
    for gpu in &list.gpus {
        let name = if gpu.boot_vga {
            format!("{} (console)", gpu.name)
        } else {
            gpu.name.clone()
        };
        table.row(vec![
            gpu.bdf.clone(),
            name,
            or_none(gpu.driver.as_ref()),
            or_none(gpu.iommu_group),
            or_none(gpu.numa_node),
            or_none(gpu.owner.as_ref()),
        ]);
    }
    table.render()
}

/// `doctor`: one line per check, with the remedy under anything not fine.
pub fn doctor(report: &DoctorResponse) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let tag = match finding.severity.as_str() {
            "ok" => "ok".to_string(),
            "unknown" => "unknown".to_string(),
            other => other.to_ascii_uppercase(),
        };
        let _ = writeln!(out, "[{tag:^7}] {}: {}", finding.check, finding.summary);
        if let Some(remedy) = &finding.remedy {
            let _ = writeln!(out, "          fix: {remedy}");
        }
    }
    out
}

/// Seconds since the epoch as a UTC date and time (`2026-11-22 02:50:00 UTC`).
pub fn timestamp(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01, counted in 400-year eras
/// that begin on 1 March so the leap day falls at the end of each year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_json() -> serde_json::Value {
        serde_json::json!({
            "name": "train-1",
            "state": "running",
            "config": {
                "name": "train-1", "kernel": "/srv/vmlinux", "initramfs": "/srv/initrd",
                "cmdline": "console=ttyS0", "vcpus": 8, "memory": 68719476736u64,
                "gpu_request": {"model": "H100", "count": 2},
                "gpu_options": {"enable_nvidia_gpudirect": true, "nvidia_gpudirect_clique": 3,
                                "unbind_on_shutdown": true},
                "boot": true,
                "disks": [{"path": "/srv/root.raw", "readonly": false},
                          {"path": "/srv/data.raw", "readonly": true}],
                "networks": [{"bridge": "br0"}],
                "cloud_init": {"hostname": "gpu-1", "ssh_authorized_keys": ["ssh-ed25519 AAAA a"]}
            },
            "gpus": [
                {"bdf": "0000:19:00.0", "device_id": "gpu0",
                 "name": "NVIDIA GH100 [H100 SXM5 80GB]", "numa_node": 0},
                {"bdf": "0000:3b:00.0", "device_id": "gpu1", "name": null, "numa_node": null}
            ],
            "pid": 4242,
            "vmm_uid": 100002,
            "vmm_cgroup": "/form-vmm.service/vms/train-1",
            "api_socket": "/run/form-vmm/vms/train-1/api.sock",
            "serial_log": "/var/lib/form-vmm/vms/train-1/serial.log",
            "networks": [{"id": "net0", "tap": "fv1a2b3c4d0", "mac": "52:54:00:01:02:03",
                          "bridge": "br0"}],
            "seed_image": "/var/lib/form-vmm/vms/train-1/seed.img",
            "numa_node": 1,
            "last_exit": {"code": 0, "signal": null, "reason": "exited with status 0",
                          "at": 1790000000u64},
            "created_at": 1790000000u64,
            "updated_at": 1790000061u64
        })
    }

    fn vm() -> VmInfo {
        serde_json::from_value(vm_json()).unwrap()
    }

    #[test]
    fn lists_vms_as_a_table() {
        let mut stopped = vm();
        stopped.name = "idle".into();
        stopped.state = VmState::Stopped;
        stopped.pid = None;
        stopped.gpus.clear();
        stopped.config.memory = 512 << 20;
        stopped.config.vcpus = 1;
        stopped.config.disks.clear();
        stopped.config.networks.clear();
        let list = VmList {
            vms: vec![vm(), stopped],
        };
        assert_eq!(
            vm_list(&list),
            "NAME     STATE    VCPUS  MEMORY   GPUS  DISKS  NETS  PID\n\
             train-1  running  8      64 GiB   2     2      1     4242\n\
             idle     stopped  1      512 MiB  0     0      0     -\n"
        );
        assert!(vm_list(&VmList { vms: vec![] }).contains("no VMs"));
    }

    #[test]
    fn details_show_mirrored_guest_nodes_and_huge_pages() {
        let mut json = vm_json();
        json["config"]["hugepages"] = serde_json::json!(true);
        json["config"]["hugepage_size"] = serde_json::json!("1G");
        json["numa_node"] = serde_json::Value::Null;
        json["guest_numa"] = serde_json::json!([
            {"guest_node": 0, "host_node": 0, "vcpus": [0, 1, 2, 3], "memory": 34359738368u64,
             "gpus": ["0000:19:00.0"], "distances": [10, 21]},
            {"guest_node": 1, "host_node": 1, "vcpus": [4, 5, 6, 7], "memory": 34359738368u64,
             "gpus": ["0000:3b:00.0"], "distances": [21, 10]}
        ]);
        let text = vm_details(&serde_json::from_value(json).unwrap());
        for line in [
            "numa node:          mirrored on host nodes 0, 1\n",
            "hugepages:          1G\n",
            "guest numa:\n  NODE  HOST NODE  VCPUS  MEMORY  GPUS  DISTANCES\n",
            "  0     0          0-3    32 GiB  1     10 21\n",
            "  1     1          4-7    32 GiB  1     21 10\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(id_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(id_ranges(&[]), "");
    }

    #[test]
    fn details_show_configuration_process_and_gpus() {
        let text = vm_details(&vm());
        for line in [
            "name:               train-1\n",
            "state:              running\n",
            "memory:             64 GiB\n",
            "gpu request:        H100 x 2\n",
            "gpudirect:          clique 3\n",
            "unbind on shutdown: yes\n",
            "numa node:          1\n",
            "pid:                4242\n",
            "vmm uid:            100002\n",
            "vmm cgroup:         /form-vmm.service/vms/train-1\n",
            "last exit:          exited with status 0 (2026-09-21 14:13:20 UTC)\n",
            "updated:            2026-09-21 14:14:21 UTC\n",
            "gpus:\n  DEVICE  BDF           NAME                           NUMA\n",
            "  gpu0    0000:19:00.0  NVIDIA GH100 [H100 SXM5 80GB]  0\n",
            "  gpu1    0000:3b:00.0  -                              -\n",
            "cloud-init:         hostname gpu-1, 1 ssh keys\n",
            "seed image:         /var/lib/form-vmm/vms/train-1/seed.img\n",
            "disks:\n  ID      PATH                                    MODE\n",
            "  disk0   /srv/root.raw                           rw\n",
            "  disk1   /srv/data.raw                           ro\n",
            "  cidata  /var/lib/form-vmm/vms/train-1/seed.img  ro (cloud-init)\n",
            "networks:\n  ID    TAP          MAC                BRIDGE\n",
            "  net0  fv1a2b3c4d0  52:54:00:01:02:03  br0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let mut plain = vm();
        plain.config.gpu_request = None;
        plain.config.gpu_devices = vec!["0000:19:00.0".into()];
        plain.config.gpu_options.enable_nvidia_gpudirect = false;
        plain.last_exit = None;
        plain.gpus.clear();
        plain.config.disks.clear();
        plain.config.cloud_init = None;
        plain.seed_image = None;
        plain.networks.clear();
        let text = vm_details(&plain);
        assert!(
            text.contains("gpu request:        0000:19:00.0\n"),
            "{text}"
        );
        assert!(text.contains("gpudirect:          off\n"), "{text}");
        assert!(text.contains("numa node:          1\n"), "{text}");
        plain.numa_node = None;
        assert!(vm_details(&plain).contains("numa node:          -\n"));
        plain.config.gpu_options.numa_affinity = false;
        assert!(vm_details(&plain).contains("numa node:          off\n"));
        plain.config.gpu_options.numa_affinity = true;
        plain.config.numa = Some(NumaMode::Flat);
        assert!(vm_details(&plain).contains("numa node:          flat\n"));
        assert!(
            !text.contains("guest numa") && !text.contains("hugepages"),
            "{text}"
        );
        assert!(!text.contains("last exit"), "{text}");
        assert!(
            text.ends_with("gpus: none\ndisks: none\nnetworks: none\n"),
            "{text}"
        );
        assert!(!text.contains("seed image"), "{text}");
    }

    #[test]
    fn lists_gpus_with_owner_and_console_mark() {
        let list: GpuList = serde_json::from_value(serde_json::json!({"gpus": [
            {"bdf": "0000:19:00.0", "name": "NVIDIA GH100 [H100 SXM5 80GB]", "vendor_id": 4318,
             "device_id": 8996, "driver": "vfio-pci", "iommu_group": 12, "numa_node": 0,
             "parent_bridge": "0000:18:00.0", "boot_vga": false, "owner": "train-1"},
            {"bdf": "0000:c1:00.0", "name": "ASPEED Graphics", "vendor_id": 6688,
             "device_id": 8192, "driver": null, "iommu_group": null, "numa_node": null,
             "parent_bridge": null, "boot_vga": true, "owner": null}
        ]}))
        .unwrap();
        assert_eq!(
            gpu_list(&list),
            "BDF           NAME                           DRIVER    IOMMU  NUMA  OWNER\n\
             0000:19:00.0  NVIDIA GH100 [H100 SXM5 80GB]  vfio-pci  12     0     train-1\n\
             0000:c1:00.0  ASPEED Graphics (console)      -         -      -     -\n"
        );
        assert!(gpu_list(&GpuList { gpus: vec![] }).contains("no GPUs"));
    }

    #[test]
    fn doctor_findings_with_remedies() {
        let report: DoctorResponse = serde_json::from_value(serde_json::json!({
            "worst": "error",
            "findings": [
                {"check": "iommu", "severity": "ok", "summary": "IOMMU on", "remedy": null},
                {"check": "vfio_pci", "severity": "error", "summary": "vfio-pci not loaded",
                 "remedy": "modprobe vfio-pci"}
            ]
        }))
        .unwrap();
        assert_eq!(
            doctor(&report),
            "[  ok   ] iommu: IOMMU on\n\
             [ ERROR ] vfio_pci: vfio-pci not loaded\n\
             \x20         fix: modprobe vfio-pci\n"
        );
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_790_000_000), "2026-09-21 14:13:20 UTC");
        assert_eq!(timestamp(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
