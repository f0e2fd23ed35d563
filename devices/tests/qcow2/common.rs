//! What the qcow2 tests share: scratch directories, qemu-img (the reference
//! implementation; CI installs qemu-utils), and a deterministic PRNG.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use devices::virtio::block::{BackingOptions, BlockOptions, DiskImage};

/// A directory under the temp dir, removed with everything in it on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "form-vmm-qcow2-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a qemu-utils tool; fails the test with a clear message when it is missing.
fn tool(name: &str, args: &[&str]) -> std::process::Output {
    match Command::new(name).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{name} is not installed: the qcow2 tests compare form-vmm against QEMU's own \
             implementation; install it with `apt-get install qemu-utils` (.ci/run does)"
        ),
        Err(e) => panic!("cannot run {name}: {e}"),
    }
}

/// Runs qemu-img and asserts it succeeded.
pub fn qemu_img(args: &[&str]) -> String {
    let out = tool("qemu-img", args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-io commands on a qcow2 image (writes, zero clusters) and asserts success.
pub fn qemu_io(image: &Path, fmt: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let img = image.to_str().unwrap();
    args.push(img);
    let out = tool("qemu-io", &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("failed"),
        "qemu-io {args:?}: {text}"
    );
}

/// `qemu-img check` must find neither errors nor leaks.
pub fn assert_check_clean(image: &Path) {
    let out = tool("qemu-img", &["check", image.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("No errors were found") && !text.contains("leak"),
        "qemu-img check {}: {text}",
        image.display()
    );
}

/// The disk's contents as QEMU reads them.
pub fn qemu_contents(image: &Path, scratch: &Scratch) -> Vec<u8> {
    let out = scratch.path("qemu-view.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

pub fn open(path: &Path, readonly: bool) -> DiskImage {
    try_open(path, readonly, &BackingOptions::default()).unwrap()
}

pub fn try_open(
    path: &Path,
    readonly: bool,
    backing: &BackingOptions,
) -> Result<DiskImage, devices::virtio::block::BlockError> {
    let options = BlockOptions {
        path: path.to_path_buf(),
        readonly,
        direct: false,
        serial: None,
        format: None,
    };
    // Another test thread that starts qemu-img holds a copy of every descriptor
    // (and with it the image's lock) between its fork and its exec: a moment, so
    // a lock refusal is retried for up to a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match DiskImage::open(&options, backing) {
            Err(devices::virtio::block::BlockError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

/// The whole disk as form-vmm reads it, in pieces of `piece` bytes.
pub fn our_contents(disk: &DiskImage, piece: usize) -> Vec<u8> {
    let mut all = vec![0u8; disk.capacity() as usize];
    for (i, chunk) in all.chunks_mut(piece).enumerate() {
        disk.read_at(chunk, (i * piece) as u64).unwrap();
    }
    all
}

/// xorshift64*: reproducible "random" data and offsets without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// A raw file of `size` bytes: random data with runs of zeroes (holes for QEMU
/// to leave unallocated) every other 192 KiB.
pub fn patterned_raw(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; size];
    for (i, chunk) in data.chunks_mut(192 << 10).enumerate() {
        if i % 2 == 0 {
            rng.fill(chunk);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Random writes (unaligned, across cluster boundaries) through `disk` and into
/// `model`, flushing now and then.
pub fn random_writes(
    disk: &DiskImage,
    model: &mut [u8],
    rng: &mut Rng,
    count: usize,
    max_len: u64,
) {
    for i in 0..count {
        let len = 1 + rng.below(max_len) as usize;
        let offset = rng.below(model.len() as u64 - len as u64) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        disk.write_at(&data, offset as u64).unwrap();
        model[offset..offset + len].copy_from_slice(&data);
        if i % 17 == 16 {
            disk.flush().unwrap();
        }
    }
}
