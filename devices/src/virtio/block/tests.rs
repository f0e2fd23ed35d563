//! The block device against real image files: each request type, the checks at
//! open, locking, and hostile descriptor chains.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use virtio_bindings::virtio_blk::*;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::handler::RequestQueue;
use super::image::DiskImage;
use super::*;
use crate::virtio::kicked_queue::QueueServer;
use crate::virtio::testing::strategies::{fuzz_case, FUZZ_MEM_SIZE};
use crate::virtio::testing::{guest_memory, Segment, TestQueue};
use crate::virtio::GuestMemoryMmap;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// An image file under the temp dir, removed on drop.
struct TempImage {
    path: PathBuf,
}

impl TempImage {
    fn with_contents(name: &str, contents: &[u8]) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "form-vmm-blk-{}-{}-{name}.img",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    /// `sectors` sectors, sector n filled with byte n (mod 256).
    fn patterned(name: &str, sectors: u64) -> Self {
        let data: Vec<u8> = (0..sectors)
            .flat_map(|s| std::iter::repeat_n(s as u8, 512))
            .collect();
        Self::with_contents(name, &data)
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn opts(path: &Path, readonly: bool) -> BlockOptions {
    BlockOptions {
        path: path.to_path_buf(),
        readonly,
        direct: false,
        serial: None,
        format: None,
    }
}

fn disk(path: &Path, readonly: bool) -> Arc<DiskImage> {
    Arc::new(DiskImage::open(&opts(path, readonly), &BackingOptions::default()).unwrap())
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    r
}

/// What the device did with one request.
#[derive(Debug)]
struct Outcome {
    status: u8,
    used_len: u32,
    data_in: Vec<u8>,
}

/// Sends one request (header, optional device-readable data, optional
/// device-writable data of `in_len` bytes, status) and serves the queue.
fn request(disk: &Arc<DiskImage>, kind: u32, sector: u64, out: &[u8], in_len: u32) -> Outcome {
    let mem = guest_memory(4 << 20);
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
    let mut segs = vec![tq.readable(&header(kind, sector))];
    if !out.is_empty() {
        segs.push(tq.readable(out));
    }
    let data = (in_len > 0).then(|| tq.writable(in_len));
    segs.extend(data);
    let status = tq.writable(1);
    segs.push(status);
    // Mark the status so a device that never writes it is caught.
    mem.write_obj(0xffu8, status.addr).unwrap();
    tq.add_chain(&segs);
    let mut rq = RequestQueue::new(tq.queue(false), Arc::clone(disk));
    assert!(rq.process(&mem), "the request was not completed");
    assert_eq!(tq.used_idx(), 1);
    let used = tq.used_elem(0);
    assert_eq!(used.id, 0);
    Outcome {
        status: tq.read(status.addr, 1)[0],
        used_len: used.len,
        data_in: data
            .map(|d| tq.read(d.addr, d.len as usize))
            .unwrap_or_default(),
    }
}

#[test]
fn read_returns_the_image_data() {
    let img = TempImage::patterned("read", 16);
    let d = disk(&img.path, false);
    let out = request(&d, VIRTIO_BLK_T_IN, 3, &[], 1024);
    assert_eq!(out.status, S_OK);
    assert_eq!(out.used_len, 1024 + 1);
    assert!(out.data_in[..512].iter().all(|&b| b == 3));
    assert!(out.data_in[512..].iter().all(|&b| b == 4));
}

#[test]
fn write_changes_the_image() {
    let img = TempImage::patterned("write", 16);
    let d = disk(&img.path, false);
    let out = request(&d, VIRTIO_BLK_T_OUT, 2, &[0xab; 1024], 0);
    assert_eq!((out.status, out.used_len), (S_OK, 1));
    let c = img.contents();
    assert_eq!(c.len(), 16 * 512, "a write must not change the image size");
    assert!(c[1024..2048].iter().all(|&b| b == 0xab));
    assert!(c[..1024].iter().all(|&b| b < 2));
    assert!(c[2048..2560].iter().all(|&b| b == 4));
}

#[test]
fn requests_past_the_end_fail_without_touching_the_image() {
    let img = TempImage::patterned("bounds", 8);
    let d = disk(&img.path, false);
    for (sector, len) in [
        (8, 512),
        (7, 1024),
        (u64::MAX / 512 + 1, 512),
        (u64::MAX, 512),
    ] {
        assert_eq!(
            request(&d, VIRTIO_BLK_T_IN, sector, &[], len).status,
            S_IOERR
        );
        let out = request(&d, VIRTIO_BLK_T_OUT, sector, &vec![9; len as usize], 0);
        assert_eq!(out.status, S_IOERR);
    }
    assert_eq!(
        img.contents(),
        TempImage::patterned("expected", 8).contents()
    );
    // The last sector itself is fine.
    assert_eq!(request(&d, VIRTIO_BLK_T_IN, 7, &[], 512).status, S_OK);
}

#[test]
fn data_not_a_multiple_of_the_sector_fails() {
    let img = TempImage::patterned("unaligned", 8);
    let d = disk(&img.path, false);
    assert_eq!(request(&d, VIRTIO_BLK_T_IN, 0, &[], 100).status, S_IOERR);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_OUT, 0, &[1; 100], 0).status,
        S_IOERR
    );
}

#[test]
fn data_in_the_wrong_direction_fails() {
    let img = TempImage::patterned("direction", 8);
    let d = disk(&img.path, false);
    // A read with device-readable data, a write with device-writable data.
    assert_eq!(
        request(&d, VIRTIO_BLK_T_IN, 0, &[1; 512], 512).status,
        S_IOERR
    );
    assert_eq!(
        request(&d, VIRTIO_BLK_T_OUT, 0, &[1; 512], 512).status,
        S_IOERR
    );
    assert_eq!(
        request(&d, VIRTIO_BLK_T_FLUSH, 0, &[1; 512], 0).status,
        S_IOERR
    );
    assert_eq!(
        img.contents(),
        TempImage::patterned("expected", 8).contents()
    );
}

#[test]
fn readonly_disk_refuses_writes_but_reads_and_flushes() {
    let img = TempImage::patterned("ro", 8);
    let d = disk(&img.path, true);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_OUT, 0, &[7; 512], 0).status,
        S_IOERR
    );
    let discard = range(0, 8, 0);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &discard, 0).status,
        S_IOERR
    );
    assert_eq!(
        request(&d, VIRTIO_BLK_T_WRITE_ZEROES, 0, &discard, 0).status,
        S_IOERR
    );
    assert_eq!(
        request(&d, VIRTIO_BLK_T_IN, 1, &[], 512).data_in,
        vec![1; 512]
    );
    assert_eq!(request(&d, VIRTIO_BLK_T_FLUSH, 0, &[], 0).status, S_OK);
    assert_eq!(
        img.contents(),
        TempImage::patterned("expected", 8).contents()
    );

    let block = Block::open(opts(&img.path, true)).unwrap();
    let f = block.features();
    assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(
        f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
}

#[test]
fn flush_succeeds() {
    let img = TempImage::patterned("flush", 8);
    let d = disk(&img.path, false);
    let out = request(&d, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!((out.status, out.used_len), (S_OK, 1));
}

#[test]
fn get_id_returns_the_serial() {
    let img = TempImage::patterned("id", 8);
    let mut o = opts(&img.path, false);
    o.serial = Some("disk-serial-1".into());
    let d = Arc::new(DiskImage::open(&o, &BackingOptions::default()).unwrap());
    let out = request(&d, VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(out.status, S_OK);
    assert_eq!(out.used_len, 21);
    let mut expected = b"disk-serial-1".to_vec();
    expected.resize(20, 0);
    assert_eq!(out.data_in, expected);
    // A short buffer gets the beginning.
    assert_eq!(request(&d, VIRTIO_BLK_T_GET_ID, 0, &[], 4).data_in, b"disk");
}

#[test]
fn default_serial_is_stable_and_distinct_per_image() {
    let a = TempImage::patterned("serial-a", 1);
    let b = TempImage::patterned("serial-b", 1);
    let sa = Block::open(opts(&a.path, true)).unwrap().serial();
    let sa2 = Block::open(opts(&a.path, true)).unwrap().serial();
    let sb = Block::open(opts(&b.path, true)).unwrap().serial();
    assert_eq!(sa, sa2);
    assert_ne!(sa, sb);
    assert!(sa.len() <= 20 && sa.starts_with("fv"), "{sa}");
}

#[test]
fn serial_longer_than_20_bytes_is_refused() {
    let img = TempImage::patterned("long-serial", 1);
    let mut o = opts(&img.path, false);
    o.serial = Some("x".repeat(21));
    let err = Block::open(o).err().unwrap();
    assert!(
        matches!(err, BlockError::SerialTooLong { len: 21, .. }),
        "{err}"
    );
}

#[test]
fn unknown_request_type_is_unsupported() {
    let img = TempImage::patterned("unsupp", 8);
    let d = disk(&img.path, false);
    let out = request(&d, 0x1234, 0, &[], 512);
    assert_eq!((out.status, out.used_len), (S_UNSUPP, 1));
}

fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn discard_punches_a_hole() {
    let sectors = 8192; // 4 MiB
    let img = TempImage::patterned("discard", sectors);
    let d = disk(&img.path, false);
    d.flush().unwrap();
    let before = allocated_bytes(&img.path);
    // 2 MiB from 1 MiB, as two ranges.
    let mut ranges = range(2048, 2048, 0).to_vec();
    ranges.extend(range(4096, 2048, 0));
    let out = request(&d, VIRTIO_BLK_T_DISCARD, 0, &ranges, 0);
    assert_eq!(out.status, S_OK);
    let after = allocated_bytes(&img.path);
    assert!(
        after + (1 << 20) <= before,
        "discard freed too little: {before} -> {after} bytes allocated"
    );
    let c = img.contents();
    assert_eq!(c.len() as u64, sectors * 512, "discard must keep the size");
    assert!(c[1 << 20..3 << 20].iter().all(|&b| b == 0));
    assert!(c[(1 << 20) - 512..1 << 20]
        .iter()
        .all(|&b| b == 2047u16 as u8));
    assert!(c[3 << 20..(3 << 20) + 512]
        .iter()
        .all(|&b| b == 6144u16 as u8));
}

#[test]
fn discard_checks_flags_bounds_and_layout() {
    let img = TempImage::patterned("discard-bad", 8);
    let d = disk(&img.path, false);
    // The unmap flag is for write-zeroes only.
    let flagged = range(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &flagged, 0).status,
        S_UNSUPP
    );
    let past_end = range(4, 5, 0);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &past_end, 0).status,
        S_IOERR
    );
    let overflow = range(u64::MAX, 1, 0);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &overflow, 0).status,
        S_IOERR
    );
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &[0; 15], 0).status,
        S_IOERR
    );
    assert_eq!(request(&d, VIRTIO_BLK_T_DISCARD, 0, &[], 0).status, S_IOERR);
    let too_many = range(0, 1, 0).repeat(request::MAX_RANGES as usize + 1);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &too_many, 0).status,
        S_IOERR
    );
    // A good range after a bad one: nothing is discarded.
    let mut mixed = range(0, 1, 0).to_vec();
    mixed.extend(past_end);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_DISCARD, 0, &mixed, 0).status,
        S_IOERR
    );
    assert_eq!(
        img.contents(),
        TempImage::patterned("expected", 8).contents()
    );
}

#[test]
fn write_zeroes_zeroes_with_and_without_unmap() {
    let img = TempImage::patterned("zeroes", 4096);
    let d = disk(&img.path, false);
    d.flush().unwrap();
    let out = request(&d, VIRTIO_BLK_T_WRITE_ZEROES, 0, &range(1, 2, 0), 0);
    assert_eq!(out.status, S_OK);
    let before = allocated_bytes(&img.path);
    let unmap = range(2048, 1024, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let out = request(&d, VIRTIO_BLK_T_WRITE_ZEROES, 0, &unmap, 0);
    assert_eq!(out.status, S_OK);
    assert!(allocated_bytes(&img.path) < before, "unmap freed nothing");
    let c = img.contents();
    assert_eq!(c.len(), 4096 * 512);
    assert!(c[..512].iter().all(|&b| b == 0));
    assert!(c[512..1536].iter().all(|&b| b == 0));
    assert!(c[1536..2048].iter().all(|&b| b == 3));
    assert!(c[2048 * 512..3072 * 512].iter().all(|&b| b == 0));
    assert!(c[3072 * 512..3073 * 512].iter().all(|&b| b == 0));
}

#[test]
fn config_space_and_features_of_a_writable_disk() {
    let img = TempImage::patterned("config", 64);
    let block = Block::open(opts(&img.path, false)).unwrap();
    assert_eq!(block.capacity_bytes(), 64 * 512);
    let f = block.features();
    for bit in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & 1 << bit, 0, "feature bit {bit} missing");
    }
    assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);

    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 64);
    let mut word = [0u8; 4];
    block.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    block.read_config(40, &mut word);
    assert_eq!(u32::from_le_bytes(word), request::MAX_RANGES);
    // Past the end and absurd offsets read as zero.
    let mut tail = [0xffu8; 8];
    block.read_config(56, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0]);
    for offset in [4096, u64::MAX] {
        let mut junk = [0xffu8; 4];
        block.read_config(offset, &mut junk);
        assert_eq!(junk, [0; 4]);
    }
}

fn open_err(o: BlockOptions) -> String {
    Block::open(o).err().expect("open must fail").to_string()
}

#[test]
fn open_explains_what_is_wrong_with_the_image() {
    let missing = std::env::temp_dir().join("form-vmm-blk-does-not-exist.img");
    let msg = open_err(opts(&missing, false));
    assert!(
        msg.contains(missing.to_str().unwrap()) && msg.contains("does not exist"),
        "{msg}"
    );

    let dir = std::env::temp_dir();
    let msg = open_err(opts(&dir, false));
    assert!(msg.contains("is a directory"), "{msg}");

    let mut qcow = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    qcow.resize(1024, 0);
    let q = TempImage::with_contents("qcow2", &qcow);
    let msg = open_err(opts(&q.path, false));
    let p = q.path.display().to_string();
    assert!(
        msg.contains("damaged qcow2 image") && msg.contains(&format!("qemu-img check {p}")),
        "{msg}"
    );

    let odd = TempImage::with_contents("odd", &[0u8; 1000]);
    let msg = open_err(opts(&odd.path, false));
    assert!(
        msg.contains("1000 bytes") && msg.contains("truncate -s 1024"),
        "{msg}"
    );

    let empty = TempImage::with_contents("empty", &[]);
    let msg = open_err(opts(&empty.path, false));
    assert!(msg.contains("is empty"), "{msg}");
}

#[test]
fn an_image_in_use_is_refused() {
    let img = TempImage::patterned("lock", 8);
    let first = Block::open(opts(&img.path, false)).unwrap();
    let msg = open_err(opts(&img.path, false));
    assert!(
        msg.contains("in use by another VM") && msg.contains(img.path.to_str().unwrap()),
        "{msg}"
    );
    assert!(open_err(opts(&img.path, true)).contains("in use by another VM"));
    drop(first);

    // Read-only users share the image, and keep writers out.
    let ro1 = Block::open(opts(&img.path, true)).unwrap();
    let ro2 = Block::open(opts(&img.path, true)).unwrap();
    assert!(open_err(opts(&img.path, false)).contains("in use by another VM"));
    drop((ro1, ro2));
    Block::open(opts(&img.path, false)).expect("the lock must go with the device");
}

/// A loop device over a patterned image, detached on drop; `None` (after saying
/// why) where loop devices cannot be made: not root, or no losetup.
struct LoopDevice {
    device: PathBuf,
    _image: TempImage,
}

impl LoopDevice {
    fn new(test: &str) -> Option<LoopDevice> {
        let image = TempImage::patterned("loop-backing", 16);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image.path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(LoopDevice {
                device: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
                _image: image,
            }),
            Ok(out) => {
                eprintln!(
                    "skipping {test}: losetup failed (root and /dev/loop-control are needed): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipping {test}: cannot run losetup: {e}");
                None
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("--detach")
            .arg(&self.device)
            .status();
    }
}

#[test]
fn a_block_device_the_host_holds_is_refused_for_writing() {
    let Some(dev) = LoopDevice::new("a_block_device_the_host_holds_is_refused_for_writing") else {
        return;
    };
    // Free, it serves reads and writes like an image file.
    let d = disk(&dev.device, false);
    assert_eq!(d.capacity(), 16 * 512);
    assert_eq!(
        request(&d, VIRTIO_BLK_T_IN, 3, &[], 512).data_in,
        [3u8; 512]
    );
    drop(d);

    // Held exclusively, as the kernel holds a mounted file system's device (or LVM,
    // MD and swap theirs): a writable attach is refused and says why; a read-only
    // one is allowed.
    use std::os::unix::fs::OpenOptionsExt;
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev.device)
        .unwrap();
    let msg = open_err(opts(&dev.device, false));
    assert!(
        msg.contains("is in use on the host") && msg.contains(dev.device.to_str().unwrap()),
        "{msg}"
    );
    let ro = disk(&dev.device, true);
    assert_eq!(
        request(&ro, VIRTIO_BLK_T_IN, 5, &[], 512).data_in,
        [5u8; 512]
    );
    drop((ro, holder));

    // And a VM writing to it keeps the host (and other VMs) from claiming it.
    let writer = disk(&dev.device, false);
    let claim = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev.device);
    assert_eq!(
        claim.err().and_then(|e| e.raw_os_error()),
        Some(libc::EBUSY)
    );
    drop(writer);
}

#[test]
fn direct_io_works_with_unaligned_guest_buffers() {
    let img = TempImage::patterned("direct", 4096);
    let mut o = opts(&img.path, false);
    o.direct = true;
    let d = match DiskImage::open(&o, &BackingOptions::default()) {
        Ok(d) => Arc::new(d),
        Err(e @ BlockError::DirectUnsupported { .. }) => {
            eprintln!("skipping: the temp dir's file system has no O_DIRECT: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // Reads and writes larger than the bounce buffer's chunk, at odd guest addresses.
    let len = (1 << 20) + 1536;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mem = guest_memory(8 << 20);
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
    let hdr = tq.readable(&header(VIRTIO_BLK_T_OUT, 3));
    tq.alloc(3);
    let payload = tq.readable(&data);
    let status = tq.writable(1);
    tq.add_chain(&[hdr, payload, status]);
    let hdr = tq.readable(&header(VIRTIO_BLK_T_IN, 3));
    tq.alloc(5);
    let back = tq.writable(len as u32);
    let status2 = tq.writable(1);
    tq.add_chain(&[hdr, back, status2]);
    let mut rq = RequestQueue::new(tq.queue(false), d);
    assert!(rq.process(&mem));
    assert_eq!(tq.read(status.addr, 1)[0], S_OK);
    assert_eq!(tq.read(status2.addr, 1)[0], S_OK);
    assert_eq!(tq.read(back.addr, len), data);
    assert_eq!(&img.contents()[3 * 512..3 * 512 + len], &data[..]);
}

#[test]
fn any_framing_of_header_data_and_status_is_accepted() {
    let img = TempImage::patterned("framing", 8);
    let d = disk(&img.path, false);
    let mem = guest_memory(1 << 20);
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
    // The header split in two, data and status in one writable buffer.
    let h = header(VIRTIO_BLK_T_IN, 5);
    let h1 = tq.readable(&h[..5]);
    let h2 = tq.readable(&h[5..]);
    let data_and_status = tq.writable(513);
    tq.add_chain(&[h1, h2, data_and_status]);
    let mut rq = RequestQueue::new(tq.queue(false), d);
    assert!(rq.process(&mem));
    let got = tq.read(data_and_status.addr, 513);
    assert!(got[..512].iter().all(|&b| b == 5));
    assert_eq!(got[512], S_OK);
    assert_eq!(tq.used_elem(0).len, 513);
}

#[test]
fn indirect_chains_and_batches_are_served() {
    let img = TempImage::patterned("indirect", 8);
    let d = disk(&img.path, false);
    let mem = guest_memory(1 << 20);
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
    let mut statuses = Vec::new();
    for sector in 0..4u64 {
        let hdr = tq.readable(&header(VIRTIO_BLK_T_IN, sector));
        let data = tq.writable(512);
        let status = tq.writable(1);
        if sector % 2 == 0 {
            tq.add_indirect_chain(&[hdr, data, status]);
        } else {
            tq.add_chain(&[hdr, data, status]);
        }
        statuses.push((data, status));
    }
    let mut rq = RequestQueue::new(tq.queue(false), d);
    assert!(rq.process(&mem));
    assert_eq!(tq.used_idx(), 4);
    for (sector, (data, status)) in statuses.iter().enumerate() {
        assert_eq!(tq.read(status.addr, 1)[0], S_OK);
        assert_eq!(tq.read(data.addr, 512), vec![sector as u8; 512]);
    }
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let img = TempImage::patterned("event-idx", 8);
    let d = disk(&img.path, false);
    let mem = guest_memory(1 << 20);
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
    let add = |tq: &mut TestQueue| {
        let hdr = tq.readable(&header(VIRTIO_BLK_T_FLUSH, 0));
        let status = tq.writable(1);
        tq.add_chain(&[hdr, status]);
    };
    add(&mut tq);
    add(&mut tq);
    // The driver wants an interrupt only once the 3rd request is used.
    tq.set_used_event(2);
    let mut rq = RequestQueue::new(tq.queue(true), d);
    assert!(rq.process(&mem));
    assert!(!rq.queue.needs_notification(&mem).unwrap());
    // The device asked to be kicked for the next request.
    assert_eq!(tq.avail_event(), 2);
    add(&mut tq);
    assert!(rq.process(&mem));
    assert!(rq.queue.needs_notification(&mem).unwrap());
}

/// Serves a chain of raw segments; returns (used entries, status byte at `status`).
fn serve_raw(segs: &[Segment], status: Option<GuestAddress>) -> (u16, u32, Option<u8>) {
    let img = TempImage::patterned("raw", 8);
    let d = disk(&img.path, false);
    let mem = guest_memory(1 << 20);
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
    if let Some(s) = status {
        mem.write_obj(0xffu8, s).unwrap();
    }
    tq.add_chain(segs);
    let mut rq = RequestQueue::new(tq.queue(false), d);
    rq.process(&mem);
    let st = status.map(|s| tq.read(s, 1)[0]);
    (tq.used_idx(), tq.used_elem(0).len, st)
}

#[test]
fn malformed_chains_complete_with_ioerr_or_nothing() {
    let seg = |addr: u64, len: u32, writable: bool| Segment {
        addr: GuestAddress(addr),
        len,
        writable,
    };
    let hdr_addr = 0x8000;
    let mem = guest_memory(1 << 20);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(hdr_addr))
        .unwrap();
    drop(mem);

    // No writable byte at all: nowhere to put a status.
    assert_eq!(serve_raw(&[seg(hdr_addr, 16, false)], None), (1, 0, None));
    // Header too short.
    let st = GuestAddress(0x9000);
    assert_eq!(
        serve_raw(&[seg(hdr_addr, 8, false), seg(0x9000, 1, true)], Some(st)),
        (1, 1, Some(S_IOERR))
    );
    // A data buffer outside guest memory.
    assert_eq!(
        serve_raw(
            &[
                seg(hdr_addr, 16, false),
                seg(2 << 20, 512, true),
                seg(0x9000, 1, true)
            ],
            Some(st)
        ),
        (1, 1, Some(S_IOERR))
    );
    // A buffer wrapping around the address space.
    assert_eq!(
        serve_raw(
            &[
                seg(hdr_addr, 16, false),
                seg(u64::MAX - 10, 512, true),
                seg(0x9000, 1, true)
            ],
            Some(st)
        ),
        (1, 1, Some(S_IOERR))
    );
    // Readable after writable.
    assert_eq!(
        serve_raw(
            &[
                seg(hdr_addr, 16, false),
                seg(0x9000, 1, true),
                seg(hdr_addr, 16, false)
            ],
            Some(st)
        ),
        (1, 1, Some(S_IOERR))
    );
    // The status buffer itself outside memory: nothing to write, length 0.
    assert_eq!(
        serve_raw(&[seg(hdr_addr, 16, false), seg(4 << 20, 1, true)], None),
        (1, 0, None)
    );
}

#[test]
fn a_looping_chain_is_cut_and_does_not_hang() {
    let img = TempImage::patterned("loop", 8);
    let d = disk(&img.path, false);
    let mem = guest_memory(1 << 20);
    let tq = TestQueue::new(&mem, GuestAddress(0), 16);
    mem.write_slice(&header(VIRTIO_BLK_T_IN, 0), GuestAddress(0x8000))
        .unwrap();
    use crate::virtio::testing::{RawDescriptor, DESC_F_NEXT, DESC_F_WRITE};
    tq.write_descriptor(
        0,
        RawDescriptor {
            addr: 0x8000,
            len: 16,
            flags: DESC_F_NEXT,
            next: 1,
        },
    );
    tq.write_descriptor(
        1,
        RawDescriptor {
            addr: 0x9000,
            len: 1,
            flags: DESC_F_NEXT | DESC_F_WRITE,
            next: 0,
        },
    );
    let mut tq = tq;
    tq.publish(0);
    let mut rq = RequestQueue::new(tq.queue(false), d);
    assert!(rq.process(&mem));
    assert_eq!(tq.used_idx(), 1);
    assert_eq!(tq.read(GuestAddress(0x9000), 1)[0], S_IOERR);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the driver puts in the queue, the device does not panic, keeps the
    /// used ring consistent, and never grows the image.
    #[test]
    fn hostile_queues_never_break_the_device(case in fuzz_case(), readonly in any::<bool>()) {
        let img = TempImage::patterned("fuzz", 128);
        let d = disk(&img.path, readonly);
        let mem: GuestMemoryMmap = guest_memory(FUZZ_MEM_SIZE as usize);
        let (tq, queue) = case.build(&mem);
        let mut rq = RequestQueue::new(queue, d);
        rq.process(&mem);
        let used = rq.queue.next_used();
        prop_assert_eq!(tq.used_idx(), used);
        // A lying available index larger than the queue stops the device at once.
        prop_assert!(used <= case.available().min(tq.size()));
        for n in 0..used {
            prop_assert!(tq.used_elem(n).id < u32::from(tq.size()));
        }
        prop_assert_eq!(std::fs::metadata(&img.path).unwrap().len(), 128 * 512);
        // The device is still usable afterwards.
        let _ = rq.process(&mem);
        prop_assert!(tq.used_ring().raw_value() < FUZZ_MEM_SIZE);
    }
}

#[test]
fn a_disk_recorded_as_raw_stays_raw_whatever_the_guest_wrote_at_its_start() {
    // What a guest can write into its own raw disk: a qcow2 header. Opened by its
    // magic that would be a (damaged) qcow2 image; recorded as raw, it is the raw
    // disk it always was, header bytes and all.
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(4096, 0);
    let img = TempImage::with_contents("raw-with-magic", &bytes);
    let raw = BlockOptions {
        format: Some(ImageFormat::Raw),
        ..opts(&img.path, false)
    };
    let disk = DiskImage::open(&raw, &BackingOptions::default()).unwrap();
    assert_eq!(disk.format(), ImageFormat::Raw);
    assert_eq!(disk.capacity(), 4096);
    let mut head = [0u8; 8];
    disk.read_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"QFI\xfb\x00\x00\x00\x03");
    drop(disk);
    let guessed = open_err(opts(&img.path, false));
    assert!(guessed.contains("qcow2"), "{guessed}");

    let plain = TempImage::with_contents("plain", &[0u8; 4096]);
    let msg = open_err(BlockOptions {
        format: Some(ImageFormat::Qcow2),
        ..opts(&plain.path, false)
    });
    assert!(msg.contains("format=raw"), "{msg}");
}
