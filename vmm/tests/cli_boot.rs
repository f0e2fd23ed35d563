//! form-vmm booting real guests on KVM: the test guest's scenarios from the command
//! line, the API flow a Cloud Hypervisor client drives, and the host-dependent
//! refusals that only `Vm::new` can make. These skip with a printed reason where
//! /dev/kvm or the guest toolchain is missing; with CI=true they fail instead.

mod api_support;
mod kvm_support;

use api_support::{request, wait_for, Finished, Running, TempDir};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// Skips (returns `None` after saying why) or, under CI, fails.
fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, so this cannot be skipped: {reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

/// The test guest's ELF, built by scripts/test-guest, when this host can run it.
fn test_guest() -> Option<PathBuf> {
    if !Path::new("/dev/kvm").exists() {
        return skip("/dev/kvm is absent");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the vmm crate sits in the workspace");
    let built = match Command::new(repo.join("scripts/test-guest")).output() {
        Ok(built) => built,
        Err(e) => return skip(&format!("cannot run scripts/test-guest: {e}")),
    };
    if !built.status.success() {
        return skip(&format!(
            "the test guest cannot be built here: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Some(PathBuf::from(
        String::from_utf8_lossy(&built.stdout).trim().to_string(),
    ))
}

/// Asserts the guest ran `scenario` to a PASS and powered off, exiting 0.
fn assert_guest_passed(finished: &Finished, scenario: &str) {
    let serial = &finished.stdout;
    assert!(
        serial.contains(&format!("form-test-guest: scenario {scenario}\n")),
        "no scenario line; {finished:?}"
    );
    assert!(serial.contains("form-test-guest: PASS\n"), "{finished:?}");
    assert!(!serial.contains("form-test-guest: FAIL"), "{finished:?}");
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(!finished.stderr.contains("panicked"), "{finished:?}");
}

fn boot_scenario(guest: &Path, cmdline: &str, cpus: &str) -> Finished {
    Running::spawn(api_support::form_vmm().args([
        "--kernel",
        guest.to_str().expect("UTF-8 guest path"),
        "--cmdline",
        cmdline,
        "--cpus",
        cpus,
        "--memory",
        "size=64M",
        "--serial",
        "tty",
    ]))
    .finish(BOOT_LIMIT)
}

#[test]
fn hello_prints_the_banner_and_exits_0() {
    let Some(guest) = test_guest() else { return };
    let finished = boot_scenario(&guest, "hello", "boot=1");
    assert!(
        finished
            .stdout
            .contains("Hello from the form-vmm test guest"),
        "{finished:?}"
    );
    assert_guest_passed(&finished, "hello");
}

#[test]
fn smp_sees_four_vcpus() {
    let Some(guest) = test_guest() else { return };
    let finished = boot_scenario(&guest, "smp expect=4", "boot=4");
    assert!(finished.stdout.contains("cpus: 4\n"), "{finished:?}");
    assert_guest_passed(&finished, "smp");
}

/// Writes a minimal x86_64 ELF: one PT_LOAD at 1 MiB holding the headers and
/// `code`, entered at `code`. It has no PVH note, so the VMM enters it in 64-bit
/// mode (docs/platform.md).
fn write_guest_elf(path: &Path, code: &[u8]) {
    const LOAD_ADDR: u64 = 0x10_0000;
    const HEADERS: u64 = 64 + 56;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(LOAD_ADDR + HEADERS).to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let size = HEADERS + code.len() as u64;
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(elf.len() as u64, HEADERS);
    elf.extend_from_slice(code);
    std::fs::write(path, elf).expect("write the guest ELF");
}

/// A guest that never powers off, so the API flow can look at a running VM
/// without racing the guest's own power-off.
const IDLE_GUEST: &[u8] = &[
    0xf4, // hlt
    0xeb, 0xfd, // jmp back to the hlt
];

/// A guest that prints "R" on COM1 and resets the machine through the i8042.
const RESETTING_GUEST: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'R', // mov al, 'R'
    0xee, // out dx, al
    0xb0, b'\n', // mov al, '\n'
    0xee,  // out dx, al
    0xb0, 0xfe, // mov al, 0xfe (pulse reset)
    0xe6, 0x64, // out 0x64, al
    0xf4, // hlt, in case the reset is not immediate
    0xeb, 0xfd, // jmp back to the hlt
];

/// form-vmm with only an API socket, as an orchestrator starts it.
fn start_api(dir: &TempDir) -> (Running, PathBuf) {
    let socket = dir.join("api.sock");
    let running = Running::spawn(
        api_support::form_vmm().args(["--api-socket", socket.to_str().expect("UTF-8 socket path")]),
    );
    wait_for("the API socket", Duration::from_secs(30), || {
        socket.exists()
    });
    (running, socket)
}

fn vm_create(socket: &Path, kernel: &Path, cmdline: &str) {
    let body = json!({
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": kernel, "cmdline": cmdline},
        "serial": {"mode": "Tty"},
    })
    .to_string();
    let reply = request(socket, "PUT", "/api/v1/vm.create", Some(&body));
    assert_eq!(reply.status, 204, "vm.create: {reply:?}");
}

#[test]
fn api_create_boot_info_shutdown() {
    if test_guest().is_none() {
        return;
    }
    let dir = TempDir::new("boot-api");
    let kernel = dir.join("idle.elf");
    write_guest_elf(&kernel, IDLE_GUEST);
    let (running, socket) = start_api(&dir);
    vm_create(&socket, &kernel, "idle");
    let put = |endpoint: &str| request(&socket, "PUT", &format!("/api/v1/{endpoint}"), None);
    let info = || request(&socket, "GET", "/api/v1/vm.info", None);

    assert_eq!(info().json()["state"], "Created");
    let reply = put("vm.boot");
    assert_eq!(reply.status, 204, "vm.boot: {reply:?}");
    let reply = info();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["state"], "Running", "{reply:?}");
    assert_eq!(reply.json()["memory_actual_size"], 64u64 << 20);

    let reply = put("vm.shutdown");
    assert_eq!(reply.status, 204, "vm.shutdown: {reply:?}");
    assert_eq!(info().json()["state"], "Shutdown");
    // A shut-down VM boots again from its configuration.
    assert_eq!(put("vm.boot").status, 204);
    assert_eq!(info().json()["state"], "Running");

    assert_eq!(put("vmm.shutdown").status, 204);
    let finished = running.finish(BOOT_LIMIT);
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(!socket.exists());
}

#[test]
fn api_booted_guest_powers_off_and_the_vmm_exits_0() {
    let Some(guest) = test_guest() else { return };
    let dir = TempDir::new("boot-api-hello");
    let (running, socket) = start_api(&dir);
    vm_create(&socket, &guest, "hello");
    let reply = request(&socket, "PUT", "/api/v1/vm.boot", None);
    assert_eq!(reply.status, 204, "vm.boot: {reply:?}");
    let finished = running.finish(BOOT_LIMIT);
    assert_guest_passed(&finished, "hello");
    assert!(!socket.exists(), "socket left behind");
}

/// Asserts form-vmm refused to boot with `message` from `Vm::new`.
fn assert_vm_refused(args: &[&str], message: &str) {
    let finished = Running::spawn(api_support::form_vmm().args(args)).finish(BOOT_LIMIT);
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains(&format!("form-vmm: error: {message}")),
        "stderr lacks {message:?}: {finished:?}"
    );
    assert!(!finished.stderr.contains("panicked"), "{finished:?}");
}

#[test]
fn memory_beyond_the_host_is_refused() {
    let Some(guest) = test_guest() else { return };
    assert_vm_refused(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            "size=1024T",
        ],
        "memory size 1125899906842624 bytes is more than this host has",
    );
}

#[test]
fn a_kernel_that_is_not_elf_or_bzimage_is_refused() {
    if test_guest().is_none() {
        return;
    }
    let dir = TempDir::new("boot-notelf");
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"not a kernel at all\n").unwrap();
    assert_vm_refused(
        &["--kernel", kernel.to_str().unwrap(), "--memory", "size=64M"],
        "boot: kernel ",
    );
}

#[test]
fn api_reports_host_limits_as_500() {
    let Some(guest) = test_guest() else { return };
    let dir = TempDir::new("boot-api-limit");
    let (running, socket) = start_api(&dir);
    let body = json!({"memory": {"size": 1u64 << 50}, "payload": {"kernel": guest}}).to_string();
    let reply = request(&socket, "PUT", "/api/v1/vm.create", Some(&body));
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(
        reply.error().contains("more than this host has"),
        "{reply:?}"
    );
    // The refusal left no VM behind.
    assert_eq!(request(&socket, "GET", "/api/v1/vm.info", None).status, 404);
    assert_eq!(
        request(&socket, "PUT", "/api/v1/vmm.shutdown", None).status,
        204
    );
    assert_eq!(running.finish(BOOT_LIMIT).code, Some(0));
}

#[test]
fn guest_reset_reboots_the_vm() {
    if test_guest().is_none() {
        return;
    }
    let dir = TempDir::new("boot-reset");
    let kernel = dir.join("reset.elf");
    write_guest_elf(&kernel, RESETTING_GUEST);
    let serial = dir.join("serial.out");
    let running = Running::spawn_with_stdout(
        api_support::form_vmm().args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "size=64M",
            "--serial",
            "tty",
        ]),
        std::fs::File::create(&serial).unwrap(),
    );
    // Each boot prints one line before resetting: three lines, three boots.
    wait_for("three boots", BOOT_LIMIT, || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.matches("R\n").count() >= 3)
    });
    let pid = libc::pid_t::try_from(running.pid()).unwrap();
    // SAFETY: signals the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let finished = running.finish(BOOT_LIMIT);
    assert_eq!(finished.code, Some(128 + libc::SIGTERM), "{finished:?}");
    assert!(!finished.stderr.contains("panicked"), "{finished:?}");
}
