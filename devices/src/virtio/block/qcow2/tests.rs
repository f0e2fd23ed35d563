//! The qcow2 write path with caches small enough that every write evicts: dirty
//! L2 tables and refcount blocks reach the file mid-run, and a copy of the file
//! taken at any moment (as a crash would leave it, had every issued write landed)
//! must be consistent for `qemu-img check` (leaked clusters allowed, errors not).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CacheSizes, Qcow2Disk};
use crate::virtio::block::backend::DiskBackend;

fn qemu_img(args: &[&str]) -> std::process::Output {
    match Command::new("qemu-img").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "qemu-img cannot run ({e}): these tests check form-vmm's qcow2 against QEMU's; \
             install it with `apt-get install qemu-utils` (.ci/run does)"
        ),
    }
}

/// `qemu-img check`'s exit status: 0 clean, 3 leaks only, 2 corruption.
fn check(image: &Path) -> (i32, String) {
    let out = qemu_img(&["check", image.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn tiny_caches_evict_in_a_safe_order_and_the_image_stays_consistent() {
    let dir =
        Dir(std::env::temp_dir().join(format!("form-vmm-qcow2-evict-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let img = dir.0.join("e.qcow2");
    let size: usize = 48 << 20;
    // 4 KiB clusters: an L2 table maps 2 MiB and a refcount block counts 8 MiB of
    // file, so writes across 48 MiB go through many of each.
    let out = qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        img.to_str().unwrap(),
        &size.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let caches = CacheSizes {
        l2_tables: 2,
        refcount_blocks: 2,
    };
    let disk = Qcow2Disk::open_with_caches(file, &img, caches).unwrap();
    let mut model = vec![0u8; size];
    let mut rng = Rng(0x1234_5678);
    let crash = dir.0.join("crash.qcow2");
    for round in 0..4 {
        for _ in 0..150 {
            let len = 1 + (rng.next() % 20_000) as usize;
            let offset = (rng.next() % (size - len) as u64) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            disk.write_at(&data, offset as u64).unwrap();
            model[offset..offset + len].copy_from_slice(&data);
        }
        // No flush: what the file holds now is what a crash would leave.
        std::fs::copy(&img, &crash).unwrap();
        let (code, text) = check(&crash);
        assert!(code == 0 || code == 3, "round {round}: {text}");
        if round % 2 == 1 {
            disk.flush().unwrap();
        }
    }
    let mut back = vec![0u8; size];
    disk.read_at(&mut back, 0).unwrap();
    assert!(back == model, "reads back other data");
    disk.flush().unwrap();
    let (code, text) = check(&img);
    assert!(code == 0 && !text.contains("leak"), "{text}");
    drop(disk);
    let raw = dir.0.join("out.raw");
    let out = qemu_img(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(&raw).unwrap() == model,
        "QEMU reads other data"
    );
}
