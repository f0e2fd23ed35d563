//! Where a VM's kernel, initramfs and disk images may come from: only the directories
//! the operator names (`serve --image-dir`), and block devices only by the names the
//! operator allows (`serve --allow-block-device`).
//!
//! A path is checked by where it points before anything is opened (a path outside
//! the directories is refused without looking at it, so the API tells nothing about
//! the rest of the host), then opened beneath its directory with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: a `..` or a symlink that leads out of
//! the directory is refused by the kernel, not by a check that a rename could race.
//! On kernels without `openat2` (before 5.6, or a seccomp filter that hides it) the
//! path is walked one component at a time with `O_NOFOLLOW`, refusing every symlink
//! and `..`.
//!
//! What is opened is an `O_PATH` descriptor: nothing is read, no device is opened
//! for I/O, a FIFO does not block. form-vmm inherits it and opens
//! `/proc/self/fd/N`, which re-opens the very file the service checked: a rename or
//! symlink swap after the check changes nothing.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::api::types::{DiskFormat, VmInstanceConfig};

use super::error::InstanceError;

/// The directory taken when the operator names none.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/form-vmm/images";

/// What a path is for: payloads must be regular files; disks may also be allowed
/// block devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Payload,
    Disk,
}

/// The operator's image directories and block devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePolicy {
    dirs: Vec<ImageDir>,
    block_devices: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageDir {
    /// As the operator wrote it.
    given: PathBuf,
    /// With symlinks resolved, when it exists: a client may name either.
    canonical: Option<PathBuf>,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRefusal {
    /// Outside the operator's directories or block devices: `path_not_allowed`.
    NotAllowed(String),
    /// Allowed, but not there or not usable (missing, a directory, not absolute).
    Unusable(String),
}

/// A checked image, open as `O_PATH`, for form-vmm to inherit.
#[derive(Debug)]
pub struct OpenedImage {
    fd: OwnedFd,
}

impl OpenedImage {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The image's format by its first bytes (the qcow2 magic, else raw), read
    /// through this descriptor: the file that was checked, not the path again.
    pub fn probe_format(&self) -> io::Result<DiskFormat> {
        const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
        let file = fs::File::open(self.vmm_path())?;
        let mut magic = [0u8; 4];
        match std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0) {
            Ok(()) if magic == QCOW2_MAGIC => Ok(DiskFormat::Qcow2),
            Ok(()) => Ok(DiskFormat::Raw),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(DiskFormat::Raw),
            Err(e) => Err(e),
        }
    }

    /// The path form-vmm opens: this descriptor, inherited at the same number.
    pub fn vmm_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The directory of the file this descriptor holds, when it is a regular file:
    /// where a qcow2 image's backing files are opened from, by name.
    pub fn directory(&self) -> Option<PathBuf> {
        // This process's own descriptor: /proc/self, not the host paths' procfs.
        let path = std::fs::read_link(self.vmm_path()).ok()?;
        path.is_file()
            .then(|| path.parent().map(Path::to_path_buf))
            .flatten()
    }
}

/// A VM's checked images, in the order of its configuration.
#[derive(Debug)]
pub struct OpenedImages {
    pub kernel: Option<OpenedImage>,
    pub initramfs: Option<OpenedImage>,
    pub disks: Vec<OpenedImage>,
}

impl OpenedImages {
    /// Every descriptor, for the VMM to inherit.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.kernel
            .iter()
            .chain(&self.initramfs)
            .chain(&self.disks)
            .map(OpenedImage::raw_fd)
            .collect()
    }
}

impl ImagePolicy {
    /// `dirs` empty means the default directory alone.
    pub fn new(dirs: Vec<PathBuf>, block_devices: Vec<PathBuf>) -> Self {
        let dirs = if dirs.is_empty() {
            vec![PathBuf::from(DEFAULT_IMAGE_DIR)]
        } else {
            dirs
        };
        Self {
            dirs: dirs
                .into_iter()
                .map(|given| ImageDir {
                    canonical: fs::canonicalize(&given).ok().filter(|c| *c != given),
                    given,
                })
                .collect(),
            block_devices,
        }
    }

    pub fn dirs(&self) -> Vec<String> {
        self.dirs
            .iter()
            .map(|d| d.given.display().to_string())
            .collect()
    }

    pub fn block_devices(&self) -> Vec<String> {
        self.block_devices
            .iter()
            .map(|d| d.display().to_string())
            .collect()
    }

    /// The directories for a message: each, and whether it is missing.
    fn describe_dirs(&self) -> String {
        self.dirs
            .iter()
            .map(|d| {
                if d.given.is_dir() {
                    d.given.display().to_string()
                } else {
                    format!("{} (does not exist)", d.given.display())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks and opens every image of `config`.
    pub fn open_all(&self, config: &VmInstanceConfig) -> Result<OpenedImages, InstanceError> {
        let payload = |field: &str, path: &str| {
            self.open(field, path, ImageKind::Payload)
                .map_err(|refusal| match refusal {
                    ImageRefusal::NotAllowed(m) => InstanceError::PathNotAllowed(m),
                    ImageRefusal::Unusable(m) => InstanceError::Payload(m),
                })
        };
        let kernel = match &config.kernel {
            Some(path) => Some(payload("kernel", path)?),
            None => None,
        };
        let initramfs = match &config.initramfs {
            Some(path) => Some(payload("initramfs", path)?),
            None => None,
        };
        let mut disks = Vec::with_capacity(config.disks.len());
        for (i, disk) in config.disks.iter().enumerate() {
            let opened = self
                .open(&format!("disks[{i}].path"), &disk.path, ImageKind::Disk)
                .map_err(|refusal| match refusal {
                    ImageRefusal::NotAllowed(m) => InstanceError::PathNotAllowed(m),
                    ImageRefusal::Unusable(m) => InstanceError::Invalid(m),
                })?;
            disks.push(opened);
        }
        Ok(OpenedImages {
            kernel,
            initramfs,
            disks,
        })
    }

    /// Checks `path` (the value of `field`) and opens it.
    pub fn open(
        &self,
        field: &str,
        path: &str,
        kind: ImageKind,
    ) -> Result<OpenedImage, ImageRefusal> {
        let unusable = |why: &str| ImageRefusal::Unusable(format!("{field}: '{path}' {why}"));
        let refused = |why: &str| ImageRefusal::NotAllowed(format!("{field}: '{path}' {why}"));
        let file = Path::new(path);
        if !file.is_absolute() {
            return Err(unusable(
                "is not an absolute path; the service does not share your working directory",
            ));
        }
        if path.contains('\0') {
            return Err(unusable("holds a NUL character"));
        }
        if kind == ImageKind::Disk && self.block_devices.iter().any(|d| d == file) {
            return self.open_block_device(file, &unusable);
        }
        let Some((dir, rel)) = self.dirs.iter().find_map(|d| {
            let rel = file
                .strip_prefix(&d.given)
                .ok()
                .or_else(|| d.canonical.as_ref().and_then(|c| file.strip_prefix(c).ok()))?;
            Some((d, rel))
        }) else {
            let devices = if kind == ImageKind::Disk {
                " (a block device: --allow-block-device DEV)"
            } else {
                ""
            };
            return Err(refused(&format!(
                "is not in a directory this service takes images from ({}); put the file in one of them, or have the operator allow its directory with `vmm-service serve --image-dir DIR`{devices}",
                self.describe_dirs()
            )));
        };
        if rel.as_os_str().is_empty() {
            return Err(unusable("is an image directory, not a file in it"));
        }
        let dirfd = open_path(&dir.given, libc::O_DIRECTORY).map_err(|e| {
            unusable(&format!(
                "cannot be opened: its image directory {} {}",
                dir.given.display(),
                describe_errno(&e)
            ))
        })?;
        let fd = match openat2_beneath(&dirfd, rel) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                walk_beneath(&dirfd, rel)
            }
            other => other,
        };
        let fd = fd.map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV | libc::ELOOP) => refused(&format!(
                "leads out of the image directory {} (through '..' or a symlink); the file itself must be in the directory",
                dir.given.display()
            )),
            _ => unusable(&describe_errno(&e)),
        })?;
        let meta = fstat(&fd).map_err(|e| unusable(&format!("cannot be examined: {e}")))?;
        let file_type = meta.file_type();
        if file_type.is_file() {
            return Ok(OpenedImage {
                fd: at_least_3(fd)?,
            });
        }
        if file_type.is_dir() {
            return Err(unusable("is a directory, not an image file"));
        }
        if file_type.is_block_device() && kind == ImageKind::Disk {
            // One the operator allowed under another name (/dev/disk/by-id/...).
            if self.block_devices.iter().any(|d| {
                fs::metadata(d)
                    .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == meta.rdev())
            }) {
                return Ok(OpenedImage {
                    fd: at_least_3(fd)?,
                });
            }
            return Err(refused(
                "is a block device the operator has not allowed; block devices go to VMs only by the names given with `vmm-service serve --allow-block-device DEV`",
            ));
        }
        Err(unusable(match kind {
            ImageKind::Payload => "is not a regular file",
            ImageKind::Disk => {
                "is neither a regular file nor a block device; give a raw or qcow2 disk image file"
            }
        }))
    }

    fn open_block_device(
        &self,
        file: &Path,
        unusable: &dyn Fn(&str) -> ImageRefusal,
    ) -> Result<OpenedImage, ImageRefusal> {
        // The operator's own name: symlinks in it (/dev/disk/by-id) are followed.
        let fd = open_path(file, 0).map_err(|e| unusable(&describe_errno(&e)))?;
        let meta = fstat(&fd).map_err(|e| unusable(&format!("cannot be examined: {e}")))?;
        if !meta.file_type().is_block_device() {
            return Err(unusable(
                "is on the service's --allow-block-device list but is not a block device",
            ));
        }
        Ok(OpenedImage {
            fd: at_least_3(fd)?,
        })
    }
}

fn describe_errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            "does not exist; copy the file there (a disk: qemu-img create -f raw IMG 10G) or fix the path"
                .to_string()
        }
        Some(libc::ENOTDIR) => "does not exist (a component of it is not a directory)".to_string(),
        Some(libc::EACCES) => "cannot be read by the service (permission denied)".to_string(),
        _ => format!("cannot be opened: {e}"),
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `open(path, O_PATH | O_CLOEXEC | extra)`.
fn open_path(path: &Path, extra: libc::c_int) -> io::Result<OwnedFd> {
    let name = cstring(path)?;
    // SAFETY: a NUL-terminated path; the result is checked before it is owned.
    let fd = unsafe { libc::open(name.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor open(2) just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2_beneath(dir: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let name = cstring(rel)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: openat2(2) with a live directory descriptor, a NUL-terminated
        // path and an open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor the kernel just returned.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a rename raced the lookup (RESOLVE_BENEATH's check); try again.
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            return Err(e);
        }
    }
}

/// Without openat2: one component at a time, refusing symlinks and `..` (EXDEV).
fn walk_beneath(dir: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let components: Vec<Component> = rel.components().collect();
    let mut current: Option<OwnedFd> = None;
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::Normal(name) => *name,
            Component::CurDir => continue,
            _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
        };
        let last = i + 1 == components.len();
        let name = cstring(Path::new(name))?;
        let at = current.as_ref().unwrap_or(dir).as_raw_fd();
        let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        // SAFETY: openat(2) on a live directory descriptor and a NUL-terminated name.
        let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor openat(2) just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = fstat(&fd)?;
        if meta.file_type().is_symlink() {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        if !last && !meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        current = Some(fd);
    }
    current.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// fstat(2) (works on an `O_PATH` descriptor), through std.
fn fstat(fd: &OwnedFd) -> io::Result<fs::Metadata> {
    fs::File::from(fd.try_clone()?).metadata()
}

/// The descriptor moved to 3 or above, so setting up the VMM's standard streams
/// (0, 1, 2) cannot replace it.
fn at_least_3(fd: OwnedFd) -> Result<OwnedFd, ImageRefusal> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a live descriptor.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(ImageRefusal::Unusable(format!(
            "cannot duplicate a descriptor: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: a descriptor fcntl just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn policy(dir: &Path) -> ImagePolicy {
        ImagePolicy::new(vec![dir.to_path_buf()], vec![])
    }

    fn refused(result: Result<OpenedImage, ImageRefusal>) -> String {
        match result {
            Err(ImageRefusal::NotAllowed(m)) => m,
            other => panic!("expected NotAllowed, got {other:?}"),
        }
    }

    fn unusable(result: Result<OpenedImage, ImageRefusal>) -> String {
        match result {
            Err(ImageRefusal::Unusable(m)) => m,
            other => panic!("expected Unusable, got {other:?}"),
        }
    }

    #[test]
    fn files_in_the_directory_open_and_name_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let image = dir.path().join("sub/a.raw");
        fs::write(&image, b"abc").unwrap();
        let opened = policy(dir.path())
            .open("kernel", image.to_str().unwrap(), ImageKind::Payload)
            .unwrap();
        assert!(opened.raw_fd() > 2);
        assert_eq!(fs::read(opened.vmm_path()).unwrap(), b"abc");
        // What the VMM is shown for it: the file's own directory, not the image
        // directory above it.
        assert_eq!(
            opened.directory(),
            Some(fs::canonicalize(dir.path().join("sub")).unwrap())
        );
        // A symlink that stays inside is fine.
        symlink("sub/a.raw", dir.path().join("link")).unwrap();
        let link = dir.path().join("link");
        policy(dir.path())
            .open("kernel", link.to_str().unwrap(), ImageKind::Payload)
            .unwrap();
    }

    #[test]
    fn paths_outside_are_refused_without_looking() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        for path in ["/etc/shadow", "/etc/nonexistent", "/dev/vda"] {
            let message = refused(p.open("initramfs", path, ImageKind::Disk));
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains("--image-dir"), "{message}");
        }
        let dotdot = format!("{}/../../etc/passwd", dir.path().display());
        let message = refused(p.open("kernel", &dotdot, ImageKind::Payload));
        assert!(message.contains("leads out"), "{message}");
    }

    #[test]
    fn symlinks_out_of_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", dir.path().join("abs")).unwrap();
        symlink("../../../../../../../etc/passwd", dir.path().join("rel")).unwrap();
        symlink("/etc", dir.path().join("etc")).unwrap();
        let p = policy(dir.path());
        for name in ["abs", "rel", "etc/passwd"] {
            let path = dir.path().join(name);
            let message = refused(p.open("kernel", path.to_str().unwrap(), ImageKind::Payload));
            assert!(message.contains("leads out"), "{name}: {message}");
        }
    }

    #[test]
    fn the_fallback_walk_refuses_every_symlink_and_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/a"), b"x").unwrap();
        symlink("sub/a", dir.path().join("inner")).unwrap();
        let dirfd = open_path(dir.path(), libc::O_DIRECTORY).unwrap();
        walk_beneath(&dirfd, Path::new("sub/a")).unwrap();
        let errno = |rel: &str| {
            walk_beneath(&dirfd, Path::new(rel))
                .unwrap_err()
                .raw_os_error()
        };
        assert_eq!(errno("inner"), Some(libc::ELOOP));
        assert_eq!(errno("sub/../sub/a"), Some(libc::EXDEV));
        assert_eq!(errno("missing"), Some(libc::ENOENT));
        assert_eq!(errno("sub/a/b"), Some(libc::ENOTDIR));
    }

    #[test]
    fn missing_relative_and_odd_files_are_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        let missing = dir.path().join("missing.raw");
        let message = unusable(p.open("disks[0].path", missing.to_str().unwrap(), ImageKind::Disk));
        assert!(message.starts_with("disks[0].path: '"), "{message}");
        assert!(message.contains("does not exist"), "{message}");
        let message = unusable(p.open("disks[1].path", "a.raw", ImageKind::Disk));
        assert!(message.contains("not an absolute path"), "{message}");
        fs::create_dir(dir.path().join("d")).unwrap();
        let sub = dir.path().join("d");
        let message = unusable(p.open("kernel", sub.to_str().unwrap(), ImageKind::Payload));
        assert!(message.contains("is a directory"), "{message}");
        // A FIFO neither blocks nor passes.
        let fifo = dir.path().join("fifo");
        let name = cstring(&fifo).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let message = unusable(p.open("disks[0].path", fifo.to_str().unwrap(), ImageKind::Disk));
        assert!(message.contains("neither a regular file"), "{message}");
    }

    #[test]
    fn block_devices_only_by_the_operators_names() {
        let Some(device) = fs::read_dir("/dev")
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        else {
            eprintln!("skipping: no block device under /dev");
            return;
        };
        let path = device.path();
        let text = path.to_str().unwrap();
        let none = ImagePolicy::new(vec![PathBuf::from("/dev")], vec![]);
        let message = refused(none.open("disks[0].path", text, ImageKind::Disk));
        assert!(message.contains("--allow-block-device"), "{message}");
        let allowed = ImagePolicy::new(vec![], vec![path.clone()]);
        allowed
            .open("disks[0].path", text, ImageKind::Disk)
            .unwrap();
        // Not as a kernel, though.
        refused(allowed.open("kernel", text, ImageKind::Payload));
        // Under another name in an image directory, by its device number.
        let both = ImagePolicy::new(vec![PathBuf::from("/dev")], vec![path.clone()]);
        let message = unusable(both.open("kernel", text, ImageKind::Payload));
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn the_default_directory_is_named_when_none_is_given() {
        let p = ImagePolicy::new(vec![], vec![]);
        assert_eq!(p.dirs(), vec![DEFAULT_IMAGE_DIR.to_string()]);
        let message = refused(p.open("kernel", "/srv/vmlinux", ImageKind::Payload));
        assert!(message.contains(DEFAULT_IMAGE_DIR), "{message}");
    }
}
