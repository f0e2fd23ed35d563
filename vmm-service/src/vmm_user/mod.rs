//! Which uid and gid each form-vmm gives up root for (`serve --vmm-user`,
//! `--vmm-uid`/`--vmm-gid`, `--vmm-uid-range`), and what the service hands such a
//! VMM so that it keeps working without root: its VM's directories, its VFIO group
//! nodes, its images (for a reboot's reopen) and the Landlock rules naming them.
//!
//! form-vmm opens `/dev/kvm`, the VFIO container and groups, the taps and the
//! images as root while it builds the VM, then drops to the uid (`--uid/--gid`, no
//! supplementary groups, no capabilities). What it reopens later as that uid (a
//! reboot rebuilds the VM) must be open to it: `/dev/kvm` through the gid (the
//! group of `/dev/kvm`), the rest through [`handover`].

pub mod acl;
pub mod handover;
mod pool;

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use handover::ImageAccess;
pub use pool::{parse_uid_range, process_uid, UidPool};

/// Where VMM uids come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidSource {
    /// Every VMM runs as this uid: they are no longer root, but one compromised
    /// VMM can reach the others' files and processes.
    Shared(u32),
    /// Each running VM's VMM gets its own uid from `first..=last`: a compromised
    /// VMM reaches only its own VM's files and devices.
    Range { first: u32, last: u32 },
}

/// The identity VMMs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmUsers {
    pub uids: UidSource,
    /// Every VMM's gid: the group of `/dev/kvm`, so a reboot can reopen it.
    pub gid: u32,
}

/// A VMM's identity once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmIdentity {
    pub uid: u32,
    pub gid: u32,
}

/// The group of `<dev>/kvm`, and whether that group may read and write it. Without
/// both, a VMM that gave up root cannot reopen `/dev/kvm` on a reboot.
pub fn kvm_group(dev: &Path) -> Option<(u32, bool)> {
    let meta = std::fs::metadata(dev.join("kvm")).ok()?;
    Some((meta.gid(), meta.permissions().mode() & 0o060 == 0o060))
}

/// A user's uid and primary gid from `<etc>/passwd`; a number is taken as is
/// (with itself as gid).
pub fn lookup_user(passwd: &Path, name: &str) -> Result<(u32, u32), String> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok((uid, uid));
    }
    let text = std::fs::read_to_string(passwd)
        .map_err(|e| format!("--vmm-user {name}: cannot read {}: {e}", passwd.display()))?;
    text.lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let _password = fields.next()?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .ok_or_else(|| format!("--vmm-user {name}: no such user in {}", passwd.display()))
}

/// The serve options, as given.
#[derive(Debug, Clone, Default)]
pub struct VmmUserOptions {
    /// `--vmm-user NAME|UID`
    pub user: Option<String>,
    /// `--vmm-uid UID`
    pub uid: Option<u32>,
    /// `--vmm-gid GID`
    pub gid: Option<u32>,
    /// `--vmm-uid-range FIRST-LAST`
    pub range: Option<(u32, u32)>,
}

impl VmmUserOptions {
    /// Who VMMs run as (`None`: root, sandboxed), and warnings for the log. The
    /// gid is `--vmm-gid`, else the group of `<dev>/kvm`, else the user's own: a
    /// VMM reopens `/dev/kvm` on every reboot, and it keeps no supplementary groups.
    pub fn resolve(
        &self,
        dev: &Path,
        passwd: &Path,
    ) -> Result<(Option<VmmUsers>, Vec<String>), String> {
        let (uids, own_gid) = match (&self.user, self.uid, self.range) {
            (None, None, None) => return Ok((None, Vec::new())),
            (Some(name), _, _) => {
                let (uid, gid) = lookup_user(passwd, name)?;
                (UidSource::Shared(uid), gid)
            }
            (None, Some(uid), _) => (UidSource::Shared(uid), uid),
            (None, None, Some((first, last))) => (UidSource::Range { first, last }, first),
        };
        if uids == UidSource::Shared(0) {
            return Err(
                "the VMM user is root (uid 0); leave --vmm-user/--vmm-uid out to keep VMMs root"
                    .into(),
            );
        }
        let kvm = kvm_group(dev);
        // Never root's group: a VMM without root keeps no access to root's files.
        let gid = match (self.gid, kvm) {
            (Some(0), _) => {
                return Err("--vmm-gid 0 is root's group; give the group of /dev/kvm (kvm)".into())
            }
            (Some(gid), _) => gid,
            (None, Some((gid, _))) if gid != 0 => gid,
            (None, _) if own_gid != 0 => own_gid,
            (None, _) => {
                return Err(
                    "the VMM user's group is root's; give --vmm-gid (the group of /dev/kvm)".into(),
                )
            }
        };
        let mut warnings = Vec::new();
        match kvm {
            Some((kvm_gid, true)) if kvm_gid == gid => {}
            _ => warnings.push(format!(
                "{}/kvm is not readable and writable by the VMMs' group {gid}: a VMM that gave up root cannot reopen it, so guest reboots and vm.boot after vm.shutdown will fail; give /dev/kvm a group of its own (kvm) with mode 0660 and pass that group as --vmm-gid",
                dev.display()
            )),
        }
        Ok((Some(VmmUsers { uids, gid }), warnings))
    }
}

/// form-vmm's sandbox arguments: who to become after the first build (with
/// `identity`), a mount namespace of its own (with `mount_ns`), and the paths both
/// leave it, for what it reopens later (a reboot, `vm.boot` after `vm.shutdown`): its
/// VM's directories read-write, the image directories read-only. form-vmm adds
/// `/dev/kvm`, `/dev/vfio`, `/dev/net/tun`, the sysfs files VFIO reads and what the
/// VM names.
pub fn vmm_args(
    identity: Option<VmmIdentity>,
    mount_ns: bool,
    vm_dirs: &[&Path],
    image_dirs: &[PathBuf],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(identity) = identity {
        args.extend([
            "--uid".into(),
            identity.uid.to_string().into(),
            "--gid".into(),
            identity.gid.to_string().into(),
        ]);
    }
    if mount_ns {
        args.push("--mount-ns".into());
    }
    let rules = vm_dirs
        .iter()
        .map(|d| (*d, "rw"))
        .chain(image_dirs.iter().map(|d| (d.as_path(), "ro")));
    for (dir, access) in rules {
        // One flag per rule: form-vmm also splits a value at commas.
        let mut rule = OsString::from(dir.as_os_str());
        rule.push(format!(":{access}"));
        args.push("--landlock-rules".into());
        args.push(rule);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nform-vmm:x:990:36::/:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(lookup_user(&passwd, "form-vmm"), Ok((990, 36)));
        assert_eq!(lookup_user(&passwd, "65534"), Ok((65534, 65534)));
        assert!(lookup_user(&passwd, "nobody-here").is_err());
    }

    #[test]
    fn the_vmm_gets_its_ids_and_one_rule_per_directory() {
        let identity = VmmIdentity {
            uid: 100_002,
            gid: 36,
        };
        let args = vmm_args(
            Some(identity),
            true,
            &[
                Path::new("/var/lib/form-vmm/vms/a"),
                Path::new("/run/form-vmm/vms/a"),
            ],
            &[PathBuf::from("/srv/images")],
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--uid",
                "100002",
                "--gid",
                "36",
                "--mount-ns",
                "--landlock-rules",
                "/var/lib/form-vmm/vms/a:rw",
                "--landlock-rules",
                "/run/form-vmm/vms/a:rw",
                "--landlock-rules",
                "/srv/images:ro",
            ]
        );
    }

    #[test]
    fn options_resolve_to_a_uid_source_and_the_kvm_group() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o660)).unwrap();
        // As root the node is root's group, which is never taken: a kvm group.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&kvm, None, Some(36)).unwrap();
        }
        let kvm_gid = std::fs::metadata(&kvm).unwrap().gid();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "form-vmm:x:990:990::/:/bin/false\n").unwrap();
        let resolve = |o: VmmUserOptions| o.resolve(dir.path(), &passwd);

        assert_eq!(resolve(VmmUserOptions::default()).unwrap().0, None);
        let (users, warnings) = resolve(VmmUserOptions {
            range: Some((100_000, 100_999)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            users,
            Some(VmmUsers {
                uids: UidSource::Range {
                    first: 100_000,
                    last: 100_999
                },
                gid: kvm_gid
            })
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let (users, _) = resolve(VmmUserOptions {
            user: Some("form-vmm".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(users.unwrap().uids, UidSource::Shared(990));
        // A gid that cannot open /dev/kvm is allowed, with the reboot warning.
        let (users, warnings) = resolve(VmmUserOptions {
            uid: Some(65534),
            gid: Some(kvm_gid + 1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(users.unwrap().gid, kvm_gid + 1);
        assert!(warnings[0].contains("reboots"), "{warnings:?}");
        assert!(resolve(VmmUserOptions {
            uid: Some(0),
            ..Default::default()
        })
        .is_err());
        assert!(resolve(VmmUserOptions {
            uid: Some(65534),
            gid: Some(0),
            ..Default::default()
        })
        .is_err());
    }

    /// A /dev/kvm of root's group is not a group to give VMMs: the user's own is.
    #[test]
    fn roots_group_is_never_the_vmm_gid() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: a file of root's group needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kvm"), b"").unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();
        let options = VmmUserOptions {
            range: Some((100_000, 100_009)),
            ..Default::default()
        };
        let (users, warnings) = options.resolve(dir.path(), &passwd).unwrap();
        assert_eq!(users.unwrap().gid, 100_000);
        assert!(warnings[0].contains("reboots"), "{warnings:?}");
    }

    #[test]
    fn the_kvm_group_is_read_from_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o660)).unwrap();
        let gid = std::fs::metadata(&kvm).unwrap().gid();
        assert_eq!(kvm_group(dir.path()), Some((gid, true)));
        std::fs::set_permissions(&kvm, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(kvm_group(dir.path()), Some((gid, false)));
        assert_eq!(kvm_group(&dir.path().join("none")), None);
    }
}
