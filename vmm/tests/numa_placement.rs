//! `memory.host_numa_node`: guest RAM bound to the node with mbind(2), vCPU
//! threads on the node's CPUs, and a node the host lacks refused before anything
//! is built, over the API (400) and on the command line (exit 1). Memory zones and
//! guest NUMA nodes: each zone bound to its own host node, each guest node's vCPUs
//! on its zones' node's CPUs (this host may have node 0 only, so both nodes'
//! zones go there).

use std::time::Duration;
use vmm::config::{MemoryConfig, MemoryZoneConfig, NumaConfig, VmConfig};
use vmm::numa::{self, HostNode, NODE_SYSFS};
use vmm::vm::{Vm, VmExitReason};

mod api_support;
mod kvm_support;
use api_support::{request, run_form_vmm, wait_for, Running, TempDir};
use kvm_support::{
    boot_until_stopped, kvm_or_skip, test_guest, test_guest_config, vm_events, ScratchDir,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// False (after printing why) without KVM or on a kernel without NUMA support,
/// which has no /sys/devices/system/node and no mbind(2).
fn kvm_and_numa_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    if std::path::Path::new(NODE_SYSFS).join("node0").is_dir() {
        return true;
    }
    eprintln!("skipping {test}: this kernel has no NUMA node 0 ({NODE_SYSFS}/node0)");
    false
}

fn node0() -> HostNode {
    HostNode::probe(std::path::Path::new(NODE_SYSFS), 0).expect("this host has NUMA node 0")
}

fn on_node0(cmdline: &str, serial: &std::path::Path) -> VmConfig {
    let mut config = test_guest_config(cmdline, serial);
    config.memory = MemoryConfig {
        size: 64 << 20,
        host_numa_node: Some(0),
        ..Default::default()
    };
    config
}

/// Two guest nodes of one vCPU and one 32 MiB zone each (the second shared),
/// both zones bound to host node 0.
fn two_guest_nodes_on_node0(cmdline: &str, serial: &std::path::Path) -> VmConfig {
    let mut config = test_guest_config(cmdline, serial);
    config.cpus.boot_vcpus = 2;
    config.cpus.max_vcpus = 2;
    let zone = |spec: &str| MemoryZoneConfig::parse(spec).unwrap();
    config.memory = MemoryConfig {
        size: 0,
        zones: Some(vec![
            zone("id=mem0,size=32M,host_numa_node=0"),
            zone("id=mem1,size=32M,host_numa_node=0,shared=on"),
        ]),
        ..Default::default()
    };
    config.numa = Some(vec![
        NumaConfig::parse("guest_numa_id=0,cpus=0,memory_zones=mem0,distances=1@21").unwrap(),
        NumaConfig::parse("guest_numa_id=1,cpus=1,memory_zones=mem1").unwrap(),
    ]);
    config.validate().unwrap();
    config
}

#[test]
fn two_guest_nodes_boot_with_each_zone_bound_to_its_host_node() {
    if !kvm_and_numa_or_skip("two_guest_nodes_boot_with_each_zone_bound_to_its_host_node") {
        return;
    }
    let dir = ScratchDir::new("numa-zones");
    let serial_path = dir.join("serial.log");
    let (events, exit) = vm_events();
    let mut vm =
        Vm::new(&two_guest_nodes_on_node0("hello", &serial_path), events).expect("create VM");
    assert_eq!(vm.memory_actual_size(), 64 << 20);
    let ranges = vm.ram_host_ranges();
    assert_eq!(ranges.len(), 2, "one mapping per zone");
    for &(addr, len) in &ranges {
        assert_eq!(len, 32 << 20);
        for probe in [addr, addr.wrapping_add(len / 2), addr.wrapping_add(len - 1)] {
            assert_eq!(
                numa::memory_policy(probe).unwrap(),
                (libc::MPOL_BIND, vec![0]),
                "guest RAM at host {probe:?}"
            );
        }
    }
    let serial = boot_until_stopped(&mut vm, &exit, &serial_path, BOOT_TIMEOUT);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff), "{serial}");
    assert!(serial.contains("form-test-guest: PASS"), "{serial}");
    let (low, _) = ranges[0];
    assert_eq!(numa::page_node(low.wrapping_add(1 << 20)).unwrap(), 0);
}

#[test]
fn each_guest_nodes_vcpus_run_on_its_zones_host_node() {
    if !kvm_and_numa_or_skip("each_guest_nodes_vcpus_run_on_its_zones_host_node") {
        return;
    }
    let allowed = numa::thread_affinity(0).unwrap();
    let expected: Vec<usize> = node0()
        .cpus
        .into_iter()
        .filter(|c| allowed.contains(c))
        .collect();
    let dir = ScratchDir::new("numa-zone-vcpus");
    let serial_path = dir.join("serial.log");
    let config = two_guest_nodes_on_node0("pci-wait vendor=1234 device=fffe wait=30", &serial_path);
    let (events, _exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");
    {
        let _restore = AffinityGuard(allowed.clone());
        if expected.len() > 1 {
            numa::pin_current_thread(&expected[expected.len() - 1..]).unwrap();
        }
        vm.boot().expect("boot");
    }
    let tids = vm.vcpu_thread_ids();
    assert_eq!(tids.len(), 2);
    for tid in &tids {
        assert_eq!(
            numa::thread_affinity(*tid).unwrap(),
            expected,
            "vCPU thread {tid}"
        );
    }
    vm.shutdown().unwrap();
}

#[test]
fn a_zone_on_node_99_is_refused_by_the_vm() {
    if !kvm_or_skip("a_zone_on_node_99_is_refused_by_the_vm") {
        return;
    }
    let dir = ScratchDir::new("numa-zone-99");
    let mut config = two_guest_nodes_on_node0("hello", &dir.join("serial.log"));
    config.memory.zones.as_mut().unwrap()[1].host_numa_node = Some(99);
    let (events, _exit) = vm_events();
    let err = Vm::new(&config, events).err().expect("node 99 refused");
    assert!(err.to_string().starts_with(NODE_99), "{err}");
}

#[test]
fn hello_runs_with_its_ram_bound_to_node_0() {
    if !kvm_and_numa_or_skip("hello_runs_with_its_ram_bound_to_node_0") {
        return;
    }
    let dir = ScratchDir::new("numa-hello");
    let serial_path = dir.join("serial.log");
    let (events, exit) = vm_events();
    let mut vm = Vm::new(&on_node0("hello", &serial_path), events).expect("create VM");
    let ranges = vm.ram_host_ranges();
    assert!(!ranges.is_empty());
    for &(addr, len) in &ranges {
        for probe in [addr, addr.wrapping_add(len / 2), addr.wrapping_add(len - 1)] {
            assert_eq!(
                numa::memory_policy(probe).unwrap(),
                (libc::MPOL_BIND, vec![0]),
                "guest RAM at host {probe:?}"
            );
        }
    }
    let serial = boot_until_stopped(&mut vm, &exit, &serial_path, BOOT_TIMEOUT);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff), "{serial}");
    assert!(
        serial.contains("Hello from the form-vmm test guest"),
        "{serial}"
    );
    assert!(serial.contains("form-test-guest: PASS"), "{serial}");
    // The guest's image was loaded at 1 MiB, so that page was faulted in under
    // the policy.
    let (low, _) = ranges[0];
    assert_eq!(numa::page_node(low.wrapping_add(1 << 20)).unwrap(), 0);
}

/// Restores the calling thread's CPU affinity when dropped.
struct AffinityGuard(Vec<usize>);

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        numa::pin_current_thread(&self.0).unwrap();
    }
}

#[test]
fn vcpu_threads_run_on_node_0s_cpus() {
    if !kvm_and_numa_or_skip("vcpu_threads_run_on_node_0s_cpus") {
        return;
    }
    let allowed = numa::thread_affinity(0).unwrap();
    let expected: Vec<usize> = node0()
        .cpus
        .into_iter()
        .filter(|c| allowed.contains(c))
        .collect();
    let dir = ScratchDir::new("numa-vcpus");
    let serial_path = dir.join("serial.log");
    // Polls for a device that never comes, so the vCPUs are still running when
    // their affinity is read.
    let mut config = on_node0("pci-wait vendor=1234 device=fffe wait=30", &serial_path);
    config.cpus.boot_vcpus = 2;
    config.cpus.max_vcpus = 2;
    let (events, _exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");
    assert!(vm.vcpu_thread_ids().is_empty());
    {
        // New threads inherit their creator's affinity: booting from a thread
        // narrowed to one CPU shows whether the vCPU threads widened it to the
        // node's CPUs themselves.
        let _restore = AffinityGuard(allowed.clone());
        if expected.len() > 1 {
            numa::pin_current_thread(&expected[expected.len() - 1..]).unwrap();
        }
        vm.boot().expect("boot");
    }
    let tids = vm.vcpu_thread_ids();
    assert_eq!(tids.len(), 2);
    for tid in &tids {
        assert_eq!(
            numa::thread_affinity(*tid).unwrap(),
            expected,
            "vCPU thread {tid}"
        );
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
        assert!(comm.starts_with("vcpu"), "{comm}");
    }
    // The VMM's own threads keep the affinity they had.
    assert_eq!(numa::thread_affinity(0).unwrap(), allowed);
    vm.shutdown().unwrap();
    assert!(vm.vcpu_thread_ids().is_empty());
}

#[test]
fn without_a_node_nothing_is_bound() {
    if !kvm_and_numa_or_skip("without_a_node_nothing_is_bound") {
        return;
    }
    let dir = ScratchDir::new("numa-none");
    let config = test_guest_config("hello", &dir.join("serial.log"));
    let (events, _exit) = vm_events();
    let vm = Vm::new(&config, events).expect("create VM");
    let (addr, _) = vm.ram_host_ranges()[0];
    assert_ne!(numa::memory_policy(addr).unwrap().0, libc::MPOL_BIND);
}

const NODE_99: &str = "memory.host_numa_node: host NUMA node 99 does not exist on this host (/sys/devices/system/node/node99 is missing)";

#[test]
fn node_99_is_refused_by_the_vm() {
    if !kvm_or_skip("node_99_is_refused_by_the_vm") {
        return;
    }
    let dir = ScratchDir::new("numa-99");
    let mut config = on_node0("hello", &dir.join("serial.log"));
    config.memory.host_numa_node = Some(99);
    let (events, _exit) = vm_events();
    let err = Vm::new(&config, events).err().expect("node 99 refused");
    assert!(err.to_string().starts_with(NODE_99), "{err}");
}

#[test]
fn node_99_is_a_400_over_the_api() {
    if !kvm_or_skip("node_99_is_a_400_over_the_api") {
        return;
    }
    let dir = TempDir::new("numa-api");
    let socket = dir.join("api.sock");
    let running = Running::spawn(
        api_support::form_vmm().args(["--api-socket", &format!("path={}", socket.display())]),
    );
    wait_for("the API socket", Duration::from_secs(30), || {
        socket.exists()
    });
    let body = serde_json::json!({
        "payload": {"kernel": test_guest(), "cmdline": "hello"},
        "memory": {"size": 64 << 20, "host_numa_node": 99},
        "serial": {"mode": "Null"},
    })
    .to_string();
    let reply = request(&socket, "PUT", "/api/v1/vm.create", Some(&body));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.error().starts_with(NODE_99), "{reply:?}");
    let reply = request(&socket, "PUT", "/api/v1/vmm.shutdown", None);
    assert_eq!(reply.status, 204, "{reply:?}");
    running.finish(Duration::from_secs(30));
}

#[test]
fn node_99_ends_the_command_line_with_status_1() {
    if !kvm_or_skip("node_99_ends_the_command_line_with_status_1") {
        return;
    }
    let kernel = test_guest();
    let finished = run_form_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "size=64M,host_numa_node=99",
        "--serial",
        "off",
    ]);
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains(&format!("form-vmm: error: {NODE_99}")),
        "{finished:?}"
    );
}
