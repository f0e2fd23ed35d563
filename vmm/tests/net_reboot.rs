//! A NIC keeps its host interface across a reboot: the controller, on /dev/kvm,
//! hands the old VM's taps to the new one, so the guest comes back on the same tap
//! (same ifindex, still in its bridge, with the MTU the host gave it) and the same
//! MAC address; and the tap form-vmm created goes once the VM is deleted.
//!
//! Runs in a network namespace of the test thread's own, so the host's interfaces
//! are never touched. Needs /dev/kvm (required when CI=true), root and
//! /dev/net/tun (skipped with a printed reason without them, in CI too: CI
//! containers often lack /dev/net/tun, as the devices crate's tap tests note).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use vmm::api::{ApiRequest, ApiResponse, VmInfo};
use vmm::config::{NetConfig, VmConfig};
use vmm::controller::backend::KvmBackend;
use vmm::controller::Controller;
use vmm::vm::VmState;

mod kvm_support;
use kvm_support::{kvm_or_skip, test_guest_config, ScratchDir};

const BRIDGE: &str = "fvrbbr";

fn taps_or_skip(test: &str) -> bool {
    let reason = if !Path::new("/dev/net/tun").exists() {
        "/dev/net/tun is missing (load the tun module)"
    // SAFETY: geteuid has no preconditions.
    } else if unsafe { libc::geteuid() } != 0 {
        "taps and bridges need root (CAP_NET_ADMIN)"
    } else if Command::new("ip").arg("-V").output().is_err() {
        "the ip command (iproute2) is missing"
    } else {
        return true;
    };
    eprintln!("skipping {test}: {reason}");
    false
}

/// `ip ARGS` in this thread's network namespace; its stdout, or None when it
/// fails (an interface that does not exist).
fn ip(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().expect("run ip");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_ok(args: &[&str]) {
    assert!(ip(args).is_some(), "ip {} failed", args.join(" "));
}

/// The interface as `ip -o link show` has it: its ifindex and the rest of the line.
fn link(name: &str) -> Option<(u32, String)> {
    let line = ip(&["-o", "link", "show", "dev", name])?;
    let (index, _) = line.split_once(':')?;
    Some((index.trim().parse().ok()?, line))
}

/// A tap opened the way a parent that passes descriptors opens one.
fn open_tap_fd(name: &str) -> OwnedFd {
    // SAFETY: open(2) on a constant path; checked below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    fd
}

fn info(controller: &mut Controller<KvmBackend>) -> VmInfo {
    match controller.handle(ApiRequest::VmInfo).expect("vm.info") {
        ApiResponse::VmInfo(info) => *info,
        other => panic!("vm.info answered {other:?}"),
    }
}

/// Per NIC as vm.info has it: its tap name and MAC.
type Nics = Vec<(String, String)>;
/// Per tap as the host has it: its ifindex and `ip link` line.
type Links = Vec<(u32, String)>;

/// What vm.info and the host say about the NICs.
fn observe(controller: &mut Controller<KvmBackend>) -> (Nics, Links) {
    let info = info(controller);
    assert_eq!(info.state, VmState::Running);
    let nics: Nics = info
        .config
        .net
        .iter()
        .map(|n| {
            (
                n.tap.clone().unwrap_or_default(),
                n.mac.clone().expect("the MAC is recorded at create"),
            )
        })
        .collect();
    let links = ["named", "passed"]
        .iter()
        .map(|which| link(&tap_name(which)).unwrap_or_else(|| panic!("no {which} tap")))
        .collect();
    (nics, links)
}

fn tap_name(which: &str) -> String {
    format!("fvrb{which}")
}

#[test]
fn a_nic_keeps_its_tap_bridge_and_mac_across_a_reboot() {
    const TEST: &str = "a_nic_keeps_its_tap_bridge_and_mac_across_a_reboot";
    if !kvm_or_skip(TEST) || !taps_or_skip(TEST) {
        return;
    }
    let dir = ScratchDir::new("net-reboot");
    let config: VmConfig = test_guest_config("hello", &dir.join("serial.log"));
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET affects only this thread, whose
        // namespace the VM's threads and the ip commands inherit and which dies
        // with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        run_reboot(config);
        Ok(())
    })
    .join()
    .expect("the test thread panicked");
    if let Err(e) = outcome {
        eprintln!("skipping {TEST}: cannot make a network namespace here: {e}");
    }
}

fn run_reboot(mut config: VmConfig) {
    let named = tap_name("named");
    let passed = tap_name("passed");
    // One NIC on a tap form-vmm creates, one on a descriptor this "parent" opened.
    let passed_fd = open_tap_fd(&passed);
    config.net = vec![
        NetConfig::parse(&format!("tap={named}")).unwrap(),
        NetConfig::parse(&format!("fd={}", passed_fd.as_raw_fd())).unwrap(),
    ];
    ip_ok(&["link", "add", BRIDGE, "type", "bridge"]);
    assert!(link(&named).is_none(), "{named} exists before the VM");

    let mut controller = Controller::new(KvmBackend, None);
    controller
        .handle(ApiRequest::VmCreate(Box::new(config)))
        .expect("vm.create");
    controller.handle(ApiRequest::VmBoot).expect("vm.boot");
    // What the host (vmm-service) does to a VM's tap once form-vmm made it.
    for tap in [&named, &passed] {
        ip_ok(&["link", "set", "dev", tap, "master", BRIDGE]);
        ip_ok(&["link", "set", "dev", tap, "mtu", "1400"]);
    }
    let (nics, links) = observe(&mut controller);
    assert_eq!(nics[0].0, named);
    for (_, line) in &links {
        assert!(line.contains(&format!("master {BRIDGE}")), "{line}");
        assert!(line.contains("mtu 1400"), "{line}");
    }

    controller.handle(ApiRequest::VmReboot).expect("vm.reboot");
    let (nics_after, links_after) = observe(&mut controller);
    assert_eq!(nics_after, nics, "tap names or MACs changed");
    for ((index, line), (index_after, line_after)) in links.iter().zip(&links_after) {
        assert_eq!(
            index_after, index,
            "a new interface: {line_after} (was {line})"
        );
        assert!(
            line_after.contains(&format!("master {BRIDGE}")),
            "{line_after}"
        );
        assert!(line_after.contains("mtu 1400"), "{line_after}");
        assert!(line_after.contains(",UP"), "{line_after}");
    }
    // A second reboot hands over the taps the first one handed over.
    controller
        .handle(ApiRequest::VmReboot)
        .expect("second vm.reboot");
    let (_, links_again) = observe(&mut controller);
    let indexes = |links: &[(u32, String)]| links.iter().map(|l| l.0).collect::<Vec<_>>();
    assert_eq!(indexes(&links_again), indexes(&links));

    controller.handle(ApiRequest::VmDelete).expect("vm.delete");
    assert!(
        link(&named).is_none(),
        "the tap form-vmm created outlived the VM"
    );
    // The passed tap is its opener's: still there, and its descriptor still open.
    assert!(link(&passed).is_some());
    // SAFETY: F_GETFD only reads the descriptor's flags.
    assert!(unsafe { libc::fcntl(passed_fd.as_raw_fd(), libc::F_GETFD) } >= 0);
}
