//! virtio-rng (virtio 1.2, 5.4, "entropy device"): fills the driver's buffers from a
//! host entropy source such as /dev/urandom.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};

use super::chain::{drain_queue, split_chain, total_len, BufCursor, WarnOnce};
use super::device::{
    ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_ID_RNG,
    VIRTIO_RING_F_EVENT_IDX,
};
use super::kicked_queue::{self, KickedQueueWorker, QueueServer};
use super::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
const REQUEST_QUEUE: u16 = 0;
/// The most entropy one request gets: enough for any driver's pool refill, small
/// enough that one request cannot keep the thread reading for long.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot open the entropy source {path}: {source}; give a readable source such as /dev/urandom")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the entropy source {path} is a directory; give a file such as /dev/urandom")]
    IsDirectory { path: PathBuf },
}

/// A virtio entropy device.
pub struct Rng {
    source: Arc<File>,
    path: PathBuf,
    worker: Option<KickedQueueWorker<EntropyQueue>>,
}

impl Rng {
    /// Opens `source` for reading; every request is served from it.
    pub fn open(source: &Path) -> Result<Rng, RngError> {
        let open_err = |e| RngError::Open {
            path: source.to_path_buf(),
            source: e,
        };
        if std::fs::metadata(source).map_err(open_err)?.is_dir() {
            return Err(RngError::IsDirectory {
                path: source.to_path_buf(),
            });
        }
        let file = File::open(source).map_err(open_err)?;
        Ok(Rng {
            source: Arc::new(file),
            path: source.to_path_buf(),
            worker: None,
        })
    }

    /// The entropy source.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    /// The entropy device has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let source = Arc::clone(&self.source);
        let worker = kicked_queue::start(self.name(), activation, REQUEST_QUEUE, |queue| {
            EntropyQueue::new(queue, source)
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }
}

/// The request queue and its source, without the thread, so tests can drive it.
struct EntropyQueue {
    queue: Queue,
    source: Arc<File>,
    buf: Vec<u8>,
    warn: WarnOnce,
}

impl EntropyQueue {
    fn new(queue: Queue, source: Arc<File>) -> Self {
        Self {
            queue,
            source,
            buf: vec![0; MAX_BYTES_PER_REQUEST],
            warn: WarnOnce::new("virtio-rng"),
        }
    }
}

impl QueueServer for EntropyQueue {
    /// Serves every available request; returns whether any completed.
    fn process(&mut self, mem: &GuestMemoryMmap) -> bool {
        let source = &self.source;
        let buf = &mut self.buf;
        drain_queue(&mut self.queue, mem, &mut self.warn, |warn, chain| {
            fill_chain(mem, chain, source, buf, warn)
        })
    }

    fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }
}

/// Fills the chain's writable buffers (up to `buf.len()` bytes); returns how many
/// bytes it wrote.
fn fill_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mut source: &File,
    buf: &mut [u8],
    warn: &mut WarnOnce,
) -> u32 {
    let bufs = split_chain(mem, chain);
    if let Some(fault) = bufs.fault {
        warn.warn(
            fault.describe(),
            "malformed entropy request, returned empty",
        );
        return 0;
    }
    if !bufs.readable.is_empty() {
        warn.warn(
            "malformed request",
            "device-readable buffer in an entropy request",
        );
        return 0;
    }
    let room = total_len(&bufs.writable);
    let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
    let got = match read_up_to(&mut source, &mut buf[..want]) {
        Ok(n) => n,
        Err(e) => {
            warn.warn("cannot read the entropy source", e);
            return 0;
        }
    };
    match BufCursor::new(&bufs.writable).write(mem, &buf[..got]) {
        // At most MAX_BYTES_PER_REQUEST.
        Ok(n) => n as u32,
        Err(e) => {
            warn.warn("cannot write entropy to the guest", e);
            0
        }
    }
}

/// Reads until `buf` is full or the source ends.
fn read_up_to(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match source.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::strategies::{fuzz_case, FUZZ_MEM_SIZE};
    use crate::virtio::testing::{guest_memory, TestQueue};
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use virtio_queue::QueueT;
    use vm_memory::{Address, GuestAddress};

    /// A source file of `len` patterned bytes, removed on drop.
    struct Source(PathBuf);

    impl Source {
        fn new(name: &str, len: usize) -> Self {
            let path =
                std::env::temp_dir().join(format!("form-vmm-rng-{}-{name}", std::process::id()));
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            std::fs::write(&path, data).unwrap();
            Self(path)
        }

        fn file(&self) -> Arc<File> {
            Arc::new(File::open(&self.0).unwrap())
        }
    }

    impl Drop for Source {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn fills_every_writable_buffer_from_the_source() {
        let src = Source::new("fill", 4096);
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let a = tq.writable(100);
        let b = tq.writable(50);
        tq.add_chain(&[a, b]);
        let mut q = EntropyQueue::new(tq.queue(false), src.file());
        assert!(q.process(&mem));
        assert_eq!(tq.used_elem(0).len, 150);
        let expected: Vec<u8> = (0..150).map(|i| (i % 253) as u8).collect();
        assert_eq!(tq.read(a.addr, 100), &expected[..100]);
        assert_eq!(tq.read(b.addr, 50), &expected[100..]);
    }

    #[test]
    fn one_request_gets_at_most_the_cap() {
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let big = tq.writable(100 * 1024);
        tq.add_chain(&[big]);
        let urandom = Arc::new(File::open("/dev/urandom").unwrap());
        let mut q = EntropyQueue::new(tq.queue(false), urandom);
        assert!(q.process(&mem));
        assert_eq!(tq.used_elem(0).len as usize, MAX_BYTES_PER_REQUEST);
        // Past the cap the buffer is untouched.
        assert!(tq
            .read(big.addr.unchecked_add(65536), 1024)
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn a_short_source_gives_what_it_has() {
        let src = Source::new("short", 10);
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let w = tq.writable(64);
        tq.add_chain(&[w]);
        let mut q = EntropyQueue::new(tq.queue(false), src.file());
        assert!(q.process(&mem));
        assert_eq!(tq.used_elem(0).len, 10);
    }

    #[test]
    fn readable_buffers_are_refused() {
        let src = Source::new("readable", 64);
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let r = tq.readable(&[1, 2, 3]);
        let w = tq.writable(8);
        tq.add_chain(&[r, w]);
        let mut q = EntropyQueue::new(tq.queue(false), src.file());
        assert!(q.process(&mem));
        assert_eq!(tq.used_elem(0).len, 0);
        assert_eq!(tq.read(w.addr, 8), vec![0; 8]);
    }

    #[test]
    fn open_names_the_source_that_is_wrong() {
        let missing = Path::new("/nonexistent/form-vmm-entropy");
        let msg = Rng::open(missing).err().unwrap().to_string();
        assert!(msg.contains("/nonexistent/form-vmm-entropy"), "{msg}");
        let msg = Rng::open(&std::env::temp_dir()).err().unwrap().to_string();
        assert!(msg.contains("is a directory"), "{msg}");
        let rng = Rng::open(Path::new("/dev/urandom")).unwrap();
        assert_eq!(rng.device_type(), VIRTIO_ID_RNG);
        assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn hostile_queues_never_break_the_device(case in fuzz_case()) {
            let mem = guest_memory(FUZZ_MEM_SIZE as usize);
            let (tq, queue) = case.build(&mem);
            let urandom = Arc::new(File::open("/dev/urandom").unwrap());
            let mut q = EntropyQueue::new(queue, urandom);
            q.process(&mem);
            let used = q.queue.next_used();
            prop_assert_eq!(tq.used_idx(), used);
            prop_assert!(used <= case.available().min(tq.size()));
            for n in 0..used {
                let elem = tq.used_elem(n);
                prop_assert!(elem.id < u32::from(tq.size()));
                prop_assert!(elem.len as usize <= MAX_BYTES_PER_REQUEST);
            }
        }
    }
}
