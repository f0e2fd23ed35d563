//! `cargo test --release -p form-bootdisk --test bench -- --ignored --nocapture`:
//! the reader alone (no VM) on a raw image file with a 60 MiB initrd
//! (`BENCH_INITRD_MIB`), file data read from the extents and by ext4-view.

mod common;

use common::*;
use form_bootdisk::testing::{read_ext_file, Method};
use form_bootdisk::{load_boot, Limits};
use std::time::{Duration, Instant};

const RUNS: usize = 7;

fn median(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2].as_secs_f64() * 1000.0
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture, in release"]
fn bench_reader() {
    let mib: usize = std::env::var("BENCH_INITRD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = TempDir::new("bench");
    let initrd = blob(9, mib << 20);
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file(
                    "/boot/grub/grub.cfg",
                    "menuentry 'b' { linux /boot/vmlinuz-1; initrd /boot/initrd.img-1 }\n",
                )
                .file("/boot/vmlinuz-1", blob(1, 60 << 10))
                .file("/boot/initrd.img-1", initrd.clone()),
        },
        mib as u64 + 64,
    );
    let raw = disk(&dir, "gpt", &[(root.clone(), "L")], None);
    let limits = Limits::default();
    let open = || std::fs::File::open(&raw).unwrap();
    let boot = median(|| {
        let files = load_boot(open(), "bench.img", &limits).unwrap();
        assert_eq!(
            files.initrd.unwrap().len(),
            initrd.len().next_multiple_of(4)
        );
    });
    let read = |how| {
        median(|| {
            let fs = std::fs::File::open(&root).unwrap();
            let (data, _) = read_ext_file(fs, "/boot/initrd.img-1", 1 << 30, Some(how)).unwrap();
            assert_eq!(data.len(), initrd.len());
        })
    };
    // Twice each, alternating, so that neither gets a colder page cache.
    let view = read(Method::Ext4View).min(read(Method::Ext4View));
    let extents = read(Method::Extents).min(read(Method::Extents));
    let pread = median(|| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; initrd.len()];
        open().read_exact_at(&mut buf, 1 << 20).unwrap();
    });
    println!("bench-bootdisk reader: initrd {mib} MiB, median of {RUNS}:");
    println!("  load_boot (raw image file)          {boot:8.1} ms");
    println!("  initrd from its extents             {extents:8.1} ms");
    println!("  initrd by ext4-view                 {view:8.1} ms");
    println!("  one pread of as many bytes          {pread:8.1} ms");
}
