//! Runs the VFIO lab (`scripts/vfio-lab`) once, for every scenario: an emulated GPU host
//! booted in QEMU with this tree's form-vmm and vmm-service inside, proving driver
//! binding, VFIO and nested guests against a real kernel (docs/testing.md).
//!
//! Skips with a printed reason where QEMU is missing, where the lab's other system
//! packages are missing and cannot be installed, where FORM_VMM_LAB=skip, or while
//! the only failures are scenarios that need form-vmm's unbuilt boot path; with CI=true
//! each of those is a failure instead, so CI cannot silently stop running it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What form-vmm says while its boot path is a stub (vmm/src/vm.rs); the scenarios that
/// boot guests cannot pass before it is built.
const BOOT_PATH_NOT_BUILT: &str = "the VM boot path is not built yet";

/// `scripts/vfio-lab`'s exit status when a system package it needs is missing and it
/// cannot install it (not root).
const LAB_EXIT_MISSING_PACKAGES: i32 = 3;

fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v == "true")
}

/// Gives up on the test: a skip with a printed reason, or under CI a failure.
fn skip_or_fail(reason: &str) {
    if in_ci() {
        panic!("CI=true, so the VFIO lab must run, but {reason}");
    }
    eprintln!("skipping the VFIO lab: {reason}");
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn lab_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vfio-lab")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether every failing scenario failed only because form-vmm cannot boot yet. The lab
/// prints each failure as a "FAIL <name>: ..." line followed by the tail of that
/// scenario's L1 log, so each such block must show the stub's message.
fn failures_all_from_unbuilt_boot_path(output: &Output) -> bool {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut blocks = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("FAIL ") {
            blocks.push(String::new());
        }
        if let Some(block) = blocks.last_mut() {
            if line.starts_with("    ") || line.starts_with("FAIL ") {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    !blocks.is_empty() && blocks.iter().all(|b| b.contains(BOOT_PATH_NOT_BUILT))
}

#[test]
fn vfio_lab_scenarios_pass() {
    if env::var("FORM_VMM_LAB").is_ok_and(|v| v == "skip") {
        skip_or_fail("FORM_VMM_LAB=skip is set");
        return;
    }
    if !on_path("qemu-system-x86_64") {
        skip_or_fail(
            "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)",
        );
        return;
    }

    let output = Command::new(lab_script())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", lab_script().display()));
    if output.status.code() == Some(LAB_EXIT_MISSING_PACKAGES) {
        skip_or_fail(&format!(
            "the lab's system packages are missing\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
        return;
    }
    if !output.status.success() && failures_all_from_unbuilt_boot_path(&output) {
        skip_or_fail(&format!(
            "form-vmm's boot path is not built yet, so its scenarios cannot pass\n{}",
            String::from_utf8_lossy(&output.stdout)
        ));
        return;
    }
    assert!(
        output.status.success(),
        "scripts/vfio-lab failed: {}",
        describe(&output)
    );

    // The lab exits 0 only when every scenario passed; check its own summary too, so
    // that a lab that ran nothing cannot pass.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("lab: ") && l.ends_with(" failed"))
        .unwrap_or_else(|| panic!("scripts/vfio-lab printed no summary: {}", describe(&output)));
    assert!(
        summary.ends_with(", 0 failed") && !summary.starts_with("lab: 0 passed"),
        "unexpected lab summary '{summary}': {}",
        describe(&output)
    );
    println!("{stdout}");
}
