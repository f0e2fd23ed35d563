//! A VM's serial log, read in windows: the route of `GET /v1/vms/{name}/console`.
//! form-vmm writes the log and the service only ever reads it, so a reader sees the file
//! as it is at that moment and never takes a lock the VMM could wait on.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::api::types::CONSOLE_MAX_BYTES;

use super::{blocking, InstanceError, Manager};

/// Which part of the log to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleWindow {
    /// The last N bytes (at most [`CONSOLE_MAX_BYTES`]).
    Tail(u64),
    /// From this offset to the end, at most [`CONSOLE_MAX_BYTES`] of it.
    From(u64),
}

/// A window of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    pub bytes: Vec<u8>,
    /// Just past `bytes`: where the next read continues.
    pub offset: u64,
    /// The log's size when it was read; beyond `offset` when the answer was capped.
    pub size: u64,
    /// `from` was beyond the end: form-vmm started the log afresh (each form-vmm process
    /// does when it first opens it: a boot after a stop) after the client last read it, so
    /// the answer starts over at 0.
    pub reset: bool,
}

impl Manager {
    pub async fn console(
        &self,
        name: &str,
        window: ConsoleWindow,
    ) -> Result<ConsoleChunk, InstanceError> {
        let record = self.record(name)?;
        let path = PathBuf::from(&record.serial_log);
        let log = path.clone();
        blocking(move || read_window(&log, window))
            .await
            .map_err(|e| {
                InstanceError::Internal(format!(
                    "cannot read the serial log {}: {e}",
                    path.display()
                ))
            })
    }
}

/// Reads `window` of the log at `path`; a log that does not exist yet (the VM never
/// ran) reads as empty.
fn read_window(path: &Path, window: ConsoleWindow) -> io::Result<ConsoleChunk> {
    let mut file = match File::open(path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let size = match &file {
        Some(file) => file.metadata()?.len(),
        None => 0,
    };
    let (start, reset) = match window {
        ConsoleWindow::Tail(count) => (size.saturating_sub(count), false),
        ConsoleWindow::From(offset) if offset > size => (0, true),
        ConsoleWindow::From(offset) => (offset, false),
    };
    let wanted = (size - start).min(CONSOLE_MAX_BYTES);
    let mut bytes = Vec::new();
    if let Some(file) = &mut file {
        file.seek(SeekFrom::Start(start))?;
        // Bounded by the size seen above: the VMM keeps appending, and an answer must
        // not grow past the cap while it is read. A log truncated meanwhile just
        // yields fewer bytes.
        file.take(wanted).read_to_end(&mut bytes)?;
    }
    Ok(ConsoleChunk {
        offset: start + bytes.len() as u64,
        bytes,
        size,
        reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn tail_and_from_pick_their_windows() {
        let (_dir, path) = log(b"0123456789");
        let tail = read_window(&path, ConsoleWindow::Tail(4)).unwrap();
        assert_eq!(
            (tail.bytes.as_slice(), tail.offset, tail.size),
            (&b"6789"[..], 10, 10)
        );
        let all = read_window(&path, ConsoleWindow::Tail(100)).unwrap();
        assert_eq!(all.bytes, b"0123456789");
        let from = read_window(&path, ConsoleWindow::From(3)).unwrap();
        assert_eq!((from.bytes.as_slice(), from.offset), (&b"3456789"[..], 10));
        let at_end = read_window(&path, ConsoleWindow::From(10)).unwrap();
        assert_eq!(
            (at_end.bytes.len(), at_end.offset, at_end.reset),
            (0, 10, false)
        );
    }

    #[test]
    fn from_past_the_end_starts_over() {
        let (_dir, path) = log(b"new boot\n");
        let chunk = read_window(&path, ConsoleWindow::From(500)).unwrap();
        assert!(chunk.reset);
        assert_eq!(
            (chunk.bytes.as_slice(), chunk.offset),
            (&b"new boot\n"[..], 9)
        );
    }

    #[test]
    fn answers_stop_at_the_cap() {
        let cap = CONSOLE_MAX_BYTES as usize;
        let mut content = vec![b'a'; cap];
        content.extend_from_slice(b"tail");
        let (_dir, path) = log(&content);
        let first = read_window(&path, ConsoleWindow::From(0)).unwrap();
        assert_eq!(first.bytes.len(), cap);
        assert_eq!((first.offset, first.size), (cap as u64, cap as u64 + 4));
        let rest = read_window(&path, ConsoleWindow::From(first.offset)).unwrap();
        assert_eq!(rest.bytes, b"tail");
    }

    #[test]
    fn a_missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let chunk = read_window(&path, ConsoleWindow::Tail(10)).unwrap();
        assert_eq!((chunk.bytes.len(), chunk.offset, chunk.size), (0, 0, 0));
    }
}
