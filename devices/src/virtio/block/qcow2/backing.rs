//! Backing files: an image's name for the file that holds the data of clusters it
//! has not allocated. The name comes from the image, so it is an attack surface
//! (a tenant's image naming /etc/shadow or another tenant's disk): it is resolved
//! against the image's own directory, must land (after symlinks) inside that
//! directory or one the operator allowed, and chains are short and loop-free.
//! Backing files are opened read-only with the same shared lock as a read-only disk.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::super::backend::DiskBackend;
use super::super::error::BlockError;
use super::super::file::open_image_file;
use super::super::raw::RawDisk;
use super::Qcow2Disk;

/// Longest chain of backing files below an image.
pub const MAX_BACKING_DEPTH: usize = 8;

/// Where a qcow2 image's backing files may live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackingOptions {
    /// Directories, besides the image's own, that may hold its backing files (and
    /// theirs). Empty (the default): only the image's own directory.
    pub allowed_dirs: Vec<PathBuf>,
}

/// The images opened so far down one chain: (device, inode) to catch loops.
pub(super) struct Chain {
    seen: Vec<(u64, u64)>,
}

impl Chain {
    pub fn new(meta: &std::fs::Metadata) -> Self {
        Self {
            seen: vec![(meta.dev(), meta.ino())],
        }
    }
}

/// Opens the backing file `name` of the image at `image`, read-only.
pub(super) fn open_backing(
    image: &Path,
    name: &[u8],
    format: Option<&str>,
    opts: &BackingOptions,
    chain: &mut Chain,
) -> Result<Box<dyn DiskBackend>, BlockError> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let refuse = |reason: String| BlockError::BackingRefused {
        path: image.to_path_buf(),
        backing: shown.clone(),
        reason,
    };
    let wrap = |source: BlockError| BlockError::Backing {
        path: image.to_path_buf(),
        source: Box::new(source),
    };
    if name.contains(&0) || name.starts_with(b"json:") || name.windows(3).any(|w| w == b"://") {
        return Err(refuse(
            "it is not a plain file name (json: or protocol names are not followed)".into(),
        ));
    }
    if chain.seen.len() > MAX_BACKING_DEPTH {
        return Err(refuse(format!(
            "the chain of backing files is deeper than {MAX_BACKING_DEPTH}"
        )));
    }
    let image_dir = std::fs::canonicalize(image)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| refuse("the image's directory cannot be resolved".into()))?;
    let given = Path::new(OsStr::from_bytes(name));
    let candidate = image_dir.join(given);
    let resolved = std::fs::canonicalize(&candidate).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => wrap(BlockError::NotFound { path: candidate }),
        _ => refuse(format!("it cannot be resolved: {e}")),
    })?;
    let mut allowed = vec![image_dir.clone()];
    allowed.extend(
        opts.allowed_dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok()),
    );
    if !allowed.iter().any(|dir| resolved.starts_with(dir)) {
        return Err(refuse(format!(
            "it resolves to {}, outside the image's directory {} (and the allowed backing \
             directories): keep backing files beside the image, or allow their directory \
             (BackingOptions::allowed_dirs)",
            resolved.display(),
            image_dir.display()
        )));
    }
    let opened = open_image_file(&resolved, true).map_err(wrap)?;
    let id = (opened.meta.dev(), opened.meta.ino());
    if chain.seen.contains(&id) {
        return Err(refuse(
            "it is the image itself or one above it in the chain (a loop)".into(),
        ));
    }
    chain.seen.push(id);
    let qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") => false,
        // Unnamed: the magic decides, as QEMU probes.
        None => opened.is_qcow2,
        Some(other) => {
            return Err(refuse(format!(
                "its format is {other:?}; form-vmm reads raw and qcow2 backing files"
            )))
        }
    };
    if qcow2 {
        if !opened.is_qcow2 {
            return Err(refuse("the image says it is qcow2, but it is not".into()));
        }
        let disk =
            Qcow2Disk::open_layer(opened.file, &resolved, true, opts, chain, None).map_err(wrap)?;
        Ok(Box::new(disk))
    } else {
        Ok(Box::new(RawDisk::new(opened.file, opened.size, false)))
    }
}
