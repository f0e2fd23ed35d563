//! The service running the real form-vmm as a uid from `--vmm-uid-range`: once the
//! VM is built every thread of the VMM runs as that uid with no capabilities and
//! seccomp on, a `vm.reboot` rebuilds the VM without root (reopening /dev/kvm, the
//! writable disk through its ACL entry, the seed disk and the serial log), and when
//! the VM goes the uid's ACL entry and the VM's files go back.
//!
//! /dev/kvm is usually root's or the kvm group's; so as not to change the host's,
//! the VMM runs in a mount namespace of its own where a copy of the node (same
//! device number, mode 0660, group the VMMs' gid) is bound over /dev/kvm. Root
//! only, and skips without /dev/kvm, form-vmm, the test guest or unshare(1),
//! unless CI=true.

mod common;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::{Method, StatusCode};
use serde_json::json;

use common::HostBuilder;
use support::{Harness, Operator};
use vmm_service::api::types::VmState;
use vmm_service::vmm_user::{acl, UidSource, VmmUsers};

const FIRST_UID: u32 = 100_000;
const VMM_GID: u32 = 100_000;

fn skip(reason: &str) -> bool {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {reason}"
    );
    eprintln!("skipping: {reason}");
    true
}

fn form_vmm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FORM_VMM") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("form-vmm");
    candidate.is_file().then_some(candidate)
}

fn test_guest() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-guest");
    let output = Command::new(script).output().ok()?;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    path.is_file().then_some(path)
}

/// A wrapper that runs form-vmm in its own mount namespace with `kvm` (a node of
/// /dev/kvm's device number, 0660 root:VMM_GID) bound over /dev/kvm.
fn wrapper(dir: &Path, vmm: &Path) -> std::io::Result<PathBuf> {
    let rdev = std::fs::metadata("/dev/kvm")?.rdev();
    let kvm = dir.join("kvm");
    let status = Command::new("mknod")
        .arg(&kvm)
        .arg("c")
        .arg(libc::major(rdev).to_string())
        .arg(libc::minor(rdev).to_string())
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other("mknod failed"));
    }
    std::os::unix::fs::chown(&kvm, Some(0), Some(VMM_GID))?;
    std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o660))?;
    let script = dir.join("form-vmm-in-ns");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'mount --bind \"$0\" /dev/kvm && exec \"$@\"' '{}' '{}' \"$@\"\n",
            kvm.display(),
            vmm.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// (thread name, Uid line, CapEff, Seccomp) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push((
            field("Name:"),
            field("Uid:"),
            field("CapEff:"),
            field("Seccomp:"),
        ));
    }
    out
}

/// Polls `check` for up to 20 s; fails with the VM's serial and VMM logs.
async fn wait_until(serial: &Path, check: impl Fn() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "timed out; serial.log:\n{}\nvmm.log:\n{}",
        std::fs::read_to_string(serial).unwrap_or_default(),
        std::fs::read_to_string(serial.with_file_name("vmm.log")).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_from_the_uid_range_runs_without_root_and_reboots() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: giving up root needs root to start with");
        return;
    }
    if !Path::new("/dev/kvm").exists() && skip("/dev/kvm is absent") {
        return;
    }
    let Some(vmm) = form_vmm() else {
        skip("form-vmm is not built (cargo build -p vmm, or set FORM_VMM)");
        return;
    };
    let Some(guest) = test_guest() else {
        skip("the test guest cannot be built (scripts/test-guest)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The VMM's uid passes through the temporary directory to the state directory
    // (the service opens only its own directories to the VMMs' group).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let wrapped = match wrapper(dir.path(), &vmm) {
        Ok(path) => path,
        Err(e) => {
            skip(&format!("cannot make a /dev/kvm node for the VMM: {e}"));
            return;
        }
    };
    let images = support::image_dir(dir.path());
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(&guest, images.join("vmlinux")).unwrap();
    // Root's alone: only the ACL entry lets the VMM's uid reopen it for writing.
    // In a directory of its own: another tenant's is beside it.
    std::fs::create_dir_all(images.join("tenant-a")).unwrap();
    std::fs::create_dir_all(images.join("tenant-b")).unwrap();
    let other_tenant = images.join("tenant-b/root.raw");
    std::fs::write(&other_tenant, b"not yours").unwrap();
    let disk = images.join("tenant-a/root.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let operator = Operator {
        vmm_users: Some(VmmUsers {
            uids: UidSource::Range {
                first: FIRST_UID,
                last: FIRST_UID + 9,
            },
            gid: VMM_GID,
        }),
        ..Operator::default()
    };
    let h = Harness::with_dir_as(HostBuilder::new().build(), dir, wrapped, operator);

    let mut body = h.vm("dropped");
    body["cmdline"] = json!("pci-wait vendor=0x1af4 device=0x10ff wait=60");
    body["memory"] = json!(64u64 << 20);
    body["disks"] = json!([{"path": disk.display().to_string()}]);
    body["cloud_init"] = json!({"hostname": "dropped"});
    body["boot"] = json!(true);
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    let pid = vm["pid"].as_u64().unwrap() as u32;
    for (name, uid, cap_eff, seccomp) in threads(pid) {
        assert!(
            uid.split_whitespace().all(|u| u == FIRST_UID.to_string()),
            "{name}: Uid {uid}"
        );
        assert_eq!(cap_eff, "0000000000000000", "{name} kept capabilities");
        assert_eq!(seccomp, "2", "{name}");
    }
    // Its own mount namespace, showing its disk but not the host's /etc.
    let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(
        ns(pid),
        ns(std::process::id()),
        "the VMM shares the service's mounts"
    );
    let vmm_root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(!vmm_root.join("etc/passwd").exists(), "the VMM sees /etc");
    let disk_seen = vmm_root.join(
        std::fs::canonicalize(&disk)
            .unwrap()
            .strip_prefix("/")
            .unwrap(),
    );
    assert!(disk_seen.exists(), "the VMM does not see its disk");
    // Of the image directory, only its disk's own directory.
    let seen = |p: &Path| {
        vmm_root
            .join(std::fs::canonicalize(p).unwrap().strip_prefix("/").unwrap())
            .exists()
    };
    assert!(!seen(&other_tenant), "the VMM sees another tenant's disk");
    assert!(
        !seen(&images.join("vmlinux")),
        "the VMM sees the image directory"
    );
    assert_eq!(
        acl::read(&disk).unwrap().user(FIRST_UID),
        Some(acl::READ | acl::WRITE)
    );
    let serial = PathBuf::from(vm["serial_log"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&serial).unwrap().uid(), FIRST_UID);
    let waits = || {
        std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .matches("waiting for 1af4:10ff")
            .count()
    };
    // The guest in its wait loop: a reset while its first instructions run is
    // not what this test is about.
    wait_until(&serial, || waits() >= 1).await;

    let (status, vm) = h.call(Method::POST, "/v1/vms/dropped/reboot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    // The rebuilt guest wrote to the reopened serial log.
    wait_until(&serial, || waits() >= 2).await;
    let record = h.manager.store().instance("dropped").unwrap().unwrap();
    assert_eq!(record.state, VmState::Running);
    assert_eq!(
        record.vmm.map(|v| v.pid),
        Some(pid),
        "the same VMM rebooted"
    );

    let (status, _) = h.call(Method::DELETE, "/v1/vms/dropped", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(acl::read(&disk).unwrap().user(FIRST_UID), None);
    assert_eq!(
        std::fs::metadata(&disk).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
