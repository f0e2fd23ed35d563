//! File data read from the extent tree (one read per extent) against the same
//! files read by `ext4-view` a block at a time: byte-identical on real images
//! (4 KiB and 1 KiB blocks, 32- and 64-byte group descriptors, holes, a file in
//! 75 extents under an index node), `ext4-view` kept where it must be (block
//! maps, inline data, a journal to replay), and damaged trees refused.

mod common;

use common::*;
use form_bootdisk::testing::{read_ext_file, Method};
use form_bootdisk::{load_boot, Limits};
use std::path::Path;
use std::process::Command;

/// `len` bytes of `blob(seed)` with runs of zeros (holes once written:
/// mke2fs and debugfs skip all-zero blocks).
fn holey(seed: u8, len: usize) -> Vec<u8> {
    let mut data = blob(seed, len);
    for (i, chunk) in data.chunks_mut(48 << 10).enumerate() {
        if i % 3 == 1 {
            let n = chunk.len().min(20 << 10);
            chunk[..n].fill(0);
        }
    }
    data
}

/// `path` of file system image `img` read both ways: must be `want`, with
/// `method` when left to choose.
fn same_both_ways(img: &Path, path: &str, want: &[u8], method: Method) {
    let bytes = std::fs::read(img).unwrap();
    let (chosen, how) = read_ext_file(bytes.clone(), path, 1 << 30, None).unwrap();
    assert_eq!(how, method, "{path}");
    let (view, _) = read_ext_file(bytes.clone(), path, 1 << 30, Some(Method::Ext4View)).unwrap();
    assert!(view == want, "{path}: ext4-view read other bytes");
    assert!(chosen == want, "{path}: the extent reader read other bytes");
    if method == Method::Extents {
        let (direct, _) = read_ext_file(bytes, path, 1 << 30, Some(Method::Extents)).unwrap();
        assert!(direct == want);
    }
}

fn ext(kind: &'static str, tree: Tree) -> Fs {
    Fs::Ext {
        kind,
        uuid: UUID_ROOT,
        tree,
    }
}

#[test]
fn extents_read_what_ext4_view_reads() {
    let dir = TempDir::new("extents");
    let kernel = blob(1, 3 << 20);
    let initrd = holey(2, (5 << 20) + 123);
    let tree = || {
        Tree::default()
            .file("/boot/vmlinuz-1", kernel.clone())
            .file("/boot/initrd.img-1", initrd.clone())
            .file("/boot/empty", "")
            .file("/boot/small", "x")
            .link("/vmlinuz", "boot/vmlinuz-1")
    };
    // 4 KiB blocks (64 MiB), 1 KiB blocks (16 MiB).
    for size in [64, 16] {
        let img = make_fs(&dir, &ext("ext4", tree()), size);
        same_both_ways(&img, "/boot/vmlinuz-1", &kernel, Method::Extents);
        same_both_ways(&img, "/vmlinuz", &kernel, Method::Extents);
        same_both_ways(&img, "/boot/initrd.img-1", &initrd, Method::Extents);
        same_both_ways(&img, "/boot/empty", b"", Method::Extents);
        same_both_ways(&img, "/boot/small", b"x", Method::Extents);
        let ex = extents(&img, "/boot/initrd.img-1");
        assert!(ex.len() > 1, "the initrd has holes: {ex:?}");
    }
    // 32-byte group descriptors (no 64bit feature), no metadata checksums.
    let img = dir.path("no64.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let root = dir.path("no64");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/initrd"), &initrd).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^64bit,^metadata_csum", "-d"])
        .arg(&root)
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    same_both_ways(&img, "/boot/initrd", &initrd, Method::Extents);
}

#[test]
fn a_fragmented_file_under_an_index_node() {
    let dir = TempDir::new("extents-frag");
    let initrd = holey(3, 600_000);
    let img = fragmented_fs(&dir, Tree::default(), "/boot/initrd-frag", &initrd, 4);
    let ex = extents(&img, "/boot/initrd-frag");
    let leaves = ex.iter().filter(|e| e.level == e.depth).count();
    assert!(leaves > 4, "{ex:?}");
    assert!(ex.iter().any(|e| e.depth >= 1), "{ex:?}");
    same_both_ways(&img, "/boot/initrd-frag", &initrd, Method::Extents);
}

#[test]
fn block_maps_are_read_by_ext4_view() {
    let dir = TempDir::new("extents-fallback");
    let kernel = holey(4, 300_000);
    for kind in ["ext2", "ext3"] {
        let img = make_fs(
            &dir,
            &ext(
                kind,
                Tree::default().file("/boot/vmlinuz-1", kernel.clone()),
            ),
            8,
        );
        same_both_ways(&img, "/boot/vmlinuz-1", &kernel, Method::Ext4View);
        let bytes = std::fs::read(&img).unwrap();
        let e = read_ext_file(bytes, "/boot/vmlinuz-1", 1 << 30, Some(Method::Extents));
        assert!(e.is_err(), "{kind}");
    }
}

/// ext4-view 0.9 refuses file systems with inline_data (the extent reader
/// would leave such files to it anyway).
#[test]
fn inline_data_file_systems_are_refused() {
    let dir = TempDir::new("extents-inline");
    let img = dir.path("inline.img");
    std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    let root = dir.path("inline");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/small"), "set default=0\n").unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "inline_data", "-d"])
        .arg(&root)
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = read_ext_file(std::fs::read(&img).unwrap(), "/boot/small", 1 << 20, None);
    assert!(err.unwrap_err().contains("DATA_IN_INODE"));
}

/// A journal that needs recovery: ext4-view replays it in memory (its
/// `Journal::load`, for journals with 64-bit and v3 checksum features, as
/// Linux writes them for metadata_csum file systems), so the blocks on disk
/// may be stale and all file data is left to it. Here the journal holds a
/// newer first block of the kernel than the disk does.
#[test]
fn a_journal_to_recover_leaves_data_to_ext4_view() {
    let dir = TempDir::new("extents-journal");
    let kernel = blob(5, 200_000);
    let img = make_fs(
        &dir,
        &ext(
            "ext4",
            Tree::default().file("/boot/vmlinuz-1", kernel.clone()),
        ),
        8,
    );
    let first = extents(&img, "/boot/vmlinuz-1")[0].physical;
    let newer = dir.path("newer");
    std::fs::write(&newer, [b'J'; 1024]).unwrap();
    debugfs(
        &img,
        &format!("jo -c\njw -b {first} {}\njc\n", newer.display()),
    );
    let mut want = kernel.clone();
    want[..1024].fill(b'J');
    same_both_ways(&img, "/boot/vmlinuz-1", &want, Method::Ext4View);
    // What the extents alone would have read: the stale block.
    let bytes = std::fs::read(&img).unwrap();
    assert!(bytes[first as usize * 1024..][..1024] == kernel[..1024]);
}

/// Blocks allocated but not written (`fallocate`) read as zeros, as Linux
/// reads them; ext4-view 0.9 takes the flag bit for length, so it is not the
/// reference here.
#[test]
fn unwritten_extents_read_as_zeros() {
    let dir = TempDir::new("extents-unwritten");
    // Blocks 10..20 (1 KiB) are a hole, then fallocated.
    let mut data = blob(6, 40_000);
    data[10 << 10..20 << 10].fill(0);
    let img = make_fs(
        &dir,
        &ext("ext4", Tree::default().file("/f", data.clone())),
        4,
    );
    // Some garbage where the allocation will land, so zeros are not luck.
    debugfs(&img, "fallocate /f 10 19\nfallocate /f 60 69\n");
    let ex = extents(&img, "/f");
    assert!(ex.iter().any(|e| e.uninit && e.logical == 10), "{ex:?}");
    let mut bytes = std::fs::read(&img).unwrap();
    for e in ex.iter().filter(|e| e.uninit) {
        let at = e.physical as usize * 1024;
        bytes[at..at + e.len as usize * 1024].fill(0xa5);
    }
    let (got, how) = read_ext_file(bytes, "/f", 1 << 20, None).unwrap();
    assert_eq!(how, Method::Extents);
    assert!(got == data);
}

fn limits() -> Limits {
    Limits {
        max_config: 64 << 10,
        max_kernel: 1 << 20,
        max_initrd: 1 << 20,
        max_entries: 64,
    }
}

/// The fragmented image with a grub.cfg booting its file, the block of the
/// index node's leaf and the offset of the file's inode.
fn fragmented_boot(dir: &TempDir) -> (Vec<u8>, Vec<u8>, usize, usize) {
    let initrd = holey(7, 300_000);
    let tree = Tree::default()
        .file(
            "/boot/grub/grub.cfg",
            "menuentry 'x' { linux /boot/vmlinuz-1 ro; initrd /boot/initrd-frag }\n",
        )
        .file("/boot/vmlinuz-1", blob(8, 5000));
    let img = fragmented_fs(dir, tree, "/boot/initrd-frag", &initrd, 4);
    let ex = extents(&img, "/boot/initrd-frag");
    let index = ex.iter().find(|e| e.level == 0 && e.depth == 1).unwrap();
    let inode = inode_offset(&img, "/boot/initrd-frag", 1024) as usize;
    (
        std::fs::read(&img).unwrap(),
        initrd,
        index.physical as usize * 1024,
        inode,
    )
}

#[test]
fn damaged_extent_trees_are_errors_naming_the_image() {
    let dir = TempDir::new("extents-hostile");
    let (img, initrd, leaf, inode) = fragmented_boot(&dir);
    let files = load_boot(img.clone(), "frag.img", &limits()).unwrap();
    assert!(files.initrd.unwrap()[..initrd.len()] == initrd[..]);
    let root = inode + 0x28;
    let put16 =
        |img: &mut Vec<u8>, at: usize, v: u16| img[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |img: &mut Vec<u8>, at: usize, v: u32| img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("depth bomb", Box::new(move |i| put16(i, root + 6, 6))),
        ("root magic", Box::new(move |i| put16(i, root, 0x1234))),
        (
            "root entries over max",
            Box::new(move |i| put16(i, root + 2, 5)),
        ),
        // The leaf claims depth 1 and points at itself.
        (
            "loop",
            Box::new(move |i| {
                put16(i, leaf + 6, 1);
            }),
        ),
        (
            "depth 2 over a leaf",
            Box::new(move |i| put16(i, root + 6, 2)),
        ),
        (
            "index out of range",
            Box::new(move |i| put32(i, root + 12 + 4, 1 << 30)),
        ),
        (
            "index on the superblock",
            Box::new(move |i| put32(i, root + 12 + 4, 1)),
        ),
        (
            "index high bits",
            Box::new(move |i| put16(i, root + 12 + 8, 0xffff)),
        ),
        ("leaf magic", Box::new(move |i| put16(i, leaf, 0))),
        (
            "leaf entries",
            Box::new(move |i| put16(i, leaf + 2, 0xffff)),
        ),
        (
            "leaf max",
            Box::new(move |i| {
                put16(i, leaf + 2, 90);
                put16(i, leaf + 4, 90)
            }),
        ),
        (
            "extent out of range",
            Box::new(move |i| put32(i, leaf + 12 + 8, 0xffff_fff0)),
        ),
        (
            "extent high bits",
            Box::new(move |i| put16(i, leaf + 12 + 6, 0xffff)),
        ),
        (
            "extent length 0",
            Box::new(move |i| put16(i, leaf + 12 + 4, 0)),
        ),
        ("extents overlap", Box::new(move |i| put32(i, leaf + 24, 0))),
        (
            "extents out of order",
            Box::new(move |i| put32(i, leaf + 12, 500)),
        ),
    ];
    for (what, edit) in cases {
        let mut bad = img.clone();
        edit(&mut bad);
        let err = match load_boot(bad, "frag.img", &limits()) {
            Ok(_) => panic!("{what}: read"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("frag.img") && err.contains("initrd-frag"),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}
