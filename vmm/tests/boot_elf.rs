//! The boot path with tiny hand-made ELF guests: exit reasons and host validation.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm::config::{
    ConsoleConfig, ConsoleOutputMode, CpusConfig, MemoryConfig, PayloadConfig, VmConfig,
};
use vmm::vm::{Vm, VmError, VmEvents, VmExitReason, VmState};
use vmm_sys_util::eventfd::EventFd;

mod kvm_support;
use kvm_support::kvm_or_skip;

const LOAD_ADDR: u64 = 0x10_0000;
const TIMEOUT: Duration = Duration::from_secs(30);

fn scratch_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "form-vmm-elf-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A minimal x86_64 ELF executable: one PT_LOAD segment holding `code`, loaded
/// and entered at 1 MiB. Without `pvh` there are no notes (so the 64-bit Linux
/// entry is used); with it, a Xen PHYS32_ENTRY note names the code as PVH entry.
fn write_elf_with(path: &Path, code: &[u8], pvh: bool) {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let phnum = if pvh { 2 } else { 1 };
    let mut note = Vec::new();
    if pvh {
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    }
    let note_offset = (EHDR + PHDR * phnum) as u64;
    let code_offset = note_offset + note.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]); // no section headers
    let mut phdr = |kind: u32, offset: u64, addr: u64, size: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes()); // RWX
        f.extend_from_slice(&offset.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
    };
    phdr(1, code_offset, LOAD_ADDR, code.len() as u64); // PT_LOAD
    if pvh {
        phdr(4, note_offset, 0, note.len() as u64); // PT_NOTE
    }
    assert_eq!(f.len() as u64, note_offset);
    f.extend_from_slice(&note);
    f.extend_from_slice(code);
    std::fs::write(path, f).unwrap();
}

fn write_elf(path: &Path, code: &[u8]) {
    write_elf_with(path, code, false)
}

fn config(kernel: PathBuf, serial: PathBuf) -> VmConfig {
    VmConfig {
        cpus: CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
        },
        memory: MemoryConfig {
            size: 64 << 20,
            ..Default::default()
        },
        payload: PayloadConfig {
            kernel: Some(kernel),
            cmdline: None,
            initramfs: None,
        },
        serial: ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(serial),
        },
        ..Default::default()
    }
}

fn events() -> (VmEvents, EventFd, EventFd) {
    let exit = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let events = VmEvents {
        exit: exit.try_clone().unwrap(),
        reset: reset.try_clone().unwrap(),
    };
    (events, exit, reset)
}

/// Waits for either fd; returns (exit fired, reset fired).
fn wait_for_exit(exit: &EventFd, reset: &EventFd) -> (bool, bool) {
    let mut fds = [exit, reset].map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: a valid array of two pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, TIMEOUT.as_millis() as i32) };
    (fds[0].revents != 0, fds[1].revents != 0)
}

struct Outcome {
    reason: Option<VmExitReason>,
    exit_fired: bool,
    reset_fired: bool,
    serial: Vec<u8>,
}

fn run_code(code: &[u8]) -> Outcome {
    run_elf(code, false)
}

fn run_elf(code: &[u8], pvh: bool) -> Outcome {
    let dir = scratch_dir();
    let kernel = dir.join("guest.elf");
    write_elf_with(&kernel, code, pvh);
    let serial = dir.join("serial");
    let (events, exit, reset) = events();
    let mut vm = Vm::new(&config(kernel, serial.clone()), events).expect("create VM");
    assert_eq!(vm.state(), VmState::Created);
    vm.boot().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    let (exit_fired, reset_fired) = wait_for_exit(&exit, &reset);
    vm.shutdown().unwrap();
    vm.shutdown().unwrap();
    assert_eq!(vm.state(), VmState::Shutdown);
    let out = Outcome {
        reason: vm.exit_reason(),
        exit_fired,
        reset_fired,
        serial: std::fs::read(&serial).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[rustfmt::skip]
const SERIAL_THEN_POWER_OFF: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'A',             // mov al, 'A'
    0xee,                   // out dx, al
    0xb0, b'\n',            // mov al, '\n'
    0xee,                   // out dx, al
    0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
    0xb0, 0x34,             // mov al, S5 | SLP_EN
    0xee,                   // out dx, al
    0xb0, b'X',             // never reached: the VM stops at the power-off write
    0x66, 0xba, 0xf8, 0x03,
    0xee,
    0xf4,                   // hlt
];

#[test]
fn serial_byte_then_acpi_power_off() {
    if !kvm_or_skip("serial_byte_then_acpi_power_off") {
        return;
    }
    let out = run_code(SERIAL_THEN_POWER_OFF);
    assert_eq!(out.reason, Some(VmExitReason::PowerOff));
    assert!(out.exit_fired && !out.reset_fired);
    assert_eq!(out.serial, b"A\n");
}

#[test]
fn i8042_reset_reports_reset() {
    if !kvm_or_skip("i8042_reset_reports_reset") {
        return;
    }
    // mov al, 0xfe; out 0x64, al; hlt
    let out = run_code(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4]);
    assert_eq!(out.reason, Some(VmExitReason::Reset));
    assert!(out.reset_fired && !out.exit_fired);
}

#[test]
fn acpi_reset_register_reports_reset() {
    if !kvm_or_skip("acpi_reset_register_reports_reset") {
        return;
    }
    // mov dx, 0x600; mov al, 1; out dx, al; hlt
    let out = run_code(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xf4]);
    assert_eq!(out.reason, Some(VmExitReason::Reset));
    assert!(out.reset_fired);
}

#[test]
fn triple_fault_is_a_reset() {
    if !kvm_or_skip("triple_fault_is_a_reset") {
        return;
    }
    // ud2 with the boot IDT (too short to hold any gate): #UD → #GP → #DF → triple fault.
    let out = run_code(&[0x0f, 0x0b]);
    assert_eq!(out.reason, Some(VmExitReason::Reset));
    assert!(out.reset_fired);
}

#[test]
fn unclaimed_port_reads_as_all_ones() {
    if !kvm_or_skip("unclaimed_port_reads_as_all_ones") {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0x34, 0x12, // mov dx, 0x1234 (nothing there)
        0xec,                   // in al, dx
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee,                   // out dx, al  (echo what was read)
        0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
        0xb0, 0x34,             // mov al, 0x34
        0xee,                   // out dx, al
        0xf4,
    ];
    let out = run_code(&code);
    assert_eq!(out.reason, Some(VmExitReason::PowerOff));
    assert_eq!(out.serial, [0xff]);
}

#[test]
fn pvh_entry_gets_hvm_start_info_in_ebx() {
    if !kvm_or_skip("pvh_entry_gets_hvm_start_info_in_ebx") {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x8a, 0x03,             // mov al, [ebx]  (32-bit code: the start info's magic)
        0xee,                   // out dx, al
        0x8a, 0x43, 0x04,       // mov al, [ebx + 4]  (version)
        0xee,                   // out dx, al
        0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
        0xb0, 0x34,             // mov al, 0x34
        0xee,                   // out dx, al
        0xf4,
    ];
    let out = run_elf(&code, true);
    assert_eq!(out.reason, Some(VmExitReason::PowerOff));
    // XEN_HVM_START_MAGIC is 0x336ec578; version 1.
    assert_eq!(out.serial, [0x78, 0x01]);
}

#[test]
fn power_button_sets_the_ged_event_register() {
    if !kvm_or_skip("power_button_sets_the_ged_event_register") {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x48, 0xbb, 0, 0, 0, 0xf0, 0, 0, 0, 0, // mov rbx, 0xf0000000 (GED event register)
        0x8b, 0x03,                            // poll: mov eax, [rbx]
        0xa8, 0x01,                            // test al, 1 (power button)
        0x74, 0xfa,                            // jz poll
        0x66, 0xba, 0x00, 0x06,                // mov dx, 0x600
        0xb0, 0x34,                            // mov al, 0x34
        0xee,                                  // out dx, al
        0xf4,
    ];
    let dir = scratch_dir();
    let kernel = dir.join("guest.elf");
    write_elf(&kernel, &code);
    let (events, exit, reset) = events();
    let mut vm = Vm::new(&config(kernel, dir.join("serial")), events).unwrap();
    vm.boot().unwrap();
    // The guest spins on the register until the button is pressed.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vm.exit_reason(), None);
    vm.power_button().unwrap();
    let (exit_fired, _) = wait_for_exit(&exit, &reset);
    vm.shutdown().unwrap();
    assert!(exit_fired);
    assert_eq!(vm.exit_reason(), Some(VmExitReason::PowerOff));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn executing_from_unbacked_memory_is_a_crash() {
    if !kvm_or_skip("executing_from_unbacked_memory_is_a_crash") {
        return;
    }
    // mov rax, 0xf1000000 (unclaimed platform MMIO); jmp rax
    let out = run_code(&[0x48, 0xb8, 0, 0, 0, 0xf1, 0, 0, 0, 0, 0xff, 0xe0]);
    assert!(out.exit_fired && !out.reset_fired);
    match out.reason {
        Some(VmExitReason::Crashed(why)) => assert!(why.contains("vCPU 0"), "{why}"),
        other => panic!("expected a crash, got {other:?}"),
    }
}

fn new_error(cfg: &VmConfig) -> String {
    let (events, _, _) = events();
    match Vm::new(cfg, events) {
        Ok(_) => panic!("Vm::new accepted an invalid config"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn host_validation_errors_say_what_is_wrong() {
    if !kvm_or_skip("host_validation_errors_say_what_is_wrong") {
        return;
    }
    let dir = scratch_dir();
    let kernel = dir.join("guest.elf");
    write_elf(&kernel, &[0xf4]);
    let good = config(kernel.clone(), dir.join("serial"));

    let mut cfg = good.clone();
    cfg.memory.size = 0;
    assert!(new_error(&cfg).contains("memory size is 0"));

    let mut cfg = good.clone();
    cfg.memory.size = 1 << 50;
    assert!(new_error(&cfg).contains("more than this host has"));

    let mut cfg = good.clone();
    cfg.cpus.boot_vcpus = 0;
    assert!(new_error(&cfg).contains("boot_vcpus is 0"));

    let mut cfg = good.clone();
    cfg.payload.kernel = Some(dir.join("missing"));
    assert!(new_error(&cfg).contains("does not exist"));

    let junk = dir.join("junk");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    let mut cfg = good.clone();
    cfg.payload.kernel = Some(junk);
    let msg = new_error(&cfg);
    assert!(msg.contains("ELF") && msg.contains("bzImage"), "{msg}");

    let mut cfg = good.clone();
    cfg.devices.push(vmm::config::DeviceConfig {
        path: "/sys/bus/pci/devices/0000:7e:1f.7".into(),
        ..Default::default()
    });
    let msg = new_error(&cfg);
    let expected = if std::path::Path::new("/dev/vfio/vfio").exists() {
        "there is no PCI device 0000:7e:1f.7 on this host"
    } else {
        "VFIO is not available on this host (load vfio-pci)"
    };
    assert!(msg.contains(expected), "{msg}");
    cfg.devices[0].path = "/tmp/gpu".into();
    assert!(new_error(&cfg).contains("is not a PCI device path"));

    let mut cfg = good;
    cfg.payload.kernel = None;
    assert!(new_error(&cfg).contains("no kernel"));

    let (events, _, _) = events();
    let mut cfg = config(kernel, dir.join("serial"));
    cfg.memory.size = 64 << 20;
    let vm = Vm::new(&cfg, events).unwrap();
    assert_eq!(vm.memory_actual_size(), 64 << 20);
    assert!(matches!(
        vm.power_button(),
        Err(VmError::InvalidState { .. })
    ));
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn acpi_reset_then_a_busy_loop_still_resets() {
    if !kvm_or_skip("acpi_reset_then_a_busy_loop_still_resets") {
        return;
    }
    // mov dx, 0x600; mov al, 1; out dx, al; cli; jmp $ (as Linux does: it writes the
    // reset register, then spins in mdelay with interrupts off)
    let out = run_code(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xfa, 0xeb, 0xfe]);
    assert_eq!(out.reason, Some(VmExitReason::Reset));
    assert!(out.reset_fired);
}
