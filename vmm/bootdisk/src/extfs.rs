//! ext2/3/4, read-only, through the `ext4-view` crate (extents, htree
//! directories, the journal, symlinks with a loop limit). Everything read is
//! bounded here: file sizes are checked against a limit before any allocation.
//! The data of files with extents is read by `extent` (one read per extent)
//! unless the file system or the file needs `ext4-view`'s own reading.

use crate::disk::Slice;
use crate::extent::{self, Fallback, Geometry};
use ext4_view::{Ext4, Ext4Error, File, FileType};

pub struct ExtFs {
    fs: Ext4,
    part: Slice,
    /// Why file data is never read by `extent` here, if so.
    geometry: Result<Geometry, Fallback>,
}

/// A regular file found by `ext4-view`, and its size.
pub struct OpenFile {
    file: File,
    pub len: u64,
}

/// How a file's data was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Straight from the extent tree.
    Extents,
    /// By `ext4-view`, a block at a time.
    Ext4View,
}

/// The inode number of a file `ext4-view` opened. It has no accessor; its
/// `Debug` output (`File { inode: 12, position: 0, .. }`) is the one place that
/// shows it. Anything else there leaves the file to `ext4-view`.
fn inode_number(file: &File) -> Option<u32> {
    let text = format!("{file:?}");
    let rest = text.split_once("inode: ")?.1;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
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
        let fs = Ext4::load(Box::new(part.clone())).map_err(|e| e.to_string())?;
        let geometry = Geometry::read(&part);
        if let Err(Fallback(why)) = &geometry {
            log::debug!("ext file system: file data read by ext4-view: {why}");
        }
        Ok(ExtFs { fs, part, geometry })
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
        self.read_as(path, max, None).map(|(data, _)| data)
    }

    /// [`ExtFs::read`], read as `how` says (`None`: from the extents when it
    /// can be), and how it was read.
    pub fn read_as(
        &self,
        path: &str,
        max: u64,
        how: Option<Method>,
    ) -> Result<(Vec<u8>, Method), ReadError> {
        let mut file = self.open_file(path, max)?;
        // Fits: bounded by `max`, which callers keep far below usize::MAX.
        // Zeroed by the allocator (fresh pages), not written here.
        let mut data = vec![0u8; file.len as usize];
        let method = self.read_opened(&mut file, &mut data, how)?;
        Ok((data, method))
    }

    /// Opens regular file `path` for [`ExtFs::read_opened`], if it is at most
    /// `max` bytes.
    pub fn open_file(&self, path: &str, max: u64) -> Result<OpenFile, ReadError> {
        Self::check_path(path)?;
        let file = self.fs.open(path).map_err(read_error)?;
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
        Ok(OpenFile { file, len })
    }

    /// Reads all of `file` into `out`: `file.len` bytes, all zero (holes and
    /// unwritten extents are not written). Returns how it was read (`how`:
    /// that way or an error; `None`: from the extents when it can be).
    pub fn read_opened(
        &self,
        file: &mut OpenFile,
        out: &mut [u8],
        how: Option<Method>,
    ) -> Result<Method, ReadError> {
        if out.len() as u64 != file.len {
            return Err(ReadError::Other("the buffer is not the file's size".into()));
        }
        let extents = match how {
            Some(Method::Ext4View) => Ok(Err(Fallback("asked for"))),
            _ => self.read_extents(&file.file, file.len, out),
        };
        match extents {
            Ok(Ok(())) => Ok(Method::Extents),
            Ok(Err(_)) if how == Some(Method::Extents) => {
                Err(ReadError::Other("not readable from its extents".into()))
            }
            Ok(Err(Fallback(why))) => {
                log::debug!("inode read by ext4-view: {why}");
                Self::read_file(&mut file.file, out).map(|()| Method::Ext4View)
            }
            Err(e) => Err(ReadError::Other(e)),
        }
    }

    fn read_extents(
        &self,
        file: &File,
        len: u64,
        out: &mut [u8],
    ) -> Result<Result<(), Fallback>, String> {
        let geometry = match &self.geometry {
            Ok(g) => g,
            Err(Fallback(why)) => return Ok(Err(Fallback(why))),
        };
        let Some(ino) = inode_number(file) else {
            return Ok(Err(Fallback("ext4-view did not show the inode number")));
        };
        extent::read_file(&self.part, geometry, ino, len, out)
    }

    fn read_file(file: &mut File, data: &mut [u8]) -> Result<(), ReadError> {
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
        Ok(())
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
