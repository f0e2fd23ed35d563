//! The test guest's own virtio driver (tests/guest/virtio_pci.c, virtq.c) against
//! the devices the real `Vm` attaches on /dev/kvm: a block device that reads,
//! writes, flushes and refuses a read past its end, polled and through MSI-X; a
//! read-only disk that refuses a write; an entropy device that hands out bytes.
//! The image files are checked from the host side afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm::config::{DiskConfig, RngConfig};
use vmm::vm::{Vm, VmExitReason};

mod kvm_support;
use kvm_support::{boot_until_stopped, kvm_or_skip, test_guest_config, vm_events, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR: usize = 512;
/// What the guest's virtio-blk scenario writes over sector 1, repeated.
const SECTOR1_PATTERN: &[u8] = b"form-vmm-sector1";
/// What the tests put in sector 0 for the guest to read and print.
const SECTOR0: &[u8; 16] = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff";

/// A raw image of `sectors` sectors in `dir`: SECTOR0 at its start, sector 1
/// filled with 0x5a, the rest zero.
fn image(dir: &ScratchDir, name: &str, sectors: usize) -> PathBuf {
    let mut bytes = vec![0u8; sectors * SECTOR];
    bytes[..SECTOR0.len()].copy_from_slice(SECTOR0);
    bytes[SECTOR..2 * SECTOR].fill(0x5a);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Boots the test guest with `cmdline` and the given disks and rng, waits for it
/// to power off, and returns its serial output.
fn run_guest(dir: &ScratchDir, cmdline: &str, disks: Vec<DiskConfig>, rng: bool) -> String {
    let serial_log = dir.join("serial.log");
    let mut config = test_guest_config(cmdline, &serial_log);
    config.disks = disks;
    config.rng = rng.then(RngConfig::default);
    let (events, exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");
    let serial = boot_until_stopped(&mut vm, &exit, &serial_log, TIMEOUT);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff), "{serial}");
    serial
}

fn disk(path: &Path, readonly: bool) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        readonly,
        ..Default::default()
    }
}

fn assert_lines(serial: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            serial.lines().any(|l| l.trim_end() == *line),
            "no line {line:?} in:\n{serial}"
        );
    }
    assert!(
        !serial.contains("form-test-guest: FAIL"),
        "the guest failed:\n{serial}"
    );
}

fn sector(image: &Path, index: usize) -> Vec<u8> {
    std::fs::read(image).unwrap()[index * SECTOR..(index + 1) * SECTOR].to_vec()
}

fn pattern_sector() -> Vec<u8> {
    SECTOR1_PATTERN
        .iter()
        .copied()
        .cycle()
        .take(SECTOR)
        .collect()
}

fn blk_read_write(tag: &str, cmdline: &str) -> String {
    let dir = ScratchDir::new(tag);
    let image = image(&dir, "disk.raw", 64);
    let serial = run_guest(&dir, cmdline, vec![disk(&image, false)], false);
    assert_lines(
        &serial,
        &[
            "virtio-blk: capacity 64 sectors",
            "VIRTIO-BLK-SECTOR0 00112233445566778899aabbccddeeff",
            "virtio-blk: wrote sector 1",
            "virtio-blk: flush OK",
            "virtio-blk: sector 1 read back: match",
            "virtio-blk: read of sector 64 (past the end): status IOERR",
            "VIRTIO-BLK-OK capacity=64",
            "form-test-guest: PASS",
        ],
    );
    assert_eq!(sector(&image, 1), pattern_sector(), "sector 1 in the image");
    assert_eq!(&sector(&image, 0)[..16], SECTOR0, "sector 0 untouched");
    assert!(
        sector(&image, 2).iter().all(|&b| b == 0),
        "sector 2 untouched"
    );
    serial
}

#[test]
fn the_guest_reads_writes_and_flushes_a_disk_by_polling() {
    if !kvm_or_skip("the_guest_reads_writes_and_flushes_a_disk_by_polling") {
        return;
    }
    let serial = blk_read_write("poll", "virtio-blk");
    assert!(!serial.contains("msix:"), "{serial}");
}

#[test]
fn the_guest_gets_disk_completions_through_msix() {
    if !kvm_or_skip("the_guest_gets_disk_completions_through_msix") {
        return;
    }
    let serial = blk_read_write("msix", "virtio-blk msix=1 vector=0x51");
    assert!(
        serial
            .lines()
            .any(|l| l.starts_with("msix: ") && l.trim_end().ends_with("data 0x51")),
        "no MSI-X set-up line in:\n{serial}"
    );
}

#[test]
fn a_read_only_disk_refuses_the_guests_write() {
    if !kvm_or_skip("a_read_only_disk_refuses_the_guests_write") {
        return;
    }
    let dir = ScratchDir::new("ro");
    let image = image(&dir, "seed.raw", 8);
    let before = std::fs::read(&image).unwrap();
    let serial = run_guest(&dir, "virtio-blk-ro", vec![disk(&image, true)], false);
    assert_lines(
        &serial,
        &[
            "virtio-blk: read-only (VIRTIO_BLK_F_RO offered)",
            "virtio-blk: write to the read-only disk: status IOERR",
            "virtio-blk: sector 1 unchanged",
            "VIRTIO-BLK-RO-OK capacity=8",
            "form-test-guest: PASS",
        ],
    );
    assert_eq!(std::fs::read(&image).unwrap(), before, "the image changed");
}

#[test]
fn the_read_write_scenario_fails_on_a_read_only_disk() {
    if !kvm_or_skip("the_read_write_scenario_fails_on_a_read_only_disk") {
        return;
    }
    let dir = ScratchDir::new("ro-rw");
    let image = image(&dir, "seed.raw", 8);
    let serial = run_guest(&dir, "virtio-blk", vec![disk(&image, true)], false);
    assert!(
        serial
            .contains("form-test-guest: FAIL the device offers VIRTIO_BLK_F_RO: a read-only disk"),
        "{serial}"
    );
}

#[test]
fn the_guest_draws_entropy_from_virtio_rng() {
    if !kvm_or_skip("the_guest_draws_entropy_from_virtio_rng") {
        return;
    }
    let dir = ScratchDir::new("rng");
    let serial = run_guest(&dir, "virtio-rng", Vec::new(), true);
    assert_lines(&serial, &["form-test-guest: PASS"]);
    assert!(
        serial
            .lines()
            .any(|l| l.starts_with("VIRTIO-RNG-OK 64 bytes")),
        "{serial}"
    );
}

#[test]
fn the_guest_finds_no_disk_when_none_is_attached() {
    if !kvm_or_skip("the_guest_finds_no_disk_when_none_is_attached") {
        return;
    }
    let dir = ScratchDir::new("none");
    let serial = run_guest(&dir, "virtio-blk", Vec::new(), false);
    assert!(
        serial.contains("form-test-guest: FAIL no 1af4:1042 on bus 0 after 0 s"),
        "{serial}"
    );
    assert!(!serial.contains("VIRTIO-BLK-OK"), "{serial}");
}
