//! The files the guest's serial port and console write to (`file=PATH`).
//!
//! Each form-vmm process starts such a file afresh the first time it opens it, and
//! appends on every later open: a reboot rebuilds the VM, and the output that led
//! to it (a panic, a watchdog, a guest asking for a reset) must still be there
//! afterwards for whoever reads the log.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The log files this process has opened, by the path it was given.
fn opened() -> &'static Mutex<HashSet<PathBuf>> {
    static OPENED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    OPENED.get_or_init(Mutex::default)
}

/// Opens `path` for the guest's output: truncated on this process's first open,
/// appended to after that.
pub fn open_guest_log(path: &Path) -> io::Result<File> {
    let mut opened = opened().lock().unwrap_or_else(|e| e.into_inner());
    let first = !opened.contains(path);
    // Always O_APPEND: vmm-service rotates the logs by copying and truncating
    // them, and a writer without it would carry on at its old offset, leaving a
    // hole of zeros before its next bytes.
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    if first {
        file.set_len(0)?;
    }
    opened.insert(path.to_path_buf());
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_first_open_starts_afresh_and_later_ones_append() {
        let path = std::env::temp_dir().join(format!("form-vmm-log-{}", std::process::id()));
        std::fs::write(&path, "from an earlier form-vmm\n").unwrap();
        open_guest_log(&path)
            .unwrap()
            .write_all(b"first boot\n")
            .unwrap();
        open_guest_log(&path)
            .unwrap()
            .write_all(b"after the reboot\n")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text, "first boot\nafter the reboot\n");
    }

    #[test]
    fn a_failed_open_is_not_remembered() {
        let path = std::env::temp_dir()
            .join(format!("form-vmm-log-missing-{}", std::process::id()))
            .join("serial.log");
        assert!(open_guest_log(&path).is_err());
        assert!(!opened().lock().unwrap().contains(&path));
    }
}
