//! A mount namespace of the VMM's own (`--mount-ns`): before any other thread
//! exists, form-vmm moves into a new mount namespace whose root is an empty,
//! read-only tmpfs holding only what Landlock would let it open (the device nodes,
//! the sysfs and procfs files VFIO, NUMA and huge pages read, `--landlock-rules`, what
//! the VM given on the command line names, the API socket's directory), each bound
//! at its own path. A VMM a guest took over cannot even name the rest of the host's
//! file system, whatever a kernel bug in Landlock or its uid would allow, and the
//! mounts it sees cannot leak back to the host (they are slaves of the host's).

use super::landlock::{PathAccess, PathRule};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Where the new root is staged: a tmpfs mounted over the first of these that
/// exists, in the new namespace only (the host's directory is untouched).
const STAGING: [&str; 3] = ["/tmp", "/mnt", "/run"];

/// One path the namespace shows, bound from the host's file at the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Canonical: no links, no `..`.
    pub path: PathBuf,
    pub is_dir: bool,
    pub writable: bool,
    /// Device nodes beneath it may be opened (no `nodev`).
    pub devices: bool,
}

impl Bind {
    /// Whether `self`, an ancestor of (or the same path as) `other`, already
    /// shows `other` with at least its rights.
    fn covers(&self, other: &Bind) -> bool {
        self.is_dir
            && other.path.starts_with(&self.path)
            && (self.writable || !other.writable)
            && (self.devices || !other.devices)
    }
}

/// The binds for `rules`: what exists of them, by canonical path, parents before
/// children, without paths an earlier bind already shows with enough rights.
/// `/proc/self` resolves to this process's own `/proc/<pid>`, which is all of
/// procfs shown (with `/proc/meminfo`): the rest of `/proc` leads out of the
/// namespace (`/proc/1/root`). Refuses a rule that resolves to `/`, which would
/// show the whole host.
pub fn plan(rules: &[PathRule]) -> Result<Vec<Bind>, String> {
    let mut binds: Vec<Bind> = Vec::new();
    for rule in rules {
        let Ok(path) = std::fs::canonicalize(&rule.path) else {
            log::debug!(
                "mount-ns: {} does not exist; not shown",
                rule.path.display()
            );
            continue;
        };
        if path == Path::new("/") {
            return Err(format!(
                "mount-ns: {} is the host's root directory, which would show the VMM the \
                 whole host: give it a directory of its own (for the API socket, the serial \
                 file or a disk image)",
                rule.path.display()
            ));
        }
        let kind = std::fs::metadata(&path).map(|m| m.file_type()).ok();
        let is_dir = kind.is_some_and(|k| k.is_dir());
        // A device node read as a file (/dev/urandom, an rng source, a block device
        // disk) is still opened as a device.
        let is_device = kind.is_some_and(|k| k.is_char_device() || k.is_block_device());
        let bind = Bind {
            path,
            is_dir,
            writable: rule.access != PathAccess::ReadOnly,
            devices: rule.access == PathAccess::Device || is_device,
        };
        match binds.iter_mut().find(|b| b.path == bind.path) {
            Some(same) => {
                same.writable |= bind.writable;
                same.devices |= bind.devices;
            }
            None => binds.push(bind),
        }
    }
    binds.sort_by(|a, b| {
        depth(&a.path)
            .cmp(&depth(&b.path))
            .then_with(|| a.path.cmp(&b.path))
    });
    let mut kept: Vec<Bind> = Vec::new();
    for bind in binds {
        if !kept.iter().any(|earlier| earlier.covers(&bind)) {
            kept.push(bind);
        }
    }
    Ok(kept)
}

fn depth(path: &Path) -> usize {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[derive(Debug, thiserror::Error)]
#[error("mount-ns: {step} {}: {source}{hint}", path.display())]
pub struct MountNsError {
    step: &'static str,
    path: PathBuf,
    source: std::io::Error,
    hint: &'static str,
}

fn failed(step: &'static str, path: &Path) -> MountNsError {
    let source = std::io::Error::last_os_error();
    let hint = if source.raw_os_error() == Some(libc::EPERM) {
        " (--mount-ns needs root, or CAP_SYS_ADMIN, at start: form-vmm gives root up \
         later with --uid/--user)"
    } else {
        ""
    };
    MountNsError {
        step,
        path: path.to_path_buf(),
        source,
        hint,
    }
}

/// A failed file-system call's `MountNsError`, for `map_err`.
fn io_failed(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> MountNsError {
    let path = path.into();
    move |source| MountNsError {
        step,
        path,
        source,
        hint: "",
    }
}

fn c_path(path: &Path) -> CString {
    // Paths from the file system hold no NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), ()> {
    let source = source.map(c_path);
    let target = c_path(target);
    let fstype = fstype.and_then(|t| CString::new(t).ok());
    let data = data.and_then(|d| CString::new(d).ok());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// The mount flags a bind keeps from the mount its source is on: a bind never
/// shows a file with more rights than the host's own mount gives it.
fn source_flags(fd: &OwnedFd) -> libc::c_ulong {
    // SAFETY: statvfs is plain data, valid when zeroed.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs fills the struct it is given; the descriptor is open.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut stat) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st, ms) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
    ] {
        if stat.f_flag & st != 0 {
            flags |= ms;
        }
    }
    flags
}

/// Moves the calling process into a new mount namespace that shows only `binds`,
/// then returns to the working directory it had if the namespace shows it (else
/// `/`). Call it before any other thread exists: a mount namespace is per thread.
pub fn enter(binds: &[Bind]) -> Result<(), MountNsError> {
    let cwd = std::env::current_dir().ok();
    let staging = STAGING
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or_else(|| MountNsError {
            step: "staging the new root in",
            path: PathBuf::from(STAGING.join(" or ")),
            source: std::io::ErrorKind::NotFound.into(),
            hint: " (one of them must exist)",
        })?;

    // SAFETY: unshare changes only this thread's namespaces, and it is the only one.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(failed("unshare(CLONE_NEWNS) for", Path::new("/")));
    }
    // Host mounts and unmounts still reach the VMM (a device's sysfs going away),
    // nothing mounted here reaches the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )
    .map_err(|_| failed("making the mounts slaves of the host's at", Path::new("/")))?;
    // Opened in the new namespace (a bind's source must be one of its mounts) and
    // before anything is hidden (a source may be beneath the staging directory).
    let mut sources = Vec::with_capacity(binds.len());
    for bind in binds {
        let fd = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&bind.path)
            .map_err(io_failed("opening", bind.path.clone()))?;
        sources.push(OwnedFd::from(fd));
    }
    let locked = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // The mount points must be traversable by the uid the VMM becomes: a umask
    // inherited from vmm-service (0077) would make them root's alone.
    let umask = Umask::set(0o022);
    mount(
        Some(Path::new("tmpfs")),
        staging,
        Some("tmpfs"),
        locked,
        Some("mode=0755,size=1m"),
    )
    .map_err(|_| failed("mounting a tmpfs for the new root on", staging))?;

    for (bind, fd) in binds.iter().zip(&sources) {
        let target = staging.join(bind.path.strip_prefix("/").unwrap_or(&bind.path));
        make_mount_point(&target, bind.is_dir)
            .map_err(io_failed("making the mount point", target.clone()))?;
        let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        // Not recursive: mounts beneath a bound directory (binfmt_misc under /proc,
        // anything mounted into an image directory) would keep the host's flags, as
        // a remount changes only the top mount. They show as empty directories.
        mount(Some(&via), &target, None, libc::MS_BIND, None)
            .map_err(|_| failed("binding", &bind.path))?;
        let mut flags = source_flags(fd) | libc::MS_NOSUID | libc::MS_NOEXEC;
        if !bind.writable {
            flags |= libc::MS_RDONLY;
        }
        if !bind.devices {
            flags |= libc::MS_NODEV;
        }
        mount(
            None,
            &target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | flags,
            None,
        )
        .map_err(|_| failed("restricting the bind of", &bind.path))?;
    }
    drop(sources);
    // /proc/self, as a plain link to the one /proc/<pid> shown.
    let own = PathBuf::from(format!("/proc/{}", std::process::id()));
    if binds.iter().any(|b| b.path == own) {
        let link = staging.join("proc/self");
        std::os::unix::fs::symlink(std::process::id().to_string(), &link)
            .map_err(io_failed("linking", link))?;
    }
    drop(umask);
    // Nothing can be made in the new root itself, only in what is bound there.
    mount(
        None,
        staging,
        None,
        // MS_BIND: this mount only, never a superblock's flags.
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked,
        None,
    )
    .map_err(|_| failed("making the new root read-only at", staging))?;

    // pivot_root(".", "."): the old root ends up stacked on the new one, and is
    // then detached from above it.
    std::env::set_current_dir(staging).map_err(io_failed("entering", staging.to_path_buf()))?;
    let dot = c".";
    // SAFETY: both arguments are NUL-terminated strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } == 0 {
        // SAFETY: as above.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(failed("detaching the host's root from", Path::new("/")));
        }
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A host running from its initramfs (rootfs: stateless and PXE-booted
        // hosts, the lab's L1) cannot pivot its root away. As container runtimes
        // do there: move the new root over the old one, which it then hides, and
        // chroot into it. Getting back out would take chroot(2) again, which no
        // thread's seccomp filter allows.
        mount(
            Some(Path::new(".")),
            Path::new("/"),
            None,
            libc::MS_MOVE,
            None,
        )
        .map_err(|_| failed("moving the new root over the initramfs at", Path::new("/")))?;
        // SAFETY: a NUL-terminated string.
        if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
            return Err(failed("chroot into", staging));
        }
        log::debug!("mount-ns: the host's root is its initramfs: moved over it and chrooted");
    } else {
        return Err(failed("pivot_root into", staging));
    }
    let back = cwd.filter(|dir| dir.is_dir()).unwrap_or_else(|| "/".into());
    std::env::set_current_dir(&back).map_err(io_failed("returning to", back))?;
    log::info!("mount-ns: entered ({} paths shown)", binds.len());
    Ok(())
}

/// The process's umask, set for a while and restored when dropped.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask has no preconditions.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

/// Makes `target` (a directory, or an empty file for a file's bind) and its
/// parents. Only ever creates inside the staging tmpfs: a target beneath an
/// earlier bind is the host's own path, which exists.
fn make_mount_point(target: &Path, is_dir: bool) -> std::io::Result<()> {
    if is_dir {
        return std::fs::create_dir_all(target);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map(drop)
}

/// Refuses a configuration naming a path this namespace does not show, naming the
/// path and what would show it.
pub fn check_visible(rules: &[PathRule]) -> Result<(), String> {
    for wanted in rules {
        let e = match std::fs::symlink_metadata(&wanted.path) {
            Ok(_) => continue,
            Err(e) => e,
        };
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(format!("{}: {e}", wanted.path.display()));
        }
        let access = if wanted.access == PathAccess::ReadOnly {
            "ro"
        } else {
            "rw"
        };
        return Err(format!(
            "{} does not exist in this form-vmm's mount namespace (--mount-ns shows only the \
             device nodes, its --landlock-rules, the VM it was started with and the API \
             socket's directory): check the path, or start form-vmm with --landlock-rules \
             DIR:{access} for the directory holding it",
            wanted.path.display(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &Path, access: PathAccess) -> PathRule {
        PathRule {
            path: path.to_path_buf(),
            access,
        }
    }

    #[test]
    fn parents_come_first_and_covered_children_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let images = root.join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("a.img"), b"").unwrap();
        std::fs::write(images.join("b.img"), b"").unwrap();
        std::os::unix::fs::symlink(images.join("b.img"), root.join("link")).unwrap();
        let binds = plan(&[
            rule(&images.join("a.img"), PathAccess::ReadOnly),
            rule(&root.join("link"), PathAccess::ReadWrite),
            rule(&images, PathAccess::ReadOnly),
            rule(&root.join("missing"), PathAccess::ReadOnly),
        ])
        .unwrap();
        let shown: Vec<(&Path, bool, bool)> = binds
            .iter()
            .map(|b| (b.path.as_path(), b.is_dir, b.writable))
            .collect();
        // a.img is shown by its directory; the link's target is writable, so it
        // gets its own bind, at its real path, after the directory.
        assert_eq!(
            shown,
            [
                (images.as_path(), true, false),
                (images.join("b.img").as_path(), false, true),
            ]
        );
    }

    #[test]
    fn the_same_path_twice_gets_the_union_of_rights() {
        let dir = tempfile::tempdir().unwrap();
        let binds = plan(&[
            rule(dir.path(), PathAccess::ReadOnly),
            rule(dir.path(), PathAccess::Device),
        ])
        .unwrap();
        assert_eq!(binds.len(), 1);
        assert!(binds[0].writable && binds[0].devices);
    }

    #[test]
    fn a_device_node_read_as_a_file_keeps_device_access() {
        let binds = plan(&[rule(Path::new("/dev/null"), PathAccess::ReadOnly)]).unwrap();
        assert_eq!(binds.len(), 1);
        assert!(binds[0].devices && !binds[0].writable && !binds[0].is_dir);
    }

    #[test]
    fn proc_shows_this_process_and_meminfo_only() {
        let binds = plan(&[
            rule(Path::new("/proc/self"), PathAccess::ReadOnly),
            rule(Path::new("/proc/meminfo"), PathAccess::ReadOnly),
        ])
        .unwrap();
        let paths: Vec<&Path> = binds.iter().map(|b| b.path.as_path()).collect();
        let own = PathBuf::from(format!("/proc/{}", std::process::id()));
        assert_eq!(paths, [own.as_path(), Path::new("/proc/meminfo")]);
    }

    #[test]
    fn the_host_root_is_never_shown() {
        let e = plan(&[rule(Path::new("/tmp/.."), PathAccess::Socket)]).unwrap_err();
        assert!(e.contains("/tmp/..") && e.contains("whole host"), "{e}");
    }

    #[test]
    fn a_path_that_is_not_there_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("here"), b"").unwrap();
        assert!(check_visible(&[rule(&dir.path().join("here"), PathAccess::ReadOnly)]).is_ok());
        let e =
            check_visible(&[rule(&dir.path().join("gone"), PathAccess::ReadWrite)]).unwrap_err();
        assert!(
            e.contains("gone") && e.contains("--landlock-rules DIR:rw"),
            "{e}"
        );
    }
}
