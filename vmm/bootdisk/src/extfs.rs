//! ext2/3/4, read-only, through the `ext4-view` crate (extents, htree
//! directories, the journal, symlinks with a loop limit). Everything read is
//! bounded here: file sizes are checked against a limit before any allocation.

use crate::disk::Slice;
use ext4_view::{Ext4, Ext4Error, FileType};

pub struct ExtFs {
    fs: Ext4,
}

/// Why a file could not be read: missing, or present but unusable.
#[derive(Debug)]
pub enum ReadError {
    NotFound,
    Other(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotFound => f.write_str("not found"),
            ReadError::Other(s) => f.write_str(s),
        }
    }
}

fn read_error(e: Ext4Error) -> ReadError {
    match e {
        Ext4Error::NotFound => ReadError::NotFound,
        Ext4Error::NotADirectory => ReadError::NotFound,
        e => ReadError::Other(e.to_string()),
    }
}

/// Longest path looked up (ext4-view refuses more than 4096 bytes too).
const MAX_PATH: usize = 4096;
/// Bytes of a file read per call.
const CHUNK: usize = 1 << 20;

impl ExtFs {
    pub fn open(part: Slice) -> Result<ExtFs, String> {
        Ext4::load(Box::new(part))
            .map(|fs| ExtFs { fs })
            .map_err(|e| e.to_string())
    }

    /// The file system's UUID, as `root=UUID=` wants it.
    pub fn uuid(&self) -> String {
        self.fs.uuid().to_string()
    }

    fn check_path(path: &str) -> Result<(), ReadError> {
        if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
            return Err(ReadError::Other(
                "not an absolute path of at most 4096 bytes".into(),
            ));
        }
        Ok(())
    }

    /// Whether `path` is a regular file (after symlinks).
    pub fn is_file(&self, path: &str) -> bool {
        Self::check_path(path).is_ok()
            && self
                .fs
                .metadata(path)
                .is_ok_and(|m| m.file_type() == FileType::Regular)
    }

    /// Whether `path` is a directory (after symlinks).
    pub fn is_dir(&self, path: &str) -> bool {
        Self::check_path(path).is_ok() && self.fs.metadata(path).is_ok_and(|m| m.is_dir())
    }

    /// The whole of regular file `path`, if it is at most `max` bytes.
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>, ReadError> {
        Self::check_path(path)?;
        let mut file = self.fs.open(path).map_err(read_error)?;
        let meta = file.metadata();
        if meta.file_type() != FileType::Regular {
            return Err(ReadError::Other("not a regular file".into()));
        }
        let len = meta.len();
        if len > max {
            return Err(ReadError::Other(format!(
                "{len} bytes is more than the {max} bytes form-vmm reads"
            )));
        }
        // Fits: bounded by `max`, which callers keep far below usize::MAX.
        let mut data = vec![0u8; len as usize];
        let mut filled = 0;
        while filled < data.len() {
            let end = data.len().min(filled + CHUNK);
            let n = file
                .read_bytes(&mut data[filled..end])
                .map_err(|e| ReadError::Other(e.to_string()))?;
            if n == 0 {
                return Err(ReadError::Other("the file ends early".into()));
            }
            filled += n;
        }
        Ok(data)
    }

    /// The names of the entries of directory `dir` (without `.` and `..`), at
    /// most `max` of them, with whether each is a regular file or a symlink.
    pub fn list(&self, dir: &str, max: usize) -> Result<Vec<String>, ReadError> {
        Self::check_path(dir)?;
        let mut names = Vec::new();
        for entry in self.fs.read_dir(dir).map_err(read_error)? {
            let entry = entry.map_err(|e| ReadError::Other(e.to_string()))?;
            let name = entry.file_name();
            let Ok(name) = name.as_str() else { continue };
            if name == "." || name == ".." {
                continue;
            }
            if names.len() >= max {
                return Err(ReadError::Other(format!(
                    "more than {max} entries; form-vmm reads at most {max}"
                )));
            }
            names.push(name.to_string());
        }
        names.sort();
        Ok(names)
    }
}
