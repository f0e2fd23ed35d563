//! Unit tests of the rx and tx paths, driven without a thread against a datagram
//! socket pair standing in for the tap, with a small driver that lays out split
//! rings in guest memory.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

use proptest::prelude::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::header::{MAX_PACKET_LEN, VNET_HDR_LEN};
use super::offload::TxOffloads;
use super::rx::{RxQueue, RxStop, RX_BUDGET};
use super::stats::NetStats;
use super::tap::TapIo;
use super::tx::{TxQueue, TX_BUDGET};
use crate::virtio::GuestMemoryMmap;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

const MEM_SIZE: usize = 4 << 20;
const QUEUE_BASE: u64 = 0;
const DATA_BASE: u64 = 0x1_0000;

/// One end of a datagram socket pair: keeps frame boundaries like a tap.
pub(super) struct PairTap(pub UnixDatagram);

impl PairTap {
    /// (the device's end, the host's end)
    pub(super) fn pair() -> (PairTap, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (PairTap(a), b)
    }
}

impl AsRawFd for PairTap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl TapIo for PairTap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

pub(super) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// The driver's side of one split virtqueue.
pub(super) struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    data_next: u64,
}

impl<'m> Driver<'m> {
    pub(super) fn new(mem: &'m GuestMemoryMmap, base: u64, size: u16, data: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        Driver {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            data_next: data,
        }
    }

    /// The guest addresses the rings take, descriptor table to used ring.
    fn rings(&self) -> std::ops::Range<u64> {
        self.desc..self.used + 6 + 8 * u64::from(self.size)
    }

    pub(super) fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    pub(super) fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.data_next;
        self.data_next = (addr + u64::from(len)).next_multiple_of(16);
        assert!(
            self.data_next <= MEM_SIZE as u64,
            "test data area exhausted"
        );
        addr
    }

    /// A buffer holding `data`, for the device to read.
    pub(super) fn readable(&mut self, data: &[u8]) -> Buf {
        let addr = self.alloc(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        Buf {
            addr,
            len: data.len() as u32,
            writable: false,
        }
    }

    pub(super) fn writable(&mut self, len: u32) -> Buf {
        Buf {
            addr: self.alloc(len),
            len,
            writable: true,
        }
    }

    /// Writes one descriptor at `index` as a driver would, unchecked.
    pub(super) fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + 16 * u64::from(index % self.size);
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Makes `head` available to the device.
    pub(super) fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Posts one chain of `bufs`; returns its head.
    pub(super) fn post(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if buf.writable { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(index, buf.addr, buf.len, flags, self.next_desc);
        }
        self.publish(head);
        head
    }

    pub(super) fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    /// Used entries (id, len) the device added since the last call.
    pub(super) fn take_used(&mut self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while self.used_seen != self.used_idx() {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((u32::from_le(id), u32::from_le(len)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    pub(super) fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }
}

/// A header with every offload field set, then `frame`.
fn packet(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p[..10].copy_from_slice(&[1, 3, 0x36, 0, 0xb4, 5, 0x22, 0, 0x10, 0]);
    p.extend_from_slice(frame);
    p
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn num_buffers(header: &[u8]) -> u16 {
    u16::from_le_bytes([header[10], header[11]])
}

// ---- transmit ----

#[test]
fn tx_gathers_a_split_chain_into_one_frame_without_offload_requests() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(false), TxOffloads::default());

    let f = frame(1000, 1);
    let p = packet(&f);
    let bufs = [
        drv.readable(&p[..12]),
        drv.readable(&p[12..300]),
        drv.readable(&p[300..]),
    ];
    let head = drv.post(&bufs);

    let run = tx.process(&mem, &tap, &stats);
    assert_eq!(run.completed, 1);
    assert!(run.notify);
    assert!(!run.more);
    assert_eq!(drv.take_used(), vec![(u32::from(head), 0)]);

    let mut got = vec![0u8; 4096];
    let n = host.recv(&mut got).unwrap();
    assert_eq!(n, 12 + 1000);
    assert_eq!(&got[..10], &[0u8; 10], "offload requests cleared");
    assert_eq!(&got[12..n], &f[..]);
    let c = stats.snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 1000, 0));
}

#[test]
fn tx_maps_a_split_header_and_a_buffer_across_memory_regions() {
    // Two regions back to back, as RAM split around a hole would be after remapping.
    let half = MEM_SIZE / 2;
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
            .unwrap();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(false), TxOffloads::default());

    let f = frame(3000, 21);
    let p = packet(&f);
    let head_part = drv.readable(&p[..5]);
    let straddle = half as u64 - 1000;
    mem.write_slice(&p[5..2005], GuestAddress(straddle))
        .unwrap();
    let across = Buf {
        addr: straddle,
        len: 2000,
        writable: false,
    };
    let tail = drv.readable(&p[2005..]);
    drv.post(&[head_part, across, tail]);

    assert_eq!(tx.process(&mem, &tap, &stats).completed, 1);
    let mut got = vec![0u8; 8192];
    let n = host.recv(&mut got).unwrap();
    assert_eq!(n, p.len());
    assert_eq!(
        &got[..10],
        &[0u8; 10],
        "the checked copy of the header was sent"
    );
    assert_eq!(&got[12..n], &f[..]);
}

#[test]
fn tx_refuses_a_chain_of_more_buffers_than_writev_takes() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 2048, 0x2_0000);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(false), TxOffloads::default());
    let hdr = drv.readable(&[0u8; 12]);
    let byte = drv.readable(&[0xab]);
    let mut bufs = vec![hdr];
    bufs.extend(std::iter::repeat_n(byte, 1100));
    drv.post(&bufs);
    let fits = std::iter::once(hdr)
        .chain(std::iter::repeat_n(byte, 900))
        .collect::<Vec<_>>();
    drv.post(&fits);
    assert_eq!(tx.process(&mem, &tap, &stats).completed, 2);
    let mut got = vec![0u8; 2048];
    assert_eq!(
        host.recv(&mut got).unwrap(),
        12 + 900,
        "only the second is sent"
    );
    let c = stats.snapshot();
    assert_eq!((c.tx_frames, c.bad_chains), (1, 1));
}

#[test]
fn tx_completes_malformed_chains_with_len_0_and_sends_nothing() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(false), TxOffloads::default());

    let short = drv.readable(&[0u8; 11]);
    drv.post(&[short]);
    let hdr = drv.readable(&[0u8; 12]);
    let w = drv.writable(64);
    drv.post(&[hdr, w]);
    drv.post(&[Buf {
        addr: MEM_SIZE as u64 - 8,
        len: 64,
        writable: false,
    }]);
    drv.post(&[Buf {
        addr: DATA_BASE,
        len: (MAX_PACKET_LEN + 1) as u32,
        writable: false,
    }]);
    drv.post(&[Buf {
        addr: u64::MAX - 4,
        len: u32::MAX,
        writable: false,
    }]);

    let run = tx.process(&mem, &tap, &stats);
    assert_eq!(run.completed, 5);
    let used = drv.take_used();
    assert_eq!(used.len(), 5);
    assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
    let mut buf = [0u8; 64];
    assert_eq!(
        host.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let c = stats.snapshot();
    assert_eq!((c.tx_frames, c.tx_dropped, c.bad_chains), (0, 5, 5));
}

#[test]
fn tx_counts_frames_the_tap_refuses_and_still_completes_them() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    drop(host);
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(false), TxOffloads::default());
    let p = packet(&frame(60, 2));
    let b = drv.readable(&p);
    drv.post(&[b]);
    assert_eq!(tx.process(&mem, &tap, &stats).completed, 1);
    assert_eq!(drv.take_used().len(), 1);
    assert_eq!(stats.snapshot().tx_dropped, 1);
}

#[test]
fn tx_stops_after_its_budget_and_says_there_is_more() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 512, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(false), TxOffloads::default());
    let p = packet(&frame(14, 3));
    let b = drv.readable(&p);
    for _ in 0..TX_BUDGET + 10 {
        drv.post(&[b]);
    }
    let first = tx.process(&mem, &tap, &stats);
    assert_eq!((first.completed, first.more), (TX_BUDGET, true));
    let second = tx.process(&mem, &tap, &stats);
    assert_eq!((second.completed, second.more), (10, false));
    assert_eq!(drv.take_used().len(), TX_BUDGET + 10);
    let mut buf = [0u8; 64];
    let mut received = 0;
    while host.recv(&mut buf).is_ok() {
        received += 1;
    }
    assert_eq!(received, TX_BUDGET + 10);
}

#[test]
fn tx_with_event_idx_interrupts_only_when_the_driver_asked() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, _host) = PairTap::pair();
    let stats = NetStats::default();
    let mut tx = TxQueue::new(drv.queue(true), TxOffloads::default());
    // used_event (after the avail ring) = 5: interrupt once used idx passes 5.
    mem.write_obj(5u16.to_le(), GuestAddress(drv.avail + 4 + 2 * 16))
        .unwrap();
    let p = packet(&frame(20, 4));
    let b = drv.readable(&p);
    drv.post(&[b]);
    assert!(!tx.process(&mem, &tap, &stats).notify);
    for _ in 0..5 {
        drv.post(&[b]);
    }
    assert!(tx.process(&mem, &tap, &stats).notify);
}

// ---- receive ----

#[test]
fn rx_spreads_a_frame_over_mergeable_buffers_and_sets_num_buffers() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(false), true);

    let bufs: Vec<Buf> = (0..4).map(|_| drv.writable(1000)).collect();
    let heads: Vec<u16> = bufs.iter().map(|b| drv.post(&[*b])).collect();
    let f = frame(2500, 5);
    host.send(&packet(&f)).unwrap();

    let run = rx.process(&mem, &tap, &stats);
    assert_eq!(run.delivered, 1);
    assert!(run.notify);
    assert_eq!(run.stop, RxStop::TapEmpty);
    let used = drv.take_used();
    assert_eq!(
        used,
        vec![
            (u32::from(heads[0]), 1000),
            (u32::from(heads[1]), 1000),
            (u32::from(heads[2]), 512)
        ]
    );
    let mut got = Vec::new();
    for (b, (_, len)) in bufs.iter().zip(&used) {
        got.extend(drv.read(b.addr, *len as usize));
    }
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(&got[..10], &packet(&f)[..10], "header passed through");
    assert_eq!(&got[12..], &f[..]);
    let c = stats.snapshot();
    assert_eq!((c.rx_frames, c.rx_bytes), (1, 2500));

    // The fourth buffer is still posted: the next frame lands there.
    host.send(&packet(&frame(100, 6))).unwrap();
    assert_eq!(rx.process(&mem, &tap, &stats).delivered, 1);
    assert_eq!(drv.take_used(), vec![(u32::from(heads[3]), 112)]);
    assert_eq!(num_buffers(&drv.read(bufs[3].addr, 12)), 1);
}

#[test]
fn rx_without_mergeable_buffers_needs_one_chain_per_frame() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(false), false);

    // A chain split in header + data, as Linux posts without MRG_RXBUF.
    let hdr = drv.writable(12);
    let data = drv.writable(1514);
    let head = drv.post(&[hdr, data]);

    // Too big for the chain: dropped, the chain stays for the next frame.
    host.send(&packet(&frame(1600, 7))).unwrap();
    let f = frame(1514, 8);
    host.send(&packet(&f)).unwrap();
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!(run.delivered, 1);
    assert_eq!(drv.take_used(), vec![(u32::from(head), 12 + 1514)]);
    assert_eq!(num_buffers(&drv.read(hdr.addr, 12)), 1);
    assert_eq!(drv.read(data.addr, 1514), f);
    let c = stats.snapshot();
    assert_eq!((c.rx_frames, c.rx_dropped), (1, 1));
}

#[test]
fn rx_holds_a_frame_until_the_guest_posts_buffers() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(true), true);

    let f = frame(3000, 9);
    host.send(&packet(&f)).unwrap();
    host.send(&packet(&frame(64, 10))).unwrap();
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!((run.delivered, run.stop), (0, RxStop::OutOfBuffers));
    assert!(rx.has_pending_frame());

    // One buffer is not enough for the first frame: still waiting, nothing used.
    let b1 = drv.writable(2048);
    drv.post(&[b1]);
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!((run.delivered, run.stop), (0, RxStop::OutOfBuffers));
    assert!(drv.take_used().is_empty());
    // EVENT_IDX: the device asked for a kick at the next available index.
    let avail_event: u16 = mem.read_obj(GuestAddress(drv.used + 4 + 8 * 16)).unwrap();
    assert_eq!(u16::from_le(avail_event), 1);

    let b2 = drv.writable(2048);
    let b3 = drv.writable(2048);
    drv.post(&[b2]);
    drv.post(&[b3]);
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!((run.delivered, run.stop), (2, RxStop::TapEmpty));
    let used = drv.take_used();
    assert_eq!(used, vec![(0, 2048), (1, 3012 - 2048), (2, 76)]);
    let mut got = drv.read(b1.addr, 2048);
    got.extend(drv.read(b2.addr, 3012 - 2048));
    assert_eq!(num_buffers(&got), 2);
    assert_eq!(&got[12..], &f[..]);
}

#[test]
fn rx_skips_chains_it_may_not_write_and_uses_the_next_one() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(false), true);

    let ro = drv.readable(&[0u8; 1000]);
    let bad_readable = drv.post(&[ro]);
    let bad_outside = drv.post(&[Buf {
        addr: MEM_SIZE as u64 - 100,
        len: 4096,
        writable: true,
    }]);
    let tiny = drv.writable(8);
    let bad_short = drv.post(&[tiny]);
    let good = drv.writable(1000);
    let good_head = drv.post(&[good]);

    host.send(&packet(&frame(200, 11))).unwrap();
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!(run.delivered, 1);
    assert_eq!(
        drv.take_used(),
        vec![
            (u32::from(bad_readable), 0),
            (u32::from(bad_outside), 0),
            (u32::from(bad_short), 0),
            (u32::from(good_head), 212)
        ]
    );
    assert_eq!(
        drv.read(ro.addr, 1000),
        vec![0u8; 1000],
        "read-only left alone"
    );
    assert_eq!(stats.snapshot().bad_chains, 3);
}

#[test]
fn rx_drops_a_frame_that_the_whole_ring_cannot_hold() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 4, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(false), true);
    for _ in 0..4 {
        let b = drv.writable(100);
        drv.post(&[b]);
    }
    host.send(&packet(&frame(1000, 12))).unwrap();
    host.send(&packet(&frame(50, 13))).unwrap();
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!(run.delivered, 1);
    assert_eq!(drv.take_used(), vec![(0, 62)]);
    assert_eq!(stats.snapshot().rx_dropped, 1);
}

#[test]
fn rx_drops_runt_reads_and_stops_after_its_budget() {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, 512, DATA_BASE);
    let (tap, host) = PairTap::pair();
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(false), true);
    host.send(&[1, 2, 3]).unwrap();
    for _ in 0..RX_BUDGET + 5 {
        let b = drv.writable(128);
        drv.post(&[b]);
        host.send(&packet(&frame(60, 14))).unwrap();
    }
    let run = rx.process(&mem, &tap, &stats);
    // The runt counts against the budget too.
    assert_eq!((run.delivered, run.stop), (RX_BUDGET - 1, RxStop::Budget));
    let run = rx.process(&mem, &tap, &stats);
    assert_eq!((run.delivered, run.stop), (6, RxStop::TapEmpty));
    let c = stats.snapshot();
    assert_eq!((c.rx_frames, c.rx_dropped), (RX_BUDGET as u64 + 5, 1));
}

// ---- fuzzing ----

#[derive(Debug, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn raw_desc(size: u16) -> impl Strategy<Value = RawDesc> {
    let addr = prop_oneof![
        (DATA_BASE..MEM_SIZE as u64),
        (0u64..DATA_BASE),
        any::<u64>(),
        Just(MEM_SIZE as u64 - 1),
    ];
    let len = prop_oneof![0u32..4096, 0u32..70_000, any::<u32>()];
    let flags = prop_oneof![
        4 => prop::sample::select(vec![0, DESC_F_NEXT, DESC_F_WRITE, DESC_F_NEXT | DESC_F_WRITE]),
        1 => any::<u16>(),
        1 => Just(DESC_F_INDIRECT),
    ];
    let next = prop_oneof![4 => 0..size, 1 => any::<u16>()];
    (addr, len, flags, next).prop_map(|(addr, len, flags, next)| RawDesc {
        addr,
        len,
        flags,
        next,
    })
}

#[derive(Debug, Clone)]
struct RingCase {
    descs: Vec<RawDesc>,
    heads: Vec<u16>,
    event_idx: bool,
    mergeable: bool,
    frames: Vec<usize>,
}

const FUZZ_QUEUE: u16 = 16;

fn ring_case() -> impl Strategy<Value = RingCase> {
    (
        prop::collection::vec(raw_desc(FUZZ_QUEUE), FUZZ_QUEUE as usize),
        prop::collection::vec(prop_oneof![4 => 0..FUZZ_QUEUE, 1 => any::<u16>()], 0..40),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(prop_oneof![0usize..100, 0usize..MAX_PACKET_LEN], 0..6),
    )
        .prop_map(|(descs, heads, event_idx, mergeable, frames)| RingCase {
            descs,
            heads,
            event_idx,
            mergeable,
            frames,
        })
}

/// Lays the case's descriptors and heads into the driver's rings. More heads than
/// the ring holds is itself malformed (the available index runs ahead).
fn lay_out(drv: &mut Driver<'_>, case: &RingCase) {
    for (i, d) in case.descs.iter().enumerate() {
        drv.write_desc(i as u16, d.addr, d.len, d.flags, d.next);
    }
    for &head in &case.heads {
        drv.publish(head);
    }
}

/// The used ring agrees with the queue's own count and names only real heads.
fn check_used_ring(drv: &mut Driver<'_>, queue: &Queue, published: usize) -> Vec<(u32, u32)> {
    let used = take_used_ring(drv, queue);
    assert!(
        used.len() <= published,
        "{} used of {published}",
        used.len()
    );
    for &(id, _) in &used {
        assert!(id < u32::from(FUZZ_QUEUE), "used id {id}");
    }
    used
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn tx_survives_any_ring(case in ring_case()) {
        let mem = memory();
        let mut drv = Driver::new(&mem, QUEUE_BASE, FUZZ_QUEUE, DATA_BASE);
        lay_out(&mut drv, &case);
        let (tap, host) = PairTap::pair();
        let stats = NetStats::default();
        let mut tx = TxQueue::new(drv.queue(case.event_idx), TxOffloads::default());
        let run = tx.process(&mem, &tap, &stats);
        let used = check_used_ring(&mut drv, tx.queue(), case.heads.len());
        prop_assert_eq!(used.len(), run.completed);
        prop_assert!(used.iter().all(|&(_, len)| len == 0));
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        let mut sent = 0;
        while let Ok(n) = host.recv(&mut buf) {
            prop_assert!((VNET_HDR_LEN..=MAX_PACKET_LEN).contains(&n));
            sent += 1;
        }
        let c = stats.snapshot();
        prop_assert_eq!(c.tx_frames, sent);
        // Chains whose head is outside the queue are dropped but cannot be used.
        prop_assert!(c.tx_frames <= run.completed as u64);
        prop_assert!(c.tx_frames + c.tx_dropped >= run.completed as u64);
    }

    #[test]
    fn rx_survives_any_ring(case in ring_case()) {
        rx_case(&case)?;
    }
}

/// The used index the device wrote last is its own count.
fn take_used_ring(drv: &mut Driver<'_>, queue: &Queue) -> Vec<(u32, u32)> {
    assert_eq!(drv.used_idx(), queue.next_used());
    drv.take_used()
}

/// Whether a guest-writable buffer lies over the rings: a guest may aim received
/// frames at its own rings, and then its used entries hold frame bytes rather than
/// what the device wrote.
fn rings_overwritable(drv: &Driver<'_>, case: &RingCase) -> bool {
    let rings = drv.rings();
    case.descs.iter().any(|d| {
        let end = d.addr.saturating_add(u64::from(d.len));
        d.flags & DESC_F_WRITE != 0 && d.addr < rings.end && end > rings.start
    })
}

fn rx_case(case: &RingCase) -> Result<(), TestCaseError> {
    let mem = memory();
    let mut drv = Driver::new(&mem, QUEUE_BASE, FUZZ_QUEUE, DATA_BASE);
    lay_out(&mut drv, case);
    let (tap, host) = PairTap::pair();
    let mut sent = 0u64;
    for &len in &case.frames {
        // The socket buffer may fill up: then fewer frames are queued.
        if host.send(&vec![0x5a; len]).is_ok() {
            sent += 1;
        }
    }
    let stats = NetStats::default();
    let mut rx = RxQueue::new(drv.queue(case.event_idx), case.mergeable);
    let run = rx.process(&mem, &tap, &stats);
    let c = stats.snapshot();
    prop_assert_eq!(c.rx_frames, run.delivered as u64);
    prop_assert!(c.rx_frames + c.rx_dropped <= sent);
    if rings_overwritable(&drv, case) {
        // The device's own count still holds; the entries are the guest's to spoil.
        take_used_ring(&mut drv, rx.queue());
        return Ok(());
    }
    let used = check_used_ring(&mut drv, rx.queue(), case.heads.len());
    for &(_, len) in &used {
        prop_assert!(len as usize <= MAX_PACKET_LEN);
    }
    // Every delivered frame's bytes are accounted for in the used lengths.
    let used_bytes: u64 = used.iter().map(|&(_, len)| u64::from(len)).sum();
    prop_assert_eq!(used_bytes, c.rx_bytes + VNET_HDR_LEN as u64 * c.rx_frames);
    Ok(())
}

/// A case the fuzzer found once: a frame received over the guest's own used ring.
#[test]
fn rx_zero_length_and_write_flagged_ring() {
    let d = |addr, len, flags, next| RawDesc {
        addr,
        len,
        flags,
        next,
    };
    let mut descs = vec![d(65536, 0, 0, 0); 12];
    descs.extend([
        d(0, 30103, 2, 0),
        d(65536, 15, 2, 9),
        d(4194303, 61155, 6114, 14),
        d(4194303, 1440, 3, 3),
    ]);
    let case = RingCase {
        descs,
        heads: vec![6, 12, 6, 65153, 22167, 11, 11, 11, 11, 8],
        event_idx: false,
        mergeable: false,
        frames: vec![30103],
    };
    rx_case(&case).unwrap();
}

// ---- the I/O thread ----

mod thread {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::net::handler::{NetHandler, RX_KICK, TAP_READABLE, TX_KICK};
    use crate::virtio::worker::Worker;
    use crate::virtio::VirtioInterrupt;

    #[derive(Default)]
    struct Interrupts([AtomicU64; 2]);

    impl VirtioInterrupt for Interrupts {
        fn notify_queue(&self, queue_index: u16) -> io::Result<()> {
            self.0[usize::from(queue_index)].fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn notify_config(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    struct Setup {
        worker: Worker<NetHandler<PairTap>>,
        rx_kick: EventFd,
        tx_kick: EventFd,
        interrupts: Arc<Interrupts>,
    }

    fn start(mem: &GuestMemoryMmap, rx: Queue, tx: Queue, tap: PairTap) -> Setup {
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupts = Arc::new(Interrupts::default());
        let fds = [
            (rx_kick.as_raw_fd(), RX_KICK),
            (tx_kick.as_raw_fd(), TX_KICK),
            (tap.as_raw_fd(), TAP_READABLE),
        ];
        let handler = NetHandler {
            mem: mem.clone(),
            interrupt: interrupts.clone(),
            rx: RxQueue::new(rx, true),
            tx: TxQueue::new(tx, TxOffloads::default()),
            rx_kick: rx_kick.try_clone().unwrap(),
            tx_kick: tx_kick.try_clone().unwrap(),
            tap,
            tap_polled: true,
            stats: Arc::new(NetStats::default()),
        };
        let worker = Worker::spawn("virtio-net-test".into(), handler, &fds).unwrap();
        Setup {
            worker,
            rx_kick,
            tx_kick,
            interrupts,
        }
    }

    #[test]
    fn without_buffers_the_tap_waits_for_the_guest_to_kick_receive() {
        let mem = memory();
        let mut rxd = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
        let txd = Driver::new(&mem, 0x8000, 16, 0x20_0000);
        let (tap, host) = PairTap::pair();
        let s = start(&mem, rxd.queue(true), txd.queue(true), tap);

        let first = packet(&frame(100, 1));
        let second = packet(&frame(200, 2));
        host.send(&first).unwrap();
        host.send(&second).unwrap();
        // Buffers posted without a kick are not seen: the thread read the first
        // frame, found no room and stopped reading the tap.
        std::thread::sleep(Duration::from_millis(100));
        let bufs: Vec<Buf> = (0..2).map(|_| rxd.writable(1024)).collect();
        for b in &bufs {
            rxd.post(&[*b]);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(rxd.used_idx(), 0);

        s.rx_kick.write(1).unwrap();
        wait_for("both frames delivered", || rxd.used_idx() == 2);
        assert_eq!(rxd.read(bufs[0].addr, first.len())[12..], first[12..]);
        assert_eq!(rxd.read(bufs[1].addr, second.len())[12..], second[12..]);
        assert!(s.interrupts.0[0].load(Ordering::SeqCst) >= 1);

        let handler = s.worker.stop().expect("the thread did not panic");
        assert!(handler.tap_polled, "the tap is drained, so polled again");
        assert_eq!(handler.stats.snapshot().rx_frames, 2);
    }

    #[test]
    fn a_long_transmit_burst_is_finished_after_one_kick() {
        let mem = memory();
        let rxd = Driver::new(&mem, QUEUE_BASE, 16, DATA_BASE);
        let mut txd = Driver::new(&mem, 0x8000, 1024, 0x20_0000);
        let (tap, host) = PairTap::pair();
        let count = TX_BUDGET * 2 + 7;
        let b = txd.readable(&packet(&frame(60, 3)));
        for _ in 0..count {
            txd.post(&[b]);
        }
        let s = start(&mem, rxd.queue(false), txd.queue(false), tap);
        s.tx_kick.write(1).unwrap();
        wait_for("every chain used", || usize::from(txd.used_idx()) == count);
        assert!(s.interrupts.0[1].load(Ordering::SeqCst) >= 1);
        let handler = s.worker.stop().expect("the thread did not panic");
        // The socket pair's buffer is smaller than the burst: what did not fit
        // was dropped and counted, the way a full tap queue drops.
        let mut received = 0;
        let mut buf = [0u8; 128];
        while host.recv(&mut buf).is_ok() {
            received += 1;
        }
        let c = handler.stats.snapshot();
        assert_eq!(c.tx_frames, received);
        assert_eq!(c.tx_frames + c.tx_dropped, count as u64);
    }
}
