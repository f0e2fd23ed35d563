//! L1 and L2 table entries: where a guest cluster's data lives, decoded and
//! checked, so a hostile entry is an error and never an out-of-range access.

/// Bits 9..=55: a cluster-aligned host offset in an L1 entry or a standard L2 entry.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The cluster's refcount is exactly 1, so it may be written in place.
pub(super) const COPIED: u64 = 1 << 63;
pub(super) const COMPRESSED: u64 = 1 << 62;
/// Version 3: the cluster reads as zeroes.
pub(super) const ZERO: u64 = 1;

/// Where one guest cluster's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cluster {
    /// Not in this image: the backing file's data, or zeroes without one.
    Unallocated,
    /// Reads as zeroes; `host` is a cluster kept allocated for it (preallocation).
    Zero { host: Option<u64> },
    /// Uncompressed data at `host`; `copied`: its refcount is 1.
    Data { host: u64, copied: bool },
    /// Deflated data: `len` bytes from `host` (which need not be aligned).
    /// `sectors_start`/`sectors_len`: the 512-byte sectors it occupies, as counted
    /// in the refcounts.
    Compressed {
        host: u64,
        len: u64,
        sectors_start: u64,
        sectors_len: u64,
    },
}

/// Decodes an L2 entry of an image with `cluster_bits`; `version` 2 has no zero flag.
pub(super) fn decode_l2(entry: u64, cluster_bits: u32, version: u32) -> Result<Cluster, String> {
    if entry & COMPRESSED != 0 {
        // The host offset takes the low `shift` bits and the sector count the rest
        // up to bit 61 (the spec's x = 62 - (cluster_bits - 8)).
        let shift = 62 - (cluster_bits - 8);
        let host = entry & ((1u64 << shift) - 1);
        let csize_mask = (1u64 << (cluster_bits - 8)) - 1;
        let sectors = ((entry >> shift) & csize_mask) + 1;
        let sectors_start = host & !511;
        let sectors_len = sectors * 512;
        return Ok(Cluster::Compressed {
            host,
            len: sectors_start + sectors_len - host,
            sectors_start,
            sectors_len,
        });
    }
    let host = entry & OFFSET_MASK;
    if version >= 3 && entry & ZERO != 0 {
        return Ok(Cluster::Zero {
            host: (host != 0).then_some(host),
        });
    }
    if host == 0 {
        return Ok(Cluster::Unallocated);
    }
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(format!(
            "an L2 entry points at offset {host:#x}, which is not cluster-aligned"
        ));
    }
    Ok(Cluster::Data {
        host,
        copied: entry & COPIED != 0,
    })
}

/// The L2 table an L1 entry points at, if any; checked to be cluster-aligned.
pub(super) fn decode_l1(entry: u64, cluster_bits: u32) -> Result<Option<u64>, String> {
    let host = entry & OFFSET_MASK;
    if host == 0 {
        return Ok(None);
    }
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(format!(
            "an L1 entry points at offset {host:#x}, which is not cluster-aligned"
        ));
    }
    Ok(Some(host))
}

pub(super) fn get_be64(table: &[u8], index: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&table[index * 8..index * 8 + 8]);
    u64::from_be_bytes(v)
}

pub(super) fn put_be64(table: &mut [u8], index: usize, value: u64) {
    table[index * 8..index * 8 + 8].copy_from_slice(&value.to_be_bytes());
}
