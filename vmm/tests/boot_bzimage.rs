//! Boots a real Linux bzImage (Debian's cloud kernel, fetched by
//! `scripts/fetch-kernels`) far enough to see its first serial output.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::config::{
    ConsoleConfig, ConsoleOutputMode, CpusConfig, MemoryConfig, PayloadConfig, VmConfig,
};
use vmm::vm::{Vm, VmEvents, VmExitReason};
use vmm_sys_util::eventfd::EventFd;

/// Only bounds a hang. On nested KVM the decompressor alone can take two minutes
/// (QEMU on the same host is as slow), so the bound is wide.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(400);

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cached_kernel() -> PathBuf {
    let cache = std::env::var_os("FORM_VMM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/form-vmm")
        });
    cache.join("kernels/vmlinuz-cloud")
}

/// The bzImage to boot, or None (after saying why) when there is none here.
fn bzimage_or_skip(test: &str) -> Option<PathBuf> {
    if !std::path::Path::new("/dev/kvm").exists() {
        assert!(!ci(), "{test}: /dev/kvm is required when CI=true");
        eprintln!("skipping {test}: /dev/kvm is not present");
        return None;
    }
    if let Some(path) = std::env::var_os("FORM_VMM_TEST_BZIMAGE") {
        return Some(PathBuf::from(path));
    }
    let fetch = repo_root().join("scripts/fetch-kernels");
    if ci() && !cached_kernel().exists() && fetch.exists() {
        let status = Command::new(&fetch)
            .status()
            .expect("run scripts/fetch-kernels");
        assert!(status.success(), "scripts/fetch-kernels failed");
    }
    let kernel = cached_kernel();
    if kernel.exists() {
        return Some(kernel);
    }
    assert!(
        !ci(),
        "{test}: no bzImage at {} with CI=true",
        kernel.display()
    );
    eprintln!(
        "skipping {test}: no bzImage (set FORM_VMM_TEST_BZIMAGE or run scripts/fetch-kernels to get {})",
        kernel.display()
    );
    None
}

#[test]
fn bzimage_reaches_serial_output() {
    let Some(kernel) = bzimage_or_skip("bzimage_reaches_serial_output") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("form-vmm-bzimage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial_path = dir.join("serial.log");
    let config = VmConfig {
        cpus: CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        },
        memory: MemoryConfig {
            size: 512 << 20,
            ..Default::default()
        },
        payload: PayloadConfig {
            kernel: Some(kernel),
            cmdline: Some("console=ttyS0 earlyprintk=ttyS0 panic=-1".into()),
            initramfs: None,
        },
        serial: ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(serial_path.clone()),
        },
        ..Default::default()
    };
    let events = VmEvents {
        exit: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        reset: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    };
    let mut vm = Vm::new(&config, events).expect("create VM");
    vm.boot().expect("boot");
    let start = Instant::now();
    let mut serial = String::new();
    while start.elapsed() < OUTPUT_TIMEOUT {
        serial = std::fs::read_to_string(&serial_path).unwrap_or_default();
        if serial.contains("Linux version") || serial.contains("Decompressing Linux") {
            break;
        }
        if let Some(VmExitReason::Crashed(why)) = vm.exit_reason() {
            panic!("VM crashed before serial output: {why}; serial:\n{serial}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("first kernel output after {:?}", start.elapsed());
    vm.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        serial.contains("Linux version") || serial.contains("Decompressing Linux"),
        "no early kernel output within {OUTPUT_TIMEOUT:?}; exit reason {:?}; serial:\n{serial}",
        vm.exit_reason()
    );
}
