//! The one door through which the module changes the host: writes to sysfs attributes.
//! Tests substitute a writer that records each write and plays the kernel's part.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

pub trait SysfsWriter {
    /// Writes `value` to the attribute at `path` in a single write, as the kernel expects.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// Writes to the real files.
pub struct KernelSysfs;

impl SysfsWriter for KernelSysfs {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No create: a missing attribute means a wrong path or an old kernel, and a new
        // regular file there would hide that.
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }
}
