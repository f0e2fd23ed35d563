//! The service driving the real form-vmm with the test guest under KVM: create, boot,
//! the guest runs its scenario and powers off, and the service records the exit; and a
//! VM with a disk, the seed disk and an interface on a bridge.
//! Skips without /dev/kvm, a built form-vmm or the test guest, unless CI=true.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::{Method, StatusCode};
use serde_json::json;

use common::HostBuilder;
use support::Harness;
use vmm_service::api::types::VmState;
use vmm_service::net::tap_name;

fn skip(reason: &str) -> bool {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {reason}"
    );
    eprintln!("skipping: {reason}");
    true
}

/// form-vmm from the same target directory as this test (`cargo test --workspace`
/// builds it), or `$FORM_VMM`.
fn form_vmm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FORM_VMM") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let candidate = profile_dir.join("form-vmm");
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

fn setup() -> Option<Harness> {
    if !Path::new("/dev/kvm").exists() {
        skip("/dev/kvm is absent");
        return None;
    }
    let Some(vmm) = form_vmm() else {
        skip("form-vmm is not built (cargo build -p vmm, or set FORM_VMM)");
        return None;
    };
    let Some(guest) = test_guest() else {
        skip("the test guest cannot be built (scripts/test-guest)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let images = support::image_dir(dir.path());
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(&guest, images.join("vmlinux")).unwrap();
    Some(Harness::with_dir(HostBuilder::new().build(), dir, vmm))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_guest_runs_powers_off_and_the_exit_is_recorded() {
    let Some(h) = setup() else {
        return;
    };
    let mut body = h.vm("guest");
    body["cmdline"] = json!("hello");
    body["memory"] = json!(64u64 << 20);
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "created");
    let (status, vm) = h.call(Method::POST, "/v1/vms/guest/boot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    h.eventually("the guest to power off", || {
        h.manager.store().instance("guest").unwrap().unwrap().state == VmState::Stopped
    })
    .await;
    let record = h.manager.store().instance("guest").unwrap().unwrap();
    let exit = record.last_exit.expect("the exit is recorded");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let serial = std::fs::read_to_string(&record.serial_log).unwrap();
    assert!(serial.contains("form-test-guest: PASS"), "serial: {serial}");
    assert!(!serial.contains("FAIL"), "serial: {serial}");

    // A stopped VM boots again in a new VMM.
    let (status, vm) = h.call(Method::POST, "/v1/vms/guest/boot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    h.eventually("the guest to power off again", || {
        h.manager.store().instance("guest").unwrap().unwrap().state == VmState::Stopped
    })
    .await;
    let (status, _) = h.call(Method::DELETE, "/v1/vms/guest", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// form-vmm gets the disk, the seed disk and a NIC whose tap it creates; the service
/// joins the tap to a bridge; the guest finds those three virtio functions and the
/// entropy device every service VM gets on its PCI bus. All in a network namespace of this test's own, so the host's interfaces are
/// never touched (root only: otherwise skipped, as no tap can be made).
#[test]
fn disks_seed_and_a_bridged_nic_reach_the_guest() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: form-vmm's tap and the bridge need root");
        return;
    }
    let Some(h) = setup() else {
        return;
    };
    let serial = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET affects only this thread (and the
        // processes it starts: the VMM), and the namespace dies with them.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        ip(&["link", "add", "fvtestbr", "type", "bridge"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Ok(runtime.block_on(async move {
            let image = support::image_dir(h.dir.path()).join("root.raw");
            std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
            let mut body = h.vm("full");
            body["cmdline"] = json!("pci-scan");
            body["memory"] = json!(64u64 << 20);
            body["disks"] = json!([{"path": image.display().to_string()}]);
            body["networks"] = json!([{"bridge": "fvtestbr"}]);
            body["cloud_init"] = json!({"hostname": "full-1"});
            let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{vm}");
            let shown = ip(&["-o", "link", "show", &tap_name("full", 0)]);
            assert!(shown.contains("master fvtestbr"), "{shown}");

            let (status, vm) = h.call(Method::POST, "/v1/vms/full/boot", None).await;
            assert_eq!(status, StatusCode::OK, "{vm}");
            h.eventually("the guest to power off", || {
                h.manager.store().instance("full").unwrap().unwrap().state == VmState::Stopped
            })
            .await;
            let record = h.manager.store().instance("full").unwrap().unwrap();
            let serial = std::fs::read_to_string(&record.serial_log).unwrap();
            let (status, _) = h.call(Method::DELETE, "/v1/vms/full", None).await;
            assert_eq!(status, StatusCode::NO_CONTENT);
            // The VM's directory (seed, logs) goes with it.
            assert!(!h.dir.path().join("state/vms/full").exists());
            serial
        }))
    })
    .join()
    .unwrap();
    let serial = match serial {
        Ok(serial) => serial,
        Err(e) => {
            eprintln!("skipping: cannot make a network namespace here: {e}");
            return;
        }
    };
    for line in [
        "pci 00:01.0 1af4:1042 class 010000",
        "pci 00:02.0 1af4:1042 class 010000",
        "pci 00:03.0 1af4:1041 class 020000",
        "pci 00:04.0 1af4:1044 class ff0000",
        "form-test-guest: PASS",
    ] {
        assert!(serial.contains(line), "no {line:?} in:\n{serial}");
    }
}
