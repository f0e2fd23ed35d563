//! Booting from the disk image (`boot=on`, no kernel): the test guest installed
//! as a distribution would install a kernel, in an ext4 /boot with a grub.cfg,
//! on a GPT disk, raw and qcow2. The image is read anew at each build of the VM
//! (so a reboot boots a new default).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmm::config::{ConsoleConfig, ConsoleOutputMode, DiskConfig, MemoryConfig, VmConfig};
use vmm::vm::{Vm, VmError, VmExitReason};

mod kvm_support;
use kvm_support::{boot_until_stopped, kvm_or_skip, test_guest, vm_events};

#[path = "../bootdisk/tests/common/mod.rs"]
mod images;
use images::{disk, make_fs, Fs, TempDir, Tree, UUID_ROOT};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn grub_cfg(default: u32) -> String {
    format!(
        "set default=\"{default}\"\n\
         menuentry 'hello' --id hello {{\n  linux /boot/vmlinuz-1.0 hello\n}}\n\
         menuentry 'smp' --id smp {{\n  linux /boot/vmlinuz-2.0 smp console=ttyS0\n  initrd /boot/initrd.img-2.0\n}}\n"
    )
}

/// A GPT disk whose ext4 root has the test guest as two "kernels" and a
/// grub.cfg whose default is entry `default`.
fn guest_image(dir: &TempDir, default: u32) -> PathBuf {
    let guest = std::fs::read(test_guest()).unwrap();
    let root = make_fs(
        dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/grub/grub.cfg", grub_cfg(default))
                .file("/boot/vmlinuz-1.0", guest.clone())
                .file("/boot/vmlinuz-2.0", guest)
                .file("/boot/initrd.img-2.0", vec![0x5a; 100_000]),
        },
        16,
    );
    disk(dir, "gpt", &[(root, "L")], None)
}

fn qcow2(raw: &Path) -> PathBuf {
    let out = raw.with_extension("qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&out)
        .status()
        .expect("qemu-img is missing: install qemu-utils (.ci/run does)");
    assert!(status.success());
    out
}

fn config(image: &Path, cmdline: Option<&str>, serial: &Path) -> VmConfig {
    VmConfig {
        memory: MemoryConfig {
            size: 64 << 20,
            ..Default::default()
        },
        payload: vmm::config::PayloadConfig {
            cmdline: cmdline.map(str::to_string),
            ..Default::default()
        },
        serial: ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(serial.to_path_buf()),
        },
        disks: vec![DiskConfig {
            path: image.to_path_buf(),
            boot: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn boots_the_default_entry_of_a_qcow2_image() {
    if !kvm_or_skip("boots_the_default_entry_of_a_qcow2_image") {
        return;
    }
    let dir = TempDir::new("vmm-bootdisk");
    let image = qcow2(&guest_image(&dir, 0));
    let serial = dir.path("serial.log");
    let config = config(&image, None, &serial);
    config.validate().unwrap();
    let (events, exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");
    let source = vm.boot_source().unwrap().clone();
    assert_eq!(source.disk, "disk0");
    assert_eq!(source.partition, 1);
    assert_eq!(source.config, "grub.cfg");
    assert_eq!(source.config_path, "/boot/grub/grub.cfg");
    assert_eq!(source.title, "hello");
    assert_eq!(source.kernel, "/boot/vmlinuz-1.0");
    assert_eq!(source.cmdline, "hello console=ttyS0");
    let output = boot_until_stopped(&mut vm, &exit, &serial, BOOT_TIMEOUT);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff), "{output}");
    assert!(
        output.contains("Hello from the form-vmm test guest"),
        "{output}"
    );
}

#[test]
fn a_new_default_is_booted_by_the_next_build_and_cmdline_is_appended() {
    if !kvm_or_skip("a_new_default_is_booted_by_the_next_build_and_cmdline_is_appended") {
        return;
    }
    let dir = TempDir::new("vmm-bootdisk-reboot");
    let image = guest_image(&dir, 0);
    let serial = dir.path("serial.log");
    let config = config(&image, Some("expect=1"), &serial);
    let (events, _exit) = vm_events();
    let vm = Vm::new(&config, events).expect("create VM");
    assert_eq!(vm.boot_source().unwrap().title, "hello");
    drop(vm);
    // What the guest would do on installing a kernel: a new default. The image
    // is rewritten in place; the same configuration now boots entry 1.
    let updated = guest_image(&dir, 1);
    std::fs::rename(&updated, &image).unwrap();
    let (events, exit) = vm_events();
    let mut vm = Vm::new(&config, events).expect("create VM");
    let source = vm.boot_source().unwrap().clone();
    assert_eq!(source.title, "smp");
    assert_eq!(source.initrd, ["/boot/initrd.img-2.0"]);
    assert_eq!(source.cmdline, "smp console=ttyS0 expect=1");
    let output = boot_until_stopped(&mut vm, &exit, &serial, BOOT_TIMEOUT);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff), "{output}");
    assert!(output.contains("cpus: 1"), "{output}");
    assert!(output.contains("form-test-guest: PASS"), "{output}");
}

#[test]
fn an_image_without_a_boot_configuration_is_refused_with_its_name() {
    if !kvm_or_skip("an_image_without_a_boot_configuration_is_refused_with_its_name") {
        return;
    }
    let dir = TempDir::new("vmm-bootdisk-none");
    let data = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default().file("/data", "x"),
        },
        4,
    );
    let image = disk(&dir, "gpt", &[(data, "L")], None);
    let serial = dir.path("serial.log");
    let (events, _) = vm_events();
    let err = match Vm::new(&config(&image, None, &serial), events) {
        Err(e) => e,
        Ok(_) => panic!("an image without a boot entry was booted"),
    };
    assert!(
        matches!(&err, VmError::BootDisk(e) if e.is_bad_request()),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "{}: no partition holds /boot/grub/grub.cfg, /boot/loader/entries or /boot/vmlinuz-*",
            image.display()
        )),
        "{msg}"
    );
}
