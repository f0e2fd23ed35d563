//! The form-vmm binary on bad input and in API-only mode: clear messages on stderr,
//! non-zero exits, no panics, no socket left behind. None of this needs KVM.

mod api_support;
mod kvm_support;

use api_support::{existing_file, request, run_form_vmm, wait_for, Finished, Running, TempDir};
use std::time::Duration;

/// Asserts a failed run: non-zero status, `message` on stderr, and no panic.
fn assert_refused(finished: &Finished, message: &str) {
    assert_ne!(finished.code, Some(0), "{finished:?}");
    assert!(finished.code.is_some(), "killed by a signal: {finished:?}");
    assert!(
        finished.stderr.contains(message),
        "stderr lacks {message:?}: {:?}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("panicked"),
        "{:?}",
        finished.stderr
    );
}

fn kernel() -> String {
    existing_file().display().to_string()
}

#[test]
fn nothing_to_do() {
    assert_refused(
        &run_form_vmm(&[]),
        "form-vmm: error: nothing to do: give --kernel to boot a VM now, or --api-socket to wait for vm.create",
    );
}

#[test]
fn missing_kernel_file() {
    assert_refused(
        &run_form_vmm(&["--kernel", "/nonexistent/vmlinux"]),
        "kernel /nonexistent/vmlinux: No such file or directory",
    );
}

#[test]
fn zero_memory() {
    assert_refused(
        &run_form_vmm(&["--kernel", &kernel(), "--memory", "size=0"]),
        "--memory size=0: memory size must be greater than zero",
    );
}

#[test]
fn misspelt_memory_option() {
    assert_refused(
        &run_form_vmm(&["--kernel", &kernel(), "--memory", "sizee=1G"]),
        "--memory: unknown option 'sizee'; valid options: size, shared, hugepages, hugepage_size, host_numa_node, dma_map",
    );
}

#[test]
fn zero_vcpus() {
    assert_refused(
        &run_form_vmm(&["--kernel", &kernel(), "--cpus", "boot=0"]),
        "--cpus boot=0: at least one vCPU is required",
    );
}

#[test]
fn boot_vcpus_above_max() {
    assert_refused(
        &run_form_vmm(&["--kernel", &kernel(), "--cpus", "boot=4,max=2"]),
        "--cpus boot=4,max=2: boot vCPUs (4) exceed max vCPUs (2)",
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let finished = run_form_vmm(&["--kernal", "/x"]);
    assert_refused(&finished, "unexpected argument '--kernal'");
    assert_eq!(finished.code, Some(2), "clap's usage-error status");
}

#[test]
fn existing_api_socket_is_refused_and_left_alone() {
    let dir = TempDir::new("cli-exists");
    let socket = dir.join("api.sock");
    std::fs::write(&socket, b"busy").unwrap();
    let finished = run_form_vmm(&["--api-socket", socket.to_str().unwrap()]);
    assert_refused(
        &finished,
        &format!(
            "API socket {} exists: another form-vmm may be using it; remove it if stale",
            socket.display()
        ),
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"busy");
}

/// A kernel file that exists but that no boot path can load: whatever the host
/// (no KVM, or KVM with the boot path), `Vm::new` must refuse it with a message.
#[test]
fn unloadable_kernel_is_reported_by_the_vm() {
    let dir = TempDir::new("cli-kernel");
    let not_elf = dir.join("vmlinux");
    std::fs::write(&not_elf, b"this is not a kernel\n").unwrap();
    let finished = run_form_vmm(&[
        "--kernel",
        not_elf.to_str().unwrap(),
        "--memory",
        "size=64M",
        "--serial",
        "off",
    ]);
    assert_refused(&finished, "form-vmm: error: ");
}

fn start_api_only(dir: &TempDir) -> (Running, std::path::PathBuf) {
    let socket = dir.join("api.sock");
    let running = Running::spawn(api_support::form_vmm().args([
        "--api-socket",
        &format!("path={}", socket.display()),
        "-v",
    ]));
    wait_for("the API socket", Duration::from_secs(30), || {
        socket.exists()
    });
    (running, socket)
}

#[test]
fn api_only_serves_until_vmm_shutdown() {
    let dir = TempDir::new("cli-api");
    let (running, socket) = start_api_only(&dir);
    let ping = request(&socket, "GET", "/api/v1/vmm.ping", None);
    assert_eq!(ping.status, 200, "{ping:?}");
    assert_eq!(ping.json()["pid"], running.pid());

    // A config the VMM cannot use is refused without ending the process.
    let body = r#"{"payload":{"kernel":"/nonexistent/vmlinux"}}"#;
    assert_eq!(
        request(&socket, "PUT", "/api/v1/vm.create", Some(body)).status,
        400
    );

    let reply = request(&socket, "PUT", "/api/v1/vmm.shutdown", None);
    assert_eq!(reply.status, 204, "{reply:?}");
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(!socket.exists(), "socket left behind");
}

fn assert_stops_on(signal: libc::c_int) {
    let dir = TempDir::new("cli-signal");
    let (running, socket) = start_api_only(&dir);
    let pid = libc::pid_t::try_from(running.pid()).unwrap();
    // SAFETY: sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(128 + signal), "{finished:?}");
    let message = format!("stopped by signal {signal}");
    assert!(finished.stderr.contains(&message), "{finished:?}");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn sigterm_removes_the_socket_and_exits_non_zero() {
    assert_stops_on(libc::SIGTERM);
}

#[test]
fn sigint_removes_the_socket_and_exits_non_zero() {
    assert_stops_on(libc::SIGINT);
}

#[test]
fn log_file_receives_the_log() {
    let dir = TempDir::new("cli-log");
    let log = dir.join("vmm.log");
    let socket = dir.join("api.sock");
    let running = Running::spawn(api_support::form_vmm().args([
        "--api-socket",
        socket.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
        "-v",
    ]));
    wait_for("the API socket", Duration::from_secs(30), || {
        socket.exists()
    });
    assert_eq!(
        request(&socket, "PUT", "/api/v1/vmm.shutdown", None).status,
        204
    );
    let finished = running.finish(Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("API listening on"), "{logged:?}");
    assert!(
        !finished.stderr.contains("API listening on"),
        "{finished:?}"
    );
}
