//! Partition tables: GPT (primary header, or the backup when the primary is
//! damaged) and MBR (primary and logical partitions), or none (a file system on the
//! whole disk). Every number read from the disk is checked before it is used.

use crate::crc32::crc32;
use crate::disk::{within, BlockRead};
use std::collections::HashSet;

/// GPT allows any count; real tables have 128. More than this is refused.
const MAX_GPT_ENTRIES: u32 = 1024;
/// Largest entry size accepted (the spec's is 128, a multiple of 8 up to a sector).
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// Logical partitions followed along an extended partition's chain.
const MAX_LOGICAL: usize = 64;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// The BIOS boot partition's type (GRUB's core image lives there, no file system).
const GPT_BIOS_BOOT: [u8; 16] = guid_bytes(0x2168_6148, 0x6449, 0x6e6f, 0x744e_6565_6445_4649);

/// Builds a GUID's on-disk (mixed-endian) bytes from its text form's fields.
const fn guid_bytes(a: u32, b: u16, c: u16, d: u64) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    let d = d.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table: the disk is one file system.
    None,
}

/// One partition: its number as Linux names it (1-based; 0 for a whole disk
/// without a table) and its byte range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub len: u64,
    /// A GPT BIOS boot partition or an MBR extended partition: never a file system.
    pub no_fs: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub kind: TableKind,
    pub partitions: Vec<Partition>,
    /// Entries skipped because they point outside the disk or are malformed.
    pub skipped: Vec<String>,
}

fn read(disk: &dyn BlockRead, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    if !within(offset, len, disk.size()) {
        return Err(format!(
            "the disk ends before byte {}",
            offset.saturating_add(len as u64)
        ));
    }
    let mut buf = vec![0u8; len];
    disk.read_at(&mut buf, offset)
        .map_err(|e| format!("cannot read {len} bytes at {offset}: {e}"))?;
    Ok(buf)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads the partition table. Errors only for a table that is there but damaged
/// beyond use (a protective MBR whose GPT headers are both bad).
pub fn read_table(disk: &dyn BlockRead) -> Result<Table, String> {
    let size = disk.size();
    if size < 512 {
        return Err(format!(
            "the disk is {size} bytes, too small for any file system"
        ));
    }
    let mbr = read(disk, 0, 512)?;
    let has_mbr_signature = mbr[510] == 0x55 && mbr[511] == 0xaa;
    let protective = has_mbr_signature && (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xee);
    let mut gpt_errors = Vec::new();
    for sector in [512u64, 4096] {
        match read_gpt(disk, sector) {
            Ok(table) => return Ok(table),
            Err(e) => gpt_errors.push(format!("{sector}-byte sectors: {e}")),
        }
    }
    if protective {
        return Err(format!(
            "the disk has a protective MBR but no usable GPT ({})",
            gpt_errors.join("; ")
        ));
    }
    if has_mbr_signature {
        if let Some(table) = read_mbr(disk, &mbr)? {
            return Ok(table);
        }
    }
    Ok(Table {
        kind: TableKind::None,
        partitions: vec![Partition {
            number: 0,
            start: 0,
            len: size,
            no_fs: false,
        }],
        skipped: Vec::new(),
    })
}

/// The GPT with `sector`-byte sectors: the primary header, or the backup at the
/// disk's last sector when the primary is damaged.
fn read_gpt(disk: &dyn BlockRead, sector: u64) -> Result<Table, String> {
    let Some(last_lba) = (disk.size() / sector).checked_sub(1) else {
        return Err("the disk is smaller than one sector".to_string());
    };
    match gpt_at(disk, sector, 1, last_lba) {
        Ok(table) => Ok(table),
        Err(primary) => match gpt_at(disk, sector, last_lba, last_lba) {
            Ok(table) => {
                log::warn!("primary GPT header unusable ({primary}); using the backup");
                Ok(table)
            }
            Err(_) => Err(primary),
        },
    }
}

fn gpt_at(disk: &dyn BlockRead, sector: u64, lba: u64, last_lba: u64) -> Result<Table, String> {
    let header = read(disk, lba * sector, sector as usize)?;
    if &header[..8] != GPT_SIGNATURE {
        return Err(format!("no GPT signature at LBA {lba}"));
    }
    let header_size = u32_at(&header, 12);
    if !(92..=sector as u32).contains(&header_size) {
        return Err(format!("GPT header size {header_size} is out of range"));
    }
    let mut check = header[..header_size as usize].to_vec();
    check[16..20].fill(0);
    if crc32(&check) != u32_at(&header, 16) {
        return Err(format!("GPT header at LBA {lba} fails its CRC"));
    }
    if u64_at(&header, 24) != lba {
        return Err(format!("GPT header at LBA {lba} says it is elsewhere"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84);
    if count > MAX_GPT_ENTRIES {
        return Err(format!(
            "GPT has {count} partition entries; at most {MAX_GPT_ENTRIES} are read"
        ));
    }
    if !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) || !entry_size.is_multiple_of(8) {
        return Err(format!("GPT partition entry size {entry_size} is invalid"));
    }
    let array_len = count as usize * entry_size as usize;
    let array_start = entries_lba
        .checked_mul(sector)
        .ok_or("GPT partition entries lie past the disk")?;
    let array = read(disk, array_start, array_len)?;
    if crc32(&array) != u32_at(&header, 88) {
        return Err("GPT partition entries fail their CRC".to_string());
    }
    let last_usable = u64_at(&header, 48).min(last_lba);
    let mut partitions = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in array.chunks_exact(entry_size as usize).enumerate() {
        let type_guid = &entry[..16];
        if type_guid.iter().all(|&b| b == 0) {
            continue;
        }
        let number = i as u32 + 1;
        let first = u64_at(entry, 32);
        let last = u64_at(entry, 40);
        if first == 0 || first > last || last > last_usable {
            skipped.push(format!(
                "partition {number}: sectors {first}-{last} lie outside the disk"
            ));
            continue;
        }
        partitions.push(Partition {
            number,
            start: first * sector,
            len: (last - first + 1) * sector,
            no_fs: type_guid == GPT_BIOS_BOOT,
        });
    }
    Ok(Table {
        kind: TableKind::Gpt,
        partitions,
        skipped,
    })
}

struct MbrEntry {
    status: u8,
    kind: u8,
    start: u64,
    sectors: u64,
}

fn mbr_entries(sector: &[u8]) -> [MbrEntry; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        MbrEntry {
            status: e[0],
            kind: e[4],
            start: u64::from(u32_at(e, 8)),
            sectors: u64::from(u32_at(e, 12)),
        }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// An MBR's partitions, or None when the sector does not look like a partition
/// table (a FAT boot sector on a whole disk also ends in 0x55AA).
fn read_mbr(disk: &dyn BlockRead, mbr: &[u8]) -> Result<Option<Table>, String> {
    let sectors = disk.size() / 512;
    let entries = mbr_entries(mbr);
    if entries.iter().any(|e| e.status != 0 && e.status != 0x80)
        || entries.iter().all(|e| e.kind == 0)
    {
        return Ok(None);
    }
    let mut partitions = Vec::new();
    let mut skipped = Vec::new();
    let fits = |start: u64, len: u64| {
        start > 0 && len > 0 && start.checked_add(len).is_some_and(|end| end <= sectors)
    };
    let mut extended = None;
    for (i, e) in entries.iter().enumerate() {
        let number = i as u32 + 1;
        if e.kind == 0 {
            continue;
        }
        if !fits(e.start, e.sectors) {
            skipped.push(format!(
                "partition {number}: sectors {}+{} lie outside the disk",
                e.start, e.sectors
            ));
            continue;
        }
        if is_extended(e.kind) {
            if extended.is_none() {
                extended = Some((e.start, e.sectors));
            }
            continue;
        }
        partitions.push(Partition {
            number,
            start: e.start * 512,
            len: e.sectors * 512,
            no_fs: false,
        });
    }
    if let Some((ext_start, ext_len)) = extended {
        read_logical(disk, ext_start, ext_len, &mut partitions, &mut skipped);
    }
    Ok(Some(Table {
        kind: TableKind::Mbr,
        partitions,
        skipped,
    }))
}

/// Follows the chain of extended boot records: each holds one logical partition
/// (relative to itself) and a link to the next (relative to the extended
/// partition). Stops at a loop, a damaged record or [`MAX_LOGICAL`].
fn read_logical(
    disk: &dyn BlockRead,
    ext_start: u64,
    ext_len: u64,
    partitions: &mut Vec<Partition>,
    skipped: &mut Vec<String>,
) {
    let ext_end = ext_start + ext_len;
    let mut seen = HashSet::new();
    let mut ebr = ext_start;
    let mut number = 5;
    while partitions.len() < MAX_LOGICAL + 4 && seen.insert(ebr) {
        let Ok(sector) = read(disk, ebr * 512, 512) else {
            skipped.push(format!("logical partition {number}: unreadable record"));
            return;
        };
        if sector[510] != 0x55 || sector[511] != 0xaa {
            skipped.push(format!("logical partition {number}: damaged record"));
            return;
        }
        let [data, link, ..] = mbr_entries(&sector);
        if data.kind != 0 {
            let start = ebr.checked_add(data.start);
            match start.and_then(|s| s.checked_add(data.sectors).map(|e| (s, e))) {
                Some((start, end)) if data.sectors > 0 && start > ebr && end <= ext_end => {
                    partitions.push(Partition {
                        number,
                        start: start * 512,
                        len: data.sectors * 512,
                        no_fs: false,
                    })
                }
                _ => skipped.push(format!(
                    "logical partition {number}: lies outside its extended partition"
                )),
            }
        }
        number += 1;
        if link.kind == 0 || !is_extended(link.kind) {
            return;
        }
        match ext_start.checked_add(link.start) {
            Some(next) if next > ext_start && next < ext_end => ebr = next,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_disk(entries: &[(u8, u32, u32)], size: usize) -> Vec<u8> {
        let mut disk = vec![0u8; size];
        for (i, &(kind, start, len)) in entries.iter().enumerate() {
            let e = &mut disk[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&len.to_le_bytes());
        }
        disk[510] = 0x55;
        disk[511] = 0xaa;
        disk
    }

    #[test]
    fn bios_boot_guid_matches_its_text_form() {
        // 21686148-6449-6E6F-744E-656564454649 ("Hah!IdontNeedEFI").
        assert_eq!(&GPT_BIOS_BOOT, b"Hah!IdontNeedEFI");
    }

    #[test]
    fn mbr_primaries_and_bounds() {
        let disk = mbr_disk(&[(0x83, 2048, 2048), (0x83, 4000, 100_000)], 4 << 20);
        let table = read_table(&disk).unwrap();
        assert_eq!(table.kind, TableKind::Mbr);
        assert_eq!(table.partitions.len(), 1);
        assert_eq!(table.partitions[0].start, 2048 * 512);
        assert_eq!(table.skipped.len(), 1, "{:?}", table.skipped);
    }

    #[test]
    fn mbr_logical_chain_loops_are_cut() {
        let mut disk = mbr_disk(&[(0x05, 2048, 4096)], 4 << 20);
        // EBR at 2048: logical at +64 for 64 sectors, link to itself (a loop).
        let ebr = 2048 * 512;
        let e = &mut disk[ebr + 446..ebr + 462];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&64u32.to_le_bytes());
        e[12..16].copy_from_slice(&64u32.to_le_bytes());
        let l = &mut disk[ebr + 462..ebr + 478];
        l[4] = 0x05;
        l[8..12].copy_from_slice(&0u32.to_le_bytes());
        disk[ebr + 510] = 0x55;
        disk[ebr + 511] = 0xaa;
        let table = read_table(&disk).unwrap();
        assert_eq!(table.partitions.len(), 1);
        assert_eq!(table.partitions[0].number, 5);
        assert_eq!(table.partitions[0].start, (2048 + 64) * 512);
    }

    #[test]
    fn no_table_is_the_whole_disk() {
        let disk = vec![0u8; 1 << 20];
        let table = read_table(&disk).unwrap();
        assert_eq!(table.kind, TableKind::None);
        assert_eq!(table.partitions[0].len, 1 << 20);
        assert!(read_table(&vec![0u8; 100]).is_err());
    }

    #[test]
    fn protective_mbr_without_gpt_is_an_error() {
        let disk = mbr_disk(&[(0xee, 1, 2047)], 1 << 20);
        let err = read_table(&disk).unwrap_err();
        assert!(err.contains("protective MBR"), "{err}");
    }
}
