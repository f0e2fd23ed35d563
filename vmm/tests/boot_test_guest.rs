//! Boots the freestanding test guest (tests/guest) through the real boot path:
//! ELF loading, boot_params, page tables, ACPI, COM1 and the ACPI PM register.

use std::time::Duration;
use vmm::config::{CpusConfig, MemoryConfig, VmConfig};
use vmm::vm::{Vm, VmExitReason};

mod kvm_support;
use kvm_support::{boot_until_stopped, kvm_or_skip, test_guest_config, vm_events, ScratchDir};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    reason: Option<VmExitReason>,
    serial: String,
}

fn boot(cmdline: &str, vcpus: u8) -> Run {
    boot_with(cmdline, vcpus, MemoryConfig::default())
}

fn boot_with(cmdline: &str, vcpus: u8, memory: MemoryConfig) -> Run {
    let dir = ScratchDir::new("boot");
    let serial_path = dir.join("serial.log");
    let config = VmConfig {
        cpus: CpusConfig {
            boot_vcpus: vcpus,
            max_vcpus: vcpus,
        },
        memory,
        ..test_guest_config(cmdline, &serial_path)
    };
    let (events, exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");
    let serial = boot_until_stopped(&mut vm, &exit, &serial_path, BOOT_TIMEOUT);
    Run {
        reason: vm.exit_reason(),
        serial,
    }
}

fn assert_passed(run: &Run) {
    assert_eq!(
        run.reason,
        Some(VmExitReason::PowerOff),
        "serial:\n{}",
        run.serial
    );
    assert!(
        run.serial.contains("form-test-guest: PASS"),
        "serial:\n{}",
        run.serial
    );
    assert!(!run.serial.contains("FAIL"), "serial:\n{}", run.serial);
}

#[test]
fn hello_prints_the_banner_and_powers_off() {
    if !kvm_or_skip("hello_prints_the_banner_and_powers_off") {
        return;
    }
    let run = boot("hello", 1);
    assert!(
        run.serial.contains("Hello from the form-vmm test guest"),
        "serial:\n{}",
        run.serial
    );
    assert_passed(&run);
}

#[test]
fn smp_sees_four_cpus_in_the_madt() {
    if !kvm_or_skip("smp_sees_four_cpus_in_the_madt") {
        return;
    }
    let run = boot("smp expect=4", 4);
    assert!(run.serial.contains("cpus: 4"), "serial:\n{}", run.serial);
    assert_passed(&run);
}

#[test]
fn pci_scan_finds_the_host_bridge_through_mcfg() {
    if !kvm_or_skip("pci_scan_finds_the_host_bridge_through_mcfg") {
        return;
    }
    let run = boot("pci-scan", 1);
    assert!(
        run.serial.contains("ecam: 0xe8000000 (MCFG"),
        "serial:\n{}",
        run.serial
    );
    assert!(
        run.serial.contains("pci 00:00.0 1b36:0008 class 060000"),
        "serial:\n{}",
        run.serial
    );
    assert!(
        run.serial.contains("pci-devices: 1"),
        "serial:\n{}",
        run.serial
    );
    assert_passed(&run);
}

#[test]
fn shared_memory_boots() {
    if !kvm_or_skip("shared_memory_boots") {
        return;
    }
    let memory = MemoryConfig {
        size: 256 << 20,
        shared: true,
        ..Default::default()
    };
    let run = boot_with("hello", 1, memory);
    assert_passed(&run);
}

#[test]
fn a_rebuilt_vm_appends_to_the_serial_log_the_first_one_started() {
    if !kvm_or_skip("a_rebuilt_vm_appends_to_the_serial_log_the_first_one_started") {
        return;
    }
    let dir = ScratchDir::new("serial-append");
    let serial_path = dir.join("serial.log");
    std::fs::write(&serial_path, "left by an earlier form-vmm\n").unwrap();
    let config = test_guest_config("hello", &serial_path);
    // A reboot builds the VM again from the same configuration; the first VM's
    // output must survive it.
    for _ in 0..2 {
        let (events, exit) = vm_events();
        let mut vm = Vm::new(&config, events).expect("create VM");
        boot_until_stopped(&mut vm, &exit, &serial_path, BOOT_TIMEOUT);
    }
    let serial = std::fs::read_to_string(&serial_path).unwrap();
    assert!(!serial.contains("earlier form-vmm"), "{serial}");
    assert_eq!(
        serial.matches("form-test-guest: PASS").count(),
        2,
        "both boots' output:\n{serial}"
    );
}
