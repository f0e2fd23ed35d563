//! Rotation of a VM's logs (`serial.log`, written by form-vmm; `vmm.log`, form-vmm's
//! output): form-vmm holds them open for as long as it runs, so they are rotated by
//! copy and truncate, as logrotate's `copytruncate` does. Bytes written between the
//! copy and the truncate are lost (a few at most: the service checks every few
//! seconds).
//!
//! A writer without `O_APPEND` keeps writing at its old offset after the truncate,
//! leaving a hole before its next bytes. The size counted is therefore the space the
//! file takes on disk (its blocks) when that is less than its length, and the copy
//! skips a leading hole (`SEEK_DATA`), so even then the disk used stays bounded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Mode of every log and rotated log: the guest's console can carry secrets
/// (cloud-init prints what it was given; a guest may print anything).
pub const LOG_MODE: u32 = 0o600;

/// The bytes of `meta`'s file that count against the cap.
fn used(meta: &fs::Metadata) -> u64 {
    meta.len().min(meta.blocks().saturating_mul(512))
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` if it takes more than `max_bytes`: `.1` .. `.<keep>` shift up (the
/// oldest is removed), the log is copied to `.1` and truncated. Returns whether it
/// rotated. A log that does not exist is left alone.
pub fn rotate_log(path: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || used(&meta) <= max_bytes {
        return Ok(false);
    }
    let mut source = File::open(path)?;
    if keep > 0 {
        match fs::remove_file(rotated(path, keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..keep).rev() {
            match fs::rename(rotated(path, n), rotated(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let start = first_data(&source).unwrap_or(0).min(meta.len());
        source.seek(SeekFrom::Start(start))?;
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(LOG_MODE)
            .open(rotated(path, 1))?;
        io::copy(&mut (&mut source).take(meta.len() - start), &mut out)?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The offset of the file's first data (after a leading hole), if the file system
/// says.
fn first_data(file: &File) -> Option<u64> {
    // SAFETY: lseek(2) on a descriptor this function borrows.
    let offset = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    u64::try_from(offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_log_over_its_cap_is_copied_shifted_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        assert!(!rotate_log(&dir.path().join("missing.log"), 10, 2).unwrap());
        for round in 0..4u8 {
            writer.write_all(&[b'a' + round; 8192]).unwrap();
            assert!(rotate_log(&log, 4096, 2).unwrap(), "round {round}");
            assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        }
        // The writer goes on at the start of the emptied file.
        writer.write_all(b"after").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"after");
        assert!(!rotate_log(&log, 4096, 2).unwrap());
        assert_eq!(fs::read(rotated(&log, 1)).unwrap(), [b'd'; 8192]);
        assert_eq!(fs::read(rotated(&log, 2)).unwrap(), [b'c'; 8192]);
        assert!(!rotated(&log, 3).exists());
        let mode = fs::metadata(rotated(&log, 1)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_writer_without_append_leaves_a_hole_that_is_not_counted_or_copied() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut writer = File::create(&log).unwrap();
        writer.write_all(&[b'x'; 1 << 20]).unwrap();
        assert!(rotate_log(&log, 4096, 1).unwrap());
        // Its offset is past the end now: a 1 MiB hole, then its bytes.
        writer.write_all(&[b'y'; 100]).unwrap();
        assert_eq!(fs::metadata(&log).unwrap().len(), (1 << 20) + 100);
        assert!(!rotate_log(&log, 64 << 10, 1).unwrap());
        writer.write_all(&[b'z'; 128 << 10]).unwrap();
        assert!(rotate_log(&log, 64 << 10, 1).unwrap());
        let copy = fs::read(rotated(&log, 1)).unwrap();
        // File systems without SEEK_DATA copy the hole as zeros; those with it skip it.
        assert!(copy.ends_with(&[b'z'; 128 << 10]));
        assert!(copy.len() < (1 << 20) + 100 + (128 << 10) + 1);
    }
}
