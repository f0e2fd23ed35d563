//! form-vmm's sandbox on real KVM: every thread kind dies on a system call its
//! seccomp filter refuses (the test-only FORM_VMM_SECCOMP_TEST hook makes it try),
//! `--seccomp log` lets it through, every thread of a running VMM is filtered, a
//! VM boots, answers the API and reboots with the sandbox on, Landlock keeps the
//! VMM out of files nobody named, and `--uid` leaves it without root.
//!
//! Skips with a printed reason without /dev/kvm or the guest toolchain (fails under
//! CI=true); the tap and privilege tests also skip without root.

mod api_support;
mod kvm_support;

use api_support::{request, wait_for, TempDir};
use serde_json::json;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

fn skip<T>(reason: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true, so this cannot be skipped: {reason}"
    );
    eprintln!("skipping: {reason}");
    None
}

fn guest_or_skip() -> Option<PathBuf> {
    if !Path::new("/dev/kvm").exists() {
        return skip("/dev/kvm is absent");
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new(repo.join("scripts/test-guest"))
        .output()
        .ok()?;
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

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn form_vmm(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_form-vmm"));
    command
        .args(args)
        .env_remove("FORM_VMM_SECCOMP_TEST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// How a form-vmm run ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

fn wait(mut child: Child, limit: Duration) -> Ended {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("form-vmm still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    Ended {
        code: out.status.code(),
        signal: out.status.signal(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(command: &mut Command) -> Ended {
    wait(command.spawn().expect("start form-vmm"), LIMIT)
}

/// The flags that boot the test guest with `cmdline`.
fn guest_args(guest: &Path, cmdline: &str, serial: &Path) -> Vec<String> {
    [
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        cmdline,
        "--memory",
        "size=64M",
        "--serial",
        &format!("file={}", serial.display()),
    ]
    .map(String::from)
    .to_vec()
}

/// form-vmm with `extra` flags running the test guest `guest`, which waits 30 s for
/// a device that never comes (so the VM stays up), with its serial log and API
/// socket in `dir`. Returns the command and the socket.
fn waiting_vm(guest: &Path, dir: &Path, extra: &[&str]) -> (Command, PathBuf) {
    let socket = dir.join("api.sock");
    let mut args = guest_args(
        guest,
        "pci-wait vendor=0x1af4 device=0x10ff wait=30",
        &dir.join("serial.log"),
    );
    args.extend(["--api-socket".to_string(), socket.display().to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (form_vmm(&args), socket)
}

/// Waits until form-vmm answers on `socket` with its VM running.
fn wait_running(socket: &Path) {
    wait_for("the API socket", LIMIT, || socket.exists());
    wait_for("the VM to run", LIMIT, || {
        request(socket, "GET", "/api/v1/vm.info", None).json()["state"] == "Running"
    });
}

#[test]
fn every_thread_kind_dies_on_a_call_its_filter_refuses() {
    let Some(guest) = guest_or_skip() else { return };
    let dir = TempDir::new("sandbox-kill");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let serial = dir.path().join("serial.log");
    let socket = dir.path().join("api.sock");
    let disk_flag = format!("path={}", disk.display());
    // (FORM_VMM_SECCOMP_TEST, scenario, extra flags, stdin a pipe)
    let cases: Vec<(&str, &str, Vec<&str>, bool)> = vec![
        ("main", "hello", vec![], false),
        // Signalling another process (init, with signal 0: harmless if allowed).
        ("main:kill", "hello", vec![], false),
        (
            "api",
            "hello",
            vec!["--api-socket", socket.to_str().unwrap()],
            false,
        ),
        ("vcpu", "hello", vec![], false),
        ("vcpu:execve", "hello", vec![], false),
        (
            "virtio-blk",
            "virtio-blk",
            vec!["--disk", &disk_flag],
            false,
        ),
        ("virtio-rng", "virtio-rng", vec!["--rng"], false),
        // COM1's stdin reader runs when stdin is a terminal or a pipe.
        ("serial-stdin", "hello", vec![], true),
    ];
    for (trip, scenario, extra, piped_stdin) in cases {
        let _ = std::fs::remove_file(&socket);
        let mut args = guest_args(&guest, scenario, &serial);
        if piped_stdin {
            // COM1 on the terminal (here: stdout), its input from stdin.
            let at = args.iter().position(|a| a == "--serial").unwrap();
            args[at + 1] = "tty".to_string();
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = form_vmm(&args);
        command.env("FORM_VMM_SECCOMP_TEST", trip);
        if piped_stdin {
            command.stdin(Stdio::piped());
        }
        let child = command.spawn().expect("start form-vmm");
        let ended = wait(child, LIMIT);
        assert_eq!(
            ended.signal,
            Some(libc::SIGSYS),
            "{trip}: form-vmm should die of SIGSYS: {ended:?}"
        );
    }
}

#[test]
fn threads_but_main_see_every_open_refused_and_carry_on() {
    // Libraries open files lazily from whatever thread needs them first: such an
    // open fails with EACCES on a vCPU or device thread, instead of killing the
    // VMM, and opens nothing.
    let Some(guest) = guest_or_skip() else { return };
    let dir = TempDir::new("sandbox-refused-open");
    let serial = dir.path().join("serial.log");
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let disk_flag = format!("path={}", image.display());
    for (trip, scenario, extra) in [
        ("vcpu:openat", "hello", vec![]),
        (
            "virtio-blk:openat",
            "virtio-blk",
            vec!["--disk", disk_flag.as_str()],
        ),
    ] {
        let args = guest_args(&guest, scenario, &serial);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(extra);
        let ended = run(form_vmm(&args).env("FORM_VMM_SECCOMP_TEST", trip));
        assert_eq!(ended.code, Some(0), "{trip}: {ended:?}");
        assert!(
            ended.stderr.contains("openat failed: Permission denied"),
            "{trip}: {ended:?}"
        );
        let text = std::fs::read_to_string(&serial).unwrap();
        assert!(text.contains("form-test-guest: PASS"), "{trip}: {text}");
    }
}

#[test]
fn log_mode_lets_the_call_through_and_the_guest_finish() {
    let Some(guest) = guest_or_skip() else { return };
    let dir = TempDir::new("sandbox-log");
    let serial = dir.path().join("serial.log");
    let args = guest_args(&guest, "hello", &serial);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--seccomp", "log"]);
    let ended = run(form_vmm(&args).env("FORM_VMM_SECCOMP_TEST", "vcpu:socket"));
    assert_eq!(ended.code, Some(0), "{ended:?}");
    assert!(
        ended.stderr.contains("the vcpu thread's socket"),
        "{ended:?}"
    );
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.contains("form-test-guest: PASS"), "{text}");
}

/// `Seccomp:` and `CapEff:` of every thread of `pid`, by thread name.
fn thread_status(pid: u32) -> Vec<(String, String, String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        threads.push((
            field("Name:"),
            field("Seccomp:"),
            field("CapEff:"),
            field("Uid:"),
        ));
    }
    threads
}

/// A guest that keeps running (it waits for a device that never comes), with a
/// disk and an entropy device, driven over the API: every thread is filtered
/// (mode 2), vm.info, vmm.ping and vm.reboot work, and the VMM shuts down cleanly.
#[test]
fn a_sandboxed_vm_boots_reboots_and_every_thread_is_filtered() {
    let Some(guest) = guest_or_skip() else { return };
    let dir = TempDir::new("sandbox-boot");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_flag = format!("path={}", disk.display());
    let (mut command, socket) = waiting_vm(
        &guest,
        dir.path(),
        &["--disk", &disk_flag, "--rng", "--cpus", "boot=2"],
    );
    let child = command.spawn().expect("start form-vmm");
    let pid = child.id();
    wait_for("the API socket", LIMIT, || socket.exists());
    let info = request(&socket, "GET", "/api/v1/vm.info", None);
    assert_eq!(info.status, 200, "{info:?}");
    assert_eq!(info.json()["state"], "Running");

    let threads = thread_status(pid);
    let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
    assert!(
        names.contains(&"vcpu0") && names.contains(&"vcpu1"),
        "{names:?}"
    );
    assert!(names.contains(&"api"), "{names:?}");
    for (name, seccomp, _, _) in &threads {
        assert_eq!(seccomp, "2", "thread {name} is not filtered: {threads:?}");
    }

    let reboot = request(&socket, "PUT", "/api/v1/vm.reboot", None);
    assert_eq!(reboot.status, 204, "{reboot:?}");
    let info = request(&socket, "GET", "/api/v1/vm.info", None);
    assert_eq!(info.json()["state"], "Running", "{info:?}");
    let ping = request(&socket, "GET", "/api/v1/vmm.ping", None);
    assert_eq!(ping.json()["pid"], pid);
    for (name, seccomp, _, _) in thread_status(pid) {
        assert_eq!(
            seccomp, "2",
            "after the reboot, thread {name} is not filtered"
        );
    }

    let shutdown = request(&socket, "PUT", "/api/v1/vmm.shutdown", None);
    assert_eq!(shutdown.status, 204, "{shutdown:?}");
    let ended = wait(child, LIMIT);
    assert_eq!(ended.code, Some(0), "{ended:?}");
    assert!(!socket.exists(), "the API socket was removed");
}

/// Landlock: once the first VM is built, later configurations may only name paths
/// beneath the rules (the first VM's paths and --landlock-rules); the kernel
/// refuses the rest even where form-vmm's own check is not asked (the hook opens
/// /etc/passwd from the main thread right after Landlock applies).
#[test]
fn landlock_keeps_the_vmm_to_the_paths_it_was_given() {
    let Some(guest) = guest_or_skip() else { return };
    let allowed = TempDir::new("sandbox-landlock-in");
    let outside = TempDir::new("sandbox-landlock-out");
    let socket = allowed.path().join("api.sock");
    let kernel = allowed.path().join("guest.elf");
    std::fs::copy(&guest, &kernel).unwrap();
    let inside_disk = allowed.path().join("disk.raw");
    let outside_disk = outside.path().join("disk.raw");
    for disk in [&inside_disk, &outside_disk] {
        std::fs::write(disk, vec![0u8; 1 << 20]).unwrap();
    }
    let serial = allowed.path().join("serial.log");
    let rule = format!("{}:rw", allowed.path().display());
    let child = form_vmm(&[
        "--api-socket",
        socket.to_str().unwrap(),
        "--landlock-rules",
        &rule,
    ])
    .env("FORM_VMM_SECCOMP_TEST", "main:openat")
    .spawn()
    .expect("start form-vmm");
    wait_for("the API socket", LIMIT, || socket.exists());
    let config = |disk: &Path| {
        json!({
            "payload": {"kernel": kernel, "cmdline": "virtio-blk"},
            "memory": {"size": 64 << 20},
            "serial": {"mode": "File", "file": serial},
            "disks": [{"path": disk}],
        })
        .to_string()
    };
    // The first VM is built before Landlock applies (its paths join the rules).
    let created = request(
        &socket,
        "PUT",
        "/api/v1/vm.create",
        Some(&config(&inside_disk)),
    );
    assert_eq!(created.status, 204, "{created:?}");
    let deleted = request(&socket, "PUT", "/api/v1/vm.delete", None);
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let refused = request(
        &socket,
        "PUT",
        "/api/v1/vm.create",
        Some(&config(&outside_disk)),
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.json()["code"], "path_not_allowed");
    assert!(
        refused.error().contains(outside_disk.to_str().unwrap()),
        "{refused:?}"
    );
    let created = request(
        &socket,
        "PUT",
        "/api/v1/vm.create",
        Some(&config(&inside_disk)),
    );
    assert_eq!(created.status, 204, "{created:?}");
    let booted = request(&socket, "PUT", "/api/v1/vm.boot", None);
    assert_eq!(booted.status, 204, "{booted:?}");
    let ended = wait(child, LIMIT);
    assert_eq!(ended.code, Some(0), "{ended:?}");
    assert!(
        ended
            .stderr
            .contains("the main thread's openat failed: Permission denied"),
        "landlock did not refuse /etc/passwd: {ended:?}"
    );
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.contains("form-test-guest: PASS"), "{text}");

    // With --landlock false the same open succeeds.
    let ended = run(form_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "hello",
        "--memory",
        "size=64M",
        "--serial",
        "off",
        "--landlock",
        "false",
    ])
    .env("FORM_VMM_SECCOMP_TEST", "main:openat"));
    assert_eq!(ended.code, Some(0), "{ended:?}");
    assert!(
        ended.stderr.contains("the main thread's openat returned"),
        "{ended:?}"
    );
}

/// `--uid`: once the VM is built, every thread runs as the given user with no
/// capabilities, and the guest still runs its disk scenario; /dev/kvm is root's
/// 0600 here, so a reboot, which reopens it, fails with a clear error.
#[test]
fn uid_drops_root_once_the_vm_is_built() {
    let Some(guest) = guest_or_skip() else { return };
    if !root() {
        skip::<()>("dropping privileges needs root to start with");
        return;
    }
    let dir = TempDir::new("sandbox-uid");
    let (mut command, socket) =
        waiting_vm(&guest, dir.path(), &["--uid", "65534", "--gid", "65534"]);
    let child = command.spawn().expect("start form-vmm");
    let pid = child.id();
    wait_running(&socket);
    for (name, seccomp, cap_eff, uid) in thread_status(pid) {
        assert_eq!(seccomp, "2", "{name}");
        assert_eq!(cap_eff, "0000000000000000", "{name} kept capabilities");
        assert!(
            uid.split_whitespace().all(|u| u == "65534"),
            "{name}: Uid {uid}"
        );
    }
    // vmm.ping says the same, for operators and the service.
    let ping = request(&socket, "GET", "/api/v1/vmm.ping", None).json();
    assert_eq!(ping["sandbox"]["uid"], 65534, "{ping}");
    assert_eq!(ping["sandbox"]["seccomp"], "kill", "{ping}");
    assert_eq!(ping["sandbox"]["mount_ns"], false, "{ping}");
    assert!(
        ["enforced", "partial", "unsupported"]
            .contains(&ping["sandbox"]["landlock"].as_str().unwrap()),
        "{ping}"
    );
    let reboot = request(&socket, "PUT", "/api/v1/vm.reboot", None);
    assert_eq!(reboot.status, 500, "{reboot:?}");
    assert!(reboot.error().contains("/dev/kvm"), "{reboot:?}");
    let _ = request(&socket, "PUT", "/api/v1/vmm.shutdown", None);
    let ended = wait(child, LIMIT);
    assert_eq!(ended.signal, None, "{ended:?}");
}

/// `--mount-ns`: the VMM's root shows the device nodes, what it was given and
/// nothing else of the host (not /etc, not a directory beside its own); a reboot
/// reopens what it needs from there; a VM created later naming a path the
/// namespace does not show is refused with the fix; and nothing it mounted shows
/// on the host.
#[test]
fn mount_ns_shows_the_vmm_only_what_it_was_given() {
    let Some(guest) = guest_or_skip() else { return };
    if !root() {
        skip::<()>("a mount namespace needs root to start with");
        return;
    }
    let given = TempDir::new("sandbox-mntns-in");
    let beside = TempDir::new("sandbox-mntns-out");
    let kernel = given.path().join("guest.elf");
    std::fs::copy(&guest, &kernel).unwrap();
    let secret = beside.path().join("secret");
    std::fs::write(&secret, b"host only").unwrap();
    let serial = given.path().join("serial.log");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (mut command, socket) = waiting_vm(&kernel, given.path(), &["--mount-ns"]);
    let child = command
        .env("FORM_VMM_SECCOMP_TEST", "main:openat")
        .spawn()
        .expect("start form-vmm");
    let pid = child.id();
    wait_running(&socket);
    let seen = |p: &Path| {
        Path::new(&format!("/proc/{pid}/root"))
            .join(p.strip_prefix("/").unwrap())
            .exists()
    };
    for shown in [
        &kernel,
        &serial,
        Path::new("/dev/kvm"),
        Path::new("/dev/vfio"),
    ] {
        // What this host has of them (no /dev/vfio without VFIO).
        if shown.exists() {
            assert!(seen(shown), "{} is not shown to the VMM", shown.display());
        }
    }
    for hidden in [
        secret.as_path(),
        Path::new("/etc/passwd"),
        Path::new("/usr"),
        Path::new("/dev/sda"),
        // Other processes' /proc entries lead out of the namespace (their root).
        Path::new("/proc/1"),
        Path::new("/proc/sys"),
    ] {
        assert!(!seen(hidden), "{} is shown to the VMM", hidden.display());
    }
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount: {mounts}"));
    assert!(
        root_line.contains(" ro,") && root_line.contains(" - tmpfs "),
        "the VMM's root is not a read-only tmpfs: {root_line}"
    );

    let ping = request(&socket, "GET", "/api/v1/vmm.ping", None).json();
    assert_eq!(ping["sandbox"]["mount_ns"], true, "{ping}");
    assert_eq!(ping["sandbox"]["uid"], 0, "{ping}");

    let rebooted = request(&socket, "PUT", "/api/v1/vm.reboot", None);
    assert_eq!(rebooted.status, 204, "{rebooted:?}");
    wait_for("the VM to run again", LIMIT, || {
        request(&socket, "GET", "/api/v1/vm.info", None).json()["state"] == "Running"
    });
    let deleted = request(&socket, "PUT", "/api/v1/vm.delete", None);
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let outside = json!({
        "payload": {"kernel": kernel, "cmdline": "hello"},
        "memory": {"size": 64 << 20},
        "disks": [{"path": secret}],
    })
    .to_string();
    let refused = request(&socket, "PUT", "/api/v1/vm.create", Some(&outside));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.json()["code"], "path_not_allowed");
    assert!(
        refused.error().contains("mount namespace") && refused.error().contains("secret"),
        "{refused:?}"
    );
    let _ = request(&socket, "PUT", "/api/v1/vmm.shutdown", None);
    let ended = wait(child, LIMIT);
    assert_eq!(ended.code, Some(0), "{ended:?}");
    // Landlock refuses /etc/passwd too; the namespace does not even have it.
    assert!(
        ended
            .stderr
            .contains("the main thread's openat failed: No such file or directory"),
        "{ended:?}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        host_mounts,
        "the VMM's mounts leaked to the host"
    );
}

/// `--mount-ns` with `--uid`, started under vmm-service's umask (0077): the
/// namespace's mount points stay traversable by the uid the VMM becomes, so a
/// hotplug after the drop finds the device's sysfs path (and fails only later,
/// on a host without VFIO, for that reason).
#[test]
fn mount_ns_paths_stay_reachable_after_the_uid_drop() {
    use std::os::unix::process::CommandExt;
    let Some(guest) = guest_or_skip() else { return };
    if !root() {
        skip::<()>("a mount namespace needs root to start with");
        return;
    }
    let Some(device) = std::fs::read_dir("/sys/bus/pci/devices")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path())
    else {
        eprintln!("skipping the hotplug part: this host has no PCI device");
        return;
    };
    let dir = TempDir::new("sandbox-mntns-uid");
    let (mut command, socket) = waiting_vm(
        &guest,
        dir.path(),
        &["--mount-ns", "--uid", "65534", "--gid", "65534"],
    );
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let child = command.spawn().expect("start form-vmm");
    wait_running(&socket);
    let ping = request(&socket, "GET", "/api/v1/vmm.ping", None).json();
    assert_eq!(ping["sandbox"]["uid"], 65534, "{ping}");
    let body = json!({"path": device, "id": "probe0"}).to_string();
    let added = request(&socket, "PUT", "/api/v1/vm.add-device", Some(&body));
    let error = added.error();
    assert!(
        !error.contains("does not exist in this form-vmm's mount namespace")
            && !error.contains("Permission denied"),
        "the device's sysfs path is out of reach after the drop: {added:?}"
    );
    let _ = request(&socket, "PUT", "/api/v1/vmm.shutdown", None);
    let ended = wait(child, LIMIT);
    assert_eq!(ended.signal, None, "{ended:?}");
}
