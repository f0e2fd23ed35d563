//! Binding IOMMU groups to vfio-pci and back, on generated hosts whose simulated kernel
//! moves drivers the way the PCI core does; every sysfs write is recorded and asserted.

mod common;

use std::time::Duration;

use common::{bdf, hgx_gpu_group, hgx_h100, shared_group, workstation, Fixture};
use vmm_service::gpu::{
    BindOptions, DriverRecord, DriverRecords, GpuBinder, GpuError, JsonFileRecords, MemoryRecords,
};

fn w(path: &str, value: &str) -> (String, String) {
    (path.to_string(), value.to_string())
}

/// The three writes that move one function to vfio-pci.
fn to_vfio(address: &str, from: &str) -> Vec<(String, String)> {
    vec![
        w(
            &format!("bus/pci/devices/{address}/driver_override"),
            "vfio-pci",
        ),
        w(&format!("bus/pci/drivers/{from}/unbind"), address),
        w("bus/pci/drivers_probe", address),
    ]
}

/// The three writes that release one function from vfio-pci to a probed driver.
fn from_vfio(address: &str) -> Vec<(String, String)> {
    vec![
        w(&format!("bus/pci/devices/{address}/driver_override"), "\n"),
        w("bus/pci/drivers/vfio-pci/unbind", address),
        w("bus/pci/drivers_probe", address),
    ]
}

fn force() -> BindOptions {
    BindOptions {
        force: true,
        ..BindOptions::default()
    }
}

/// The workstation with vfio-pci loaded.
fn workstation_with_vfio() -> Fixture {
    workstation().vfio_pci_loaded(true).build()
}

fn record(driver: Option<&str>) -> Option<DriverRecord> {
    Some(DriverRecord {
        original_driver: driver.map(str::to_string),
    })
}

#[test]
fn binds_one_h100_with_override_unbind_probe() {
    let fx = hgx_h100().build();
    let mut records = MemoryRecords::default();
    let gpu = bdf("0000:2a:00.0");
    let outcome = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&gpu, &BindOptions::default())
        .unwrap();

    assert_eq!(fx.writes(), to_vfio("0000:2a:00.0", "nvidia"));
    assert_eq!(fx.driver_of("0000:2a:00.0").as_deref(), Some("vfio-pci"));
    assert_eq!(fx.override_of("0000:2a:00.0"), "vfio-pci\n");
    assert_eq!(outcome.iommu_group, hgx_gpu_group(1));
    assert_eq!(outcome.moved.len(), 1);
    assert_eq!(outcome.moved[0].from.as_deref(), Some("nvidia"));
    assert_eq!(outcome.vfio_node, fx.host.vfio_group_node(hgx_gpu_group(1)));
    assert!(fx.vfio_node_exists(hgx_gpu_group(1)));
    assert_eq!(records.get(&gpu).unwrap(), record(Some("nvidia")));
    // The other GPUs and the switch above are untouched.
    assert_eq!(fx.driver_of("0000:18:00.0").as_deref(), Some("nvidia"));
    assert_eq!(fx.driver_of("0000:29:00.0").as_deref(), Some("pcieport"));
}

#[test]
fn releases_back_to_the_recorded_driver() {
    let fx = hgx_h100().build();
    let mut records = MemoryRecords::default();
    let gpu = bdf("0000:2a:00.0");
    let mut binder = GpuBinder::new(&fx.host, &fx.kernel, &mut records);
    binder.bind(&gpu, &BindOptions::default()).unwrap();
    fx.clear_writes();

    let outcome = binder.release(&gpu).unwrap();
    assert_eq!(fx.writes(), from_vfio("0000:2a:00.0"));
    assert_eq!(fx.driver_of("0000:2a:00.0").as_deref(), Some("nvidia"));
    assert_eq!(fx.override_of("0000:2a:00.0"), "(null)\n");
    assert!(!fx.vfio_node_exists(hgx_gpu_group(1)));
    assert_eq!(outcome.restored.len(), 1);
    assert_eq!(outcome.restored[0].to.as_deref(), Some("nvidia"));
    assert!(outcome.warnings.is_empty());
    assert_eq!(records.get(&gpu).unwrap(), None);
}

#[test]
fn binding_twice_and_releasing_twice_change_nothing_the_second_time() {
    let fx = hgx_h100().build();
    let mut records = MemoryRecords::default();
    let gpu = bdf("0000:18:00.0");
    let mut binder = GpuBinder::new(&fx.host, &fx.kernel, &mut records);
    binder.bind(&gpu, &BindOptions::default()).unwrap();
    fx.clear_writes();

    let again = binder.bind(&gpu, &BindOptions::default()).unwrap();
    assert!(fx.writes().is_empty(), "{:?}", fx.writes());
    assert!(again.moved.is_empty());
    assert_eq!(again.already_bound, vec![gpu]);

    binder.release(&gpu).unwrap();
    fx.clear_writes();
    let again = binder.release(&gpu).unwrap();
    assert!(fx.writes().is_empty(), "{:?}", fx.writes());
    assert!(again.restored.is_empty());
    // The original driver survived the second bind (it was not recorded as vfio-pci).
    assert_eq!(fx.driver_of("0000:18:00.0").as_deref(), Some("nvidia"));
}

#[test]
fn missing_vfio_pci_says_to_modprobe_it() {
    let fx = workstation().build();
    let mut records = MemoryRecords::default();
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("01:00.0"), &force())
        .unwrap_err();
    assert!(matches!(err, GpuError::VfioPciMissing { .. }), "{err}");
    assert!(err.to_string().contains("modprobe vfio-pci"));
    assert!(fx.writes().is_empty());
}

#[test]
fn the_console_gpu_is_refused_without_force() {
    let fx = workstation_with_vfio();
    let mut records = MemoryRecords::default();
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("01:00.0"), &BindOptions::default())
        .unwrap_err();
    assert!(matches!(err, GpuError::ConsoleDevice { .. }), "{err}");
    assert!(err.to_string().contains("--force"));
    assert!(fx.writes().is_empty());
    assert!(records.records.is_empty());
    assert_eq!(fx.driver_of("01:00.0").as_deref(), Some("nvidia"));
}

#[test]
fn force_binds_the_whole_group_and_leaves_the_root_port() {
    let fx = workstation_with_vfio();
    let mut records = MemoryRecords::default();
    let outcome = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("01:00.0"), &force())
        .unwrap();

    let mut expected = to_vfio("0000:01:00.0", "nvidia");
    expected.extend(to_vfio("0000:01:00.1", "snd_hda_intel"));
    assert_eq!(fx.writes(), expected);
    assert_eq!(fx.driver_of("01:00.0").as_deref(), Some("vfio-pci"));
    assert_eq!(fx.driver_of("01:00.1").as_deref(), Some("vfio-pci"));
    assert_eq!(fx.driver_of("00:01.0").as_deref(), Some("pcieport"));
    assert_eq!(outcome.bridges, vec![bdf("00:01.0")]);
    assert!(fx.vfio_node_exists(1));
    assert_eq!(
        records.get(&bdf("01:00.1")).unwrap(),
        record(Some("snd_hda_intel"))
    );

    fx.clear_writes();
    let released = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .release(&bdf("01:00.0"))
        .unwrap();
    let mut expected = from_vfio("0000:01:00.0");
    expected.extend(from_vfio("0000:01:00.1"));
    assert_eq!(fx.writes(), expected);
    assert_eq!(fx.driver_of("01:00.0").as_deref(), Some("nvidia"));
    assert_eq!(fx.driver_of("01:00.1").as_deref(), Some("snd_hda_intel"));
    assert_eq!(released.restored.len(), 2);
    assert!(!fx.vfio_node_exists(1));
    assert!(records.records.is_empty());
}

#[test]
fn a_failure_half_way_puts_everything_back() {
    let fx = workstation_with_vfio();
    fx.kernel.fail_write("drivers_probe", Some("0000:01:00.1"));
    let mut records = MemoryRecords::default();
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("01:00.0"), &force())
        .unwrap_err();
    assert!(matches!(err, GpuError::Write { .. }), "{err}");
    assert!(err.to_string().contains("drivers_probe"), "{err}");

    let mut expected = to_vfio("0000:01:00.0", "nvidia");
    expected.extend(to_vfio("0000:01:00.1", "snd_hda_intel"));
    // Rollback, newest first: the audio function never reached vfio-pci.
    expected.push(w("bus/pci/devices/0000:01:00.1/driver_override", "\n"));
    expected.push(w("bus/pci/drivers_probe", "0000:01:00.1"));
    expected.extend(from_vfio("0000:01:00.0"));
    assert_eq!(fx.writes(), expected);

    assert_eq!(fx.driver_of("01:00.0").as_deref(), Some("nvidia"));
    assert_eq!(fx.driver_of("01:00.1").as_deref(), Some("snd_hda_intel"));
    assert_eq!(fx.override_of("01:00.0"), "(null)\n");
    assert_eq!(fx.override_of("01:00.1"), "(null)\n");
    assert!(!fx.vfio_node_exists(1));
    assert!(records.records.is_empty());
}

#[test]
fn a_function_vfio_refuses_rolls_back_the_group() {
    let fx = shared_group().build();
    fx.kernel.refuse_vfio("0000:05:00.1");
    let mut records = MemoryRecords::default();
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("04:00.0"), &force())
        .unwrap_err();
    assert!(
        matches!(err, GpuError::DriverDidNotTake { ref actual, .. } if actual == "none"),
        "{err}"
    );
    assert_eq!(fx.driver_of("04:00.0").as_deref(), Some("nvidia"));
    assert_eq!(fx.driver_of("05:00.0").as_deref(), Some("igb"));
    assert_eq!(
        fx.driver_of("05:00.1"),
        None,
        "it had no driver and gets none"
    );
    for address in ["04:00.0", "05:00.0", "05:00.1"] {
        assert_eq!(fx.override_of(address), "(null)\n", "{address}");
    }
    assert!(!fx.vfio_node_exists(30));
    assert!(records.records.is_empty());
}

#[test]
fn a_failed_rollback_reports_both_failures() {
    let fx = workstation_with_vfio();
    fx.kernel.fail_write("drivers_probe", Some("0000:01:00.1"));
    fx.kernel
        .fail_write("0000:01:00.0/driver_override", Some("\n"));
    let mut records = MemoryRecords::default();
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("01:00.0"), &force())
        .unwrap_err();
    let GpuError::RollbackFailed { cause, rollback } = &err else {
        panic!("expected RollbackFailed, got {err}");
    };
    assert!(matches!(**cause, GpuError::Write { .. }));
    assert!(rollback.contains("0000:01:00.0"), "{rollback}");
    assert!(err.to_string().contains("gpu list"));
    // The function whose rollback succeeded is home; the other is left visible on vfio-pci.
    assert_eq!(fx.driver_of("01:00.1").as_deref(), Some("snd_hda_intel"));
    assert_eq!(fx.driver_of("01:00.0").as_deref(), Some("vfio-pci"));
}

#[test]
fn a_missing_vfio_node_is_an_error_and_rolls_back() {
    let fx = hgx_h100().build();
    fx.kernel.no_vfio_nodes();
    let mut records = MemoryRecords::default();
    let options = BindOptions {
        force: false,
        vfio_node_timeout: Duration::from_millis(60),
    };
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("0000:18:00.0"), &options)
        .unwrap_err();
    assert!(
        matches!(err, GpuError::VfioNodeMissing { group: 13, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/dev/vfio/13") || err.to_string().contains("vfio/13"));
    assert_eq!(fx.driver_of("0000:18:00.0").as_deref(), Some("nvidia"));
    assert!(records.records.is_empty());
}

#[test]
fn a_group_shared_with_a_nic_in_use_needs_force() {
    let fx = shared_group().build();
    let mut records = MemoryRecords::default();
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("04:00.0"), &BindOptions::default())
        .unwrap_err();
    let GpuError::SharedGroup { group, others, .. } = &err else {
        panic!("expected SharedGroup, got {err}");
    };
    assert_eq!(*group, 30);
    // Only the NIC port the host drives; not the unbound port, not the bridges.
    assert_eq!(others, "0000:05:00.0 (driver igb)");
    assert!(fx.writes().is_empty());

    let outcome = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("04:00.0"), &force())
        .unwrap();
    let moved: Vec<String> = outcome.moved.iter().map(|c| c.bdf.to_string()).collect();
    assert_eq!(moved, ["0000:04:00.0", "0000:05:00.0", "0000:05:00.1"]);
    assert_eq!(outcome.bridges.len(), 4);
    for bridge in ["00:03.0", "02:00.0", "03:08.0", "03:10.0"] {
        assert_eq!(
            fx.driver_of(bridge).as_deref(),
            Some("pcieport"),
            "{bridge}"
        );
    }
    // The unbound port has nothing to unbind from: override and probe only.
    let writes = fx.writes();
    let port1: Vec<_> = writes
        .iter()
        .filter(|(p, v)| p.contains("05:00.1") || v == "0000:05:00.1")
        .collect();
    assert_eq!(
        port1,
        vec![
            &w("bus/pci/devices/0000:05:00.1/driver_override", "vfio-pci"),
            &w("bus/pci/drivers_probe", "0000:05:00.1"),
        ]
    );
    assert_eq!(records.get(&bdf("05:00.1")).unwrap(), record(None));
}

#[test]
fn non_gpus_are_refused_for_bind_and_release() {
    let fx = shared_group().build();
    let mut records = MemoryRecords::default();
    let mut binder = GpuBinder::new(&fx.host, &fx.kernel, &mut records);
    for address in ["05:00.0", "03:08.0"] {
        let err = binder.bind(&bdf(address), &force()).unwrap_err();
        assert!(matches!(err, GpuError::NotAGpu { .. }), "{err}");
        let err = binder.release(&bdf(address)).unwrap_err();
        assert!(matches!(err, GpuError::NotAGpu { .. }), "{err}");
    }
    let err = binder.bind(&bdf("0000:99:00.0"), &force()).unwrap_err();
    assert!(matches!(err, GpuError::NoSuchDevice { .. }), "{err}");
    assert!(fx.writes().is_empty());
}

#[test]
fn release_without_a_record_lets_the_kernel_probe() {
    let fx = hgx_h100().build();
    let gpu = bdf("0000:5d:00.0");
    GpuBinder::new(&fx.host, &fx.kernel, &mut MemoryRecords::default())
        .bind(&gpu, &BindOptions::default())
        .unwrap();
    fx.clear_writes();
    let outcome = GpuBinder::new(&fx.host, &fx.kernel, &mut MemoryRecords::default())
        .release(&gpu)
        .unwrap();
    assert_eq!(fx.writes(), from_vfio("0000:5d:00.0"));
    assert_eq!(fx.driver_of("0000:5d:00.0").as_deref(), Some("nvidia"));
    assert!(outcome.warnings.is_empty());
}

#[test]
fn a_function_that_had_no_driver_gets_none_back() {
    let fx = workstation_with_vfio();
    // The operator had unbound the audio function; the kernel would still probe it.
    fx.set_driver("01:00.1", None);
    let mut records = MemoryRecords::default();
    let mut binder = GpuBinder::new(&fx.host, &fx.kernel, &mut records);
    binder.bind(&bdf("01:00.0"), &force()).unwrap();
    fx.clear_writes();
    binder.release(&bdf("01:00.0")).unwrap();
    let mut expected = from_vfio("0000:01:00.0");
    expected.push(w("bus/pci/devices/0000:01:00.1/driver_override", "\n"));
    expected.push(w("bus/pci/drivers/vfio-pci/unbind", "0000:01:00.1"));
    assert_eq!(fx.writes(), expected);
    assert_eq!(fx.driver_of("01:00.1"), None);
}

#[test]
fn release_binds_the_recorded_driver_by_name_when_probing_finds_none() {
    let fx = hgx_h100().build();
    let gpu = bdf("0000:18:00.0");
    let mut records = MemoryRecords::default();
    let mut binder = GpuBinder::new(&fx.host, &fx.kernel, &mut records);
    binder.bind(&gpu, &BindOptions::default()).unwrap();
    fx.kernel.set_default("0000:18:00.0", None);
    fx.clear_writes();
    let outcome = binder.release(&gpu).unwrap();
    let mut expected = from_vfio("0000:18:00.0");
    expected.push(w("bus/pci/drivers/nvidia/bind", "0000:18:00.0"));
    assert_eq!(fx.writes(), expected);
    assert_eq!(fx.driver_of("0000:18:00.0").as_deref(), Some("nvidia"));
    assert!(outcome.warnings.is_empty());
}

#[test]
fn release_warns_when_the_probe_picks_another_driver() {
    let fx = workstation_with_vfio();
    // Bound to nouveau by hand before; the kernel's first choice is nvidia.
    fx.set_driver("01:00.0", Some("nouveau"));
    let mut records = MemoryRecords::default();
    let mut binder = GpuBinder::new(&fx.host, &fx.kernel, &mut records);
    binder.bind(&bdf("01:00.0"), &force()).unwrap();
    let outcome = binder.release(&bdf("01:00.0")).unwrap();
    assert_eq!(fx.driver_of("01:00.0").as_deref(), Some("nvidia"));
    assert_eq!(outcome.warnings.len(), 1);
    assert!(
        outcome.warnings[0].contains("nouveau"),
        "{}",
        outcome.warnings[0]
    );
}

#[test]
fn records_in_a_json_file_carry_across_processes() {
    let fx = workstation_with_vfio();
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("var/lib/form-vmm/gpu-drivers.json");
    GpuBinder::new(&fx.host, &fx.kernel, &mut JsonFileRecords::new(&path))
        .bind(&bdf("01:00.0"), &force())
        .unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        saved["functions"]["0000:01:00.0"]["original_driver"],
        "nvidia"
    );
    assert_eq!(
        saved["functions"]["0000:01:00.1"]["original_driver"],
        "snd_hda_intel"
    );

    // A later process, with only the file to go on.
    fx.kernel.set_default("0000:01:00.1", None);
    GpuBinder::new(&fx.host, &fx.kernel, &mut JsonFileRecords::new(&path))
        .release(&bdf("01:00.0"))
        .unwrap();
    assert_eq!(fx.driver_of("01:00.1").as_deref(), Some("snd_hda_intel"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["functions"], serde_json::json!({}));
}

#[test]
fn an_unwritable_record_store_stops_the_bind_before_any_write() {
    let fx = hgx_h100().build();
    let blocker = fx.host.sysfs.parent().unwrap().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let mut records = JsonFileRecords::new(blocker.join("gpu-drivers.json"));
    let err = GpuBinder::new(&fx.host, &fx.kernel, &mut records)
        .bind(&bdf("0000:18:00.0"), &BindOptions::default())
        .unwrap_err();
    assert!(matches!(err, GpuError::Records { .. }), "{err}");
    assert!(fx.writes().is_empty());
    assert_eq!(fx.driver_of("0000:18:00.0").as_deref(), Some("nvidia"));
}
