//! A virtio-blk device on a qcow2 image with a backing file, driven through its
//! queue the way a guest drives it: reads see the backing file, writes and a flush
//! land in the top image as QEMU reads it.

#[path = "qcow2/common.rs"]
mod common;

use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use devices::virtio::block::{Block, BlockOptions};
use devices::virtio::testing::{guest_memory, TestQueue};
use devices::virtio::{Activation, ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

#[test]
fn a_guest_reads_and_writes_a_qcow2_disk_through_the_queue() {
    let s = Scratch::new("virtio");
    let base = s.path("base.raw");
    let base_data = patterned_raw(&base, 1 << 20, 11);
    let top = s.path("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "-o",
        "cluster_size=4096",
        top.to_str().unwrap(),
        "2M",
    ]);
    let mut block = Block::open(BlockOptions {
        path: top.clone(),
        readonly: false,
        direct: false,
        serial: None,
        format: None,
    })
    .unwrap();
    assert_eq!(block.capacity_bytes(), 2 << 20);
    assert_ne!(block.features() & 1 << VIRTIO_BLK_F_FLUSH, 0);
    // Discard would need qcow2 cluster freeing; not offered.
    assert_eq!(block.features() & 1 << VIRTIO_BLK_F_DISCARD, 0);

    let mem = guest_memory(4 << 20);
    let (tx, irqs) = mpsc::channel();
    let mut tq = TestQueue::new(&mem, GuestAddress(0), 64);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let activation = Activation {
        mem: mem.clone(),
        interrupt: Arc::new(ChannelInterrupt(Mutex::new(tx))),
        queues: vec![ActiveQueue {
            index: 0,
            queue: tq.queue(false),
            kick: kick.try_clone().unwrap(),
        }],
        acked_features: VIRTIO_F_VERSION_1,
    };
    block.activate(activation).unwrap();
    let serve = |n: u16, tq: &TestQueue<'_>| {
        kick.write(1).unwrap();
        while tq.used_idx() < n {
            irqs.recv_timeout(Duration::from_secs(10))
                .expect("no interrupt");
        }
    };

    // A write of 3 sectors that straddles a cluster boundary (sector 7 starts
    // 512 bytes before 4 KiB), split over two descriptors.
    let hdr = tq.readable(&header(VIRTIO_BLK_T_OUT, 7));
    let d1 = tq.readable(&[0xd1; 1024]);
    let d2 = tq.readable(&[0xd2; 512]);
    let st = tq.writable(1);
    tq.add_chain(&[hdr, d1, d2, st]);
    serve(1, &tq);
    assert_eq!(tq.read(st.addr, 1), [0]);

    // Read back sectors 6..10: backing data around the write.
    let hdr = tq.readable(&header(VIRTIO_BLK_T_IN, 6));
    let back = tq.writable(4 * 512);
    let st = tq.writable(1);
    tq.add_chain(&[hdr, back, st]);
    serve(2, &tq);
    assert_eq!(tq.read(st.addr, 1), [0]);
    let got = tq.read(back.addr, 4 * 512);
    let mut model = base_data.clone();
    model.resize(2 << 20, 0);
    model[7 * 512..9 * 512].fill(0xd1);
    model[9 * 512..10 * 512].fill(0xd2);
    assert!(got[..] == model[6 * 512..10 * 512]);

    let hdr = tq.readable(&header(VIRTIO_BLK_T_FLUSH, 0));
    let st = tq.writable(1);
    tq.add_chain(&[hdr, st]);
    serve(3, &tq);
    assert_eq!(tq.read(st.addr, 1), [0]);

    // After the flush the image is consistent even while the device still holds it.
    assert_check_clean(&top);
    block.reset();
    drop(block);
    assert!(qemu_contents(&top, &s) == model);
}
