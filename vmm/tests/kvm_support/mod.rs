//! What the KVM tests share: the skip rule for a missing /dev/kvm, the test guest's
//! path, and waiting on the VM's eventfds.
#![allow(dead_code)] // each test binary uses its own subset

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmm::config::{ConsoleConfig, ConsoleOutputMode, MemoryConfig, PayloadConfig, VmConfig};
use vmm::vm::{Vm, VmEvents};
use vmm_sys_util::eventfd::EventFd;

mod scratch;
#[allow(unused_imports)] // as dead_code above: each binary uses its subset
pub use scratch::ScratchDir;

pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// False (after printing why) when /dev/kvm is missing; under CI=true a missing
/// /dev/kvm fails the test instead.
pub fn kvm_or_skip(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    assert!(!ci(), "{test}: /dev/kvm is required when CI=true");
    eprintln!("skipping {test}: /dev/kvm is not present");
    false
}

/// Builds the freestanding test guest if needed and returns its ELF.
pub fn test_guest() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/test-guest"))
        .output()
        .expect("run scripts/test-guest");
    assert!(
        out.status.success(),
        "scripts/test-guest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Waits until `fd` is readable or the timeout passes.
pub fn wait_readable(fd: &EventFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) == 1 }
}

/// The test guest with `cmdline`, 64 MiB and one vCPU, COM1 written to `serial`;
/// tests add their devices to it.
pub fn test_guest_config(cmdline: &str, serial: &Path) -> VmConfig {
    VmConfig {
        memory: MemoryConfig {
            size: 64 << 20,
            ..Default::default()
        },
        payload: PayloadConfig {
            kernel: Some(test_guest()),
            cmdline: Some(cmdline.into()),
            initramfs: None,
        },
        serial: ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(serial.to_path_buf()),
        },
        ..Default::default()
    }
}

/// The eventfds a `Vm` signals, and a handle on its exit eventfd to wait on.
pub fn vm_events() -> (VmEvents, EventFd) {
    let exit = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let events = VmEvents {
        exit: exit.try_clone().unwrap(),
        reset: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    };
    (events, exit)
}

/// Boots `vm`, waits up to `timeout` for the guest to stop it, shuts it down and
/// returns what the guest wrote to `serial`; fails the test, with that output, if
/// the guest did not stop in time. The caller checks how it stopped.
pub fn boot_until_stopped(vm: &mut Vm, exit: &EventFd, serial: &Path, timeout: Duration) -> String {
    vm.boot().expect("boot");
    let exited = wait_readable(exit, timeout);
    vm.shutdown().unwrap();
    let output = std::fs::read_to_string(serial).unwrap_or_default();
    assert!(
        exited,
        "the guest did not stop within {timeout:?}; serial:\n{output}"
    );
    output
}
