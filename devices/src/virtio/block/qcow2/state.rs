//! One qcow2 layer's reads and writes, cluster by cluster, and its flush.
//!
//! Writes allocate: a cluster that is not plain data with refcount 1 (unallocated,
//! zero, compressed, from the backing file, or shared) gets a new cluster at the
//! end of the file holding the whole old cluster with the write merged in
//! (copy-on-write), then the L2 entry is pointed at it, and the old cluster's
//! reference is dropped at the next flush.

use std::io;

use super::compressed::inflate_cluster;
use super::entry::{decode_l2, Cluster, COPIED};
use super::file::ImageFile;
use super::header::Header;
use super::map::Map;
use super::refcount::Refcounts;
use crate::virtio::block::backend::DiskBackend;

/// Frees recorded before a flush forces one, bounding their memory for a guest
/// that never flushes.
const MAX_PENDING_FREES: usize = 4096;

pub(super) struct State {
    pub file: ImageFile,
    pub header: Header,
    pub map: Map,
    pub refs: Refcounts,
    pub backing: Option<Box<dyn DiskBackend>>,
    pub writable: bool,
    /// The last compressed cluster inflated (its host offset and data): a guest
    /// reading one cluster in pieces inflates it once.
    inflated: Option<(u64, Vec<u8>)>,
}

fn damaged(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl State {
    pub fn new(
        file: ImageFile,
        header: Header,
        map: Map,
        refs: Refcounts,
        backing: Option<Box<dyn DiskBackend>>,
        writable: bool,
    ) -> Self {
        Self {
            file,
            header,
            map,
            refs,
            backing,
            writable,
            inflated: None,
        }
    }

    fn cs(&self) -> u64 {
        self.header.cluster_size()
    }

    fn lookup(&mut self, pos: u64) -> io::Result<Cluster> {
        let entry = self.map.lookup(&self.file, &mut self.refs, pos)?;
        decode_l2(entry, self.header.cluster_bits, self.header.version).map_err(damaged)
    }

    /// Calls `each(pos, offset in cluster, range in buf)` for each piece of
    /// `len` bytes at `offset` that lies in one guest cluster.
    fn pieces(
        &mut self,
        offset: u64,
        len: usize,
        mut each: impl FnMut(&mut Self, u64, usize, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let cs = self.cs();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let intra = (pos & (cs - 1)) as usize;
            let n = (cs as usize - intra).min(len - done);
            each(self, pos, intra, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.pieces(offset, buf.len(), |s, pos, intra, range| {
            let cluster = s.lookup(pos)?;
            s.read_cluster(cluster, pos, intra, &mut buf[range])
        })
    }

    /// Reads the part of one guest cluster at `pos` (`intra` bytes into it).
    fn read_cluster(
        &mut self,
        cluster: Cluster,
        pos: u64,
        intra: usize,
        out: &mut [u8],
    ) -> io::Result<()> {
        match cluster {
            Cluster::Unallocated => self.read_backing(out, pos),
            Cluster::Zero { .. } => {
                out.fill(0);
                Ok(())
            }
            Cluster::Data { host, .. } => self.file.read(out, host + intra as u64),
            Cluster::Compressed { host, len, .. } => {
                let data = self.inflate(host, len)?;
                out.copy_from_slice(&data[intra..intra + out.len()]);
                Ok(())
            }
        }
    }

    /// The backing file's bytes at `pos`; zeroes past its end or without one.
    fn read_backing(&self, out: &mut [u8], pos: u64) -> io::Result<()> {
        let Some(backing) = &self.backing else {
            out.fill(0);
            return Ok(());
        };
        let cap = backing.capacity();
        let n = cap.saturating_sub(pos).min(out.len() as u64) as usize;
        backing.read_at(&mut out[..n], pos)?;
        out[n..].fill(0);
        Ok(())
    }

    fn inflate(&mut self, host: u64, len: u64) -> io::Result<&[u8]> {
        if self.inflated.as_ref().is_none_or(|(h, _)| *h != host) {
            // `len` is at most two clusters (the entry's sector count is bounded).
            let mut input = vec![0u8; len as usize];
            self.file.read(&mut input, host)?;
            let mut out = vec![0u8; self.cs() as usize];
            inflate_cluster(&input, &mut out)?;
            self.inflated = Some((host, out));
        }
        match &self.inflated {
            Some((_, data)) => Ok(data),
            None => Err(io::Error::other("inflated cluster missing")),
        }
    }

    pub fn write(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the qcow2 image is attached read-only",
            ));
        }
        self.pieces(offset, buf.len(), |s, pos, intra, range| {
            s.write_cluster(pos, intra, &buf[range])
        })?;
        if self.refs.pending_frees() > MAX_PENDING_FREES {
            self.flush()?;
        }
        Ok(())
    }

    fn write_cluster(&mut self, pos: u64, intra: usize, data: &[u8]) -> io::Result<()> {
        let cluster = self.lookup(pos)?;
        if let Cluster::Data { host, copied } = cluster {
            if !self.refs.in_file(host) {
                return Err(damaged(format!(
                    "an L2 entry points at {host:#x}, past the end of the file"
                )));
            }
            if copied || self.refs.get(&self.file, host)? == 1 {
                self.file.write(data, host + intra as u64)?;
                if !copied {
                    self.map
                        .set(&self.file, &mut self.refs, pos, host | COPIED)?;
                }
                return Ok(());
            }
        }
        let cs = self.cs();
        let mut whole = vec![0u8; cs as usize];
        if data.len() as u64 != cs {
            self.read_cluster(cluster, pos & !(cs - 1), 0, &mut whole)?;
        }
        whole[intra..intra + data.len()].copy_from_slice(data);
        let new = self.refs.alloc(&self.file)?;
        // Data first, then the entry that points at it.
        self.file.write(&whole, new)?;
        self.map
            .set(&self.file, &mut self.refs, pos, new | COPIED)?;
        match cluster {
            Cluster::Data { host, .. } | Cluster::Zero { host: Some(host) } => {
                self.refs.free_later(host, cs)
            }
            Cluster::Compressed {
                sectors_start,
                sectors_len,
                ..
            } => {
                self.refs.free_later(sectors_start, sectors_len);
                self.inflated = None;
            }
            Cluster::Unallocated | Cluster::Zero { host: None } => {}
        }
        Ok(())
    }

    /// Makes completed writes durable, in an order under which a crash at any
    /// point leaves an image `qemu-img check` finds consistent (at worst leaked
    /// clusters): refcounts of new clusters and their data, then the L2 tables,
    /// then the L1 table, then the dropped references.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        let f = &self.file;
        if self.refs.has_dirty() || self.map.has_dirty_l2() || self.map.has_dirty_l1() {
            self.refs.write_back(f)?;
            f.sync()?;
            self.map.write_back_l2(f)?;
            if self.map.has_dirty_l1() {
                f.sync()?;
                self.map.write_back_l1(f)?;
            }
        }
        if self.refs.pending_frees() > 0 {
            f.sync()?;
            self.refs.apply_frees(f)?;
            self.refs.write_back(f)?;
        }
        f.sync()
    }
}
