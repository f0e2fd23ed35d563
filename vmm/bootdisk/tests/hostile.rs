//! Hostile images: a small valid image (GPT, ext4 with grub.cfg, grubenv, BLS
//! entries, kernel and initrd) mutated at random, in the places a reader trusts
//! most (partition table, superblock, group descriptors, inode tables,
//! directories, the configuration files) and anywhere. The reader must answer
//! every one with an entry or an error: no panic, no unbounded allocation.

mod common;

use common::*;
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

/// The image, and where its partition starts.
fn image() -> &'static (Vec<u8>, usize) {
    static IMAGE: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = TempDir::new("hostile");
        let root = make_fs(
            &dir,
            &Fs::Ext {
                kind: "ext4",
                uuid: UUID_ROOT,
                tree: Tree::default()
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
                    .file("/boot/vmlinuz-2", blob(2, 7000))
                    .file("/boot/initrd-1", blob(3, 2000))
                    .file("/boot/initrd-2", blob(4, 5000))
                    .link("/boot/vmlinuz", "vmlinuz-2"),
            },
            2,
        );
        let img = disk(&dir, "gpt", &[(root, "L")], None);
        (std::fs::read(img).unwrap(), 1 << 20)
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
    let (img, _) = image();
    let files = load_boot(img.clone(), "h.img", &limits()).unwrap();
    assert_eq!(files.entry.title, "B");
    assert_eq!(files.kernel, blob(2, 7000));
    assert_eq!(
        files.entry.cmdline(None),
        "root=/dev/vda1 quiet splash console=ttyS0"
    );
    assert_eq!(files.initrd.unwrap().len(), 7000);
}

/// Where to mutate: (region start, region length) relative to the image.
fn regions() -> Vec<(usize, usize)> {
    let (img, part) = image();
    vec![
        (0, 34 * 512),                    // protective MBR, GPT header and entries
        (*part, 64 << 10),                // superblock, group descriptors, bitmaps, inode table
        (*part, 1 << 20),                 // the whole file system (directories, files)
        (img.len() - 33 * 512, 33 * 512), // the backup GPT
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_panic(
        region in 0usize..4,
        edits in prop::collection::vec((any::<u32>(), any::<u8>(), 0u8..4), 1..24),
    ) {
        let (img, _) = image();
        let mut img = img.clone();
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
        // Either outcome is fine; a panic is caught and reported as this text.
        if let Err(e) = load_boot(img, "h.img", &limits()) {
            prop_assert!(!e.to_string().contains("panicked"), "{}", e);
        }
    }

    #[test]
    fn truncated_images_never_panic(keep in 0usize..(3 << 20)) {
        let (img, _) = image();
        let img = img[..keep.min(img.len())].to_vec();
        if let Err(e) = load_boot(img, "h.img", &limits()) {
            prop_assert!(!e.to_string().contains("panicked"), "{}", e);
        }
    }
}
