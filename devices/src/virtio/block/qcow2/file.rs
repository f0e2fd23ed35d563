//! The qcow2 image file itself: positioned reads that see zeroes past its end
//! (where clusters were allocated but not written yet, or a hostile entry points),
//! and writes only when the image was opened writable.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

pub(super) struct ImageFile {
    file: File,
    writable: bool,
}

impl ImageFile {
    pub fn new(file: File, writable: bool) -> Self {
        Self { file, writable }
    }

    /// Fills `buf` from `offset`; bytes past the end of the file read as zeroes.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::other("offset overflows"))?;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            // The file was opened read-only too; this says why in the log.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the qcow2 image is attached read-only",
            ));
        }
        self.file.write_all_at(buf, offset)
    }

    pub fn sync(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    /// The file's length; a seek, since block devices report none in metadata.
    pub fn len(&self) -> io::Result<u64> {
        (&self.file).seek(SeekFrom::End(0))
    }
}
