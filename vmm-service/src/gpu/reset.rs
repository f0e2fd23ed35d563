//! Function resets: which reset the kernel can do for a function, and doing one.
//!
//! A device handed from one VM to the next (or back to the host) must not carry the
//! first VM's state: its memory, its queues, firmware it loaded. vfio-pci resets a
//! device when its last user closes it, but only a device that was opened: a create
//! that fails after binding, or a VMM that never got as far as opening the group,
//! leaves a device vfio-pci never reset. So the service resets every function it
//! releases itself, through the same sysfs writer as every other change.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::host::{read_attr, HostPaths};
use super::writer::SysfsWriter;
use super::Bdf;

/// The value of `reset_method` for a function that has the `reset` attribute but no
/// `reset_method` file: kernels before 5.15 offer a reset without naming it.
pub const UNNAMED_RESET: &str = "reset";

/// What the kernel offers to reset a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetMethod {
    /// `reset_method` lists these, in the order the kernel tries them
    /// (`flr`, `pm`, `bus`, `device_specific`, `acpi`, `cxl_bus`).
    Methods(Vec<String>),
    /// A `reset` attribute but no `reset_method` (Linux before 5.15).
    Unnamed,
    /// Neither: the kernel cannot reset this function on its own.
    None,
}

impl ResetMethod {
    /// Reads `reset_method` and `reset` of `bdf`. An empty `reset_method` means the
    /// kernel knows no method (the operator may have written `""` to disable them all).
    pub fn read(host: &HostPaths, bdf: &Bdf) -> Self {
        let dir = host.device_dir(bdf);
        match read_attr(&dir.join("reset_method")) {
            Ok(Some(text)) => {
                let methods: Vec<String> = text.split_whitespace().map(str::to_string).collect();
                if methods.is_empty() {
                    Self::None
                } else {
                    Self::Methods(methods)
                }
            }
            _ if dir.join("reset").exists() => Self::Unnamed,
            _ => Self::None,
        }
    }

    pub fn can_reset(&self) -> bool {
        !matches!(self, Self::None)
    }

    /// As the API shows it: the kernel's list (`"flr bus"`), [`UNNAMED_RESET`], or
    /// `None` when there is no reset.
    pub fn describe(&self) -> Option<String> {
        match self {
            Self::Methods(methods) => Some(methods.join(" ")),
            Self::Unnamed => Some(UNNAMED_RESET.to_string()),
            Self::None => None,
        }
    }
}

/// Resets `bdf` by writing `1` to its `reset` attribute. `Ok(false)` when the
/// function has no `reset` attribute (nothing to do); an `Err` says what failed,
/// for a warning: a release goes on without the reset rather than keep the device.
pub fn reset_function(
    host: &HostPaths,
    writer: &dyn SysfsWriter,
    bdf: &Bdf,
) -> Result<bool, String> {
    let path = host.device_dir(bdf).join("reset");
    if !path.exists() {
        return Ok(false);
    }
    log::debug!("write \"1\" > {}", path.display());
    writer
        .write(&path, "1")
        .map(|()| true)
        .map_err(|e| reset_failed(bdf, &path, &e))
}

fn reset_failed(bdf: &Bdf, path: &Path, e: &std::io::Error) -> String {
    format!(
        "{bdf} could not be reset (writing 1 to {} failed: {e}); it was released without a reset, so check it before giving it to another VM",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn host_with(files: &[(&str, &str)]) -> (tempfile::TempDir, HostPaths, Bdf) {
        let dir = tempfile::tempdir().unwrap();
        let host = HostPaths::with_sysfs(dir.path());
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        let device = host.device_dir(&bdf);
        fs::create_dir_all(&device).unwrap();
        for (name, text) in files {
            fs::write(device.join(name), text).unwrap();
        }
        (dir, host, bdf)
    }

    #[test]
    fn reads_the_kernels_list_an_unnamed_reset_or_none() {
        let (_d, host, bdf) = host_with(&[("reset_method", "flr bus\n"), ("reset", "")]);
        let method = ResetMethod::read(&host, &bdf);
        assert_eq!(
            method,
            ResetMethod::Methods(vec!["flr".into(), "bus".into()])
        );
        assert_eq!(method.describe().as_deref(), Some("flr bus"));
        let (_d, host, bdf) = host_with(&[("reset", "")]);
        assert_eq!(ResetMethod::read(&host, &bdf), ResetMethod::Unnamed);
        let (_d, host, bdf) = host_with(&[("reset_method", "\n")]);
        assert!(!ResetMethod::read(&host, &bdf).can_reset());
        let (_d, host, bdf) = host_with(&[]);
        assert_eq!(ResetMethod::read(&host, &bdf), ResetMethod::None);
        assert_eq!(ResetMethod::None.describe(), None);
    }
}
