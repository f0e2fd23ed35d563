//! Which file system a partition holds, told by its magic numbers, so that the
//! ones form-vmm cannot read are named in the refusal.

use crate::disk::BlockRead;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 or ext4: the one family that is read.
    Ext,
    Other(&'static str),
    Unknown,
}

/// (offset, magic, name), checked in order.
const MAGICS: &[(u64, &[u8], &str)] = &[
    (0, b"XFSB", "xfs"),
    (0x1_0040, b"_BHRfS_M", "btrfs"),
    (0, b"LUKS\xba\xbe", "LUKS (encrypted)"),
    (0x218, b"LVM2 001", "LVM2 physical volume"),
    (0, b"hsqs", "squashfs"),
    (0x8001, b"CD001", "iso9660"),
    (0x400, b"\x10\x20\xf5\xf2", "f2fs"),
    (0x3, b"NTFS    ", "ntfs"),
    (0x3, b"EXFAT   ", "exfat"),
    (0x52, b"FAT32   ", "vfat"),
    (0x36, b"FAT16   ", "vfat"),
    (0x36, b"FAT12   ", "vfat"),
    (0x36, b"FAT     ", "vfat"),
    (0xff6, b"SWAPSPACE2", "swap"),
    (0x1ff6, b"SWAPSPACE2", "swap"),
    (0xfff6, b"SWAPSPACE2", "swap"),
];

/// ext's superblock starts at 1024; `s_magic` is at 56 in it.
const EXT_MAGIC_OFFSET: u64 = 1024 + 56;

pub fn detect(part: &dyn BlockRead) -> FsKind {
    let matches = |offset: u64, magic: &[u8]| {
        let mut buf = vec![0u8; magic.len()];
        part.read_at(&mut buf, offset).is_ok() && buf == magic
    };
    if matches(EXT_MAGIC_OFFSET, &[0x53, 0xef]) {
        return FsKind::Ext;
    }
    MAGICS
        .iter()
        .find(|(offset, magic, _)| matches(*offset, magic))
        .map_or(FsKind::Unknown, |&(_, _, name)| FsKind::Other(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        let mut disk = vec![0u8; 0x2_0000];
        assert_eq!(detect(&disk), FsKind::Unknown);
        disk[0..4].copy_from_slice(b"XFSB");
        assert_eq!(detect(&disk), FsKind::Other("xfs"));
        disk[1080] = 0x53;
        disk[1081] = 0xef;
        assert_eq!(detect(&disk), FsKind::Ext);
        assert_eq!(detect(&vec![0u8; 10]), FsKind::Unknown);
    }
}
