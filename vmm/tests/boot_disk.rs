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

/// The cost of booting from the disk against the same kernel and initrd given
/// as host files: `Vm::new` (which reads and loads them) timed both ways, on a
/// raw and a qcow2 image with a ~60 MiB initrd. Run by `scripts/bench-bootdisk`
/// (release build); prints medians of warm runs.
#[test]
#[ignore = "a benchmark: scripts/bench-bootdisk runs it"]
fn bench_boot_disk_overhead() {
    if !kvm_or_skip("bench_boot_disk_overhead") {
        return;
    }
    const RUNS: usize = 7;
    let initrd_len: usize = std::env::var("BENCH_INITRD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
        << 20;
    let dir = TempDir::new("vmm-bootdisk-bench");
    let guest = std::fs::read(test_guest()).unwrap();
    let initrd = images::blob(9, initrd_len);
    let kernel_file = dir.path("vmlinuz");
    let initrd_file = dir.path("initrd.img");
    std::fs::write(&kernel_file, &guest).unwrap();
    std::fs::write(&initrd_file, &initrd).unwrap();
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/grub/grub.cfg", "menuentry 'bench' {\n linux /boot/vmlinuz-1 hello\n initrd /boot/initrd.img-1\n}\n")
                .file("/boot/vmlinuz-1", guest)
                .file("/boot/initrd.img-1", initrd),
        },
        (initrd_len as u64 >> 20) + 64,
    );
    let raw = disk(&dir, "gpt", &[(root, "L")], None);
    let qcow = qcow2(&raw);
    let serial = dir.path("serial.log");
    let memory = MemoryConfig {
        size: 512 << 20,
        ..Default::default()
    };
    let median = |config: &VmConfig| {
        let mut times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let (events, _) = vm_events();
                let start = std::time::Instant::now();
                let vm = Vm::new(config, events).expect("create VM");
                let t = start.elapsed();
                drop(vm);
                t
            })
            .collect();
        times.sort();
        times[RUNS / 2]
    };
    let mut with_kernel = config(&raw, Some("hello"), &serial);
    with_kernel.memory = memory.clone();
    with_kernel.disks[0].boot = false;
    with_kernel.payload.kernel = Some(kernel_file);
    with_kernel.payload.initramfs = Some(initrd_file);
    let base = median(&with_kernel);
    let mut from_raw = config(&raw, None, &serial);
    from_raw.memory = memory.clone();
    let raw_t = median(&from_raw);
    let mut from_qcow = config(&qcow, None, &serial);
    from_qcow.memory = memory;
    let qcow_t = median(&from_qcow);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "bench-bootdisk: kernel {} KiB + initrd {} MiB, Vm::new median of {RUNS}:",
        std::fs::metadata(test_guest()).unwrap().len() >> 10,
        initrd_len >> 20
    );
    println!("  --kernel/--initramfs (host files)   {:8.1} ms", ms(base));
    println!(
        "  boot=on, raw image                  {:8.1} ms  (+{:.1} ms)",
        ms(raw_t),
        ms(raw_t) - ms(base)
    );
    println!(
        "  boot=on, qcow2 image                {:8.1} ms  (+{:.1} ms)",
        ms(qcow_t),
        ms(qcow_t) - ms(base)
    );
}
