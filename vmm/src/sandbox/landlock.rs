//! Landlock: the file system the VMM may touch after start, decided once at start
//! from the command line (`--landlock-rules`, the VM given with `--kernel`, the API
//! socket) plus the device nodes and kernel files every VM needs. Configurations that
//! arrive later over the API (vm.create, vm.add-device) can only name paths beneath
//! those rules; [`Rules::check_config`] refuses the others with a clear error before
//! anything is opened.
//!
//! Best effort: a kernel without Landlock (or with an older ABI) enforces what it
//! can and the VMM says so in its log.

use crate::config::{ConsoleOutputMode, VmConfig};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use std::path::{Path, PathBuf};

/// The newest ABI whose rights the rules below use; older kernels get less.
const ABI_TARGET: ABI = ABI::V6;

/// How much of a path a rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathAccess {
    /// Read files (and list directories) beneath it.
    ReadOnly,
    /// Read, write, create, truncate and remove files beneath it.
    ReadWrite,
    /// Device nodes: read, write and ioctl.
    Device,
    /// A directory the API socket is created in and removed from.
    Socket,
}

impl PathAccess {
    fn rights(self) -> BitFlags<AccessFs> {
        let abi = ABI_TARGET;
        let read = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::IoctlDev;
        match self {
            PathAccess::ReadOnly => read,
            PathAccess::ReadWrite => {
                read | AccessFs::WriteFile
                    | AccessFs::Truncate
                    | AccessFs::MakeReg
                    | AccessFs::MakeDir
                    | AccessFs::RemoveFile
                    | AccessFs::RemoveDir
                    | AccessFs::MakeSock
            }
            PathAccess::Device => {
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev | AccessFs::ReadDir
            }
            PathAccess::Socket => AccessFs::MakeSock | AccessFs::RemoveFile,
        }
        .intersection_c(AccessFs::from_all(abi))
    }

    fn covers(self, wanted: PathAccess) -> bool {
        wanted.rights().intersection_c(self.rights()) == wanted.rights()
    }
}

/// One `--landlock-rules` entry, `PATH:ro` or `PATH:rw`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub path: PathBuf,
    pub access: PathAccess,
}

impl PathRule {
    /// Parses `PATH:ro|rw` (a bare `PATH` is read-only).
    pub fn parse(input: &str) -> Result<PathRule, String> {
        let (path, access) = match input.rsplit_once(':') {
            Some((path, "rw")) => (path, PathAccess::ReadWrite),
            Some((path, "ro")) => (path, PathAccess::ReadOnly),
            _ => (input, PathAccess::ReadOnly),
        };
        if path.is_empty() || !path.starts_with('/') {
            return Err(format!(
                "--landlock-rules {input}: give an absolute path, PATH:ro or PATH:rw"
            ));
        }
        Ok(PathRule {
            path: PathBuf::from(path),
            access,
        })
    }
}

/// Files every VM may need, whatever its configuration.
pub fn fixed_rules() -> Vec<PathRule> {
    let device = |p: &str| PathRule {
        path: PathBuf::from(p),
        access: PathAccess::Device,
    };
    let read = |p: &str| PathRule {
        path: PathBuf::from(p),
        access: PathAccess::ReadOnly,
    };
    vec![
        device("/dev/kvm"),
        // The VFIO container and group nodes, including groups hotplugged later.
        device("/dev/vfio"),
        device("/dev/net/tun"),
        read("/dev/urandom"),
        // VFIO's sysfs reads (a device's IOMMU group, driver, class), NUMA nodes and
        // huge page pools. /sys/bus/pci/devices/* are links into /sys/devices.
        read("/sys/bus/pci"),
        read("/sys/devices"),
        read("/sys/kernel/iommu_groups"),
        read("/sys/kernel/mm/hugepages"),
        read("/proc/self"),
        read("/proc/meminfo"),
    ]
}

/// The paths a VM configuration names, with the access each needs.
pub fn config_rules(config: &VmConfig) -> Vec<PathRule> {
    let mut rules = Vec::new();
    let mut add = |path: &Path, access| {
        rules.push(PathRule {
            path: path.to_path_buf(),
            access,
        })
    };
    for path in [&config.payload.kernel, &config.payload.initramfs]
        .into_iter()
        .flatten()
    {
        add(path, PathAccess::ReadOnly);
    }
    for disk in &config.disks {
        let access = if disk.readonly {
            PathAccess::ReadOnly
        } else {
            PathAccess::ReadWrite
        };
        add(&disk.path, access);
        // A qcow2 image's backing files are opened (read-only) beside it: beside the
        // file itself, also when the path is a /proc/self/fd/N link to it.
        let real = std::fs::canonicalize(&disk.path).unwrap_or_else(|_| disk.path.clone());
        if std::fs::metadata(&real).is_ok_and(|m| m.is_file()) {
            if let Some(dir) = real.parent() {
                add(dir, PathAccess::ReadOnly);
            }
        }
    }
    for output in [&config.serial, &config.console] {
        if output.mode == ConsoleOutputMode::File {
            if let Some(file) = &output.file {
                if file.exists() {
                    add(file, PathAccess::ReadWrite);
                } else if let Some(dir) = file.parent() {
                    // Created at the VM's first build.
                    add(dir, PathAccess::ReadWrite);
                }
            }
        }
    }
    if let Some(rng) = &config.rng {
        add(&rng.src, PathAccess::ReadOnly);
    }
    for device in &config.devices {
        add(&device.path, PathAccess::ReadOnly);
    }
    rules
}

/// What Landlock enforces in this process, for checking later configurations.
#[derive(Debug, Default)]
pub struct Rules {
    /// Canonical paths and their access; empty when Landlock is off.
    granted: Vec<PathRule>,
    enforced: bool,
    /// Enforced with an older kernel ABI than the rules ask for.
    partial: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot set up landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

impl Rules {
    /// Restricts the calling thread (and every thread it starts from now on) to
    /// `rules` plus the fixed device and kernel files. Call it before any other
    /// thread exists.
    pub fn restrict_self(rules: Vec<PathRule>) -> Result<Rules, LandlockError> {
        let abi = ABI_TARGET;
        let mut created = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(abi))?
            // No TCP at all: the VMM's sockets are unix sockets and taps.
            .handle_access(AccessNet::from_all(abi))?
            // No signals to processes outside this domain, no abstract unix sockets.
            .scope(Scope::from_all(abi))?
            .create()?;
        let mut granted = Vec::new();
        for rule in fixed_rules().into_iter().chain(rules) {
            let fd = match PathFd::new(&rule.path) {
                Ok(fd) => fd,
                Err(e) => {
                    log::debug!("landlock: skipping {}: {e}", rule.path.display());
                    continue;
                }
            };
            let is_dir = std::fs::metadata(&rule.path).is_ok_and(|m| m.is_dir());
            let mut rights = rule.access.rights();
            if !is_dir {
                rights = rights.intersection_c(AccessFs::from_file(abi));
            }
            created = created.add_rule(PathBeneath::new(fd, rights))?;
            let canonical = std::fs::canonicalize(&rule.path).unwrap_or(rule.path.clone());
            granted.push(PathRule {
                path: canonical,
                access: rule.access,
            });
        }
        let status = created.restrict_self()?;
        let partial = status.ruleset == RulesetStatus::PartiallyEnforced;
        let enforced = match status.ruleset {
            RulesetStatus::FullyEnforced => {
                log::info!("landlock: enforced ({} paths)", granted.len());
                true
            }
            RulesetStatus::PartiallyEnforced => {
                log::info!(
                    "landlock: partially enforced: this kernel's Landlock ABI is older than \
                     form-vmm's rules ({} paths)",
                    granted.len()
                );
                true
            }
            RulesetStatus::NotEnforced => {
                log::warn!(
                    "landlock: not enforced: this kernel has no Landlock (CONFIG_SECURITY_LANDLOCK \
                     and 'landlock' in the lsm= boot parameter); file access is not restricted"
                );
                false
            }
        };
        Ok(Rules {
            granted,
            enforced,
            partial,
        })
    }

    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// What `vmm.ping` says of it: `enforced`, `partial` or `unsupported`.
    pub fn state(&self) -> &'static str {
        match (self.enforced, self.partial) {
            (false, _) => "unsupported",
            (true, true) => "partial",
            (true, false) => "enforced",
        }
    }

    /// Checks that every path `config` names is beneath a rule with enough access,
    /// so a configuration the kernel would refuse piecemeal (EACCES at some open) is
    /// refused whole, naming the path.
    pub fn check_config(&self, config: &VmConfig) -> Result<(), String> {
        if !self.enforced {
            return Ok(());
        }
        for wanted in config_rules(config) {
            // A path that does not exist (yet) is the open's to report; a parent
            // directory added for a file is checked through the file.
            let Ok(canonical) = std::fs::canonicalize(&wanted.path) else {
                continue;
            };
            let allowed = self
                .granted
                .iter()
                .any(|rule| canonical.starts_with(&rule.path) && rule.access.covers(wanted.access));
            if !allowed {
                return Err(format!(
                    "{} is outside the paths this form-vmm may {} (landlock: its \
                     --landlock-rules and the VM it was started with); start form-vmm with \
                     --landlock-rules {}:{}",
                    wanted.path.display(),
                    if wanted.access == PathAccess::ReadOnly {
                        "read"
                    } else {
                        "read and write"
                    },
                    canonical.parent().unwrap_or(&canonical).display(),
                    if wanted.access == PathAccess::ReadOnly {
                        "ro"
                    } else {
                        "rw"
                    },
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!(
            PathRule::parse("/srv/vm1:rw").unwrap(),
            PathRule {
                path: "/srv/vm1".into(),
                access: PathAccess::ReadWrite
            }
        );
        assert_eq!(
            PathRule::parse("/srv/images:ro").unwrap().access,
            PathAccess::ReadOnly
        );
        assert_eq!(
            PathRule::parse("/srv/a:b").unwrap().path,
            PathBuf::from("/srv/a:b")
        );
        assert!(PathRule::parse("relative:rw").is_err());
        assert!(PathRule::parse(":rw").is_err());
    }

    #[test]
    fn read_write_covers_read_only() {
        assert!(PathAccess::ReadWrite.covers(PathAccess::ReadOnly));
        assert!(!PathAccess::ReadOnly.covers(PathAccess::ReadWrite));
        assert!(PathAccess::Device.covers(PathAccess::Device));
    }
}
