//! Hostile images: a small valid image (GPT, ext4 with grub.cfg, grubenv, BLS
//! entries, kernel and initrd) mutated at random, in the places a reader trusts
//! most (partition table, superblock, group descriptors, inode tables,
//! directories, the configuration files, the booted kernel's extent tree) and
//! anywhere. The reader must answer every one with an entry or an error: no
//! panic, no unbounded allocation.

mod common;

use common::*;
use form_bootdisk::testing::{read_ext_file, Method};
use form_bootdisk::{load_boot, Limits};
use proptest::prelude::*;
use std::sync::OnceLock;

const CFG: &str = r#"
if [ -s $prefix/grubenv ]; then load_env; fi
set default="${saved_entry}"
menuentry 'A' --id a { linux /boot/vmlinuz-1 root=/dev/vda1 ro; initrd /boot/initrd-1 }
submenu 'S' --id s {
  menuentry 'B' --id b { linux /boot/vmlinuz-2 root=/dev/vda1 $extra; initrd /boot/initrd-2 /boot/initrd-1 }
}
blscfg
"#;

/// The booted kernel (`s>b`): in 8 extents under an index node, so that the
/// extent reader's tree walk is what the mutations hit.
fn kernel() -> Vec<u8> {
    blob(2, 60_000)
}

struct Image {
    bytes: Vec<u8>,
    /// Where the partition starts.
    part: usize,
    /// The kernel's inode (number, offset in the image) and its extent
    /// tree's leaf block, in the image.
    ino: u32,
    inode: usize,
    leaf: usize,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = TempDir::new("hostile");
        let tree = Tree::default()
            .file("/boot/grub/grub.cfg", CFG)
            .file(
                "/boot/grub/grubenv",
                "# GRUB Environment Block\nsaved_entry=s>b\nextra=quiet splash\n",
            )
            .file(
                "/boot/loader/entries/x-3.conf",
                "title C\nversion 3\nlinux /boot/vmlinuz-1\n",
            )
            .file("/boot/vmlinuz-1", blob(1, 3000))
            .file("/boot/initrd-1", blob(3, 2000))
            .file("/boot/initrd-2", blob(4, 5000))
            .link("/boot/vmlinuz", "vmlinuz-2");
        let root = fragmented_fs(&dir, tree, "/boot/vmlinuz-2", &kernel(), 2);
        let ex = extents(&root, "/boot/vmlinuz-2");
        assert!(
            ex.iter().filter(|e| e.level == e.depth).count() > 4,
            "{ex:?}"
        );
        let leaf = ex.iter().find(|e| e.level == 0 && e.depth == 1).unwrap();
        let part = 1 << 20;
        let inode = part + inode_offset(&root, "/boot/vmlinuz-2", 1024) as usize;
        let ino = inode_number(&root, "/boot/vmlinuz-2");
        let leaf = part + leaf.physical as usize * 1024;
        let img = disk(&dir, "gpt", &[(root, "L")], None);
        Image {
            bytes: std::fs::read(img).unwrap(),
            part,
            ino,
            inode,
            leaf,
        }
    })
}

fn limits() -> Limits {
    Limits {
        max_config: 64 << 10,
        max_kernel: 1 << 20,
        max_initrd: 1 << 20,
        max_entries: 64,
    }
}

#[test]
fn the_unmutated_image_boots_the_saved_entry() {
    let img = image();
    let files = load_boot(img.bytes.clone(), "h.img", &limits()).unwrap();
    assert_eq!(files.entry.title, "B");
    assert!(files.kernel == kernel());
    // The checksum fix-up the mutations use leaves a valid inode valid.
    let mut fixed = img.bytes.clone();
    fix_inode_checksum(&mut fixed[img.part..], img.ino, img.inode - img.part);
    assert!(fixed == img.bytes);
    // Through the extent tree.
    let fs = img.bytes[img.part..img.part + (2 << 20)].to_vec();
    let (data, how) = read_ext_file(fs, "/boot/vmlinuz-2", 1 << 20, None).unwrap();
    assert_eq!(how, Method::Extents);
    assert!(data == kernel());
    assert_eq!(
        files.entry.cmdline(None),
        "root=/dev/vda1 quiet splash console=ttyS0"
    );
    assert_eq!(files.initrd.unwrap().len(), 7000);
}

/// Where to mutate: (region start, region length) relative to the image.
fn regions() -> Vec<(usize, usize)> {
    let img = image();
    vec![
        (0, 34 * 512),                          // protective MBR, GPT header and entries
        (img.part, 64 << 10), // superblock, group descriptors, bitmaps, inode table
        (img.part, 2 << 20),  // the whole file system (directories, files)
        (img.bytes.len() - 33 * 512, 33 * 512), // the backup GPT
        (img.inode + 0x28, 60), // the kernel's extent tree root (in its inode)
        (img.leaf, 12 * 10),  // the header and first extents of its leaf
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_panic(
        region in 0usize..6,
        edits in prop::collection::vec((any::<u32>(), any::<u8>(), 0u8..4), 1..24),
    ) {
        let mut img = image().bytes.clone();
        let (start, len) = regions()[region];
        for (at, value, how) in edits {
            let i = start + at as usize % len;
            match how {
                0 => img[i] = value,
                1 => img[i] ^= 1 << (value % 8),
                2 => img[i] = 0xff,
                _ => img[i] = 0,
            }
        }
        if region == 4 {
            // Past the inode's checksum, to the extent reader (and ext4-view).
            let at = image();
            fix_inode_checksum(&mut img[at.part..], at.ino, at.inode - at.part);
        }
        // Either outcome is fine; a panic is caught and reported as this text.
        if let Err(e) = load_boot(img, "h.img", &limits()) {
            prop_assert!(!e.to_string().contains("panicked"), "{}", e);
        }
    }

    #[test]
    fn truncated_images_never_panic(keep in 0usize..(3 << 20)) {
        let img = &image().bytes;
        let img = img[..keep.min(img.len())].to_vec();
        if let Err(e) = load_boot(img, "h.img", &limits()) {
            prop_assert!(!e.to_string().contains("panicked"), "{}", e);
        }
    }
}
