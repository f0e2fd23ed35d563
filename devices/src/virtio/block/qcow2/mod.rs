//! qcow2 images (versions 2 and 3), read and written in place: L1/L2 tables,
//! 16-bit refcounts kept exact, compressed clusters (zlib) read, zero clusters,
//! and backing files (raw or qcow2) read through for unallocated clusters.
//!
//! Refused at open, with the reason: encryption, external data files, extended L2
//! entries (subclusters), zstd compression, unknown incompatible features, other
//! refcount widths, and, for writing, internal snapshots and images marked dirty
//! or corrupt. Images with internal snapshots attach read-only: the guest sees the
//! active layer and the snapshot tables are never read.

mod backing;
mod cache;
mod compressed;
mod entry;
mod file;
mod header;
mod map;
mod refcount;
mod state;
#[cfg(test)]
mod tests;

pub use self::backing::{BackingOptions, MAX_BACKING_DEPTH};

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use self::backing::{open_backing, Chain};
use self::file::ImageFile;
use self::header::{cluster_bits, parse, AUTOCLEAR_FEATURES, MIN_HEADER};
use self::map::Map;
use self::refcount::Refcounts;
use self::state::State;
use super::backend::DiskBackend;
use super::error::BlockError;

/// Why an image's header is refused, before the image's path is attached.
#[derive(Debug)]
pub(super) enum Refusal {
    /// A valid qcow2 feature form-vmm does not implement.
    Unsupported(String),
    /// Not a consistent qcow2 image.
    Damaged(String),
}

impl Refusal {
    fn into_error(self, path: &Path) -> BlockError {
        let path = path.to_path_buf();
        match self {
            Refusal::Unsupported(reason) => BlockError::Qcow2Unsupported { path, reason },
            Refusal::Damaged(reason) => BlockError::Qcow2Damaged { path, reason },
        }
    }
}

/// How many metadata tables one image caches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheSizes {
    pub l2_tables: usize,
    pub refcount_blocks: usize,
}

impl CacheSizes {
    /// 4 MiB of L2 tables (32 GiB of disk with 64 KiB clusters) and 1 MiB of
    /// refcount blocks (64 TiB of file): a few MiB per disk, however hostile.
    fn for_cluster_bits(bits: u32) -> Self {
        Self {
            l2_tables: (4usize << 20) >> bits,
            refcount_blocks: (1usize << 20) >> bits,
        }
    }
}

/// An open qcow2 image, with its backing chain.
pub(crate) struct Qcow2Disk {
    state: Mutex<State>,
    capacity: u64,
}

impl Qcow2Disk {
    /// Opens the qcow2 image in `file` (opened and locked by the caller, read-write
    /// unless `readonly`).
    pub fn open(
        file: File,
        path: &Path,
        readonly: bool,
        backing: &BackingOptions,
    ) -> Result<Self, BlockError> {
        let meta = file.metadata().map_err(|source| BlockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut chain = Chain::new(&meta);
        Self::open_layer(file, path, readonly, backing, &mut chain, None)
    }

    /// As `open`, caching no more metadata than `caches` (tests reach eviction).
    #[cfg(test)]
    pub fn open_with_caches(
        file: File,
        path: &Path,
        caches: CacheSizes,
    ) -> Result<Self, BlockError> {
        let meta = file.metadata().map_err(|source| BlockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut chain = Chain::new(&meta);
        let opts = BackingOptions::default();
        Self::open_layer(file, path, false, &opts, &mut chain, Some(caches))
    }

    fn open_layer(
        file: File,
        path: &Path,
        readonly: bool,
        backing: &BackingOptions,
        chain: &mut Chain,
        caches: Option<CacheSizes>,
    ) -> Result<Self, BlockError> {
        let read_err = |source| BlockError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = ImageFile::new(file, !readonly);
        let file_len = file.len().map_err(read_err)?;
        let mut start = [0u8; MIN_HEADER];
        file.read(&mut start, 0).map_err(read_err)?;
        let bits = cluster_bits(&start).map_err(|r| r.into_error(path))?;
        let mut first = vec![0u8; 1 << bits];
        file.read(&mut first, 0).map_err(read_err)?;
        let header = parse(&first, file_len, !readonly).map_err(|r| r.into_error(path))?;
        let caches = caches.unwrap_or(CacheSizes::for_cluster_bits(bits));
        let map = Map::load(&file, &header, caches.l2_tables).map_err(read_err)?;
        let refs =
            Refcounts::load(&file, &header, file_len, caches.refcount_blocks).map_err(read_err)?;
        let lower = match &header.backing_name {
            Some(name) => Some(open_backing(
                path,
                name,
                header.backing_format.as_deref(),
                backing,
                chain,
            )?),
            None => None,
        };
        if !readonly && header.autoclear != 0 {
            // Autoclear features (bitmaps) describe the data; a writer that does
            // not keep them up to date must clear them so QEMU stops trusting them.
            file.write(&[0u8; 8], AUTOCLEAR_FEATURES as u64)
                .map_err(|source| BlockError::Open {
                    path: path.to_path_buf(),
                    mode: " read-write",
                    source,
                })?;
        }
        Ok(Self {
            capacity: header.size,
            state: Mutex::new(State::new(file, header, map, refs, lower, !readonly)),
        })
    }

    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("an earlier qcow2 request panicked"))
    }
}

impl DiskBackend for Qcow2Disk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.state()?.read(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.state()?.write(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.state()?.flush()
    }
}

impl Drop for Qcow2Disk {
    /// Metadata still in the caches reaches the file when the disk goes away (a
    /// guest that never flushed before power-off keeps its writes).
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            if let Err(e) = state.flush() {
                log::warn!("qcow2: cannot write metadata back at close: {e}");
            }
        }
    }
}
