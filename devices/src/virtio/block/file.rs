//! Opening and locking an image file: shared by the disk the VM sees and by the
//! backing files of a qcow2 image, which get the same checks and the same
//! advisory lock (shared, since they are only read).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::error::BlockError;

/// The qcow2 magic, "QFI\xfb", at offset 0 of every qcow2 image.
pub(crate) const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// An open, locked image file.
pub(crate) struct OpenedFile {
    pub file: File,
    pub meta: Metadata,
    /// Its length in bytes (block devices report none in their metadata).
    pub size: u64,
    /// Whether it starts with the qcow2 magic.
    pub is_qcow2: bool,
}

/// Opens `path` (read-only or read-write), checks that it is a regular file or a
/// block device, locks it and reads its size and magic.
pub(crate) fn open_image_file(path: &Path, readonly: bool) -> Result<OpenedFile, BlockError> {
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => BlockError::NotFound {
            path: path.to_path_buf(),
        },
        _ => BlockError::Open {
            path: path.to_path_buf(),
            mode: "",
            source,
        },
    })?;
    if meta.is_dir() {
        return Err(BlockError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(BlockError::NotAFileOrBlockDevice {
            path: path.to_path_buf(),
        });
    }
    // A writable block device is opened exclusively: the kernel then refuses it
    // (EBUSY) while a file system is mounted from it or LVM, MD or swap holds it,
    // which flock, advisory and per-file, cannot see.
    let exclusive = !readonly && meta.file_type().is_block_device();
    let flags = libc::O_CLOEXEC | if exclusive { libc::O_EXCL } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EBUSY) if exclusive => BlockError::DeviceBusy {
                path: path.to_path_buf(),
            },
            _ => BlockError::Open {
                path: path.to_path_buf(),
                mode: if readonly {
                    " read-only"
                } else {
                    " read-write"
                },
                source,
            },
        })?;
    lock(&file, path, readonly)?;
    let read_err = |source| BlockError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = (&file).seek(SeekFrom::End(0)).map_err(read_err)?;
    let mut is_qcow2 = false;
    if size >= QCOW2_MAGIC.len() as u64 {
        let mut magic = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).map_err(read_err)?;
        is_qcow2 = magic == QCOW2_MAGIC;
    }
    Ok(OpenedFile {
        file,
        meta,
        size,
        is_qcow2,
    })
}

/// Holds the image for this VM: exclusively when writable, shared when read-only,
/// so several VMs may read one image but none may write an image another uses.
fn lock(file: &File, path: &Path, readonly: bool) -> Result<(), BlockError> {
    let kind = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    loop {
        // SAFETY: flock on a file descriptor we own.
        let ret = unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => {
                return Err(BlockError::Locked {
                    path: path.to_path_buf(),
                })
            }
            _ => {
                return Err(BlockError::Lock {
                    path: path.to_path_buf(),
                    source: err,
                })
            }
        }
    }
}
