//! The one thing the reader needs from a disk: reads at an offset, and its size.
//! form-vmm implements it over `devices`' `DiskImage` (raw and qcow2); tests use
//! byte vectors and files.

use std::io;
use std::rc::Rc;

/// A disk as the guest would see it, read-only.
pub trait BlockRead {
    /// Fills `buf` from `offset`; a read past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The disk's size in bytes.
    fn size(&self) -> u64;
}

fn past_end(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} is past the end ({size} bytes)"),
    )
}

/// Whether `len` bytes at `offset` lie within `size` bytes.
pub(crate) fn within(offset: u64, len: usize, size: u64) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

impl BlockRead for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !within(offset, buf.len(), self.len() as u64) {
            return Err(past_end(offset, buf.len(), self.len() as u64));
        }
        // In range: checked above, and the length fits a usize since it is a slice's.
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl BlockRead for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }
}

impl BlockRead for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.read_exact_at(buf, offset)
    }

    fn size(&self) -> u64 {
        use std::io::Seek;
        // A block device's metadata says 0; seeking to the end works for both.
        let mut file = self;
        file.seek(io::SeekFrom::End(0)).unwrap_or(0)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for Rc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        (**self).size()
    }
}

impl<T: BlockRead + ?Sized> BlockRead for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        (**self).size()
    }
}

/// A window of a disk: one partition.
#[derive(Clone)]
pub(crate) struct Slice {
    disk: Rc<dyn BlockRead>,
    start: u64,
    len: u64,
}

impl Slice {
    /// `start..start + len` must lie inside the disk (the partition table's
    /// parser checks this).
    pub(crate) fn new(disk: Rc<dyn BlockRead>, start: u64, len: u64) -> Slice {
        Slice { disk, start, len }
    }
}

impl BlockRead for Slice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !within(offset, buf.len(), self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        self.disk.read_at(buf, self.start + offset)
    }

    fn size(&self) -> u64 {
        self.len
    }
}

impl ext4_view::Ext4Read for Slice {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        BlockRead::read_at(self, dst, start_byte).map_err(|e| Box::new(e) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_stay_inside_their_window() {
        let disk: Rc<dyn BlockRead> = Rc::new((0..=255u8).collect::<Vec<u8>>());
        let part = Slice::new(disk, 16, 32);
        let mut buf = [0u8; 4];
        part.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [16, 17, 18, 19]);
        part.read_at(&mut buf, 28).unwrap();
        assert!(part.read_at(&mut buf, 29).is_err());
        assert!(part.read_at(&mut buf, u64::MAX - 1).is_err());
        assert_eq!(part.size(), 32);
    }
}
