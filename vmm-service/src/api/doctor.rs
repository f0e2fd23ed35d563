//! The findings `GET /v1/doctor` adds to the host's: what the running service
//! allows (image directories, block devices, admission limits) and what is in use.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use form_service_api::format_bytes;

use super::types::{DoctorFinding, ServiceLimits};

pub fn service_findings(limits: &ServiceLimits) -> Vec<DoctorFinding> {
    vec![image_dirs(limits), admission(limits)]
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
