//! virtio-console (virtio 1.2, 5.3) with a single port and no multiport: what the
//! guest writes on the transmit queue goes to an output (a file, a tty), and what
//! arrives on an optional input (a tty, a pipe, a socket) fills the receive queue.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{drain_queue, notify_used, split_chain, total_len, BufCursor, WarnOnce};
use super::device::{
    ActivateError, Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_ID_CONSOLE, VIRTIO_RING_F_EVENT_IDX,
};
use super::kicked_queue::{spawn_worker, take_queue};
use super::worker::{EpollContext, EventHandler, Worker};
use super::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
const RECEIVE_QUEUE: u16 = 0;
const TRANSMIT_QUEUE: u16 = 1;

const RX_KICK_TOKEN: u64 = 0;
const TX_KICK_TOKEN: u64 = 1;
const INPUT_TOKEN: u64 = 2;

/// Input read into one receive buffer at most.
const RX_CHUNK: usize = 4096;
/// Output taken from one transmit chain at most; the rest is dropped, so a chain
/// that names the same memory over and over cannot flood the output.
const MAX_TX_BYTES_PER_CHAIN: u64 = 1 << 20;

type SharedOutput = Arc<Mutex<Box<dyn Write + Send>>>;

/// A virtio console.
pub struct Console {
    output: SharedOutput,
    input: Option<Arc<File>>,
    worker: Option<Worker<ConsoleWorker>>,
}

impl Console {
    /// `output` receives everything the guest writes. `input`, when given, must be
    /// pollable (a tty, a pipe, a socket): a regular file is ignored with a warning.
    pub fn new(output: Box<dyn Write + Send>, input: Option<File>) -> Console {
        Console {
            output: Arc::new(Mutex::new(output)),
            input: input.map(Arc::new),
            worker: None,
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    /// `struct virtio_console_config` (cols, rows, max_nr_ports, emerg_wr): without
    /// VIRTIO_CONSOLE_F_SIZE, MULTIPORT and EMERG_WRITE every field reads as zero.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Activation {
            mem,
            interrupt,
            mut queues,
            ..
        } = activation;
        let rx = take_queue(&mut queues, RECEIVE_QUEUE)?;
        let tx = take_queue(&mut queues, TRANSMIT_QUEUE)?;
        let fds = [
            (rx.kick.as_raw_fd(), RX_KICK_TOKEN),
            (tx.kick.as_raw_fd(), TX_KICK_TOKEN),
        ];
        // Start by looking at the input once, in case the driver posted receive
        // buffers before the thread existed.
        if self.input.is_some() {
            if let Err(e) = rx.kick.write(1) {
                log::warn!("virtio-console: cannot schedule the first input poll: {e}");
            }
        }
        let handler = ConsoleWorker {
            mem,
            rx: ReceiveQueue::new(rx.queue, self.input.clone()),
            tx: TransmitQueue::new(tx.queue, Arc::clone(&self.output)),
            rx_kick: rx.kick,
            tx_kick: tx.kick,
            interrupt,
        };
        self.worker = Some(spawn_worker(self.name(), handler, &fds)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn name(&self) -> &'static str {
        "virtio-console"
    }
}

/// What one look at the receive queue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receive {
    /// A chain was completed (with input, or empty because it was malformed).
    Used,
    /// The driver has posted no buffer: stop polling the input until it does.
    NoBuffer,
    /// The input ended or failed: stop polling it for good.
    InputClosed,
    /// The input had nothing after all; keep polling.
    NothingRead,
}

/// The receive queue and the input, without the thread, so tests can drive it.
struct ReceiveQueue {
    queue: Queue,
    input: Option<Arc<File>>,
    buf: Vec<u8>,
    warn: WarnOnce,
    polling: bool,
    closed: bool,
}

impl ReceiveQueue {
    fn new(queue: Queue, input: Option<Arc<File>>) -> Self {
        Self {
            queue,
            closed: input.is_none(),
            input,
            buf: vec![0; RX_CHUNK],
            warn: WarnOnce::new("virtio-console"),
            polling: false,
        }
    }

    /// Moves one read of input into the next receive buffer. Call it only when the
    /// input is readable: it reads once, which then does not block.
    fn receive_once(&mut self, mem: &GuestMemoryMmap) -> Receive {
        let Some(input) = self.input.clone() else {
            return Receive::InputClosed;
        };
        let chain = match self.queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(e) => {
                self.warn.warn("invalid available ring", e);
                return Receive::NoBuffer;
            }
        };
        let Some(chain) = chain else {
            return Receive::NoBuffer;
        };
        let head = chain.head_index();
        let used_len = match self.fill(mem, chain, &input) {
            Ok(len) => len,
            Err(outcome) => {
                // Nothing was written: give the buffer back for the next input.
                self.queue.go_to_previous_position();
                return outcome;
            }
        };
        if let Err(e) = self.queue.add_used(mem, head, used_len) {
            self.warn.warn("cannot add to the used ring", e);
        }
        Receive::Used
    }

    /// Reads input into the chain; `Err` when the chain must go back unused.
    fn fill(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mut input: &File,
    ) -> Result<u32, Receive> {
        let bufs = split_chain(mem, chain);
        if let Some(fault) = bufs.fault {
            self.warn
                .warn(fault.describe(), "malformed receive buffer, returned empty");
            return Ok(0);
        }
        if !bufs.readable.is_empty() {
            self.warn.warn(
                "malformed receive buffer",
                "device-readable buffer in the receive queue",
            );
            return Ok(0);
        }
        let room = total_len(&bufs.writable).min(self.buf.len() as u64) as usize;
        if room == 0 {
            self.warn
                .warn("malformed receive buffer", "zero-length receive buffer");
            return Ok(0);
        }
        let n = loop {
            match input.read(&mut self.buf[..room]) {
                Ok(0) => return Err(Receive::InputClosed),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Receive::NothingRead)
                }
                Err(e) => {
                    self.warn.warn("cannot read the console input", e);
                    return Err(Receive::InputClosed);
                }
            }
        };
        match BufCursor::new(&bufs.writable).write(mem, &self.buf[..n]) {
            // n <= RX_CHUNK.
            Ok(written) => Ok(written as u32),
            Err(e) => {
                self.warn.warn("cannot write input to the guest", e);
                Ok(0)
            }
        }
    }
}

/// The transmit queue and the output, without the thread, so tests can drive it.
struct TransmitQueue {
    queue: Queue,
    output: SharedOutput,
    buf: Vec<u8>,
    warn: WarnOnce,
}

impl TransmitQueue {
    fn new(queue: Queue, output: SharedOutput) -> Self {
        Self {
            queue,
            output,
            buf: vec![0; RX_CHUNK],
            warn: WarnOnce::new("virtio-console"),
        }
    }

    /// Writes every available chain to the output; returns whether any completed.
    fn process(&mut self, mem: &GuestMemoryMmap) -> bool {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let buf = &mut self.buf;
        let used = drain_queue(&mut self.queue, mem, &mut self.warn, |warn, chain| {
            transmit_chain(mem, chain, &mut **output, buf, warn);
            // The device writes nothing into transmit buffers.
            0
        });
        if let Err(e) = output.flush() {
            self.warn.warn("cannot write the console output", e);
        }
        used
    }
}

fn transmit_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    output: &mut dyn Write,
    buf: &mut [u8],
    warn: &mut WarnOnce,
) {
    let bufs = split_chain(mem, chain);
    if let Some(fault) = bufs.fault {
        warn.warn(fault.describe(), "malformed transmit buffer, dropped");
        return;
    }
    if !bufs.writable.is_empty() {
        warn.warn(
            "malformed transmit buffer",
            "device-writable buffer in the transmit queue",
        );
        return;
    }
    let total = total_len(&bufs.readable);
    if total > MAX_TX_BYTES_PER_CHAIN {
        warn.warn(
            "oversized transmit buffer",
            format_args!("{total} bytes in one chain; output kept to {MAX_TX_BYTES_PER_CHAIN}"),
        );
    }
    let mut left = total.min(MAX_TX_BYTES_PER_CHAIN);
    let mut cursor = BufCursor::new(&bufs.readable);
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if let Err(e) = cursor.read_exact(mem, &mut buf[..n]) {
            warn.warn("cannot read a transmit buffer", e);
            return;
        }
        if let Err(e) = output.write_all(&buf[..n]) {
            warn.warn("cannot write the console output", e);
            return;
        }
        left -= n as u64;
    }
}

struct ConsoleWorker {
    mem: GuestMemoryMmap,
    rx: ReceiveQueue,
    tx: TransmitQueue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl ConsoleWorker {
    fn start_polling_input(&mut self, ctx: &EpollContext<'_>) {
        if self.rx.polling || self.rx.closed {
            return;
        }
        let Some(input) = &self.rx.input else {
            return;
        };
        match ctx.add(input.as_raw_fd(), INPUT_TOKEN) {
            Ok(()) => self.rx.polling = true,
            Err(e) => {
                // EPERM: a regular file, which epoll cannot watch.
                self.rx.warn.warn(
                    "console input cannot be polled (is it a regular file?); input is ignored",
                    e,
                );
                self.rx.closed = true;
            }
        }
    }

    fn stop_polling_input(&mut self, ctx: &EpollContext<'_>) {
        if !self.rx.polling {
            return;
        }
        if let Some(input) = &self.rx.input {
            if let Err(e) = ctx.remove(input.as_raw_fd()) {
                log::error!("virtio-console: cannot stop polling the input: {e}");
            }
        }
        self.rx.polling = false;
    }

    fn on_input(&mut self, ctx: &EpollContext<'_>) {
        match self.rx.receive_once(&self.mem) {
            Receive::Used => notify_used(
                &mut self.rx.queue,
                &self.mem,
                self.interrupt.as_ref(),
                RECEIVE_QUEUE,
            ),
            Receive::NothingRead => {}
            Receive::InputClosed => {
                self.stop_polling_input(ctx);
                self.rx.closed = true;
            }
            Receive::NoBuffer => {
                self.stop_polling_input(ctx);
                // Ask the driver to kick when it posts buffers; if some arrived
                // meanwhile, keep going.
                if self.rx.queue.enable_notification(&self.mem).unwrap_or(true) {
                    self.start_polling_input(ctx);
                }
            }
        }
    }
}

impl EventHandler for ConsoleWorker {
    fn handle_event(&mut self, token: u64, ctx: &EpollContext<'_>) {
        match token {
            RX_KICK_TOKEN => {
                if let Err(e) = self.rx_kick.read() {
                    log::error!("virtio-console: cannot read the receive queue's kick: {e}");
                }
                self.start_polling_input(ctx);
            }
            TX_KICK_TOKEN => {
                if let Err(e) = self.tx_kick.read() {
                    log::error!("virtio-console: cannot read the transmit queue's kick: {e}");
                }
                if self.tx.process(&self.mem) {
                    notify_used(
                        &mut self.tx.queue,
                        &self.mem,
                        self.interrupt.as_ref(),
                        TRANSMIT_QUEUE,
                    );
                }
            }
            INPUT_TOKEN => self.on_input(ctx),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::strategies::{fuzz_case, FUZZ_MEM_SIZE};
    use crate::virtio::testing::{guest_memory, TestQueue};
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use std::os::unix::net::UnixStream;
    use vm_memory::GuestAddress;

    /// An output the test can read back.
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

    impl Captured {
        fn shared(&self) -> SharedOutput {
            Arc::new(Mutex::new(Box::new(self.clone())))
        }

        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A pipe-like input: the device reads one end as a `File`, the test writes
    /// the other.
    fn input_pair() -> (Arc<File>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (
            Arc::new(File::from(std::os::fd::OwnedFd::from(ours))),
            theirs,
        )
    }

    #[test]
    fn transmitted_bytes_reach_the_output_in_order() {
        let out = Captured::default();
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let a = tq.readable(b"hello, ");
        let b = tq.readable(b"world");
        tq.add_chain(&[a, b]);
        let c = tq.readable(b"!\n");
        tq.add_chain(&[c]);
        let mut q = TransmitQueue::new(tq.queue(false), out.shared());
        assert!(q.process(&mem));
        assert_eq!(out.bytes(), b"hello, world!\n");
        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used_elem(0).len, 0);
    }

    #[test]
    fn transmit_chains_with_writable_buffers_are_dropped() {
        let out = Captured::default();
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let a = tq.readable(b"secret");
        let w = tq.writable(4);
        tq.add_chain(&[a, w]);
        let mut q = TransmitQueue::new(tq.queue(false), out.shared());
        assert!(q.process(&mem));
        assert!(out.bytes().is_empty());
        assert_eq!(tq.used_idx(), 1);
    }

    #[test]
    fn input_fills_receive_buffers() {
        let (input, mut peer) = input_pair();
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let w1 = tq.writable(3);
        let w2 = tq.writable(64);
        tq.add_chain(&[w1, w2]);
        let mut q = ReceiveQueue::new(tq.queue(false), Some(input));
        peer.write_all(b"typed text").unwrap();
        assert_eq!(q.receive_once(&mem), Receive::Used);
        assert_eq!(tq.used_elem(0).len, 10);
        assert_eq!(tq.read(w1.addr, 3), b"typ");
        assert_eq!(tq.read(w2.addr, 7), b"ed text");
        // No buffer left: the device must stop polling until the driver posts one.
        peer.write_all(b"more").unwrap();
        assert_eq!(q.receive_once(&mem), Receive::NoBuffer);
    }

    #[test]
    fn input_end_closes_and_gives_the_buffer_back() {
        let (input, peer) = input_pair();
        let mem = guest_memory(1 << 20);
        let mut tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let w = tq.writable(16);
        tq.add_chain(&[w]);
        let mut q = ReceiveQueue::new(tq.queue(false), Some(input));
        drop(peer);
        assert_eq!(q.receive_once(&mem), Receive::InputClosed);
        assert_eq!(tq.used_idx(), 0);
        assert_eq!(
            q.queue.next_avail(),
            0,
            "the unused buffer must stay available"
        );
    }

    #[test]
    fn no_input_means_closed() {
        let mem = guest_memory(1 << 20);
        let tq = TestQueue::new(&mem, GuestAddress(0), 16);
        let mut q = ReceiveQueue::new(tq.queue(false), None);
        assert_eq!(q.receive_once(&mem), Receive::InputClosed);
    }

    #[test]
    fn config_reads_as_zero() {
        let console = Console::new(Box::new(io::sink()), None);
        let mut data = [0xffu8; 12];
        console.read_config(0, &mut data);
        assert_eq!(data, [0; 12]);
        assert_eq!(console.queue_max_sizes().len(), 2);
        assert_eq!(
            console.features(),
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn hostile_transmit_queues_never_break_the_device(case in fuzz_case()) {
            let out = Captured::default();
            let mem = guest_memory(FUZZ_MEM_SIZE as usize);
            let (tq, queue) = case.build(&mem);
            let mut q = TransmitQueue::new(queue, out.shared());
            q.process(&mem);
            let used = q.queue.next_used();
            prop_assert_eq!(tq.used_idx(), used);
            prop_assert!(used <= case.available().min(tq.size()));
            prop_assert!(out.bytes().len() as u64 <= u64::from(used) * MAX_TX_BYTES_PER_CHAIN);
            for n in 0..used {
                prop_assert_eq!(tq.used_elem(n).len, 0);
            }
        }

        #[test]
        fn hostile_receive_queues_never_break_the_device(case in fuzz_case()) {
            let (input, mut peer) = input_pair();
            let mem = guest_memory(FUZZ_MEM_SIZE as usize);
            let (tq, queue) = case.build(&mem);
            let mut q = ReceiveQueue::new(queue, Some(input));
            let mut sent = 0u64;
            for _ in 0..usize::from(tq.size()) + 1 {
                peer.write_all(&[b'x'; 100]).unwrap();
                sent += 100;
                if q.receive_once(&mem) != Receive::Used {
                    break;
                }
            }
            let used = q.queue.next_used();
            prop_assert_eq!(tq.used_idx(), used);
            prop_assert!(used <= case.available().min(tq.size()));
            let delivered: u64 = (0..used).map(|n| u64::from(tq.used_elem(n).len)).sum();
            prop_assert!(delivered <= sent);
        }
    }
}
