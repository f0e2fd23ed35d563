//! Handing a VMM that gives up root what it reopens later, and taking it back when
//! the VMM is gone. Everything here is idempotent: a start after a crash redoes it,
//! a release of what was never handed over changes nothing.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::acl::{self, Perm};
use super::VmmIdentity;
use crate::supervisor::{VmPaths, LOG_MODE};

/// The service's directories above each VM's (`<state>`, `<state>/vms`, `<run>`,
/// `<run>/vms`): owner root, group the VMMs' gid, mode 0710. A VMM reopens its
/// serial log by path on a reboot and removes its socket at exit, so it must pass
/// through them; it may not list them (no read), and every VM's own directory is
/// 0700 and owned by that VM's uid.
pub fn open_parents_to_group(state_dir: &Path, run_dir: &Path, gid: u32) -> io::Result<()> {
    for dir in [
        state_dir.to_path_buf(),
        state_dir.join("vms"),
        run_dir.to_path_buf(),
        run_dir.join("vms"),
    ] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::os::unix::fs::chown(&dir, None, Some(gid))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o710))?;
    }
    Ok(())
}

/// The VM's two directories: they stay the service's, never the VMM's, so a VMM
/// that a guest took over cannot plant links in them for the service (or the next
/// form-vmm, which opens its logs there as root) to follow.
fn vm_dirs(paths: &VmPaths) -> Vec<PathBuf> {
    [&paths.serial_log, &paths.api_socket]
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect()
}

/// The files form-vmm reopens on a reboot (serial log, seed disk); `vmm.log` goes
/// too so its owner shows who writes it. The serial log is created here if missing:
/// form-vmm would create it as root at its first build and could not reopen it
/// after dropping root.
fn vm_files(paths: &VmPaths) -> Vec<PathBuf> {
    vec![
        paths.serial_log.clone(),
        paths.vmm_log.clone(),
        paths.seed_image.clone(),
    ]
}

/// Makes the VM's files `identity`'s, and its directories passable (not writable)
/// by the VMMs' group: root:GID 0710.
pub fn hand_over_vm(paths: &VmPaths, identity: VmmIdentity) -> io::Result<()> {
    let (uid, _) = service_ids();
    for dir in vm_dirs(paths) {
        std::os::unix::fs::lchown(&dir, Some(uid), Some(identity.gid))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o710))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&paths.serial_log)?;
    for path in vm_files(paths) {
        match own_regular_file(&path, identity.uid, identity.gid) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Gives the VM's files back to the service's own user and closes its directories
/// again, so the next VMM to get this uid cannot read what this VM left (its serial
/// log).
pub fn take_back_vm(paths: &VmPaths) -> io::Result<()> {
    let (uid, gid) = service_ids();
    for path in vm_files(paths) {
        match own_regular_file(&path, uid, gid) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    for dir in vm_dirs(paths) {
        match std::os::unix::fs::lchown(&dir, Some(uid), Some(gid)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other?,
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Chowns `path` through a descriptor opened without following a link, and only
/// if it is a regular file: whatever else is there is left alone.
fn own_regular_file(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
}

/// The uid VM `paths`' serial log was handed to, if it is not the service's own:
/// the record of a VMM's uid that outlives the service.
pub fn handed_to(paths: &VmPaths) -> Option<u32> {
    let meta = fs::symlink_metadata(&paths.serial_log).ok()?;
    let owner = meta.uid();
    (meta.is_file() && owner != service_ids().0).then_some(owner)
}

/// A VFIO group node (`/dev/vfio/N`) to `identity` (`None`: back to the service's
/// user), mode 0600: a VMM reopens its groups on a reboot, and opens a hotplugged
/// device's group after it dropped root.
pub fn set_vfio_node_owner(node: &Path, identity: Option<VmmIdentity>) -> io::Result<()> {
    let (uid, gid) = match identity {
        Some(id) => (id.uid, id.gid),
        None => service_ids(),
    };
    std::os::unix::fs::chown(node, Some(uid), Some(gid))?;
    fs::set_permissions(node, fs::Permissions::from_mode(0o600))
}

/// What `uid` needs of an image the VMM reopens: read, plus write for a disk the
/// guest writes. `path` is the service's `/proc/self/fd/N` for the checked file.
#[derive(Debug, Clone)]
pub struct ImageAccess {
    pub path: PathBuf,
    /// What the client called it, for messages.
    pub shown: String,
    pub perm: Perm,
}

/// Whether `uid` already has `perm` on a file of `meta` without a named entry:
/// as its owner, or through the bits for others. (The group bits are not counted:
/// with an ACL they are its mask, not a group's rights.)
fn has_access(meta: &fs::Metadata, uid: u32, perm: Perm) -> bool {
    let mode = meta.permissions().mode();
    let digit = if meta.uid() == uid {
        (mode >> 6) & 7
    } else {
        mode & 7
    };
    digit as Perm & perm == perm
}

/// Grants `uid` each image's access with a named ACL entry where it lacks it. A
/// failure (a file system without ACLs) is returned as a warning: the VM still
/// starts, but a reboot cannot reopen that image.
pub fn grant_images(images: &[ImageAccess], uid: u32) -> Vec<String> {
    let mut warnings = Vec::new();
    for image in images {
        let Ok(meta) = fs::metadata(&image.path) else {
            continue;
        };
        if !meta.is_file() || has_access(&meta, uid, image.perm) {
            continue;
        }
        if let Err(e) = acl::grant_user(&image.path, uid, image.perm) {
            warnings.push(format!(
                "cannot give VMM uid {uid} access to {} ({e}); a reboot of the VM will fail to reopen it: make it {} by uid {uid}",
                image.shown,
                if image.perm & acl::WRITE != 0 { "readable and writable" } else { "readable" },
            ));
        }
    }
    warnings
}

/// Removes `uid`'s entries from the images; failures are warnings.
pub fn revoke_images(images: &[ImageAccess], uid: u32) -> Vec<String> {
    images
        .iter()
        .filter_map(|image| {
            acl::revoke_user(&image.path, uid)
                .err()
                .filter(|e| e.raw_os_error() != Some(libc::EOPNOTSUPP))
                .map(|e| {
                    format!(
                        "cannot remove VMM uid {uid}'s access to {}: {e}",
                        image.shown
                    )
                })
        })
        .collect()
}

fn service_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        service_ids().0 == 0
    }

    fn owner(path: &Path) -> (u32, u32) {
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.gid())
    }

    #[test]
    fn access_counts_the_owner_and_others_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        let me = service_ids().0;
        for (mode, uid, perm, expected) in [
            (0o644, me + 1, acl::READ, true),
            (0o644, me + 1, acl::READ | acl::WRITE, false),
            (0o660, me + 1, acl::READ, false),
            (0o600, me, acl::READ | acl::WRITE, true),
            (0o400, me, acl::WRITE, false),
        ] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let meta = fs::metadata(&file).unwrap();
            assert_eq!(
                has_access(&meta, uid, perm),
                expected,
                "{mode:o} {uid} {perm}"
            );
        }
    }

    /// As root: the VM's files go to the VMM's uid and come back; the parents
    /// become root:GID 0710.
    #[test]
    fn vm_files_are_handed_over_and_taken_back() {
        if !root() {
            eprintln!("skipping: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (state, run) = (dir.path().join("state"), dir.path().join("run"));
        let paths = VmPaths::new(&run, &state, "vm1");
        open_parents_to_group(&state, &run, 36).unwrap();
        for d in [&state, &state.join("vms"), &run, &run.join("vms")] {
            assert_eq!(owner(d), (0, 36));
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o710);
        }
        fs::create_dir_all(paths.serial_log.parent().unwrap()).unwrap();
        fs::create_dir_all(paths.api_socket.parent().unwrap()).unwrap();
        fs::write(&paths.vmm_log, b"").unwrap();
        let identity = VmmIdentity {
            uid: 100_007,
            gid: 36,
        };
        hand_over_vm(&paths, identity).unwrap();
        for p in [&paths.serial_log, &paths.vmm_log] {
            assert_eq!(owner(p), (100_007, 36), "{}", p.display());
        }
        // The directories stay the service's: the VMM may pass, not write.
        for d in [
            paths.serial_log.parent().unwrap(),
            paths.api_socket.parent().unwrap(),
        ] {
            assert_eq!(owner(d), (0, 36), "{}", d.display());
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o710);
        }
        assert_eq!(
            fs::metadata(&paths.serial_log)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(handed_to(&paths), Some(100_007));
        take_back_vm(&paths).unwrap();
        assert_eq!(handed_to(&paths), None);
        for p in [
            paths.serial_log.parent().unwrap(),
            &paths.serial_log,
            &paths.vmm_log,
        ] {
            assert_eq!(owner(p), (0, 0), "{}", p.display());
        }
    }

    /// A link planted where a VM file should be is neither followed nor chowned.
    #[test]
    fn a_planted_link_is_not_followed() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (state, run) = (dir.path().join("state"), dir.path().join("run"));
        let paths = VmPaths::new(&run, &state, "vm1");
        fs::create_dir_all(paths.serial_log.parent().unwrap()).unwrap();
        fs::create_dir_all(paths.api_socket.parent().unwrap()).unwrap();
        let target = dir.path().join("host-file");
        fs::write(&target, b"root's").unwrap();
        std::os::unix::fs::symlink(&target, &paths.vmm_log).unwrap();
        let identity = VmmIdentity {
            uid: 100_007,
            gid: 36,
        };
        assert!(hand_over_vm(&paths, identity).is_err());
        assert_eq!(owner(&target), (0, 0), "the link's target was chowned");
        fs::remove_file(&paths.vmm_log).unwrap();
        fs::remove_file(&paths.serial_log).unwrap();
        std::os::unix::fs::symlink(&target, &paths.serial_log).unwrap();
        assert!(hand_over_vm(&paths, identity).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"root's");
        assert_eq!(owner(&target), (0, 0));
    }

    /// As root on a file system with ACLs: a writable disk root alone may write
    /// gets an entry for the uid; a world-readable read-only image needs none.
    #[test]
    fn images_get_entries_only_where_needed() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, kernel) = (dir.path().join("disk.img"), dir.path().join("vmlinux"));
        fs::write(&disk, b"").unwrap();
        fs::write(&kernel, b"").unwrap();
        fs::set_permissions(&disk, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&kernel, fs::Permissions::from_mode(0o644)).unwrap();
        let images = [
            ImageAccess {
                path: disk.clone(),
                shown: "disk".into(),
                perm: acl::READ | acl::WRITE,
            },
            ImageAccess {
                path: kernel.clone(),
                shown: "kernel".into(),
                perm: acl::READ,
            },
        ];
        let warnings = grant_images(&images, 100_009);
        if warnings.iter().any(|w| w.contains("not supported")) {
            eprintln!("skipping: no ACLs here: {warnings:?}");
            return;
        }
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            acl::read(&disk).unwrap().user(100_009),
            Some(acl::READ | acl::WRITE)
        );
        assert_eq!(acl::read(&kernel).unwrap().user(100_009), None);
        assert!(revoke_images(&images, 100_009).is_empty());
        assert_eq!(acl::read(&disk).unwrap().user(100_009), None);
        assert_eq!(
            fs::metadata(&disk).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
