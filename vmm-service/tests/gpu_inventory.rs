//! Inventory read from generated sysfs trees of real host shapes.

mod common;

use common::{amd_instinct, bdf, hgx_gpu_group, hgx_h100, shared_group, workstation, HGX_GPUS};
use vmm_service::gpu::{gpu_info, list_gpus, BarKind, Bdf, GpuError, NoOwners};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn hgx_lists_eight_h100s_and_the_bmc_vga_but_not_nvswitches() {
    let fx = hgx_h100().build();
    let gpus = list_gpus(&fx.host, &NoOwners).unwrap();
    let addresses: Vec<String> = gpus.iter().map(|g| g.bdf().to_string()).collect();
    let mut expected = vec!["0000:03:00.0".to_string()];
    expected.extend(
        HGX_GPUS
            .iter()
            .map(|(bus, _)| format!("0000:{bus:02x}:00.0")),
    );
    assert_eq!(addresses, expected);
    assert!(
        gpus.iter().all(|g| g.function.device_id != 0x22a3),
        "NVSwitches are not GPUs"
    );
}

#[test]
fn hgx_h100_fields() {
    let fx = hgx_h100().build();
    for (i, &(bus, node)) in HGX_GPUS.iter().enumerate() {
        let address = format!("0000:{bus:02x}:00.0");
        let info = gpu_info(&fx.host, &bdf(&address), &NoOwners).unwrap();
        let f = &info.function;
        assert_eq!(
            (f.vendor_id, f.device_id, f.class),
            (0x10de, 0x2330, 0x030200)
        );
        assert_eq!(
            (f.subsystem_vendor_id, f.subsystem_device_id),
            (Some(0x10de), Some(0x16c1))
        );
        assert_eq!(info.vendor_name.as_deref(), Some("NVIDIA Corporation"));
        assert_eq!(info.device_name.as_deref(), Some("GH100 [H100 SXM5 80GB]"));
        assert_eq!(info.class_name.as_deref(), Some("3D controller"));
        assert_eq!(f.driver.as_deref(), Some("nvidia"));
        assert_eq!(f.driver_override, None);
        assert_eq!(f.iommu_group, Some(hgx_gpu_group(i)));
        assert_eq!(f.numa_node, Some(node as u32));
        assert!(!f.boot_vga);
        // Own group: just the GPU; the switch ports have theirs.
        let members: Vec<Bdf> = info.iommu_group_members.iter().map(|m| m.bdf).collect();
        assert_eq!(members, vec![bdf(&address)]);
        assert!(info.companions.is_empty());

        let bars: Vec<(u8, BarKind, bool, u64)> = info
            .bars
            .iter()
            .map(|b| (b.index, b.kind, b.prefetchable, b.size))
            .collect();
        assert_eq!(
            bars,
            vec![
                (0, BarKind::Memory32, false, 16 * MIB),
                (1, BarKind::Memory64, true, 128 * GIB),
                (3, BarKind::Memory64, true, 32 * MIB),
            ]
        );
        assert_eq!(info.bar64_bytes(), 128 * GIB + 32 * MIB);
        assert_eq!(info.largest_bar(), 128 * GIB);
        let link = info.link.as_ref().unwrap();
        assert_eq!(link.current_speed.as_deref(), Some("32.0 GT/s PCIe"));
        assert_eq!((link.current_width, link.max_width), (Some(16), Some(16)));
        assert_eq!(info.owner, None);
    }
}

#[test]
fn gpus_spread_over_two_numa_nodes() {
    let fx = hgx_h100().build();
    let gpus = list_gpus(&fx.host, &NoOwners).unwrap();
    let on = |node| {
        gpus.iter()
            .filter(|g| g.function.device_id == 0x2330 && g.function.numa_node == Some(node))
            .count()
    };
    assert_eq!((on(0), on(1)), (4, 4));
}

#[test]
fn owner_comes_from_the_lookup() {
    let fx = hgx_h100().build();
    let taken = bdf("0000:2a:00.0");
    let owners = move |b: &Bdf| (*b == taken).then(|| "vm-7".to_string());
    let gpus = list_gpus(&fx.host, &owners).unwrap();
    let owned: Vec<(String, String)> = gpus
        .iter()
        .filter_map(|g| g.owner.clone().map(|o| (g.bdf().to_string(), o)))
        .collect();
    assert_eq!(
        owned,
        vec![("0000:2a:00.0".to_string(), "vm-7".to_string())]
    );
}

#[test]
fn workstation_gpu_has_its_audio_in_group_and_slot() {
    let fx = workstation().build();
    let info = gpu_info(&fx.host, &bdf("01:00.0"), &NoOwners).unwrap();
    assert_eq!(
        info.device_name.as_deref(),
        Some("AD102 [GeForce RTX 4090]")
    );
    assert_eq!(
        info.class_name.as_deref(),
        Some("VGA compatible controller")
    );
    assert!(info.function.boot_vga);
    assert_eq!(info.function.numa_node, None, "numa_node -1 means no node");
    let members: Vec<(String, bool, Option<String>)> = info
        .iommu_group_members
        .iter()
        .map(|m| (m.bdf.to_string(), m.is_bridge, m.driver.clone()))
        .collect();
    assert_eq!(
        members,
        vec![
            ("0000:00:01.0".into(), true, Some("pcieport".into())),
            ("0000:01:00.0".into(), false, Some("nvidia".into())),
            ("0000:01:00.1".into(), false, Some("snd_hda_intel".into())),
        ]
    );
    assert_eq!(info.companions.len(), 1);
    let audio = &info.companions[0];
    assert_eq!(audio.bdf, bdf("0000:01:00.1"));
    assert_eq!(audio.class_name.as_deref(), Some("Audio device"));
    assert_eq!(
        audio.name.as_deref(),
        Some("AD102 High Definition Audio Controller")
    );

    // Link trained down at idle: current differs from max.
    let link = info.link.clone().unwrap();
    assert_eq!(link.current_speed.as_deref(), Some("2.5 GT/s PCIe"));
    assert_eq!(link.max_speed.as_deref(), Some("16.0 GT/s PCIe"));
    let io: Vec<_> = info.bars.iter().filter(|b| b.kind == BarKind::Io).collect();
    assert_eq!((io.len(), io[0].index, io[0].size), (1, 5, 128));
    assert_eq!(info.largest_bar(), 32 * GIB);
}

#[test]
fn amd_accelerators_of_both_classes() {
    let fx = amd_instinct().build();
    let gpus = list_gpus(&fx.host, &NoOwners).unwrap();
    let summary: Vec<(String, u32, Option<String>, Option<u32>)> = gpus
        .iter()
        .map(|g| {
            (
                g.bdf().to_string(),
                g.function.class,
                g.device_name.clone(),
                g.function.numa_node,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "0000:11:00.0".into(),
                0x120000,
                Some("Aqua Vanjaram [Instinct MI300X]".into()),
                Some(0)
            ),
            (
                "0000:91:00.0".into(),
                0x120000,
                Some("Aqua Vanjaram [Instinct MI300X]".into()),
                Some(1)
            ),
            (
                "0000:c1:00.0".into(),
                0x038000,
                Some("Aldebaran/MI200 [Instinct MI210]".into()),
                Some(1)
            ),
        ]
    );
    assert!(gpus
        .iter()
        .all(|g| g.function.driver.as_deref() == Some("amdgpu")));
    assert_eq!(
        gpus[0].vendor_name.as_deref(),
        Some("Advanced Micro Devices, Inc. [AMD/ATI]")
    );
    assert_eq!(gpus[0].largest_bar(), 256 * GIB);
    assert!(
        !gpus[0].function.boot_vga,
        "non-VGA classes have no boot_vga"
    );
}

#[test]
fn shared_group_lists_the_nic_and_bridges() {
    let fx = shared_group().build();
    let info = gpu_info(&fx.host, &bdf("04:00.0"), &NoOwners).unwrap();
    let members: Vec<(String, bool)> = info
        .iommu_group_members
        .iter()
        .map(|m| (m.bdf.to_string(), m.is_bridge))
        .collect();
    assert_eq!(
        members,
        vec![
            ("0000:00:03.0".into(), true),
            ("0000:02:00.0".into(), true),
            ("0000:03:08.0".into(), true),
            ("0000:03:10.0".into(), true),
            ("0000:04:00.0".into(), false),
            ("0000:05:00.0".into(), false),
            ("0000:05:00.1".into(), false),
        ]
    );
    assert!(
        info.companions.is_empty(),
        "the NIC is in the group, not the slot"
    );
    let nic = &info.iommu_group_members[5];
    assert_eq!(nic.class_name.as_deref(), Some("Ethernet controller"));
}

#[test]
fn non_gpu_and_missing_devices_are_refused() {
    let fx = hgx_h100().build();
    let err = gpu_info(&fx.host, &bdf("0000:c0:00.0"), &NoOwners).unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::NotAGpu {
                class: 0x068000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not a GPU"));
    let err = gpu_info(&fx.host, &bdf("0000:77:00.0"), &NoOwners).unwrap_err();
    assert!(matches!(err, GpuError::NoSuchDevice { .. }), "{err}");
}

#[test]
fn inventory_serializes_for_the_api() {
    let fx = workstation().build();
    let gpus = list_gpus(&fx.host, &NoOwners).unwrap();
    let json = serde_json::to_value(&gpus).unwrap();
    let gpu = &json[0];
    assert_eq!(gpu["bdf"], "0000:01:00.0");
    assert_eq!(gpu["driver"], "nvidia");
    assert_eq!(gpu["iommu_group"], 1);
    assert_eq!(gpu["boot_vga"], true);
    assert_eq!(gpu["companions"][0]["bdf"], "0000:01:00.1");
    assert_eq!(gpu["bars"][1]["size"], 32 * GIB);
    assert_eq!(gpu["bars"][1]["kind"], "memory64");
}

#[test]
fn a_missing_sysfs_is_an_error() {
    let host = vmm_service::gpu::HostPaths::with_sysfs("/nonexistent-sysfs");
    let err = list_gpus(&host, &NoOwners).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent-sysfs/bus/pci/devices"),
        "{err}"
    );
}
