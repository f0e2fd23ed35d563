//! VFIO attach and hotplug through the real `Vm` on /dev/kvm, with the host side
//! faked (`pci::vfio::fake` devices behind a fake container): the test guest scans
//! its bus and must see what the device manager put there, when it put it there.

use pci::vfio::fake::FakeVfioDevice;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmm::config::{DeviceConfig, MemoryConfig, MemoryZoneConfig, NumaConfig, VmConfig};
use vmm::device_manager::vfio::testing::FakeVfioHost;
use vmm::vm::{Removal, Vm, VmExitReason};
use vmm_sys_util::eventfd::EventFd;

mod kvm_support;
use kvm_support::{kvm_or_skip, test_guest_config, vm_events, wait_readable, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(60);
const EDU: &str = "/sys/bus/pci/devices/0000:00:03.0";

/// An edu whose BAR is trapped (no mmap), so nothing maps the fake's made-up
/// host addresses into the guest.
fn fake_host() -> Arc<FakeVfioHost> {
    let edu = FakeVfioDevice::edu();
    edu.mmap_refused.lock().unwrap().insert(0);
    Arc::new(FakeVfioHost::with(vec![(EDU, edu)]))
}

fn edu_config(id: &str) -> DeviceConfig {
    DeviceConfig {
        path: EDU.into(),
        id: Some(id.into()),
        ..Default::default()
    }
}

struct Guest {
    vm: Vm,
    exit: EventFd,
    serial: PathBuf,
    _dir: ScratchDir,
}

fn start(cmdline: &str, devices: Vec<DeviceConfig>, host: Arc<FakeVfioHost>) -> Guest {
    let mut guest = create(cmdline, devices, host, |_| {});
    guest.vm.boot().expect("boot");
    guest
}

/// The VM, created but not booted; `adjust` changes its configuration first.
fn create(
    cmdline: &str,
    devices: Vec<DeviceConfig>,
    host: Arc<FakeVfioHost>,
    adjust: impl FnOnce(&mut VmConfig),
) -> Guest {
    let dir = ScratchDir::new("vfio-fake");
    let serial = dir.join("serial.log");
    let mut config = test_guest_config(cmdline, &serial);
    config.devices = devices;
    adjust(&mut config);
    let (events, exit) = vm_events();
    let vm = Vm::with_vfio_host(&config, events, host).expect("create VM");
    Guest {
        vm,
        exit,
        serial,
        _dir: dir,
    }
}

impl Guest {
    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for the serial output to contain `text`.
    fn wait_for(&self, text: &str) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !self.serial().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} within {TIMEOUT:?}; serial:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the power-off and checks the guest passed.
    fn finish(mut self) -> String {
        let exited = wait_readable(&self.exit, TIMEOUT);
        self.vm.shutdown().unwrap();
        let serial = self.serial();
        assert!(exited, "no power-off within {TIMEOUT:?}; serial:\n{serial}");
        assert_eq!(
            self.vm.exit_reason(),
            Some(VmExitReason::PowerOff),
            "{serial}"
        );
        assert!(serial.contains("form-test-guest: PASS"), "{serial}");
        assert!(!serial.contains("FAIL"), "{serial}");
        serial
    }
}

#[test]
fn a_cold_plugged_device_is_on_the_guests_bus() {
    if !kvm_or_skip("a_cold_plugged_device_is_on_the_guests_bus") {
        return;
    }
    let host = fake_host();
    let guest = start("pci-scan", vec![edu_config("edu0")], host.clone());
    assert_eq!(guest.vm.config().devices[0].id.as_deref(), Some("edu0"));
    let serial = guest.finish();
    assert!(
        serial.contains("pci 00:01.0 1234:11e8 class 00ff00"),
        "{serial}"
    );
    assert!(serial.contains("pci-devices: 2"), "{serial}");
}

#[test]
fn hotplug_add_remove_add_reaches_a_polling_guest() {
    if !kvm_or_skip("hotplug_add_remove_add_reaches_a_polling_guest") {
        return;
    }
    let host = fake_host();
    let mut guest = start(
        "hotplug-cycle vendor=0x1234 device=0x11e8 wait=30",
        Vec::new(),
        host.clone(),
    );
    use std::sync::atomic::Ordering;
    guest.wait_for("waiting for 1234:11e8");
    let info = guest.vm.add_device(edu_config("edu0")).unwrap();
    assert_eq!(info.bdf, "0000:00:01.0");
    assert_eq!(host.containers_open.load(Ordering::SeqCst), 1);
    guest.wait_for("found");

    // The test guest has no ACPI hotplug: the removal goes ahead after the
    // short wait for a guest that ignores the request.
    let started = std::time::Instant::now();
    guest
        .vm
        .remove_device("edu0", Removal::DetachAnyway)
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(host.containers_open.load(Ordering::SeqCst), 0);
    assert!(guest.vm.config().devices.is_empty());
    assert!(guest.vm.counters().is_empty());
    guest.wait_for("gone after");

    let again = guest.vm.add_device(edu_config("edu0")).unwrap();
    assert_eq!(again.bdf, "0000:00:01.0", "the freed slot is reused");
    let counters = guest.vm.counters();
    assert!(
        counters["edu0"].contains_key("config_reads"),
        "{counters:?}"
    );
    guest.finish();
    assert_eq!(host.containers_opened.load(Ordering::SeqCst), 2);
}

#[test]
fn a_guest_that_keeps_a_device_keeps_it_unless_the_removal_detaches_anyway() {
    if !kvm_or_skip("a_guest_that_keeps_a_device_keeps_it_unless_the_removal_detaches_anyway") {
        return;
    }
    let host = fake_host();
    // eject=2: the guest reads the removal request and never ejects.
    let mut guest = start(
        "hotplug-cycle vendor=0x1234 device=0x11e8 wait=60 eject=2",
        Vec::new(),
        host.clone(),
    );
    use std::sync::atomic::Ordering;
    guest.wait_for("waiting for 1234:11e8");
    guest.vm.add_device(edu_config("edu0")).unwrap();
    guest.wait_for("found");

    let err = guest
        .vm
        .remove_device("edu0", Removal::KeepUnlessEjected)
        .unwrap_err();
    assert!(
        err.to_string().contains("did not eject device edu0"),
        "{err}"
    );
    guest.wait_for("keeping the device");
    assert_eq!(guest.vm.config().devices.len(), 1, "still configured");
    assert_eq!(host.containers_open.load(Ordering::SeqCst), 1, "still held");
    assert!(guest.vm.counters().contains_key("edu0"));

    guest
        .vm
        .remove_device("edu0", Removal::DetachAnyway)
        .unwrap();
    assert!(guest.vm.config().devices.is_empty());
    assert_eq!(host.containers_open.load(Ordering::SeqCst), 0);
    guest.wait_for("gone after");
    guest.vm.add_device(edu_config("edu0")).unwrap();
    guest.finish();
}

/// Two guest nodes of one vCPU and one 32 MiB zone each.
fn two_guest_nodes(config: &mut VmConfig) {
    config.cpus.boot_vcpus = 2;
    config.cpus.max_vcpus = 2;
    let zone = |spec: &str| MemoryZoneConfig::parse(spec).unwrap();
    config.memory = MemoryConfig {
        size: 0,
        zones: Some(vec![zone("id=mem0,size=32M"), zone("id=mem1,size=32M")]),
        ..Default::default()
    };
    config.numa = Some(vec![
        NumaConfig::parse("guest_numa_id=0,cpus=0,memory_zones=mem0").unwrap(),
        NumaConfig::parse("guest_numa_id=1,cpus=1,memory_zones=mem1").unwrap(),
    ]);
    config.validate().unwrap();
}

#[test]
fn a_device_on_guest_node_1_is_on_node_1s_root_bus() {
    if !kvm_or_skip("a_device_on_guest_node_1_is_on_node_1s_root_bus") {
        return;
    }
    const EDU2: &str = "/sys/bus/pci/devices/0000:00:04.0";
    let edu2 = FakeVfioDevice::edu();
    edu2.mmap_refused.lock().unwrap().insert(0);
    let host = fake_host();
    host.devices
        .lock()
        .unwrap()
        .insert(PathBuf::from(EDU2), Arc::new(edu2));
    let on_node_1 = DeviceConfig {
        numa_node: Some(1),
        ..edu_config("edu0")
    };
    let mut guest = create("pci-scan", vec![on_node_1], host, two_guest_nodes);
    let bdfs: Vec<String> = guest.vm.pci_devices().into_iter().map(|d| d.bdf).collect();
    assert_eq!(bdfs, ["0000:10:01.0"]);
    // Bus 0x10 has no hotplug controller: a second device for node 1 is refused.
    let err = guest
        .vm
        .add_device(DeviceConfig {
            path: EDU2.into(),
            id: Some("edu1".into()),
            numa_node: Some(1),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("cold-plugged only"), "{err}");
    guest.vm.boot().expect("boot");
    let serial = guest.finish();
    for line in [
        "pci 00:00.0 1b36:0008 class 060000",
        "pci 10:00.0 1b36:0008 class 060000",
        "pci 10:01.0 1234:11e8 class 00ff00",
        "pci-devices: 3",
    ] {
        assert!(serial.contains(line), "{line}:\n{serial}");
    }
    assert!(!serial.contains("pci 00:01.0"), "{serial}");
}
