//! The `vmm-service` command line against generated hosts: output, JSON, exit codes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{hgx_h100, vfio_lab, workstation, Fixture, HostBuilder};

fn vmm_service(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm-service"))
        .args(args)
        .output()
        .expect("run vmm-service")
}

fn host_args(fx: &Fixture) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "--sysfs-root".into(),
        path(&fx.host.sysfs),
        "--proc-root".into(),
        path(&fx.host.procfs),
        "--dev-root".into(),
        path(&fx.host.dev),
        "--modules-root".into(),
        path(&fx.host.modules),
    ]
}

fn run_on(fx: &Fixture, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(host_args(fx));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    vmm_service(&refs)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn gpu_list_prints_a_table() {
    let fx = workstation().build();
    let out = run_on(&fx, &["gpu", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["BDF", "NAME", "DRIVER", "IOMMU", "NUMA", "OWNER"]);
    assert!(
        lines[1].starts_with("0000:01:00.0  NVIDIA Corporation AD102 [GeForce RTX 4090]  nvidia"),
        "{text}"
    );
    let tail: Vec<&str> = lines[1].split_whitespace().rev().take(4).collect();
    assert_eq!(
        tail,
        ["-", "-", "1", "nvidia"],
        "owner, NUMA, group, driver"
    );
}

#[test]
fn gpu_list_json_has_every_gpu() {
    let fx = hgx_h100().build();
    let out = run_on(&fx, &["gpu", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let gpus: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpus = gpus.as_array().unwrap();
    assert_eq!(gpus.len(), 9);
    assert_eq!(gpus[1]["bdf"], "0000:18:00.0");
    assert_eq!(gpus[1]["device_name"], "GH100 [H100 SXM5 80GB]");
    assert_eq!(gpus[1]["numa_node"], 0);
    assert_eq!(gpus[1]["link"]["max_width"], 16);
}

#[test]
fn doctor_exit_status_follows_the_worst_finding() {
    let fx = hgx_h100().build();
    let out = run_on(&fx, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["findings"].as_array().unwrap().len() >= 6);

    let bare = HostBuilder::new().build();
    let out = run_on(&bare, &["doctor", "--memory", "16G"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("[ ERROR ] iommu: IOMMU off"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["gpu"][..],
        &["gpu", "bind"],
        &["gpu", "frobnicate"],
        &["doctor", "--memory", "lots"],
        &["gpu", "list", "--no-such-flag"],
    ] {
        let out = vmm_service(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(vmm_service(&["--help"]).status.code(), Some(0));
}

#[test]
fn bad_addresses_exit_1_with_the_reason() {
    let fx = vfio_lab().build();
    let cases = [
        ("0000:00:01", "not a PCI address"),
        ("00:20.0", "out of range"),
        ("/sys/bus/pci/devices/../../../etc", "not a PCI device path"),
        ("0000:00:03.0", "not a GPU"),
        ("0000:00:09.0", "no PCI device 0000:00:09.0"),
    ];
    for (device, message) in cases {
        let out = run_on(&fx, &["gpu", "bind", device]);
        assert_eq!(out.status.code(), Some(1), "{device}");
        assert!(stderr(&out).contains(message), "{device}: {}", stderr(&out));
    }
    assert_eq!(fx.override_of("00:03.0"), "(null)\n");
}

#[test]
fn bind_refuses_the_console_and_records_nothing() {
    let fx = workstation().vfio_pci_loaded(true).build();
    let state = fx
        .host
        .sysfs
        .parent()
        .unwrap()
        .join("state/gpu-drivers.json");
    let out = run_on(
        &fx,
        &[
            "gpu",
            "bind",
            "0000:01:00.0",
            "--state-file",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("boot_vga=1"), "{}", stderr(&out));
    assert!(!state.exists());
    assert_eq!(fx.override_of("01:00.0"), "(null)\n");
}

/// With the real writer on a fixture nothing reacts to the writes, so the probe cannot
/// take; the command must fail, undo its override and leave no record behind.
#[test]
fn bind_without_a_reacting_kernel_fails_cleanly() {
    let fx = vfio_lab().build();
    let state = fx
        .host
        .sysfs
        .parent()
        .unwrap()
        .join("state/gpu-drivers.json");
    let out = run_on(
        &fx,
        &[
            "gpu",
            "bind",
            "/sys/bus/pci/devices/0000:00:04.0",
            "--timeout",
            "1",
            "--state-file",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("0000:00:04.0 is on driver bochs-drm after probing, not vfio-pci"),
        "{}",
        stderr(&out)
    );
    let probe = std::fs::read_to_string(fx.host.drivers_probe()).unwrap();
    assert!(
        probe.starts_with("0000:00:04.0"),
        "the probe was written: {probe:?}"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["functions"], serde_json::json!({}));
}

#[test]
fn unbind_of_a_group_not_on_vfio_is_a_no_op() {
    let fx = vfio_lab().build();
    let state = fx.host.sysfs.parent().unwrap().join("gpu-drivers.json");
    let out = run_on(
        &fx,
        &[
            "gpu",
            "unbind",
            "0000:00:01.0",
            "--state-file",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "IOMMU group 1 is not on vfio-pci");
    assert_eq!(
        std::fs::read_to_string(fx.host.drivers_probe()).unwrap(),
        ""
    );
}
