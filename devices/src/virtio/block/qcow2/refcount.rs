//! Refcounts (16-bit, refcount_order 4): how many tables point at each host
//! cluster. A writer keeps them exact so `qemu-img check` finds no errors or
//! leaks: new clusters are taken at the end of the file with refcount 1, and a
//! cluster a write stopped using loses its reference only after the tables that
//! no longer point at it are durable (a crash between leaves a leak, never a
//! cluster in use with refcount 0).

use std::io;

use super::cache::{Slot, TableCache};
use super::entry::get_be64;
use super::file::ImageFile;
use super::header::{Header, REFCOUNT_TABLE_OFFSET};

/// Bits 9..=63 of a refcount table entry: a refcount block's offset.
const BLOCK_OFFSET_MASK: u64 = !0x1ff;
/// QEMU's largest refcount table; what a growing image may reach.
const MAX_TABLE_BYTES: u64 = 8 << 20;

pub(super) struct Refcounts {
    cluster_bits: u32,
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    table_dirty: bool,
    /// The table moved: the header must point at it once it is durable.
    header_dirty: bool,
    blocks: TableCache,
    /// Where the next new cluster goes: past everything the file holds.
    next_free: u64,
    /// (offset, length) ranges whose clusters each lose one reference at the next flush.
    pending_frees: Vec<(u64, u64)>,
}

fn io_err(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Refcounts {
    /// Reads the refcount table; at most `blocks` refcount blocks are cached.
    pub fn load(
        file: &ImageFile,
        header: &Header,
        file_len: u64,
        blocks: usize,
    ) -> io::Result<Self> {
        let cb = header.cluster_bits;
        // Bounded by the header checks: at most 8 MiB, inside the file.
        let mut raw = vec![0u8; (header.refcount_table_clusters << cb) as usize];
        file.read(&mut raw, header.refcount_table_offset)?;
        let table = (0..raw.len() / 8).map(|i| get_be64(&raw, i)).collect();
        Ok(Self {
            cluster_bits: cb,
            table,
            table_offset: header.refcount_table_offset,
            table_clusters: header.refcount_table_clusters,
            table_dirty: false,
            header_dirty: false,
            blocks: TableCache::new(blocks.max(2)),
            next_free: file_len.next_multiple_of(1 << cb),
            pending_frees: Vec::new(),
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether a cluster at `host` lies inside the file (or what this writer
    /// allocated): a table entry pointing elsewhere is never written through.
    pub fn in_file(&self, host: u64) -> bool {
        host.checked_add(self.cs())
            .is_some_and(|end| end <= self.next_free)
    }

    /// (refcount table index, index in the block) of the cluster at `host`.
    fn place(&self, host: u64) -> (usize, usize) {
        let index = host >> self.cluster_bits;
        let per_block_bits = self.cluster_bits - 1;
        let block = usize::try_from(index >> per_block_bits).unwrap_or(usize::MAX);
        (block, (index & ((1 << per_block_bits) - 1)) as usize)
    }

    fn block_offset(&self, block: usize) -> io::Result<Option<u64>> {
        let Some(&entry) = self.table.get(block) else {
            return Ok(None);
        };
        let offset = entry & BLOCK_OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        if offset & (self.cs() - 1) != 0 || !self.in_file(offset) {
            return Err(io_err(format!(
                "a refcount table entry points at {offset:#x}, unaligned or outside the file"
            )));
        }
        Ok(Some(offset))
    }

    /// The cached refcount block at `offset`, read in if needed.
    fn block(&mut self, file: &ImageFile, offset: u64) -> io::Result<&mut Slot> {
        if self.blocks.get(offset).is_none() {
            self.make_room(file)?;
            let mut data = vec![0u8; self.cs() as usize];
            file.read(&mut data, offset)?;
            self.blocks.insert(offset, data, false);
        }
        self.blocks
            .get(offset)
            .ok_or_else(|| io::Error::other("refcount block cache lost a block"))
    }

    /// Evicts the least recently used block when the cache is full. Refcounts may
    /// reach the file early: an early increment is at worst a leak, and
    /// decrements wait for flush.
    fn make_room(&mut self, file: &ImageFile) -> io::Result<()> {
        if let Some((victim, dirty)) = self.blocks.victim() {
            if let Some(slot) = self.blocks.remove(victim) {
                if dirty {
                    file.write(&slot.data, victim)?;
                }
            }
        }
        Ok(())
    }

    pub fn get(&mut self, file: &ImageFile, host: u64) -> io::Result<u16> {
        let (block, i) = self.place(host);
        let Some(offset) = self.block_offset(block)? else {
            return Ok(0);
        };
        let slot = self.block(file, offset)?;
        Ok(u16::from_be_bytes([slot.data[i * 2], slot.data[i * 2 + 1]]))
    }

    fn set(&mut self, file: &ImageFile, host: u64, value: u16) -> io::Result<()> {
        let (block, i) = self.place(host);
        if block >= self.table.len() {
            self.grow_table(file, block)?;
        }
        let offset = match self.block_offset(block)? {
            Some(offset) => offset,
            None => {
                // A new refcount block, itself a new cluster that needs a refcount.
                let offset = self.take(1)?;
                self.make_room(file)?;
                self.blocks
                    .insert(offset, vec![0u8; self.cs() as usize], true);
                self.table[block] = offset;
                self.table_dirty = true;
                self.set(file, offset, 1)?;
                offset
            }
        };
        let slot = self.block(file, offset)?;
        slot.data[i * 2..i * 2 + 2].copy_from_slice(&value.to_be_bytes());
        slot.dirty = true;
        Ok(())
    }

    /// Reserves `count` clusters at the end of the file (no refcount yet).
    fn take(&mut self, count: u64) -> io::Result<u64> {
        let start = self.next_free;
        self.next_free = count
            .checked_mul(self.cs())
            .and_then(|len| start.checked_add(len))
            .ok_or_else(|| io_err("the image file would exceed 2^64 bytes".into()))?;
        Ok(start)
    }

    /// A new cluster with refcount 1, at the end of the file.
    pub fn alloc(&mut self, file: &ImageFile) -> io::Result<u64> {
        let host = self.take(1)?;
        if self.get(file, host)? != 0 {
            return Err(io_err(format!(
                "the refcounts claim cluster {host:#x} past the end of the file is in use \
                 (repair the image with qemu-img check -r all)"
            )));
        }
        self.set(file, host, 1)?;
        Ok(host)
    }

    /// Moves the refcount table to a larger one at the end of the file, so that
    /// `block` has an entry. The old table is freed once the header points at the
    /// new one.
    fn grow_table(&mut self, file: &ImageFile, block: usize) -> io::Result<()> {
        let per_cluster = (self.cs() / 8) as usize;
        if block >= (MAX_TABLE_BYTES / 8) as usize {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the qcow2 refcount table cannot grow past 8 MiB",
            ));
        }
        let entries = (block + 1)
            .max(self.table.len() * 2)
            .next_multiple_of(per_cluster);
        let clusters = (entries / per_cluster) as u64;
        if clusters * self.cs() > MAX_TABLE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the qcow2 refcount table cannot grow past 8 MiB",
            ));
        }
        let old = (self.table_offset, self.table_clusters);
        let offset = self.take(clusters)?;
        self.table.resize(entries, 0);
        self.table_offset = offset;
        self.table_clusters = clusters;
        self.table_dirty = true;
        self.header_dirty = true;
        for c in 0..clusters {
            self.set(file, offset + (c << self.cluster_bits), 1)?;
        }
        self.free_later(old.0, old.1 << self.cluster_bits);
        Ok(())
    }

    /// Each cluster `len` bytes from `offset` touches loses one reference at the
    /// next flush, after the tables that pointed at them are durable.
    pub fn free_later(&mut self, offset: u64, len: u64) {
        self.pending_frees.push((offset, len));
    }

    pub fn pending_frees(&self) -> usize {
        self.pending_frees.len()
    }

    pub fn has_dirty(&self) -> bool {
        self.table_dirty || self.header_dirty || self.blocks.has_dirty()
    }

    /// Writes the refcount blocks, then the table, then (after a sync, when the
    /// table moved) the header fields that point at the table.
    pub fn write_back(&mut self, file: &ImageFile) -> io::Result<()> {
        for offset in self.blocks.dirty() {
            if let Some(slot) = self.blocks.get(offset) {
                file.write(&slot.data, offset)?;
                slot.dirty = false;
            }
        }
        if self.table_dirty {
            let mut raw = vec![0u8; (self.table_clusters << self.cluster_bits) as usize];
            for (i, e) in self.table.iter().enumerate() {
                raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            file.write(&raw, self.table_offset)?;
            self.table_dirty = false;
        }
        if self.header_dirty {
            file.sync()?;
            let mut fields = [0u8; 12];
            fields[..8].copy_from_slice(&self.table_offset.to_be_bytes());
            // At most 8 MiB of table: the cluster count fits u32.
            fields[8..].copy_from_slice(&(self.table_clusters as u32).to_be_bytes());
            file.write(&fields, REFCOUNT_TABLE_OFFSET as u64)?;
            self.header_dirty = false;
        }
        Ok(())
    }

    /// Drops the references `free_later` recorded.
    pub fn apply_frees(&mut self, file: &ImageFile) -> io::Result<()> {
        let cs = self.cs();
        for (offset, len) in std::mem::take(&mut self.pending_frees) {
            if len == 0 {
                continue;
            }
            let first = offset & !(cs - 1);
            let last = (offset + len - 1) & !(cs - 1);
            let mut host = first;
            while host <= last {
                match self.get(file, host)? {
                    0 => log::warn!("qcow2: cluster {host:#x} freed with refcount 0; left as is"),
                    n => self.set(file, host, n - 1)?,
                }
                host += cs;
            }
        }
        Ok(())
    }
}
