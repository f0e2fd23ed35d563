//! The findings `GET /v1/doctor` adds to the host's: what the running service
//! allows (image directories, block devices, admission limits), what is in use,
//! and how it confines the VMMs it starts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use form_service_api::format_bytes;

use super::types::{DoctorFinding, ServiceLimits};
use crate::vmm_user::{UidSource, VmmUsers};

/// How the service starts its VMMs, beyond the seccomp filters and Landlock every
/// form-vmm has.
pub struct VmmConfinement<'a> {
    pub users: Option<&'a VmmUsers>,
    pub mount_ns: bool,
    /// The service's cgroup, with `vms/` beneath it, when each VM gets a cgroup.
    pub cgroups: Option<PathBuf>,
}

pub fn service_findings(limits: &ServiceLimits, vmms: &VmmConfinement) -> Vec<DoctorFinding> {
    vec![image_dirs(limits), admission(limits), vmm_sandbox(vmms)]
}

/// One finding for the VMMs' sandbox: a warning naming each layer that is off, and
/// how to turn it on.
fn vmm_sandbox(vmms: &VmmConfinement) -> DoctorFinding {
    let mut parts = vec!["every form-vmm: seccomp per thread, Landlock".to_string()];
    let mut remedies = Vec::new();
    match vmms.users.map(|u| (&u.uids, u.gid)) {
        Some((UidSource::Range { first, last }, gid)) => parts.push(format!(
            "gives up root for its own uid of {first}-{last} (gid {gid})"
        )),
        Some((UidSource::Shared(uid), gid)) => {
            parts.push(format!(
                "gives up root for uid {uid} (gid {gid}), shared by all"
            ));
            remedies.push("give each VMM its own uid with --vmm-uid-range FIRST-LAST");
        }
        None => {
            parts.push("stays root".to_string());
            remedies.push("start the service with --vmm-uid-range FIRST-LAST (uids no one else has; docs/security.md)");
        }
    }
    if vmms.mount_ns {
        parts.push("in a mount namespace of its own".to_string());
    } else {
        parts.push("in the service's mount namespace".to_string());
        remedies.push("run the service as root without --no-vmm-mount-ns");
    }
    match &vmms.cgroups {
        Some(base) => parts.push(format!(
            "in a cgroup of its own under {}",
            base.join("vms").display()
        )),
        None => {
            parts.push("in the service's cgroup".to_string());
            remedies.push("delegate a cgroup v2 tree to the service (systemd: Delegate=yes) without --no-vm-cgroups");
        }
    }
    let summary = parts.join("; ");
    if remedies.is_empty() {
        finding("vmm-sandbox", "ok", summary, None)
    } else {
        DoctorFinding {
            remedy: Some(remedies.join("; ")),
            ..finding("vmm-sandbox", "warning", summary, None)
        }
    }
}

fn finding(check: &str, severity: &str, summary: String, remedy: Option<&str>) -> DoctorFinding {
    DoctorFinding {
        check: check.to_string(),
        severity: severity.to_string(),
        summary,
        remedy: remedy.map(str::to_string),
    }
}

fn image_dirs(limits: &ServiceLimits) -> DoctorFinding {
    let mut missing = Vec::new();
    let mut open = Vec::new();
    for dir in &limits.image_dirs {
        match std::fs::metadata(Path::new(dir)) {
            Ok(meta) if meta.is_dir() => {
                if meta.permissions().mode() & 0o022 != 0 {
                    open.push(dir.as_str());
                }
            }
            _ => missing.push(dir.as_str()),
        }
    }
    let mut summary = format!(
        "kernels, initramfs and disk images come from {}",
        limits.image_dirs.join(", ")
    );
    if !limits.block_devices.is_empty() {
        summary.push_str(&format!(
            "; block devices allowed as disks: {}",
            limits.block_devices.join(", ")
        ));
    }
    if !missing.is_empty() {
        summary.push_str(&format!("; missing: {}", missing.join(", ")));
        return finding(
            "image-dirs",
            "warning",
            summary,
            Some("create the directory (owned by root, mode 0755) and put images in it, or start the service with --image-dir DIR"),
        );
    }
    if !open.is_empty() {
        summary.push_str(&format!(
            "; writable by group or others: {}",
            open.join(", ")
        ));
        return finding(
            "image-dirs",
            "warning",
            summary,
            Some(
                "chmod go-w the directory: whoever can write in it chooses what VMs read and write",
            ),
        );
    }
    finding("image-dirs", "ok", summary, None)
}

fn admission(limits: &ServiceLimits) -> DoctorFinding {
    let of = |used: String, max: Option<String>| match max {
        Some(max) => format!("{used} of {max}"),
        None => format!("{used} (no limit)"),
    };
    let summary = format!(
        "VMs: {}; memory of created or running VMs: {}; their vCPUs: {}",
        of(
            limits.vms.to_string(),
            limits.max_vms.map(|m| m.to_string())
        ),
        of(
            format_bytes(limits.memory),
            limits.max_memory.map(format_bytes)
        ),
        of(
            limits.vcpus.to_string(),
            limits.max_vcpus.map(|m| m.to_string())
        ),
    );
    if limits.max_vms.is_none() || limits.max_memory.is_none() || limits.max_vcpus.is_none() {
        return finding(
            "admission-limits",
            "warning",
            summary,
            Some("start the service with --max-vms, --max-memory and --max-vcpus so clients cannot take the whole host"),
        );
    }
    finding("admission-limits", "ok", summary, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_on_is_ok_and_each_one_off_is_named_with_its_fix() {
        let users = VmmUsers {
            uids: UidSource::Range {
                first: 100_000,
                last: 100_999,
            },
            gid: 36,
        };
        let all = vmm_sandbox(&VmmConfinement {
            users: Some(&users),
            mount_ns: true,
            cgroups: Some(PathBuf::from("/sys/fs/cgroup/form-vmm.service")),
        });
        assert_eq!(all.severity, "ok", "{all:?}");
        assert!(
            all.summary.contains("100000-100999")
                && all.summary.contains("/sys/fs/cgroup/form-vmm.service/vms"),
            "{all:?}"
        );
        let none = vmm_sandbox(&VmmConfinement {
            users: None,
            mount_ns: false,
            cgroups: None,
        });
        assert_eq!(none.severity, "warning");
        assert!(none.summary.contains("stays root"), "{none:?}");
        let remedy = none.remedy.unwrap();
        for fix in ["--vmm-uid-range", "--no-vmm-mount-ns", "Delegate=yes"] {
            assert!(remedy.contains(fix), "{remedy}");
        }
    }
}
