//! Test support: builds split virtqueues in guest memory the way a driver does, so
//! device tests can post descriptor chains (well-formed or deliberately broken) and
//! read back what the device put on the used ring. Not for production use; it
//! panics on misuse because only tests call it.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::device::GuestMemoryMmap;

/// The next descriptor is in `next`.
pub const DESC_F_NEXT: u16 = 1;
/// The device writes this buffer (it reads it otherwise).
pub const DESC_F_WRITE: u16 = 2;
/// The buffer holds an indirect descriptor table.
pub const DESC_F_INDIRECT: u16 = 4;

/// Size of one split-ring descriptor in bytes.
pub const DESC_SIZE: u64 = 16;

/// One region of `size` bytes of anonymous guest memory at guest address 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("cannot map test guest memory")
}

/// A descriptor exactly as a driver writes it into a descriptor table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDescriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One buffer of a chain to build: where it is, how long, and who writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (`DESC_F_WRITE`).
    pub writable: bool,
}

/// One entry of the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    pub id: u32,
    pub len: u32,
}

/// A split virtqueue laid out in guest memory at `base`: descriptor table, available
/// ring, used ring, then a data area that [`TestQueue::alloc`] hands out buffers from,
/// up to the end of guest memory.
pub struct TestQueue<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_free_desc: u16,
    avail_idx: u16,
    data_next: u64,
    data_end: u64,
}

impl<'a> TestQueue<'a> {
    /// Lays out a queue of `size` entries (a power of two) at `base`.
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        assert!(size.is_power_of_two(), "queue size must be a power of two");
        let desc_table = base;
        let avail_ring = desc_table.unchecked_add(DESC_SIZE * u64::from(size));
        // flags, idx, ring[size], used_event
        let avail_len = 4 + 2 * u64::from(size) + 2;
        let used_ring = GuestAddress((avail_ring.raw_value() + avail_len).next_multiple_of(4));
        // flags, idx, ring[size] of (id, len), avail_event
        let used_len = 4 + 8 * u64::from(size) + 2;
        let data_next = (used_ring.raw_value() + used_len).next_multiple_of(4096);
        let data_end = mem.last_addr().raw_value() + 1;
        assert!(data_next < data_end, "guest memory too small for the queue");
        let q = Self {
            mem,
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_free_desc: 0,
            avail_idx: 0,
            data_next,
            data_end,
        };
        let zeroes = vec![0u8; (data_next - base.raw_value()) as usize];
        mem.write_slice(&zeroes, base)
            .expect("queue outside guest memory");
        q
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// First byte past the rings: where the data area starts.
    pub fn data_start(&self) -> GuestAddress {
        GuestAddress(
            (self.used_ring.raw_value() + 4 + 8 * u64::from(self.size) + 2).next_multiple_of(4096),
        )
    }

    /// A `Queue` configured on this layout and ready, as the transport hands it over.
    pub fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        q.try_set_desc_table_address(self.desc_table)
            .expect("descriptor table address");
        q.try_set_avail_ring_address(self.avail_ring)
            .expect("available ring address");
        q.try_set_used_ring_address(self.used_ring)
            .expect("used ring address");
        q.set_event_idx(event_idx);
        q.set_ready(true);
        assert!(q.is_valid(self.mem), "test queue is not valid");
        q
    }

    /// Reserves `len` bytes of the data area (8-byte aligned) and zeroes them.
    pub fn alloc(&mut self, len: u32) -> GuestAddress {
        let addr = self.data_next;
        let end = addr + u64::from(len);
        assert!(end <= self.data_end, "test data area exhausted");
        self.data_next = end.next_multiple_of(8);
        self.mem
            .write_slice(&vec![0u8; len as usize], GuestAddress(addr))
            .expect("data area outside guest memory");
        GuestAddress(addr)
    }

    /// A device-readable buffer holding `data`.
    pub fn readable(&mut self, data: &[u8]) -> Segment {
        let len = u32::try_from(data.len()).expect("buffer too long");
        let addr = self.alloc(len);
        self.mem.write_slice(data, addr).expect("write buffer");
        Segment {
            addr,
            len,
            writable: false,
        }
    }

    /// A zeroed device-writable buffer of `len` bytes.
    pub fn writable(&mut self, len: u32) -> Segment {
        Segment {
            addr: self.alloc(len),
            len,
            writable: true,
        }
    }

    /// Writes descriptor `index` of the table as given, whatever it holds.
    pub fn write_descriptor(&self, index: u16, desc: RawDescriptor) {
        write_descriptor_at(self.mem, self.desc_table, index, desc);
    }

    /// Writes `segments` as a chain on the next free descriptors (wrapping around the
    /// table) without making it available; returns the head index.
    pub fn write_chain(&mut self, segments: &[Segment]) -> u16 {
        assert!(!segments.is_empty(), "a chain needs at least one buffer");
        assert!(
            segments.len() <= usize::from(self.size),
            "chain longer than the queue"
        );
        let head = self.next_free_desc;
        for (i, seg) in segments.iter().enumerate() {
            let index = self.next_free_desc;
            let next = (index + 1) % self.size;
            let mut flags = if seg.writable { DESC_F_WRITE } else { 0 };
            if i + 1 < segments.len() {
                flags |= DESC_F_NEXT;
            }
            self.write_descriptor(
                index,
                RawDescriptor {
                    addr: seg.addr.raw_value(),
                    len: seg.len,
                    flags,
                    next: if i + 1 < segments.len() { next } else { 0 },
                },
            );
            self.next_free_desc = next;
        }
        head
    }

    /// Writes `segments` as a chain and makes it available; returns the head index.
    pub fn add_chain(&mut self, segments: &[Segment]) -> u16 {
        let head = self.write_chain(segments);
        self.publish(head);
        head
    }

    /// Writes `segments` into an indirect table in the data area and makes available
    /// a one-descriptor chain pointing at it; returns the head index.
    pub fn add_indirect_chain(&mut self, segments: &[Segment]) -> u16 {
        let count = u16::try_from(segments.len()).expect("indirect table too long");
        let table = self.alloc(u32::from(count) * DESC_SIZE as u32);
        for (i, seg) in segments.iter().enumerate() {
            let i = i as u16;
            let mut flags = if seg.writable { DESC_F_WRITE } else { 0 };
            if i + 1 < count {
                flags |= DESC_F_NEXT;
            }
            write_descriptor_at(
                self.mem,
                table,
                i,
                RawDescriptor {
                    addr: seg.addr.raw_value(),
                    len: seg.len,
                    flags,
                    next: if i + 1 < count { i + 1 } else { 0 },
                },
            );
        }
        let head = self.next_free_desc;
        self.write_descriptor(
            head,
            RawDescriptor {
                addr: table.raw_value(),
                len: u32::from(count) * DESC_SIZE as u32,
                flags: DESC_F_INDIRECT,
                next: 0,
            },
        );
        self.next_free_desc = (head + 1) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` on the available ring and publishes the new index.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let entry = self.avail_ring.unchecked_add(4 + 2 * slot);
        self.mem.write_obj(head.to_le(), entry).expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Overwrites the available ring's index, e.g. with a value a broken driver writes.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .store(
                idx.to_le(),
                self.avail_ring.unchecked_add(2),
                Ordering::Release,
            )
            .expect("avail idx");
    }

    /// Writes the `used_event` field (EVENT_IDX): the driver wants an interrupt once
    /// the used index passes `idx`.
    pub fn set_used_event(&self, idx: u16) {
        let addr = self.avail_ring.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(idx.to_le(), addr).expect("used_event");
    }

    /// The `avail_event` field the device wrote (EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        let addr = self.used_ring.unchecked_add(4 + 8 * u64::from(self.size));
        u16::from_le(self.mem.read_obj(addr).expect("avail_event"))
    }

    /// The used ring's index as the device last published it.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(self.used_ring.unchecked_add(2), Ordering::Acquire)
                .expect("used idx"),
        )
    }

    /// Entry `n` (counted from the start, wrapping) of the used ring.
    pub fn used_elem(&self, n: u16) -> UsedElem {
        let slot = u64::from(n % self.size);
        let addr = self.used_ring.unchecked_add(4 + 8 * slot);
        let id: u32 = self.mem.read_obj(addr).expect("used elem id");
        let len: u32 = self
            .mem
            .read_obj(addr.unchecked_add(4))
            .expect("used elem len");
        UsedElem {
            id: u32::from_le(id),
            len: u32::from_le(len),
        }
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_slice(&mut buf, addr)
            .expect("read guest memory");
        buf
    }
}

/// Writes descriptor `index` of the table at `table`.
pub fn write_descriptor_at(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    index: u16,
    desc: RawDescriptor,
) {
    let addr = table.unchecked_add(DESC_SIZE * u64::from(index));
    let mut bytes = [0u8; DESC_SIZE as usize];
    bytes[0..8].copy_from_slice(&desc.addr.to_le_bytes());
    bytes[8..12].copy_from_slice(&desc.len.to_le_bytes());
    bytes[12..14].copy_from_slice(&desc.flags.to_le_bytes());
    bytes[14..16].copy_from_slice(&desc.next.to_le_bytes());
    mem.write_slice(&bytes, addr).expect("descriptor table");
}

/// Proptest strategies for fuzzing queue handlers with hostile descriptor tables.
#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress};

    use super::{
        write_descriptor_at, RawDescriptor, TestQueue, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE,
    };
    use crate::virtio::GuestMemoryMmap;
    use virtio_queue::Queue;

    /// Guest memory size the fuzz tests use; addresses are drawn around it so that
    /// some buffers lie partly or wholly outside memory.
    pub const FUZZ_MEM_SIZE: u64 = 1 << 20;
    /// Entries of the fuzzed queue (and of its descriptor table).
    pub const FUZZ_QUEUE_SIZE: u16 = 16;

    /// An address: mostly inside guest memory, sometimes near its end, past it, or
    /// near `u64::MAX` (overflow).
    pub fn address() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => 0x1000u64..FUZZ_MEM_SIZE,
            1 => (FUZZ_MEM_SIZE - 64)..(FUZZ_MEM_SIZE + 64),
            1 => FUZZ_MEM_SIZE..u64::MAX,
            1 => (u64::MAX - 4096)..=u64::MAX,
        ]
    }

    /// A length: mostly small, sometimes sector-sized, sometimes huge.
    pub fn length() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => 0u32..64,
            3 => (1u32..16).prop_map(|n| n * 512),
            1 => any::<u32>(),
        ]
    }

    /// Any combination of NEXT, WRITE and INDIRECT, plus stray bits.
    pub fn flags() -> impl Strategy<Value = u16> {
        prop_oneof![
            8 => prop::sample::select(vec![
                0,
                DESC_F_NEXT,
                DESC_F_WRITE,
                DESC_F_NEXT | DESC_F_WRITE,
                DESC_F_INDIRECT,
                DESC_F_INDIRECT | DESC_F_NEXT,
            ]),
            1 => any::<u16>(),
        ]
    }

    /// A descriptor whose `next` mostly stays inside a table of `table_size`.
    pub fn descriptor(table_size: u16) -> impl Strategy<Value = RawDescriptor> {
        (
            address(),
            length(),
            flags(),
            prop_oneof![4 => 0..table_size, 1 => any::<u16>()],
        )
            .prop_map(|(addr, len, flags, next)| RawDescriptor {
                addr,
                len,
                flags,
                next,
            })
    }

    /// 16 bytes that often parse as a virtio-blk request header (type, reserved,
    /// small sector), so fuzzed chains reach the request handlers.
    pub fn header_blob() -> impl Strategy<Value = [u8; 16]> {
        (
            prop_oneof![
                4 => prop::sample::select(vec![0u32, 1, 4, 8, 11, 13]),
                1 => any::<u32>(),
            ],
            prop_oneof![4 => 0u64..256, 1 => any::<u64>()],
        )
            .prop_map(|(kind, sector)| {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&kind.to_le_bytes());
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                h
            })
    }

    /// One hostile queue: a random descriptor table, random heads on the available
    /// ring, an available index that may lie, and guest memory full of noise with
    /// plausible headers and indirect tables planted in it.
    #[derive(Clone, Debug)]
    pub struct FuzzCase {
        pub descs: Vec<RawDescriptor>,
        pub heads: Vec<u16>,
        /// Overrides the available index the heads imply.
        pub avail_idx: Option<u16>,
        pub noise_seed: u64,
        pub blobs: Vec<(u64, [u8; 16])>,
        /// Indirect tables: (address, descriptors).
        pub tables: Vec<(u64, Vec<RawDescriptor>)>,
        /// Well-formed virtio-blk read or write chains (header, data, status)
        /// written over the random table and made available first, so that
        /// fuzzing reaches the request handlers.
        pub plausible: Vec<PlausibleChain>,
        pub event_idx: bool,
    }

    #[derive(Clone, Debug)]
    pub struct PlausibleChain {
        /// Index of its first descriptor (it takes three).
        pub first: u16,
        /// A read (device-writable data) rather than a write.
        pub read: bool,
        pub sector: u64,
        pub sectors: u32,
        /// Where the data goes; the header lies just before it.
        pub data: u64,
        pub status: u64,
    }

    fn plausible_chain() -> impl Strategy<Value = PlausibleChain> {
        (
            0..FUZZ_QUEUE_SIZE - 2,
            any::<bool>(),
            0u64..160,
            0u32..16,
            0x1000u64..FUZZ_MEM_SIZE - 8192,
            0x1000u64..FUZZ_MEM_SIZE,
        )
            .prop_map(
                |(first, read, sector, sectors, data, status)| PlausibleChain {
                    first,
                    read,
                    sector,
                    sectors,
                    data,
                    status,
                },
            )
    }

    pub fn fuzz_case() -> impl Strategy<Value = FuzzCase> {
        let n = usize::from(FUZZ_QUEUE_SIZE);
        (
            prop::collection::vec(descriptor(FUZZ_QUEUE_SIZE), n),
            prop::collection::vec(
                prop_oneof![8 => 0..FUZZ_QUEUE_SIZE, 1 => any::<u16>()],
                0..=n,
            ),
            prop_oneof![6 => Just(None), 1 => any::<u16>().prop_map(Some)],
            any::<u64>(),
            prop::collection::vec((0x1000u64..FUZZ_MEM_SIZE - 16, header_blob()), 0..8),
            prop::collection::vec(
                (
                    0x1000u64..FUZZ_MEM_SIZE - 256,
                    prop::collection::vec(descriptor(8), 1..8),
                ),
                0..3,
            ),
            prop::collection::vec(plausible_chain(), 0..4),
            any::<bool>(),
        )
            .prop_map(
                |(descs, heads, avail_idx, noise_seed, blobs, tables, plausible, event_idx)| {
                    FuzzCase {
                        descs,
                        heads,
                        avail_idx,
                        noise_seed,
                        blobs,
                        tables,
                        plausible,
                        event_idx,
                    }
                },
            )
    }

    impl FuzzCase {
        /// Writes the case into `mem` (which must be `FUZZ_MEM_SIZE` bytes) and
        /// returns the queue layout and a ready `Queue` on it.
        pub fn build<'a>(&self, mem: &'a GuestMemoryMmap) -> (TestQueue<'a>, Queue) {
            let mut noise = vec![0u8; FUZZ_MEM_SIZE as usize];
            let mut x = self.noise_seed | 1;
            for chunk in noise.chunks_mut(8) {
                // xorshift64: cheap noise, reproducible from the seed.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            mem.write_slice(&noise, GuestAddress(0)).expect("noise");
            for (addr, blob) in &self.blobs {
                mem.write_slice(blob, GuestAddress(*addr)).expect("blob");
            }
            for (addr, table) in &self.tables {
                for (i, d) in table.iter().enumerate() {
                    write_descriptor_at(mem, GuestAddress(*addr), i as u16, *d);
                }
            }
            let mut tq = TestQueue::new(mem, GuestAddress(0), FUZZ_QUEUE_SIZE);
            let mut descs = self.descs.clone();
            let mut heads = self.heads.clone();
            for (k, p) in self.plausible.iter().enumerate() {
                let header_addr = p.data - 16;
                let mut header = [0u8; 16];
                header[0..4].copy_from_slice(&u32::from(!p.read).to_le_bytes());
                header[8..16].copy_from_slice(&p.sector.to_le_bytes());
                mem.write_slice(&header, GuestAddress(header_addr))
                    .expect("header");
                let i = usize::from(p.first);
                let write = if p.read { DESC_F_WRITE } else { 0 };
                descs[i] = RawDescriptor {
                    addr: header_addr,
                    len: 16,
                    flags: DESC_F_NEXT,
                    next: p.first + 1,
                };
                descs[i + 1] = RawDescriptor {
                    addr: p.data,
                    len: p.sectors * 512,
                    flags: DESC_F_NEXT | write,
                    next: p.first + 2,
                };
                descs[i + 2] = RawDescriptor {
                    addr: p.status,
                    len: 1,
                    flags: DESC_F_WRITE,
                    next: 0,
                };
                if let Some(h) = heads.get_mut(k) {
                    *h = p.first;
                }
            }
            for (i, d) in descs.iter().enumerate() {
                tq.write_descriptor(i as u16, *d);
            }
            for &head in &heads {
                tq.publish(head);
            }
            if let Some(idx) = self.avail_idx {
                tq.set_avail_idx(idx);
            }
            let queue = tq.queue(self.event_idx);
            (tq, queue)
        }

        /// How many chains the driver made available, as the device must see it.
        pub fn available(&self) -> u16 {
            self.avail_idx.unwrap_or(self.heads.len() as u16)
        }
    }
}
