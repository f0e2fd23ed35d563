//! The guest-to-host map: the L1 table (kept whole in memory; the header bounds
//! it at 32 MiB) and the L2 tables it points at (a bounded write-back cache).
//! A dirty L2 table reaches the file only after the refcounts of the clusters it
//! points at, so the file never holds a pointer to a cluster with refcount 0.

use std::collections::BTreeSet;
use std::io;

use super::cache::{Slot, TableCache};
use super::entry::{decode_l1, get_be64, put_be64, COPIED};
use super::file::ImageFile;
use super::header::Header;
use super::refcount::Refcounts;

pub(super) struct Map {
    cluster_bits: u32,
    l1: Vec<u64>,
    l1_offset: u64,
    l1_dirty: BTreeSet<usize>,
    l2: TableCache,
}

fn damaged(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Map {
    /// Reads the L1 table; at most `l2_tables` L2 tables are cached.
    pub fn load(file: &ImageFile, header: &Header, l2_tables: usize) -> io::Result<Self> {
        // Bounded by the header checks: at most 32 MiB, inside the file.
        let mut raw = vec![0u8; (header.l1_size * 8) as usize];
        file.read(&mut raw, header.l1_offset)?;
        let l1 = (0..raw.len() / 8).map(|i| get_be64(&raw, i)).collect();
        let cb = header.cluster_bits;
        Ok(Self {
            cluster_bits: cb,
            l1,
            l1_offset: header.l1_offset,
            l1_dirty: BTreeSet::new(),
            l2: TableCache::new(l2_tables.max(2)),
        })
    }

    /// (L1 index, L2 index) of the guest byte `pos`.
    fn indices(&self, pos: u64) -> (usize, usize) {
        let l2_bits = self.cluster_bits - 3;
        let cluster = pos >> self.cluster_bits;
        (
            usize::try_from(cluster >> l2_bits).unwrap_or(usize::MAX),
            (cluster & ((1 << l2_bits) - 1)) as usize,
        )
    }

    /// The raw L2 entry for the guest cluster holding `pos` (0: unallocated).
    pub fn lookup(&mut self, file: &ImageFile, refs: &mut Refcounts, pos: u64) -> io::Result<u64> {
        let (l1i, l2i) = self.indices(pos);
        let entry = *self
            .l1
            .get(l1i)
            .ok_or_else(|| damaged(format!("guest offset {pos:#x} is past the L1 table")))?;
        let Some(table) = decode_l1(entry, self.cluster_bits).map_err(damaged)? else {
            return Ok(0);
        };
        let slot = self.table(file, refs, table)?;
        Ok(get_be64(&slot.data, l2i))
    }

    /// Points the guest cluster holding `pos` at `entry`, giving its L1 entry an
    /// L2 table first if it has none.
    pub fn set(
        &mut self,
        file: &ImageFile,
        refs: &mut Refcounts,
        pos: u64,
        entry: u64,
    ) -> io::Result<()> {
        let (l1i, l2i) = self.indices(pos);
        let table = self.table_for_write(file, refs, l1i)?;
        let slot = self.table(file, refs, table)?;
        put_be64(&mut slot.data, l2i, entry);
        slot.dirty = true;
        Ok(())
    }

    /// The L2 table of L1 entry `l1i`, which this writer may change in place.
    fn table_for_write(
        &mut self,
        file: &ImageFile,
        refs: &mut Refcounts,
        l1i: usize,
    ) -> io::Result<u64> {
        let entry = *self
            .l1
            .get(l1i)
            .ok_or_else(|| damaged("a write past the L1 table".into()))?;
        if let Some(table) = decode_l1(entry, self.cluster_bits).map_err(damaged)? {
            if !refs.in_file(table) {
                return Err(damaged(format!(
                    "an L1 entry points at {table:#x}, past the end of the file"
                )));
            }
            if entry & COPIED == 0 {
                // Without the flag the table may be shared (internal snapshots,
                // refused for writing): only refcount 1 lets us change it.
                if refs.get(file, table)? != 1 {
                    return Err(damaged(format!(
                        "the L2 table at {table:#x} is shared; form-vmm does not copy \
                         shared tables"
                    )));
                }
                self.l1[l1i] = table | COPIED;
                self.l1_dirty.insert(l1i);
            }
            return Ok(table);
        }
        let table = refs.alloc(file)?;
        self.make_room(file, refs)?;
        self.l2
            .insert(table, vec![0u8; 1 << self.cluster_bits], true);
        self.l1[l1i] = table | COPIED;
        self.l1_dirty.insert(l1i);
        Ok(table)
    }

    /// The cached L2 table at `offset`, read in if needed.
    fn table(
        &mut self,
        file: &ImageFile,
        refs: &mut Refcounts,
        offset: u64,
    ) -> io::Result<&mut Slot> {
        if self.l2.get(offset).is_none() {
            self.make_room(file, refs)?;
            let mut data = vec![0u8; 1 << self.cluster_bits];
            file.read(&mut data, offset)?;
            self.l2.insert(offset, data, false);
        }
        self.l2
            .get(offset)
            .ok_or_else(|| io::Error::other("L2 cache lost a table"))
    }

    /// Evicts the least recently used L2 table when the cache is full; a dirty one
    /// is written after the refcounts it depends on are durable.
    fn make_room(&mut self, file: &ImageFile, refs: &mut Refcounts) -> io::Result<()> {
        let Some((victim, dirty)) = self.l2.victim() else {
            return Ok(());
        };
        if dirty {
            refs.write_back(file)?;
            file.sync()?;
        }
        if let Some(slot) = self.l2.remove(victim) {
            if dirty {
                file.write(&slot.data, victim)?;
            }
        }
        Ok(())
    }

    pub fn has_dirty_l2(&self) -> bool {
        self.l2.has_dirty()
    }

    pub fn has_dirty_l1(&self) -> bool {
        !self.l1_dirty.is_empty()
    }

    pub fn write_back_l2(&mut self, file: &ImageFile) -> io::Result<()> {
        for offset in self.l2.dirty() {
            if let Some(slot) = self.l2.get(offset) {
                file.write(&slot.data, offset)?;
                slot.dirty = false;
            }
        }
        Ok(())
    }

    pub fn write_back_l1(&mut self, file: &ImageFile) -> io::Result<()> {
        for i in std::mem::take(&mut self.l1_dirty) {
            file.write(&self.l1[i].to_be_bytes(), self.l1_offset + i as u64 * 8)?;
        }
        Ok(())
    }
}
