//! qcow2 images form-vmm must refuse, each with a message naming the image and
//! saying why, and damaged or hostile images, which must be errors and never a
//! panic: unsupported features, headers and tables out of range, backing files
//! outside the image's directory, chains too deep or looping, and random damage.

#[path = "qcow2/common.rs"]
mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use devices::virtio::block::{BackingOptions, Block, BlockOptions};
use proptest::prelude::*;

/// A fresh qcow2 image made by QEMU (64 KiB clusters unless `opts` say otherwise).
fn made(s: &Scratch, name: &str, opts: &str, size: &str) -> PathBuf {
    let img = s.path(name);
    let mut args = vec!["create", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([img.to_str().unwrap(), size]);
    qemu_img(&args);
    img
}

fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn open_error(img: &Path, readonly: bool) -> String {
    let e = try_open(img, readonly, &BackingOptions::default())
        .err()
        .unwrap_or_else(|| panic!("{} opened", img.display()));
    let msg = e.to_string();
    assert!(msg.contains(img.to_str().unwrap()), "names no image: {msg}");
    msg
}

/// Patches a fresh image's header and expects `open` (writable) to fail with `want`.
fn refused_after_patch(s: &Scratch, name: &str, offset: u64, bytes: &[u8], want: &str) {
    let img = made(s, name, "", "1M");
    patch(&img, offset, bytes);
    let msg = open_error(&img, false);
    assert!(msg.contains(want), "{name}: {msg}");
}

#[test]
fn unsupported_features_are_refused_with_the_reason() {
    let s = Scratch::new("refuse");
    refused_after_patch(&s, "version", 4, &4u32.to_be_bytes(), "qcow2 version 4");
    refused_after_patch(&s, "bits-low", 20, &8u32.to_be_bytes(), "cluster_bits 8");
    refused_after_patch(&s, "bits-high", 20, &22u32.to_be_bytes(), "cluster_bits 22");
    refused_after_patch(&s, "crypt", 32, &1u32.to_be_bytes(), "encrypted");
    refused_after_patch(&s, "unknown", 72, &(1u64 << 9).to_be_bytes(), "0x200");
    refused_after_patch(
        &s,
        "datafile",
        72,
        &4u64.to_be_bytes(),
        "external data file",
    );
    refused_after_patch(&s, "extl2", 72, &16u64.to_be_bytes(), "extended L2");
    refused_after_patch(&s, "order", 96, &5u32.to_be_bytes(), "refcount_order 5");
    // The same, as QEMU writes them.
    let msg = open_error(&made(&s, "q-extl2", "extended_l2=on", "1M"), false);
    assert!(msg.contains("subclusters"), "{msg}");
    let msg = open_error(&made(&s, "q-refbits", "refcount_bits=8", "1M"), false);
    assert!(msg.contains("refcount_order 3"), "{msg}");
    let data = s.path("data.raw");
    let msg = open_error(
        &made(&s, "q-data", &format!("data_file={}", data.display()), "1M"),
        false,
    );
    assert!(msg.contains("external data file"), "{msg}");
    let msg = open_error(&made(&s, "q-zstd", "compression_type=zstd", "1M"), false);
    assert!(msg.contains("zstd"), "{msg}");
}

#[test]
fn dirty_and_corrupt_images_attach_read_only_only() {
    let s = Scratch::new("dirty");
    for (bit, want) in [(1u64, "dirty"), (2, "corrupt")] {
        let img = made(&s, &format!("i{bit}"), "", "1M");
        patch(&img, 72, &bit.to_be_bytes());
        let msg = open_error(&img, false);
        assert!(
            msg.contains(want) && msg.contains("qemu-img check -r all"),
            "{msg}"
        );
        let disk = open(&img, true);
        assert_eq!(our_contents(&disk, 1 << 20), vec![0u8; 1 << 20]);
    }
}

#[test]
fn headers_and_tables_outside_the_file_are_refused() {
    let s = Scratch::new("range");
    let cases: &[(&str, u64, Vec<u8>, &str)] = &[
        (
            "l1-far",
            40,
            (1u64 << 40).to_be_bytes().to_vec(),
            "L1 table",
        ),
        (
            "l1-unaligned",
            40,
            0x30001u64.to_be_bytes().to_vec(),
            "L1 table",
        ),
        ("l1-small", 36, 0u32.to_be_bytes().to_vec(), "fewer than"),
        ("l1-huge", 36, u32::MAX.to_be_bytes().to_vec(), "L1 table"),
        (
            "rt-far",
            48,
            (1u64 << 50).to_be_bytes().to_vec(),
            "refcount table",
        ),
        ("rt-zero", 56, 0u32.to_be_bytes().to_vec(), "refcount table"),
        (
            "rt-huge",
            56,
            u32::MAX.to_be_bytes().to_vec(),
            "refcount table",
        ),
        (
            "size-odd",
            24,
            1000u64.to_be_bytes().to_vec(),
            "multiple of 512",
        ),
        (
            "size-zero",
            24,
            0u64.to_be_bytes().to_vec(),
            "multiple of 512",
        ),
        (
            "size-huge",
            24,
            (1u64 << 62).to_be_bytes().to_vec(),
            "fewer than",
        ),
        (
            "hdr-len",
            100,
            50u32.to_be_bytes().to_vec(),
            "header_length",
        ),
        (
            "backing-far",
            8,
            70_000u64.to_be_bytes().to_vec(),
            "backing file name",
        ),
    ];
    for (name, offset, bytes, want) in cases {
        refused_after_patch(&s, name, *offset, bytes, want);
    }
    // A backing name longer than QEMU allows.
    let img = made(&s, "backing-long", "", "1M");
    patch(&img, 8, &512u64.to_be_bytes());
    patch(&img, 16, &2000u32.to_be_bytes());
    assert!(open_error(&img, false).contains("backing file name"));
    // A file cut short inside its header or tables.
    let img = made(&s, "cut", "", "1M");
    let bytes = std::fs::read(&img).unwrap();
    for len in [4usize, 50, 100, 70_000] {
        std::fs::write(&img, &bytes[..len.min(bytes.len())]).unwrap();
        let msg = open_error(&img, false);
        assert!(msg.contains("qcow2"), "{len}: {msg}");
    }
}

#[test]
fn direct_io_is_refused_for_qcow2() {
    let s = Scratch::new("direct");
    let img = made(&s, "d.qcow2", "", "1M");
    let e = Block::open(BlockOptions {
        path: img.clone(),
        readonly: false,
        direct: true,
        serial: None,
        format: None,
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("direct=off") && e.contains(img.to_str().unwrap()),
        "{e}"
    );
}

/// `top` in `dir` with backing file name `name` (written as given, not checked).
fn with_backing(dir: &Path, top: &str, name: &str, fmt: &str) -> PathBuf {
    let img = dir.join(top);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        name,
        "-F",
        fmt,
        img.to_str().unwrap(),
        "1M",
    ]);
    img
}

#[test]
fn backing_files_outside_the_image_directory_need_an_allowed_directory() {
    let s = Scratch::new("where");
    let images = s.path("images");
    let bases = s.path("bases");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&bases).unwrap();
    let base = bases.join("base.raw");
    let data = patterned_raw(&base, 1 << 20, 9);
    let allow = BackingOptions {
        allowed_dirs: vec![bases.clone()],
    };
    let absolute = with_backing(&images, "abs.qcow2", base.to_str().unwrap(), "raw");
    let dotdot = with_backing(&images, "dotdot.qcow2", "../bases/base.raw", "raw");
    std::os::unix::fs::symlink(&base, images.join("link.raw")).unwrap();
    let link = with_backing(&images, "link.qcow2", "link.raw", "raw");
    for img in [&absolute, &dotdot, &link] {
        let msg = open_error(img, false);
        assert!(
            msg.contains("outside the image's directory") && msg.contains("base.raw"),
            "{msg}"
        );
        let disk = try_open(img, false, &allow).unwrap();
        assert!(our_contents(&disk, 1 << 20) == data);
    }
    // Not a file name at all.
    let json = with_backing(
        &images,
        "json.qcow2",
        "json:{\"file.filename\":\"/etc/passwd\"}",
        "raw",
    );
    assert!(open_error(&json, false).contains("not a plain file name"));
    // A format form-vmm does not read.
    std::fs::copy(&base, images.join("b.vmdk")).unwrap();
    let vmdk = with_backing(&images, "vmdk.qcow2", "b.vmdk", "vmdk");
    assert!(open_error(&vmdk, false).contains("\"vmdk\""));
    // Missing: the message names both files.
    let gone = with_backing(&images, "gone.qcow2", "gone.raw", "raw");
    let msg = open_error(&gone, false);
    assert!(
        msg.contains("gone.raw") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn backing_chains_are_bounded_and_loop_free() {
    let s = Scratch::new("chain");
    let base = s.path("l0.raw");
    patterned_raw(&base, 1 << 20, 10);
    let mut prev = "l0.raw".to_string();
    let mut fmt = "raw";
    for i in 1..=10 {
        let name = format!("l{i}.qcow2");
        with_backing(&s.dir, &name, &prev, fmt);
        prev = name;
        fmt = "qcow2";
    }
    // l8 has 8 backing files below it; l9 has 9.
    open(&s.path("l8.qcow2"), false);
    let msg = open_error(&s.path("l9.qcow2"), false);
    assert!(msg.contains("deeper than 8"), "{msg}");

    let a = with_backing(&s.dir, "a.qcow2", "b.qcow2", "qcow2");
    with_backing(&s.dir, "b.qcow2", "a.qcow2", "qcow2");
    let msg = open_error(&a, true);
    assert!(msg.contains("loop"), "{msg}");
    let me = with_backing(&s.dir, "me.qcow2", "me.qcow2", "qcow2");
    let msg = open_error(&me, true);
    assert!(msg.contains("loop"), "{msg}");
}

/// The image the random damage starts from: compressed, zero and plain clusters,
/// 512-byte clusters so the tables are many and small.
fn fuzz_seed(s: &Scratch) -> Vec<u8> {
    let raw = s.path("seed.raw");
    let mut rng = Rng(77);
    let mut data = vec![0u8; 256 << 10];
    for (i, block) in data.chunks_mut(4096).enumerate() {
        match i % 3 {
            0 => rng.fill(block),
            1 => block.fill(i as u8),
            _ => {}
        }
    }
    std::fs::write(&raw, &data).unwrap();
    let img = s.path("seed.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=512",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x33 100k 20k", "write -z 40k 8k"],
    );
    std::fs::read(&img).unwrap()
}

/// Opens a damaged image both ways and does I/O on it; everything may fail, but
/// nothing may panic or run away.
fn exercise(img: &Path) {
    if let Ok(disk) = try_open(img, true, &BackingOptions::default()) {
        let cap = disk.capacity();
        let mut buf = vec![0u8; 8192];
        for i in 0..64u64 {
            let at = (i * 4093 * 512) % cap.max(1);
            let n = (cap - at).min(buf.len() as u64) as usize;
            let _ = disk.read_at(&mut buf[..n], at);
        }
    }
    if let Ok(disk) = try_open(img, false, &BackingOptions::default()) {
        let cap = disk.capacity();
        for i in 0..8u64 {
            let at = (i * 7919 * 512) % cap.max(1);
            let n = (cap - at).min(3000) as usize;
            let _ = disk.write_at(&vec![0x5a; n], at);
        }
        let _ = disk.flush();
        let mut buf = vec![0u8; 4096.min(cap as usize)];
        let _ = disk.read_at(&mut buf, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random damage to the header's fields and anywhere in the file (tables and
    /// compressed data lie between the data clusters).
    #[test]
    fn damaged_images_are_errors_not_panics(
        edits in prop::collection::vec(
            (prop_oneof![0usize..112, 0usize..1 << 30], any::<u64>(), 0u8..3),
            1..6,
        )
    ) {
        thread_local! {
            static SEED: (Scratch, Vec<u8>) = {
                let s = Scratch::new("fuzz");
                let seed = fuzz_seed(&s);
                (s, seed)
            };
        }
        SEED.with(|(s, seed)| {
            let mut bytes = seed.clone();
            for &(at, value, kind) in &edits {
                let at = at % (bytes.len() - 8);
                match kind {
                    // A whole big-endian field, aligned as qcow2's are.
                    0 => bytes[at & !7..(at & !7) + 8].copy_from_slice(&value.to_be_bytes()),
                    // One byte.
                    1 => bytes[at] = value as u8,
                    // A small number, where sizes and counts hide.
                    _ => bytes[at & !3..(at & !3) + 4].copy_from_slice(&((value % 70) as u32).to_be_bytes()),
                }
            }
            let img = s.path("damaged.qcow2");
            std::fs::write(&img, &bytes).unwrap();
            exercise(&img);
            // Whatever it did, it stayed within bounds of a sane file size.
            let len = std::fs::metadata(&img).unwrap().len();
            prop_assert!(len < 64 << 20, "the image grew to {len} bytes");
            Ok(())
        })?;
    }
}
