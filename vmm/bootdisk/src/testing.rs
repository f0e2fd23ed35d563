//! For tests (this crate's and form-vmm's), not an API: one file of an ext
//! file system read the way `load_boot` reads it, or the way it is told to.

use crate::disk::{BlockRead, Slice};
use crate::extfs::ExtFs;
pub use crate::extfs::Method;
use std::rc::Rc;

/// Regular file `path` (at most `max` bytes) of the ext file system `fs`
/// (a file system image, no partition table), and how it was read. `how`:
/// `None` as `load_boot` reads, `Some` that way or an error.
pub fn read_ext_file(
    fs: impl BlockRead + 'static,
    path: &str,
    max: u64,
    how: Option<Method>,
) -> Result<(Vec<u8>, Method), String> {
    let disk: Rc<dyn BlockRead> = Rc::new(fs);
    let size = disk.size();
    let fs = ExtFs::open(Slice::new(disk, 0, size))?;
    fs.read_as(path, max, how)
        .map_err(|e| format!("{path}: {e}"))
}
