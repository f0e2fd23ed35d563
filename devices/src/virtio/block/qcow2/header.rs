//! The qcow2 header (QEMU's docs/interop/qcow2.txt), versions 2 and 3, and its
//! extensions: parsed from the image's first cluster and checked against the file,
//! so nothing later trusts a size or offset the image claims without a bound.

use super::Refusal;

/// Header fields at fixed offsets (big-endian).
const VERSION: usize = 4;
const BACKING_FILE_OFFSET: usize = 8;
const BACKING_FILE_SIZE: usize = 16;
const CLUSTER_BITS: usize = 20;
const SIZE: usize = 24;
const CRYPT_METHOD: usize = 32;
const L1_SIZE: usize = 36;
const L1_TABLE_OFFSET: usize = 40;
pub(super) const REFCOUNT_TABLE_OFFSET: usize = 48;
const REFCOUNT_TABLE_CLUSTERS: usize = 56;
const NB_SNAPSHOTS: usize = 60;
const INCOMPATIBLE_FEATURES: usize = 72;
pub(super) const AUTOCLEAR_FEATURES: usize = 88;
const REFCOUNT_ORDER: usize = 96;
const HEADER_LENGTH: usize = 100;
const COMPRESSION_TYPE: usize = 104;

const V2_HEADER_LEN: u32 = 72;
const V3_HEADER_LEN: u32 = 104;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// QEMU's own limits: an L1 table over 32 MiB or a refcount table over 8 MiB is
/// not an image QEMU wrote, and bounds what an image can make us allocate.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// QEMU refuses longer backing file names.
const MAX_BACKING_NAME: u32 = 1023;

/// Enough of the header to learn the cluster size, before reading the first cluster.
pub(super) const MIN_HEADER: usize = V2_HEADER_LEN as usize;

/// What form-vmm needs from a qcow2 header, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// The virtual disk's size in bytes.
    pub size: u64,
    pub l1_size: u64,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u64,
    pub nb_snapshots: u32,
    pub autoclear: u64,
    pub backing_name: Option<Vec<u8>>,
    pub backing_format: Option<String>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// The cluster size the header claims, checked, from its first `MIN_HEADER` bytes.
pub(super) fn cluster_bits(start: &[u8]) -> Result<u32, Refusal> {
    let version = be32(start, VERSION);
    if version != 2 && version != 3 {
        return Err(Refusal::Unsupported(format!(
            "qcow2 version {version} (form-vmm reads versions 2 and 3)"
        )));
    }
    let bits = be32(start, CLUSTER_BITS);
    if !(9..=21).contains(&bits) {
        return Err(Refusal::Damaged(format!(
            "cluster_bits {bits} is outside 9..=21 (512 bytes to 2 MiB clusters)"
        )));
    }
    Ok(bits)
}

/// Parses the header from the image's first cluster (`first`, zero-filled past the
/// end of the file) and checks it against `file_len`. `writable`: refusals that
/// only matter to a writer (dirty, corrupt, snapshots) apply.
pub(super) fn parse(first: &[u8], file_len: u64, writable: bool) -> Result<Header, Refusal> {
    let damaged = |s: String| Err(Refusal::Damaged(s));
    let unsupported = |s: String| Err(Refusal::Unsupported(s));
    let cluster_bits = cluster_bits(first)?;
    let cs = 1u64 << cluster_bits;
    if first.len() as u64 != cs {
        return damaged("the first cluster could not be read".into());
    }
    let version = be32(first, VERSION);
    let crypt = be32(first, CRYPT_METHOD);
    if crypt != 0 {
        return unsupported(format!(
            "it is encrypted (crypt_method {crypt}), and form-vmm does not decrypt images: \
             decrypt a copy with qemu-img convert (--object secret,... --image-opts) -O qcow2"
        ));
    }
    let (incompatible, autoclear, refcount_order, header_len) = if version == 2 {
        (0, 0, 4, V2_HEADER_LEN)
    } else {
        (
            be64(first, INCOMPATIBLE_FEATURES),
            be64(first, AUTOCLEAR_FEATURES),
            be32(first, REFCOUNT_ORDER),
            be32(first, HEADER_LENGTH),
        )
    };
    if version == 3 && (header_len < V3_HEADER_LEN || u64::from(header_len) > cs) {
        return damaged(format!("header_length {header_len}"));
    }
    check_incompatible(incompatible, first, header_len, writable)?;
    if refcount_order != 4 {
        return unsupported(format!(
            "refcount_order {refcount_order} ({}-bit refcounts; form-vmm handles 16-bit ones): \
             convert a copy with qemu-img convert -O qcow2 -o refcount_bits=16",
            1u64 << refcount_order.min(63)
        ));
    }
    let nb_snapshots = be32(first, NB_SNAPSHOTS);
    if nb_snapshots > 0 && writable {
        return unsupported(format!(
            "it has {nb_snapshots} internal snapshot(s), which form-vmm never touches: attach it \
             with readonly=on (the guest then sees the active layer), or delete them \
             (qemu-img snapshot -l / -d)"
        ));
    }

    let size = be64(first, SIZE);
    if size == 0 || !size.is_multiple_of(512) {
        return unsupported(format!(
            "its virtual size {size} is not a positive multiple of 512 bytes"
        ));
    }
    // Entries per L2 table, and the bytes one L1 entry covers.
    let l2_bits = cluster_bits - 3;
    let l1_entry_covers = 1u64 << (cluster_bits + l2_bits);
    let l1_needed = size.div_ceil(l1_entry_covers);
    let l1_size = u64::from(be32(first, L1_SIZE));
    let l1_offset = be64(first, L1_TABLE_OFFSET);
    if l1_size < l1_needed {
        return damaged(format!(
            "the L1 table has {l1_size} entries, fewer than the {l1_needed} its virtual size needs"
        ));
    }
    if l1_size * 8 > MAX_L1_BYTES {
        return damaged(format!("the L1 table has {l1_size} entries (over 32 MiB)"));
    }
    check_table("L1 table", l1_offset, l1_size * 8, cs, file_len)?;

    let refcount_table_offset = be64(first, REFCOUNT_TABLE_OFFSET);
    let refcount_table_clusters = u64::from(be32(first, REFCOUNT_TABLE_CLUSTERS));
    let rt_bytes = refcount_table_clusters << cluster_bits;
    if refcount_table_clusters == 0 || rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
        return damaged(format!(
            "the refcount table has {refcount_table_clusters} clusters"
        ));
    }
    check_table(
        "refcount table",
        refcount_table_offset,
        rt_bytes,
        cs,
        file_len,
    )?;

    let backing_name = backing_name(first, cs, file_len)?;
    let ext_end = match &backing_name {
        Some(_) => be64(first, BACKING_FILE_OFFSET) as usize,
        None => cs as usize,
    };
    let backing_format = extensions(first, header_len as usize, ext_end)?;
    Ok(Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        autoclear,
        backing_name,
        backing_format,
    })
}

fn check_incompatible(
    incompatible: u64,
    first: &[u8],
    header_len: u32,
    writable: bool,
) -> Result<(), Refusal> {
    let unsupported = |s: &str| Err(Refusal::Unsupported(s.to_string()));
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return unsupported(
            "its data lives in an external data file, which form-vmm does not follow",
        );
    }
    if incompatible & INCOMPAT_EXTL2 != 0 {
        return unsupported(
            "it has extended L2 entries (subclusters, extended_l2=on): convert a copy with \
             qemu-img convert -O qcow2 -o extended_l2=off",
        );
    }
    if incompatible & INCOMPAT_COMPRESSION != 0 {
        let kind = if header_len > V3_HEADER_LEN {
            first[COMPRESSION_TYPE]
        } else {
            0
        };
        if kind != 0 {
            return unsupported(
                "its clusters are compressed with zstd (compression_type 1); form-vmm inflates \
                 zlib only: convert a copy with qemu-img convert -O qcow2 -o compression_type=zlib",
            );
        }
    }
    let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;
    if incompatible & !known != 0 {
        return Err(Refusal::Unsupported(format!(
            "it uses incompatible feature bits {:#x} that form-vmm does not know",
            incompatible & !known
        )));
    }
    if writable && incompatible & INCOMPAT_DIRTY != 0 {
        return unsupported(
            "it is marked dirty (it was not closed cleanly and its refcounts may be stale): \
             repair it with qemu-img check -r all, or attach it with readonly=on",
        );
    }
    if writable && incompatible & INCOMPAT_CORRUPT != 0 {
        return unsupported(
            "QEMU marked it corrupt: repair it with qemu-img check -r all, or attach it with \
             readonly=on",
        );
    }
    Ok(())
}

/// A table at `offset` of `len` bytes must be cluster-aligned and inside the file.
pub(super) fn check_table(
    what: &str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), Refusal> {
    let inside = offset.checked_add(len).is_some_and(|end| end <= file_len);
    if offset == 0 || !offset.is_multiple_of(cluster_size) || !inside {
        return Err(Refusal::Damaged(format!(
            "the {what} ({len} bytes at offset {offset}) is not aligned or lies outside the \
             {file_len}-byte file"
        )));
    }
    Ok(())
}

fn backing_name(first: &[u8], cs: u64, file_len: u64) -> Result<Option<Vec<u8>>, Refusal> {
    let offset = be64(first, BACKING_FILE_OFFSET);
    if offset == 0 {
        return Ok(None);
    }
    let len = be32(first, BACKING_FILE_SIZE);
    let end = offset.checked_add(u64::from(len));
    if len == 0 || len > MAX_BACKING_NAME || end.is_none_or(|e| e > cs || e > file_len) {
        return Err(Refusal::Damaged(format!(
            "the backing file name ({len} bytes at offset {offset}) does not fit the first cluster"
        )));
    }
    let start = offset as usize;
    Ok(Some(first[start..start + len as usize].to_vec()))
}

/// Walks the header extensions between the header and `end`; returns the backing
/// file's format if one is named. Unknown extensions are skipped (the spec allows
/// it); the feature-name table and bitmaps mean nothing to form-vmm.
fn extensions(first: &[u8], start: usize, end: usize) -> Result<Option<String>, Refusal> {
    let mut at = start;
    let mut format = None;
    while at + 8 <= end {
        let kind = be32(first, at);
        let len = be32(first, at + 4) as usize;
        if kind == EXT_END {
            break;
        }
        let data = at + 8;
        let next = data
            .checked_add(len.next_multiple_of(8))
            .filter(|&n| n <= end)
            .ok_or_else(|| {
                Refusal::Damaged(format!("header extension {kind:#x} runs past the header"))
            })?;
        if kind == EXT_BACKING_FORMAT {
            let name = String::from_utf8_lossy(&first[data..data + len]).into_owned();
            format = Some(name);
        }
        at = next;
    }
    Ok(format)
}
