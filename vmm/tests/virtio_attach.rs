//! virtio devices attached by the real `Vm` on /dev/kvm: where they land in PCI
//! config space (ids, class, BAR0), what the test guest finds on its bus, that an
//! image held by one VM is refused to another, and that a VM (or a create that
//! failed half-way) gives back everything it held: image locks and VFIO devices.

use pci::vfio::fake::FakeVfioDevice;
use pci::VIRTIO_PCI_BAR_SIZE;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vmm::config::{
    ConsoleConfig, ConsoleOutputMode, DeviceConfig, DiskConfig, RngConfig, VmConfig,
};
use vmm::device_manager::pci::PciDeviceInfo;
use vmm::device_manager::vfio::testing::FakeVfioHost;
use vmm::vm::{Vm, VmError, VmExitReason};

mod kvm_support;
use kvm_support::{boot_until_stopped, kvm_or_skip, test_guest_config, vm_events, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(60);
const VIRTIO_VENDOR: u32 = 0x1af4;
/// Modern virtio-pci device ids: 0x1040 + the virtio device type.
const BLOCK_DEVICE_ID: u32 = 0x1042;
const RNG_DEVICE_ID: u32 = 0x1044;
const CONSOLE_DEVICE_ID: u32 = 0x1043;
const EDU: &str = "/sys/bus/pci/devices/0000:00:03.0";

/// A zero-filled raw image of `size` bytes in `dir`.
fn image(dir: &ScratchDir, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    path
}

fn config(dir: &ScratchDir, cmdline: &str) -> VmConfig {
    test_guest_config(cmdline, &dir.join("serial.log"))
}

fn disk(path: &Path) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        ..Default::default()
    }
}

fn create(config: &VmConfig) -> Result<Vm, VmError> {
    Vm::new(config, vm_events().0)
}

fn info(id: &str, slot: u8) -> PciDeviceInfo {
    PciDeviceInfo {
        id: id.into(),
        bdf: format!("0000:00:{slot:02x}.0"),
    }
}

/// BAR0 as the guest finds it: a 32-bit memory BAR, its address aligned to its size.
fn bar0(vm: &Vm, slot: u8) -> u64 {
    let raw = vm.pci_config_read(slot, 4);
    assert_eq!(
        raw & 0x7,
        0,
        "slot {slot}: BAR0 {raw:#x} is not 32-bit memory"
    );
    let addr = u64::from(raw & !0xf);
    assert_ne!(addr, 0, "slot {slot}: BAR0 is not placed");
    assert_eq!(addr % VIRTIO_PCI_BAR_SIZE, 0, "slot {slot}: BAR0 {addr:#x}");
    assert!(
        addr + VIRTIO_PCI_BAR_SIZE <= 1 << 32,
        "slot {slot}: {addr:#x}"
    );
    addr
}

#[test]
fn disks_rng_and_console_are_virtio_functions_on_bus_0() {
    if !kvm_or_skip("disks_rng_and_console_are_virtio_functions_on_bus_0") {
        return;
    }
    let dir = ScratchDir::new("attach");
    let mut config = config(&dir, "pci-scan");
    config.disks = vec![
        disk(&image(&dir, "root.raw", 1 << 20)),
        DiskConfig {
            readonly: true,
            id: Some("seed".into()),
            ..disk(&image(&dir, "seed.img", 64 << 10))
        },
    ];
    config.rng = Some(RngConfig::default());
    config.console = ConsoleConfig {
        mode: ConsoleOutputMode::File,
        file: Some(dir.join("console.log")),
    };
    let (events, exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");

    // Default ids, recorded in the configuration vm.info reports.
    let ids: Vec<_> = vm.config().disks.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, [Some("disk0".into()), Some("seed".into())]);
    assert_eq!(
        vm.pci_devices(),
        [
            info("disk0", 1),
            info("seed", 2),
            info("rng0", 3),
            info("console0", 4)
        ]
    );

    let expected = [
        (1, BLOCK_DEVICE_ID, 2, 0x01),
        (2, BLOCK_DEVICE_ID, 2, 0x01),
        (3, RNG_DEVICE_ID, 4, 0xff),
        (4, CONSOLE_DEVICE_ID, 3, 0xff),
    ];
    let mut bars = Vec::new();
    for (slot, device_id, subsystem, class) in expected {
        assert_eq!(
            vm.pci_config_read(slot, 0),
            VIRTIO_VENDOR | device_id << 16,
            "slot {slot}: vendor and device id"
        );
        assert_eq!(vm.pci_config_read(slot, 2) >> 24, class, "slot {slot}");
        assert_eq!(
            vm.pci_config_read(slot, 11),
            VIRTIO_VENDOR | subsystem << 16,
            "slot {slot}: subsystem ids"
        );
        // MSI-X only: no INTx pin.
        assert_eq!((vm.pci_config_read(slot, 15) >> 8) & 0xff, 0, "slot {slot}");
        bars.push(bar0(&vm, slot));
    }
    bars.sort_unstable();
    bars.dedup();
    assert_eq!(bars.len(), 4, "each device has its own BAR0: {bars:x?}");
    assert_eq!(vm.pci_config_read(5, 0), u32::MAX, "slot 5 is empty");

    let serial = boot_until_stopped(&mut vm, &exit, &dir.join("serial.log"), TIMEOUT);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff), "{serial}");
    for line in [
        "pci 00:01.0 1af4:1042 class 010000",
        "pci 00:02.0 1af4:1042 class 010000",
        "pci 00:03.0 1af4:1044 class ff0000",
        "pci 00:04.0 1af4:1043 class ff0000",
        "pci-devices: 5",
        "form-test-guest: PASS",
    ] {
        assert!(serial.contains(line), "no {line:?} in:\n{serial}");
    }
}

#[test]
fn an_image_in_use_is_refused_until_its_vm_is_gone() {
    if !kvm_or_skip("an_image_in_use_is_refused_until_its_vm_is_gone") {
        return;
    }
    let dir = ScratchDir::new("lock");
    let image = image(&dir, "shared.raw", 1 << 20);
    let mut config = config(&dir, "hello");
    config.disks = vec![disk(&image)];
    let first = create(&config).expect("first VM");

    let Err(err) = create(&config) else {
        panic!("a second VM opened an image the first one holds");
    };
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "disk disk0: disk image {} is in use by another VM",
            image.display()
        )),
        "{message}"
    );

    drop(first);
    create(&config).expect("the image is free once its VM is dropped");
}

#[test]
fn a_failed_create_releases_what_it_had_attached() {
    if !kvm_or_skip("a_failed_create_releases_what_it_had_attached") {
        return;
    }
    let dir = ScratchDir::new("rollback");
    let image = image(&dir, "first.raw", 1 << 20);
    let edu = FakeVfioDevice::edu();
    edu.mmap_refused.lock().unwrap().insert(0);
    let host = Arc::new(FakeVfioHost::with(vec![(EDU, edu)]));
    let device = host.devices.lock().unwrap()[Path::new(EDU)].clone();
    let unused = Arc::strong_count(&device);

    let mut config = config(&dir, "hello");
    config.devices = vec![DeviceConfig {
        path: EDU.into(),
        ..Default::default()
    }];
    config.disks = vec![disk(&image), disk(&dir.join("missing.raw"))];
    let Err(err) = Vm::with_vfio_host(&config, vm_events().0, host.clone()) else {
        panic!("a VM was created with a missing image");
    };
    let message = err.to_string();
    assert!(
        message.starts_with("disk disk1: disk image ") && message.contains("does not exist"),
        "{message}"
    );
    assert_eq!(
        Arc::strong_count(&device),
        unused,
        "the VFIO device outlived the failed create"
    );
    assert_eq!(
        host.containers_open
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // The first image was opened and locked before the failure; it is free again,
    // and a VM that is dropped gives its VFIO device back too.
    config.disks.pop();
    let vm = Vm::with_vfio_host(&config, vm_events().0, host.clone()).expect("create VM");
    assert_eq!(vm.pci_devices(), [info("_vfio0", 1), info("disk0", 2)]);
    assert!(Arc::strong_count(&device) > unused);
    drop(vm);
    assert_eq!(
        Arc::strong_count(&device),
        unused,
        "the VFIO device outlived its VM"
    );
}
