//! `doctor` findings on each generated host.

mod common;

use common::{
    amd_instinct, hgx_h100, shared_group, workstation, HostBuilder, NARROW_DMAR_CAP,
    NARROW_DMAR_ECAP,
};
use vmm_service::gpu::{doctor, render, DoctorInputs, DoctorReport, MemlockLimit, Severity};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn unlimited() -> Option<MemlockLimit> {
    Some(MemlockLimit {
        bytes: None,
        has_cap_ipc_lock: false,
    })
}

fn check(report: &DoctorReport, name: &str) -> (Severity, String, Option<String>) {
    let finding = report
        .finding(name)
        .unwrap_or_else(|| panic!("no {name} finding in {report:#?}"));
    (
        finding.severity,
        finding.summary.clone(),
        finding.remedy.clone(),
    )
}

#[test]
fn a_ready_hgx_host_is_all_ok() {
    let fx = hgx_h100().build();
    let report = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(1024 * GIB),
            memlock: unlimited(),
        },
    );
    assert_eq!(report.worst(), Severity::Ok, "{}", render(&report));
    assert!(check(&report, "iommu").1.contains("groups"));
    assert_eq!(check(&report, "vfio_pci").0, Severity::Ok);
    assert!(check(&report, "interrupt_remapping").1.contains("IR-"));
    assert!(check(&report, "hugepages")
        .1
        .contains("1 GiB: 1800 of 1800 free"));
    let (_, bits, _) = check(&report, "physical_address_bits");
    assert!(bits.contains("46 physical address bits (64 TiB)"), "{bits}");
    assert!(bits.contains("all 9 GPUs"), "{bits}");
    assert!(check(&report, "iommu_address_width").1.contains("57 bits"));
}

#[test]
fn too_few_address_bits_for_all_h100s_or_for_one() {
    // 39 bits = 512 GiB: one H100 (128 GiB BAR aligned above 4 GiB) fits, eight do not.
    let fx = hgx_h100().cpu_address_bits(Some(39)).build();
    let report = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: None,
            memlock: unlimited(),
        },
    );
    let (severity, summary, remedy) = check(&report, "physical_address_bits");
    assert_eq!(severity, Severity::Warning, "{summary}");
    assert!(summary.contains("not all 9 GPUs"), "{summary}");
    assert!(remedy.unwrap().contains("split"));

    // With 512 GiB of RAM below it, not even one 128 GiB BAR fits.
    let report = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(512 * GIB),
            memlock: unlimited(),
        },
    );
    let (severity, summary, _) = check(&report, "physical_address_bits");
    assert_eq!(severity, Severity::Error, "{summary}");
    assert!(summary.contains("128 GiB"), "{summary}");
    assert_eq!(report.worst(), Severity::Error);
}

#[test]
fn a_narrow_iommu_is_reported_against_the_bar_layout() {
    let fx = hgx_h100()
        .intel_iommus(&[(NARROW_DMAR_CAP, NARROW_DMAR_ECAP)])
        .build();
    let small = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(16 * GIB),
            memlock: unlimited(),
        },
    );
    assert_eq!(check(&small, "iommu_address_width").0, Severity::Ok);
    let big = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(256 * GIB),
            memlock: unlimited(),
        },
    );
    let (severity, summary, _) = check(&big, "iommu_address_width");
    assert_eq!(severity, Severity::Warning, "{summary}");
    assert!(summary.contains("39 bits"), "{summary}");
}

#[test]
fn workstation_findings() {
    let fx = workstation().build();
    let report = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(16 * GIB),
            memlock: Some(MemlockLimit {
                bytes: Some(8 * MIB),
                has_cap_ipc_lock: false,
            }),
        },
    );
    let (severity, summary, remedy) = check(&report, "vfio_pci");
    assert_eq!(severity, Severity::Warning, "{summary}");
    assert!(summary.contains("6.1.0-28-amd64"));
    assert!(remedy.unwrap().contains("modprobe vfio-pci"));

    let (severity, summary, remedy) = check(&report, "memlock");
    assert_eq!(severity, Severity::Error, "{summary}");
    assert!(summary.contains("8 MiB"), "{summary}");
    assert!(remedy.unwrap().contains("LimitMEMLOCK=infinity"));

    let (severity, _, remedy) = check(&report, "hugepages");
    assert_eq!(severity, Severity::Warning);
    assert!(remedy
        .unwrap()
        .contains("echo 16 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"));

    // 39 bits are plenty for a 32 GiB BAR.
    assert_eq!(check(&report, "physical_address_bits").0, Severity::Ok);
    assert_eq!(report.worst(), Severity::Error);
    let text = render(&report);
    assert!(text.contains("[ ERROR ] memlock:"), "{text}");
    assert!(
        text.contains("fix: run the service with LimitMEMLOCK=infinity"),
        "{text}"
    );
}

#[test]
fn cap_ipc_lock_lifts_the_memlock_limit() {
    let fx = workstation().build();
    let limited = |cap| {
        let report = doctor(
            &fx.host,
            &DoctorInputs {
                vm_memory: Some(16 * GIB),
                memlock: Some(MemlockLimit {
                    bytes: Some(8 * MIB),
                    has_cap_ipc_lock: cap,
                }),
            },
        );
        check(&report, "memlock").0
    };
    assert_eq!(limited(true), Severity::Ok);
    assert_eq!(limited(false), Severity::Error);

    // The capability is read from <proc>/self/status.
    std::fs::create_dir_all(fx.host.procfs.join("self")).unwrap();
    std::fs::write(
        fx.host.procfs.join("self/status"),
        "Name:\tvmm-service\nCapInh:\t0000000000000000\nCapEff:\t0000000000004000\n",
    )
    .unwrap();
    assert!(
        MemlockLimit::of_current_process(&fx.host)
            .unwrap()
            .has_cap_ipc_lock
    );
    std::fs::write(
        fx.host.procfs.join("self/status"),
        "CapEff:\t0000000000000000\n",
    )
    .unwrap();
    assert!(
        !MemlockLimit::of_current_process(&fx.host)
            .unwrap()
            .has_cap_ipc_lock
    );
}

#[test]
fn amd_host_without_vfio_and_without_interrupt_information() {
    let fx = amd_instinct().build();
    let report = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(8 * GIB),
            memlock: unlimited(),
        },
    );
    let (severity, summary, remedy) = check(&report, "vfio_pci");
    assert_eq!(severity, Severity::Error, "{summary}");
    assert!(summary.contains("no vfio-pci module"));
    assert!(remedy.unwrap().contains("CONFIG_VFIO_PCI"));
    assert_eq!(check(&report, "interrupt_remapping").0, Severity::Unknown);
    assert_eq!(
        check(&report, "hugepages").0,
        Severity::Ok,
        "16 free 1 GiB pages hold 8 GiB"
    );
    assert!(
        report.finding("iommu_address_width").is_none(),
        "no VT-d registers on AMD"
    );
    // 52 bits hold three accelerators with 256 GiB BARs easily.
    assert_eq!(check(&report, "physical_address_bits").0, Severity::Ok);

    let report = doctor(
        &fx.host,
        &DoctorInputs {
            vm_memory: Some(32 * GIB),
            memlock: unlimited(),
        },
    );
    assert_eq!(check(&report, "hugepages").0, Severity::Warning);
}

#[test]
fn unremapped_interrupts_are_a_warning() {
    let fx = shared_group().build();
    let report = doctor(&fx.host, &DoctorInputs::default());
    let (severity, _, remedy) = check(&report, "interrupt_remapping");
    assert_eq!(severity, Severity::Warning);
    assert!(remedy.unwrap().contains("allow_unsafe_interrupts"));
    assert_eq!(
        check(&report, "memlock").0,
        Severity::Unknown,
        "limit not given"
    );
}

#[test]
fn a_host_without_iommu_or_cpu_information() {
    let fx = HostBuilder::new()
        .cpu_address_bits(None)
        .hugepages(&[])
        .interrupts(None)
        .build();
    let report = doctor(&fx.host, &DoctorInputs::default());
    let (severity, summary, remedy) = check(&report, "iommu");
    assert_eq!(severity, Severity::Error, "{summary}");
    assert!(remedy.unwrap().contains("intel_iommu=on"));
    assert_eq!(check(&report, "physical_address_bits").0, Severity::Unknown);
    assert_eq!(check(&report, "hugepages").0, Severity::Unknown);
    assert_eq!(check(&report, "interrupt_remapping").0, Severity::Unknown);

    // CPU bits known, but no readable PCI tree: the BAR check cannot be made.
    let fx = HostBuilder::new().build();
    std::fs::remove_dir_all(fx.host.sysfs.join("bus/pci/devices")).unwrap();
    let report = doctor(&fx.host, &DoctorInputs::default());
    let (severity, summary, _) = check(&report, "physical_address_bits");
    assert_eq!(severity, Severity::Unknown, "{summary}");
}

#[test]
fn the_report_serializes() {
    let fx = shared_group().build();
    let report = doctor(&fx.host, &DoctorInputs::default());
    let json = serde_json::to_value(&report).unwrap();
    let findings = json["findings"].as_array().unwrap();
    assert!(findings
        .iter()
        .any(|f| f["check"] == "interrupt_remapping" && f["severity"] == "warning"));
}

#[test]
fn a_gpu_the_kernel_cannot_reset_is_a_warning_naming_the_flag() {
    let fx = hgx_h100().build();
    let report = doctor(&fx.host, &DoctorInputs::default());
    let (severity, summary, _) = check(&report, "reset");
    assert_eq!(severity, Severity::Ok);
    assert!(summary.contains("0000:18:00.0 flr"), "{summary}");

    let mut host = hgx_h100();
    let gpu = host
        .functions_mut()
        .iter_mut()
        .find(|f| f.address() == "0000:2a:00.0")
        .unwrap();
    *gpu = gpu.clone().no_reset();
    let fx = host.build();
    let report = doctor(&fx.host, &DoctorInputs::default());
    let (severity, summary, remedy) = check(&report, "reset");
    assert_eq!(severity, Severity::Warning, "{summary}");
    assert!(
        summary.contains("0000:2a:00.0") && !summary.contains("0000:18:00.0"),
        "{summary}"
    );
    assert!(remedy.unwrap().contains("--allow-no-reset 0000:2a:00.0"));
}

#[test]
fn a_two_socket_host_is_checked_per_node_and_page_size() {
    // 1800 free 1 GiB pages host-wide, but node 1 has only 100 of them free.
    let fx = hgx_h100()
        .numa_nodes(2)
        .node_hugepages(&[
            (0, 2048, 0, 0),
            (0, 1_048_576, 900, 900),
            (1, 2048, 0, 0),
            (1, 1_048_576, 900, 100),
        ])
        .build();
    let inputs = |memory| DoctorInputs {
        vm_memory: Some(memory),
        memlock: unlimited(),
    };
    let report = doctor(&fx.host, &inputs(1024 * GIB));
    assert_eq!(
        check(&report, "hugepages").0,
        Severity::Ok,
        "the host-wide pool holds 1 TiB"
    );
    let (severity, summary, remedy) = check(&report, "hugepages_per_node");
    assert_eq!(severity, Severity::Warning, "{summary}");
    assert!(
        summary.contains("node 1: 2 MiB 0 of 0 free, 1 GiB 100 of 900 free"),
        "{summary}"
    );
    assert!(summary.contains("1 GiB pages: bound to one node it fits on none; split over the 2 nodes (512 GiB each) it does not fit"), "{summary}");
    assert!(remedy.unwrap().contains(
        "echo 1312 > /sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages"
    ));
    assert!(render(&report).contains("hugepages_per_node"));

    let report = doctor(&fx.host, &inputs(128 * GIB));
    let (severity, summary, _) = check(&report, "hugepages_per_node");
    assert_eq!(severity, Severity::Ok, "{summary}");
    assert!(summary.contains("1 GiB pages: bound to one node it fits on node 0; split over the 2 nodes (64 GiB each) it fits"), "{summary}");
    // Without node directories the host-wide finding is the only one.
    let report = doctor(&hgx_h100().build().host, &inputs(GIB));
    assert!(report.finding("hugepages_per_node").is_none());
}
