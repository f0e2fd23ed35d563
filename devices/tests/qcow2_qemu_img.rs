//! qcow2 images QEMU made, read and written through form-vmm's implementation and
//! checked with QEMU's: what the guest reads must be what `qemu-img convert -O raw`
//! reads, and after form-vmm wrote, `qemu-img check` must find no errors or leaks
//! and QEMU must read exactly what was written.

#[path = "qcow2/common.rs"]
mod common;

use common::*;
use devices::virtio::block::ImageFormat;

const MIB: usize = 1 << 20;

#[test]
fn reads_what_qemu_reads_for_v2_v3_and_cluster_sizes() {
    let s = Scratch::new("read");
    let raw = s.path("data.raw");
    let data = patterned_raw(&raw, 3 * MIB, 1);
    for compat in ["0.10", "1.1"] {
        for cluster in ["512", "4096", "65536", "2M"] {
            let img = s.path(&format!("v{compat}-{cluster}.qcow2"));
            let o = format!("compat={compat},cluster_size={cluster}");
            qemu_img(&[
                "convert",
                "-O",
                "qcow2",
                "-o",
                &o,
                raw.to_str().unwrap(),
                img.to_str().unwrap(),
            ]);
            let disk = open(&img, true);
            assert_eq!(disk.format(), ImageFormat::Qcow2);
            assert_eq!(disk.capacity(), data.len() as u64);
            // Pieces that straddle clusters, and whole large reads.
            assert!(
                our_contents(&disk, 1000 * 512) == data,
                "{o}: contents differ"
            );
            assert!(our_contents(&disk, 3 * MIB) == data, "{o}: contents differ");
            let mut odd = vec![0u8; 70_001];
            disk.read_at(&mut odd, 12_345).unwrap();
            assert!(
                odd[..] == data[12_345..12_345 + 70_001],
                "{o}: unaligned read"
            );
        }
    }
}

#[test]
fn zero_clusters_and_qemu_written_data_read_as_qemu_reads_them() {
    let s = Scratch::new("zero");
    let img = s.path("z.qcow2");
    qemu_img(&["create", "-f", "qcow2", img.to_str().unwrap(), "4M"]);
    qemu_io(
        &img,
        "qcow2",
        &[
            "write -P 0xab 0 1M",
            "write -z 128k 192k",       // zero flag over allocated clusters
            "write -z 2M 128k",         // zero flag on unallocated clusters
            "write -P 0x11 3000k 5000", // partial cluster
        ],
    );
    let expected = qemu_contents(&img, &s);
    assert!(expected[130 << 10..320 << 10].iter().all(|&b| b == 0));
    let disk = open(&img, true);
    assert!(our_contents(&disk, 64 << 10) == expected);
}

#[test]
fn compressed_clusters_read_and_rewrite() {
    let s = Scratch::new("compressed");
    let raw = s.path("data.raw");
    // Each 4 KiB block is one random 16-byte phrase repeated: it deflates well.
    let mut rng = Rng(2);
    let mut data = vec![0u8; 2 * MIB];
    for block in data.chunks_mut(4096) {
        let mut phrase = [0u8; 16];
        rng.fill(&mut phrase);
        for piece in block.chunks_mut(16) {
            piece.copy_from_slice(&phrase);
        }
    }
    std::fs::write(&raw, &data).unwrap();
    for cluster in ["4096", "65536"] {
        let img = s.path(&format!("c-{cluster}.qcow2"));
        let o = format!("compression_type=zlib,cluster_size={cluster}");
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &o,
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        // The data clusters really are compressed: the image is far smaller.
        let size = std::fs::metadata(&img).unwrap().len();
        assert!(size < data.len() as u64 / 4, "{cluster}: {size} bytes");
        {
            let disk = open(&img, false);
            assert!(our_contents(&disk, 40_000) == data);
            let mut model = data.clone();
            let mut rng = Rng(7);
            random_writes(&disk, &mut model, &mut rng, 60, 3 * 4096);
            disk.flush().unwrap();
            assert!(our_contents(&disk, 65_536) == model);
            drop(disk);
            assert_check_clean(&img);
            assert!(
                qemu_contents(&img, &s) == model,
                "{cluster}: QEMU reads other data"
            );
        }
    }
}

#[test]
fn random_writes_keep_the_image_consistent_for_qemu() {
    let s = Scratch::new("write");
    // 512-byte clusters on 24 MiB make the refcount table grow (one cluster of it
    // covers 8 MiB) and allocate many refcount blocks and L2 tables.
    for (compat, cluster, size) in [
        ("1.1", "65536", 24 * MIB),
        ("0.10", "512", 24 * MIB),
        ("1.1", "2M", 8 * MIB),
    ] {
        let img = s.path(&format!("w-{compat}-{cluster}.qcow2"));
        let o = format!("compat={compat},cluster_size={cluster}");
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &o,
            img.to_str().unwrap(),
            &size.to_string(),
        ]);
        let table_before = refcount_table_field(&img);
        let mut model = vec![0u8; size];
        let mut rng = Rng(0x5eed ^ size as u64);
        {
            let disk = open(&img, false);
            random_writes(&disk, &mut model, &mut rng, 150, 200_000);
            // A long sequential write fills the disk past the table's first cluster.
            let mut big = vec![0u8; 20 * MIB.min(size)];
            big.truncate(size - 4096);
            rng.fill(&mut big);
            disk.write_at(&big, 4096).unwrap();
            model[4096..4096 + big.len()].copy_from_slice(&big);
            disk.flush().unwrap();
            assert!(
                our_contents(&disk, MIB) == model,
                "{o}: reads back other data"
            );
        }
        if cluster == "512" {
            assert_ne!(
                refcount_table_field(&img),
                table_before,
                "the table did not grow"
            );
        }
        assert_check_clean(&img);
        assert!(
            qemu_contents(&img, &s) == model,
            "{o}: QEMU reads other data"
        );
        // And reopened, form-vmm still reads it.
        assert!(our_contents(&open(&img, true), MIB) == model);
    }
}

/// The header's refcount_table_offset and refcount_table_clusters.
fn refcount_table_field(img: &std::path::Path) -> Vec<u8> {
    std::fs::read(img).unwrap()[48..60].to_vec()
}

#[test]
fn metadata_reaches_the_file_on_close_without_a_flush() {
    let s = Scratch::new("close");
    let img = s.path("c.qcow2");
    qemu_img(&["create", "-f", "qcow2", img.to_str().unwrap(), "8M"]);
    let mut model = vec![0u8; 8 * MIB];
    {
        let disk = open(&img, false);
        random_writes(&disk, &mut model, &mut Rng(99), 10, 100_000);
    }
    assert_check_clean(&img);
    assert!(qemu_contents(&img, &s) == model);
}

#[test]
fn backing_files_read_through_and_writes_copy_on_write() {
    let s = Scratch::new("backing");
    let base = s.path("base.raw");
    // The backing file is smaller than the top image: past it, zeroes.
    let base_data = patterned_raw(&base, 3 * MIB, 3);
    let mid = s.path("mid.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        mid.to_str().unwrap(),
        "4M",
    ]);
    qemu_io(&mid, "qcow2", &["write -P 0x5a 1M 100k", "write -z 2M 64k"]);
    let top = s.path("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "-o",
        "cluster_size=4096",
        top.to_str().unwrap(),
        "5M",
    ]);
    qemu_io(&top, "qcow2", &["write -P 0x77 1050k 10k"]);
    let expected = qemu_contents(&top, &s);
    assert!(expected[..MIB] == base_data[..MIB]);
    assert!(expected[4 * MIB..].iter().all(|&b| b == 0));

    let before_base = std::fs::read(&base).unwrap();
    let before_mid = std::fs::read(&mid).unwrap();
    {
        let disk = open(&top, false);
        assert!(our_contents(&disk, 100_000) == expected);
        let mut model = expected.clone();
        random_writes(&disk, &mut model, &mut Rng(5), 80, 20_000);
        disk.flush().unwrap();
        assert!(our_contents(&disk, MIB) == model);
        drop(disk);
        assert_check_clean(&top);
        assert!(qemu_contents(&top, &s) == model);
    }
    // The backing files are only read.
    assert!(std::fs::read(&base).unwrap() == before_base);
    assert!(std::fs::read(&mid).unwrap() == before_mid);
}

#[test]
fn readonly_images_are_never_written() {
    let s = Scratch::new("readonly");
    let raw = s.path("d.raw");
    patterned_raw(&raw, MIB, 4);
    let img = s.path("d.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let before = std::fs::read(&img).unwrap();
    let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
    {
        let disk = open(&img, true);
        our_contents(&disk, 4096);
        assert!(disk.write_at(&[1u8; 512], 0).is_err());
        disk.flush().unwrap();
    }
    assert!(std::fs::read(&img).unwrap() == before);
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), mtime);
}

#[test]
fn images_with_internal_snapshots_attach_read_only() {
    let s = Scratch::new("snap");
    let img = s.path("s.qcow2");
    qemu_img(&["create", "-f", "qcow2", img.to_str().unwrap(), "2M"]);
    qemu_io(&img, "qcow2", &["write -P 0x01 0 1M"]);
    qemu_img(&["snapshot", "-c", "before", img.to_str().unwrap()]);
    qemu_io(&img, "qcow2", &["write -P 0x02 0 512k"]);
    let err = try_open(&img, false, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("internal snapshot") && err.contains("readonly=on"),
        "{err}"
    );
    let disk = open(&img, true);
    // The active layer, not the snapshot.
    assert!(our_contents(&disk, MIB) == qemu_contents(&img, &s));
    let mut b = [0u8; 1];
    disk.read_at(&mut b, 0).unwrap();
    assert_eq!(b[0], 2);
}

#[test]
fn the_image_and_its_backing_files_are_locked() {
    let s = Scratch::new("lock");
    let base = s.path("base.raw");
    patterned_raw(&base, MIB, 5);
    let a = s.path("a.qcow2");
    let b = s.path("b.qcow2");
    for img in [&a, &b] {
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            img.to_str().unwrap(),
        ]);
    }
    let first = open(&a, false);
    // Two VMs on one base, each with its own top image, is the point of backing files.
    let second = open(&b, false);
    let err = try_open(&a, false, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use by another VM"), "{err}");
    let err = try_open(&base, false, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use by another VM"), "{err}");
    drop((first, second));
    // Now free. (A test thread running qemu-img may hold a forked copy of the
    // descriptor, and so the lock, until its exec: try for a moment.)
    let mut tries = 0;
    while let Err(e) = try_open(&base, false, &Default::default()) {
        tries += 1;
        assert!(tries < 100, "{e}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
