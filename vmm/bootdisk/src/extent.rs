//! File data read straight from an ext4 inode's extent tree: one `read_at` per
//! run of contiguous blocks, into the caller's buffer. `ext4-view` finds the
//! file (path, symlinks, directories) and reads everything else; it reads file
//! data a block at a time with copies on the way, which for a 60 MiB initrd
//! cost about 80 ms.
//!
//! Only what this module can vouch for is read here; [`Fallback`] sends the
//! caller back to `ext4-view`: a journal that needs recovery (ext4-view
//! replays it in memory, so the blocks on disk may be stale), `meta_bg` group
//! descriptors, files without extents (ext2/3 block maps) or with inline data.
//! A damaged extent tree is an error. Everything is bounded: tree depth 5,
//! entries per node by the node's size, nodes read by the file's block count,
//! every block checked against the file system's size. Checksums are not
//! checked (the image's owner could write valid ones anyway).

use crate::disk::BlockRead;

/// Incompatible features (`s_feature_incompat`).
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Inode flags (`i_flags`).
const EXTENTS_FL: u32 = 0x8_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xf30a;
const MAX_DEPTH: u16 = 5;
/// Extents longer than this are uninitialized (allocated, read as zeros).
const MAX_INIT_LEN: u16 = 32768;
/// The biggest read issued at once (extents are at most 128 MiB anyway).
const MAX_READ: u64 = 256 << 20;

/// Why the file is left to `ext4-view`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fallback(pub(crate) &'static str);

/// What is needed of the superblock, checked once when the file system opens.
#[derive(Debug)]
pub(crate) struct Geometry {
    block_size: u64,
    blocks_count: u64,
    first_data_block: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    is_64bit: bool,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Geometry {
    /// Reads the superblock; an `Err` when file data must be left to
    /// `ext4-view` for the whole file system.
    pub(crate) fn read(fs: &dyn BlockRead) -> Result<Geometry, Fallback> {
        let mut sb = [0u8; 1024];
        fs.read_at(&mut sb, 1024)
            .map_err(|_| Fallback("the superblock cannot be read"))?;
        Geometry::parse(&sb)
    }

    fn parse(sb: &[u8; 1024]) -> Result<Geometry, Fallback> {
        let bad = Err(Fallback("superblock values out of range"));
        if u16_at(sb, 0x38) != 0xef53 {
            return Err(Fallback("no ext superblock"));
        }
        let incompat = u32_at(sb, 0x60);
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(Fallback("the journal needs recovery"));
        }
        if incompat & (INCOMPAT_JOURNAL_DEV | INCOMPAT_META_BG) != 0 {
            return Err(Fallback("meta_bg or a journal device"));
        }
        let log = u32_at(sb, 0x18);
        if log > 6 {
            return bad;
        }
        let block_size = 1024u64 << log;
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = u64::from(u32_at(sb, 0x4));
        let desc_size = if is_64bit {
            blocks_count |= u64::from(u32_at(sb, 0x150)) << 32;
            u64::from(u16_at(sb, 0xfe))
        } else {
            32
        };
        if desc_size < 32 || desc_size > block_size || !desc_size.is_power_of_two() {
            return bad;
        }
        let first_data_block = u64::from(u32_at(sb, 0x14));
        let blocks_per_group = u64::from(u32_at(sb, 0x20));
        let inodes_per_group = u32_at(sb, 0x28);
        let inode_size = if u32_at(sb, 0x4c) == 0 {
            128
        } else {
            u64::from(u16_at(sb, 0x58))
        };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || first_data_block >= blocks_count
            || !(128..=block_size).contains(&inode_size)
        {
            return bad;
        }
        Ok(Geometry {
            block_size,
            blocks_count,
            first_data_block,
            inodes_count: u32_at(sb, 0x0),
            inodes_per_group,
            inode_size,
            desc_size,
            groups: (blocks_count - first_data_block).div_ceil(blocks_per_group),
            is_64bit,
        })
    }

    /// Byte offset of block `block` of `count` blocks, if they lie in the
    /// file system and not on its first (superblock) block.
    fn block_offset(&self, block: u64, count: u64) -> Option<u64> {
        let end = block.checked_add(count)?;
        if block <= self.first_data_block || end > self.blocks_count {
            return None;
        }
        block.checked_mul(self.block_size)
    }

    /// The first 128 bytes of inode `ino`.
    fn inode(&self, fs: &dyn BlockRead, ino: u32) -> Result<[u8; 128], String> {
        if ino == 0 || ino > self.inodes_count {
            return Err(format!("inode {ino} is out of range"));
        }
        let group = u64::from((ino - 1) / self.inodes_per_group);
        let index = u64::from((ino - 1) % self.inodes_per_group);
        if group >= self.groups {
            return Err(format!("inode {ino}: block group {group} is out of range"));
        }
        let at = (self.first_data_block + 1)
            .checked_mul(self.block_size)
            .and_then(|gdt| gdt.checked_add(group.checked_mul(self.desc_size)?))
            .ok_or_else(|| format!("inode {ino}: group descriptor {group} is out of range"))?;
        let mut desc = [0u8; 64];
        let desc = &mut desc[..self.desc_size.min(64) as usize];
        fs.read_at(desc, at)
            .map_err(|e| format!("group descriptor {group}: {e}"))?;
        let mut table = u64::from(u32_at(desc, 0x8));
        if self.is_64bit && desc.len() >= 64 {
            table |= u64::from(u32_at(desc, 0x28)) << 32;
        }
        let table_blocks =
            (u64::from(self.inodes_per_group) * self.inode_size).div_ceil(self.block_size);
        let at = self
            .block_offset(table, table_blocks)
            .and_then(|t| t.checked_add(index * self.inode_size))
            .ok_or_else(|| format!("inode {ino}: inode table at block {table} is out of range"))?;
        let mut raw = [0u8; 128];
        fs.read_at(&mut raw, at)
            .map_err(|e| format!("inode {ino}: {e}"))?;
        Ok(raw)
    }
}

/// A run of file blocks: `len` blocks from file block `logical`, at byte `at`
/// of the file system (block `physical`), or unwritten (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    logical: u64,
    physical: u64,
    at: u64,
    len: u64,
    zeros: bool,
}

struct Walk<'a> {
    fs: &'a dyn BlockRead,
    geo: &'a Geometry,
    ino: u32,
    /// Blocks of the file (its size rounded up): extents past it are skipped.
    file_blocks: u64,
    /// Extent tree blocks still allowed to be read.
    nodes_left: u64,
    /// The first file block the next extent may map.
    next: u64,
    runs: Vec<Run>,
}

impl Walk<'_> {
    fn err(&self, what: impl std::fmt::Display) -> String {
        format!("inode {}: extent tree: {what}", self.ino)
    }

    /// Header of a node: (entries, depth), checked against its room.
    fn header(&self, node: &[u8], depth: Option<u16>) -> Result<(usize, u16), String> {
        if u16_at(node, 0) != EXTENT_MAGIC {
            return Err(self.err("bad magic"));
        }
        let (entries, max, d) = (u16_at(node, 2), u16_at(node, 4), u16_at(node, 6));
        let room = (node.len() - 12) / 12;
        if entries > max || usize::from(max) > room {
            return Err(self.err(format!("{entries} entries of {max} in room for {room}")));
        }
        if d > MAX_DEPTH || depth.is_some_and(|want| want != d) {
            return Err(self.err(format!("depth {d} where {depth:?} was expected")));
        }
        Ok((usize::from(entries), d))
    }

    fn node(&mut self, node: &[u8], depth: Option<u16>) -> Result<(), String> {
        let (entries, depth) = self.header(node, depth)?;
        let mut last_key: Option<u32> = None;
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let key = u32_at(e, 0);
            if last_key.is_some_and(|k| key <= k) {
                return Err(self.err("entries out of order"));
            }
            last_key = Some(key);
            if u64::from(key) >= self.file_blocks {
                // Preallocated past the end of the file: nothing to read (the
                // order of the entries is still checked).
                continue;
            }
            if depth == 0 {
                self.leaf(e)?;
            } else {
                let child = u64::from(u32_at(e, 4)) | u64::from(u16_at(e, 8)) << 32;
                let at = self
                    .geo
                    .block_offset(child, 1)
                    .ok_or_else(|| self.err(format!("node at block {child} is out of range")))?;
                if self.nodes_left == 0 {
                    return Err(self.err("more nodes than the file has blocks"));
                }
                self.nodes_left -= 1;
                // Bounded: at most 64 KiB (block sizes are checked).
                let mut block = vec![0u8; self.geo.block_size as usize];
                self.fs
                    .read_at(&mut block, at)
                    .map_err(|e| self.err(format!("block {child}: {e}")))?;
                self.node(&block, Some(depth - 1))?;
            }
        }
        Ok(())
    }

    fn leaf(&mut self, e: &[u8]) -> Result<(), String> {
        let logical = u64::from(u32_at(e, 0));
        let raw_len = u16_at(e, 4);
        let physical = u64::from(u16_at(e, 6)) << 32 | u64::from(u32_at(e, 8));
        let (len, zeros) = if raw_len > MAX_INIT_LEN {
            (u64::from(raw_len - MAX_INIT_LEN), true)
        } else {
            (u64::from(raw_len), false)
        };
        if len == 0 {
            return Err(self.err(format!("empty extent at file block {logical}")));
        }
        if logical < self.next {
            return Err(self.err(format!("extents overlap at file block {logical}")));
        }
        let at = self.geo.block_offset(physical, len).ok_or_else(|| {
            self.err(format!(
                "extent of {len} blocks at block {physical} is out of range"
            ))
        })?;
        self.next = logical + len;
        let len = len.min(self.file_blocks - logical);
        match self.runs.last_mut() {
            // Contiguous on disk and in the file: one read.
            Some(r)
                if !zeros
                    && !r.zeros
                    && r.logical + r.len == logical
                    && r.physical + r.len == physical
                    && (r.len + len) * self.geo.block_size <= MAX_READ =>
            {
                r.len += len
            }
            _ => self.runs.push(Run {
                logical,
                physical,
                at,
                len,
                zeros,
            }),
        }
        Ok(())
    }
}

/// Reads the data of inode `ino` (a regular file of `size` bytes, as
/// `ext4-view` found it) into `out`, which must be `size` bytes of zeros.
/// `Ok(Err(..))`: `out` is untouched, read the file with `ext4-view`.
pub(crate) fn read_file(
    fs: &dyn BlockRead,
    geo: &Geometry,
    ino: u32,
    size: u64,
    out: &mut [u8],
) -> Result<Result<(), Fallback>, String> {
    let inode = geo.inode(fs, ino)?;
    let mode = u16_at(&inode, 0x0);
    let inode_size = u64::from(u32_at(&inode, 0x4)) | u64::from(u32_at(&inode, 0x6c)) << 32;
    if mode & 0xf000 != 0x8000 || inode_size != size || out.len() as u64 != size {
        return Ok(Err(Fallback("not the inode ext4-view opened")));
    }
    let flags = u32_at(&inode, 0x20);
    if flags & INLINE_DATA_FL != 0 {
        return Ok(Err(Fallback("inline data")));
    }
    if flags & EXTENTS_FL == 0 {
        return Ok(Err(Fallback("a block map (no extents)")));
    }
    let file_blocks = size.div_ceil(geo.block_size);
    let mut walk = Walk {
        fs,
        geo,
        ino,
        file_blocks,
        // A valid tree has fewer nodes than extents, and one path down.
        nodes_left: file_blocks + u64::from(MAX_DEPTH),
        next: 0,
        runs: Vec::new(),
    };
    walk.node(&inode[0x28..0x64], None)?;
    for run in walk.runs {
        if run.zeros {
            continue;
        }
        // In range: the run starts below `file_blocks` and was cut to it, and
        // the last block is cut to the file's size.
        let start = run.logical * geo.block_size;
        let end = ((run.logical + run.len) * geo.block_size).min(size);
        let dst = &mut out[start as usize..end as usize];
        fs.read_at(dst, run.at)
            .map_err(|e| format!("inode {ino}: block {}: {e}", run.physical))?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 KiB-block file system of 64 blocks: superblock at 1024, group
    /// descriptors at block 2, inode table at block 4 (inode size 128).
    fn fs() -> Vec<u8> {
        let mut d = vec![0u8; 64 << 10];
        let sb = &mut d[1024..2048];
        sb[0..4].copy_from_slice(&16u32.to_le_bytes()); // inodes
        sb[4..8].copy_from_slice(&64u32.to_le_bytes()); // blocks
        sb[0x14..0x18].copy_from_slice(&1u32.to_le_bytes()); // first data block
        sb[0x20..0x24].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x28..0x2c].copy_from_slice(&16u32.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        sb[0x4c] = 1;
        sb[0x58..0x5a].copy_from_slice(&128u16.to_le_bytes());
        d[2048 + 8..2048 + 12].copy_from_slice(&4u32.to_le_bytes());
        d
    }

    fn header(entries: u16, max: u16, depth: u16) -> Vec<u8> {
        [0xf30au16, entries, max, depth, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn leaf(logical: u32, len: u16, physical: u32) -> Vec<u8> {
        let mut e = logical.to_le_bytes().to_vec();
        e.extend(len.to_le_bytes());
        e.extend(0u16.to_le_bytes());
        e.extend(physical.to_le_bytes());
        e
    }

    fn index(logical: u32, child: u32) -> Vec<u8> {
        let mut e = logical.to_le_bytes().to_vec();
        e.extend(child.to_le_bytes());
        e.extend([0u8; 4]);
        e
    }

    /// Inode 12 (regular, `size` bytes, extents) with `root` as its i_block.
    fn put_inode(d: &mut [u8], size: u32, root: &[u8]) {
        let at = 4 * 1024 + 11 * 128;
        let ino = &mut d[at..at + 128];
        ino[0..2].copy_from_slice(&0x81a4u16.to_le_bytes());
        ino[4..8].copy_from_slice(&size.to_le_bytes());
        ino[0x20..0x24].copy_from_slice(&EXTENTS_FL.to_le_bytes());
        ino[0x28..0x64].fill(0);
        ino[0x28..0x28 + root.len()].copy_from_slice(root);
    }

    fn read(d: &[u8], size: u64) -> Result<Result<Vec<u8>, Fallback>, String> {
        let geo = Geometry::read(&d).unwrap();
        let mut out = vec![0u8; size as usize];
        read_file(&d, &geo, 12, size, &mut out).map(|r| r.map(|()| out))
    }

    #[test]
    fn leaves_holes_and_unwritten_extents() {
        let mut d = fs();
        for b in 20..40 {
            d[b * 1024..(b + 1) * 1024].fill(b as u8);
        }
        // Blocks 0-1 at 20, a hole at 2, 3-4 unwritten, 5 at 30, 6-7 a hole.
        let root = [
            header(3, 4, 0),
            leaf(0, 2, 20),
            leaf(3, 32768 + 2, 22),
            leaf(5, 1, 30),
        ]
        .concat();
        put_inode(&mut d, 8 * 1024 - 100, &root);
        let out = read(&d, 8 * 1024 - 100).unwrap().unwrap();
        let mut want = vec![20u8; 1024];
        want.extend([21u8; 1024]);
        want.extend([0u8; 3 * 1024]);
        want.extend([30u8; 1024]);
        want.extend(vec![0u8; 2 * 1024 - 100]);
        assert!(out == want);
    }

    #[test]
    fn index_nodes_and_a_tail_past_the_end() {
        let mut d = fs();
        for b in 20..40 {
            d[b * 1024..(b + 1) * 1024].fill(b as u8);
        }
        let root = [header(2, 4, 1), index(0, 10), index(2, 11)].concat();
        put_inode(&mut d, 3000, &root);
        let n1 = [header(1, 84, 0), leaf(0, 2, 25)].concat();
        // Reaches past the file's 3 blocks: cut to them.
        let n2 = [header(1, 84, 0), leaf(2, 5, 33)].concat();
        d[10 * 1024..10 * 1024 + n1.len()].copy_from_slice(&n1);
        d[11 * 1024..11 * 1024 + n2.len()].copy_from_slice(&n2);
        let out = read(&d, 3000).unwrap().unwrap();
        assert!(out[..1024].iter().all(|&b| b == 25));
        assert!(out[1024..2048].iter().all(|&b| b == 26));
        assert!(out[2048..].iter().all(|&b| b == 33));
    }

    #[test]
    fn damaged_trees_are_errors() {
        /// What, the inode's root, (block, bytes) written to the disk.
        type Case = (&'static str, Vec<u8>, Vec<(usize, Vec<u8>)>);
        let cases: Vec<Case> = vec![
            (
                "bad magic",
                [0u16, 1, 4, 0, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                vec![],
            ),
            ("too many entries", [header(5, 4, 0)].concat(), vec![]),
            ("room", [header(1, 9, 0), leaf(0, 1, 20)].concat(), vec![]),
            (
                "depth bomb",
                [header(1, 4, 6), index(0, 10)].concat(),
                vec![],
            ),
            (
                "index loop",
                [header(1, 4, 2), index(0, 10)].concat(),
                vec![(10, [header(1, 84, 1), index(0, 10)].concat())],
            ),
            (
                "depth mismatch",
                [header(1, 4, 1), index(0, 10)].concat(),
                vec![(10, [header(1, 84, 1), index(0, 10)].concat())],
            ),
            (
                "block out of range",
                [header(1, 4, 0), leaf(0, 2, 63)].concat(),
                vec![],
            ),
            (
                "node out of range",
                [header(1, 4, 1), index(0, 64)].concat(),
                vec![],
            ),
            (
                "node on block 0",
                [header(1, 4, 1), index(0, 0)].concat(),
                vec![],
            ),
            (
                "data on block 0",
                [header(1, 4, 0), leaf(0, 1, 0)].concat(),
                vec![],
            ),
            (
                "overlap",
                [header(2, 4, 0), leaf(0, 2, 20), leaf(1, 1, 30)].concat(),
                vec![],
            ),
            (
                "order",
                [header(2, 4, 0), leaf(1, 1, 20), leaf(0, 1, 30)].concat(),
                vec![],
            ),
            (
                "empty extent",
                [header(1, 4, 0), leaf(0, 0, 20)].concat(),
                vec![],
            ),
            (
                "huge physical",
                {
                    let mut e = leaf(0, 1, 20);
                    e[6..8].copy_from_slice(&0xffffu16.to_le_bytes());
                    [header(1, 4, 0), e].concat()
                },
                vec![],
            ),
        ];
        for (what, root, blocks) in cases {
            let mut d = fs();
            put_inode(&mut d, 2048, &root[..root.len().min(60)]);
            for (b, node) in blocks {
                d[b * 1024..b * 1024 + node.len()].copy_from_slice(&node);
            }
            assert!(read(&d, 2048).is_err(), "{what}: {:?}", read(&d, 2048));
        }
    }

    #[test]
    fn what_is_left_to_ext4_view() {
        let mut d = fs();
        put_inode(&mut d, 10, &header(0, 4, 0));
        assert_eq!(read(&d, 10), Ok(Ok(vec![0u8; 10])));
        assert_eq!(
            read(&d, 11),
            Ok(Err(Fallback("not the inode ext4-view opened")))
        );
        let at = 4 * 1024 + 11 * 128 + 0x20;
        d[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(read(&d, 10), Ok(Err(Fallback("a block map (no extents)"))));
        d[at..at + 4].copy_from_slice(&(EXTENTS_FL | INLINE_DATA_FL).to_le_bytes());
        assert_eq!(read(&d, 10), Ok(Err(Fallback("inline data"))));
        d[1024 + 0x60] = INCOMPAT_RECOVER as u8;
        assert_eq!(
            Geometry::read(&d).unwrap_err(),
            Fallback("the journal needs recovery")
        );
        let geo = Geometry::parse(&{
            let mut sb = [0u8; 1024];
            sb.copy_from_slice(&fs()[1024..2048]);
            sb
        })
        .unwrap();
        let mut out = [0u8; 10];
        assert!(read_file(&d, &geo, 0, 10, &mut out).is_err());
        assert!(read_file(&d, &geo, 17, 10, &mut out).is_err());
    }
}
