//! The block, entropy and console devices through the transport's seam: activated
//! with queues, kicked through eventfds, served on their own I/O threads, reset.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use devices::virtio::block::{Block, BlockOptions};
use devices::virtio::console::Console;
use devices::virtio::rng::Rng;
use devices::virtio::testing::{guest_memory, TestQueue};
use devices::virtio::{
    ActivateError, Activation, ActiveQueue, GuestMemoryMmap, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const WAIT: Duration = Duration::from_secs(10);

/// Reports each queue interrupt on a channel.
struct ChannelInterrupt(Mutex<mpsc::Sender<u16>>);

impl VirtioInterrupt for ChannelInterrupt {
    fn notify_queue(&self, queue_index: u16) -> io::Result<()> {
        let _ = self.0.lock().unwrap().send(queue_index);
        Ok(())
    }

    fn notify_config(&self) -> io::Result<()> {
        Ok(())
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    irqs: mpsc::Receiver<u16>,
    interrupt: Arc<ChannelInterrupt>,
}

impl Harness {
    fn new() -> Self {
        let (tx, irqs) = mpsc::channel();
        Self {
            mem: guest_memory(4 << 20),
            irqs,
            interrupt: Arc::new(ChannelInterrupt(Mutex::new(tx))),
        }
    }

    /// Activation for `queues` given as (index, layout, kick).
    fn activation(&self, queues: Vec<(u16, &TestQueue<'_>, &EventFd)>) -> Activation {
        Activation {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues: queues
                .into_iter()
                .map(|(index, tq, kick)| ActiveQueue {
                    index,
                    queue: tq.queue(false),
                    kick: kick.try_clone().unwrap(),
                })
                .collect(),
            acked_features: VIRTIO_F_VERSION_1,
        }
    }

    fn wait_irq(&self, queue: u16) {
        let got = self
            .irqs
            .recv_timeout(WAIT)
            .expect("no interrupt from the device");
        assert_eq!(got, queue);
    }
}

fn kick() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("form-vmm-it-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn blk_header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

#[test]
fn block_serves_requests_on_its_thread_and_stops_on_reset() {
    let img = TempFile::new("blk.img", &[0x5a; 8 * 512]);
    let mut block = Block::open(BlockOptions {
        path: img.path().to_path_buf(),
        readonly: false,
        direct: false,
        serial: Some("it-serial".into()),
        format: None,
    })
    .unwrap();
    let h = Harness::new();
    let mut tq = TestQueue::new(&h.mem, GuestAddress(0), 64);
    let k = kick();
    block.activate(h.activation(vec![(0, &tq, &k)])).unwrap();

    // A write then a read of what was written.
    let hdr = tq.readable(&blk_header(1, 2));
    let data = tq.readable(&[0xc3; 512]);
    let st = tq.writable(1);
    tq.add_chain(&[hdr, data, st]);
    k.write(1).unwrap();
    h.wait_irq(0);
    assert_eq!(tq.used_idx(), 1);
    assert_eq!(tq.read(st.addr, 1), [0]);

    let hdr = tq.readable(&blk_header(0, 2));
    let back = tq.writable(1024);
    let st = tq.writable(1);
    tq.add_chain(&[hdr, back, st]);
    k.write(1).unwrap();
    h.wait_irq(0);
    assert_eq!(tq.used_elem(1).len, 1025);
    let got = tq.read(back.addr, 1024);
    assert!(got[..512].iter().all(|&b| b == 0xc3));
    assert!(got[512..].iter().all(|&b| b == 0x5a));

    // After reset nothing is served any more.
    block.reset();
    let hdr = tq.readable(&blk_header(4, 0));
    let st = tq.writable(1);
    tq.add_chain(&[hdr, st]);
    k.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tq.used_idx(), 2, "a reset device served a request");
    assert!(h.irqs.try_recv().is_err());

    // The image stays locked by the device across the reset.
    let again = Block::open(BlockOptions {
        path: img.path().to_path_buf(),
        readonly: true,
        direct: false,
        serial: None,
        format: None,
    });
    assert!(again.is_err());
    assert_eq!(block.serial(), "it-serial");

    // The driver sets the device up again (as after a guest reboot): it serves a
    // fresh queue.
    let mut tq2 = TestQueue::new(&h.mem, GuestAddress(0x20_0000), 16);
    let k2 = kick();
    block.activate(h.activation(vec![(0, &tq2, &k2)])).unwrap();
    let hdr = tq2.readable(&blk_header(4, 0));
    let st = tq2.writable(1);
    tq2.add_chain(&[hdr, st]);
    k2.write(1).unwrap();
    h.wait_irq(0);
    assert_eq!(tq2.used_idx(), 1);
    assert_eq!(tq2.read(st.addr, 1), [0]);
}

#[test]
fn activation_without_the_needed_queues_fails() {
    let img = TempFile::new("blk-noq.img", &[0; 512]);
    let mut block = Block::open(BlockOptions {
        path: img.path().to_path_buf(),
        readonly: true,
        direct: false,
        serial: None,
        format: None,
    })
    .unwrap();
    let h = Harness::new();
    let err = block.activate(h.activation(vec![])).unwrap_err();
    assert!(matches!(err, ActivateError::MissingQueue(0)), "{err}");

    let mut console = Console::new(Box::new(io::sink()), None);
    let tq = TestQueue::new(&h.mem, GuestAddress(0), 16);
    let k = kick();
    let err = console
        .activate(h.activation(vec![(0, &tq, &k)]))
        .unwrap_err();
    assert!(matches!(err, ActivateError::MissingQueue(1)), "{err}");
}

#[test]
fn rng_fills_buffers_on_its_thread() {
    let mut rng = Rng::open(Path::new("/dev/urandom")).unwrap();
    let h = Harness::new();
    let mut tq = TestQueue::new(&h.mem, GuestAddress(0), 16);
    let k = kick();
    rng.activate(h.activation(vec![(0, &tq, &k)])).unwrap();
    let w = tq.writable(256);
    tq.add_chain(&[w]);
    k.write(1).unwrap();
    h.wait_irq(0);
    assert_eq!(tq.used_elem(0).len, 256);
    // 256 random bytes are all zero with probability 2^-2048.
    assert!(tq.read(w.addr, 256).iter().any(|&b| b != 0));
    rng.reset();
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn console_moves_input_and_output_on_its_thread() {
    let out = Captured::default();
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let input = std::fs::File::from(OwnedFd::from(ours));
    let mut console = Console::new(Box::new(out.clone()), Some(input));
    let h = Harness::new();
    let mut rxq = TestQueue::new(&h.mem, GuestAddress(0), 16);
    let mut txq = TestQueue::new(&h.mem, GuestAddress(0x10_0000), 16);
    let (rk, tk) = (kick(), kick());
    console
        .activate(h.activation(vec![(0, &rxq, &rk), (1, &txq, &tk)]))
        .unwrap();

    // Output.
    let line = txq.readable(b"login: ");
    txq.add_chain(&[line]);
    tk.write(1).unwrap();
    h.wait_irq(1);
    assert_eq!(out.0.lock().unwrap().as_slice(), b"login: ");

    // Input typed before any receive buffer waits for one.
    peer.write_all(b"root\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rxq.used_idx(), 0);
    let buf = rxq.writable(64);
    rxq.add_chain(&[buf]);
    rk.write(1).unwrap();
    h.wait_irq(0);
    assert_eq!(rxq.used_elem(0).len, 5);
    assert_eq!(rxq.read(buf.addr, 5), b"root\n");

    // And input typed while a buffer waits arrives at once.
    let buf = rxq.writable(64);
    rxq.add_chain(&[buf]);
    rk.write(1).unwrap();
    peer.write_all(b"ls\n").unwrap();
    h.wait_irq(0);
    assert_eq!(rxq.read(buf.addr, 3), b"ls\n");
    console.reset();
    // The guest memory the device wrote stays readable by the test.
    let mut first = [0u8; 1];
    h.mem.read_slice(&mut first, buf.addr).unwrap();
    assert_eq!(&first, b"l");
}
