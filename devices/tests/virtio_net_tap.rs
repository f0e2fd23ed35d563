//! virtio-net against a real tap, through the device's public API and its I/O
//! thread: frames the guest sends come out of the tap's interface, frames sent on
//! the interface land in the guest's receive buffers.
//!
//! Needs root and /dev/net/tun. Without them the tests print why and skip, in CI
//! as well: CI containers often lack /dev/net/tun, and the VFIO lab covers real
//! taps with a real guest.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::net::{MacAddr, Net, NetError, NetOptions, TapError, TapSource};
use devices::virtio::testing::{guest_memory, TestQueue};
use devices::virtio::{Activation, ActiveQueue, VirtioDevice, VirtioInterrupt};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// An EtherType for local experiments (IEEE 802), so the host stack ignores the
/// test's frames and the packet socket sees nothing else.
const ETHERTYPE: u16 = 0x88b5;
const GUEST_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x0a, 0x0b, 0x0c]);
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

fn real_taps_usable() -> bool {
    let reason = if !Path::new("/dev/net/tun").exists() {
        "/dev/net/tun is missing (load the tun module)"
    } else if unsafe { libc::geteuid() } != 0 {
        "creating taps needs root (CAP_NET_ADMIN)"
    } else {
        return true;
    };
    eprintln!("skipping: {reason}");
    false
}

/// A tap name of this process's own, so parallel test runs do not collide.
fn tap_name(suffix: char) -> String {
    format!("fvnt{:x}{suffix}", std::process::id() & 0xff_ffff)
}

fn iface_flags(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

#[derive(Default)]
struct CountingInterrupt {
    per_queue: [AtomicU64; 2],
}

impl VirtioInterrupt for CountingInterrupt {
    fn notify_queue(&self, queue_index: u16) -> io::Result<()> {
        if let Some(count) = self.per_queue.get(usize::from(queue_index)) {
            count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn notify_config(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A raw packet socket on the tap's interface, seeing only ETHERTYPE frames.
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(iface: &str) -> PacketSocket {
        let name = std::ffi::CString::new(iface).unwrap();
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {iface}");
        let proto = ETHERTYPE.to_be();
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(ret, 0);
        PacketSocket { fd, ifindex }
    }

    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn send(&self, frame: &[u8]) {
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "sendto: {}",
            io::Error::last_os_error()
        );
    }
}

fn ethernet_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.resize(frame.len().max(60), 0);
    frame
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn frames_cross_between_the_guest_queues_and_a_real_tap() {
    if !real_taps_usable() {
        return;
    }
    let name = tap_name('a');
    let mut net = Net::new(NetOptions {
        tap: TapSource::Name(name.clone()),
        mac: Some(GUEST_MAC),
    })
    .unwrap();
    assert_eq!(net.tap_name(), name);
    assert_eq!(net.mac(), GUEST_MAC);
    let flags = iface_flags(&name).expect("the tap exists");
    assert_ne!(flags & libc::IFF_UP as u32, 0, "link is up");

    let mut config = [0u8; 10];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &GUEST_MAC.0);
    assert_eq!(&config[6..8], &[1, 0], "VIRTIO_NET_S_LINK_UP");
    assert_eq!(&config[8..], &[0, 0], "past the end reads as zero");

    let mem = guest_memory(4 << 20);
    let mut rxq = TestQueue::new(&mem, GuestAddress(0), 256);
    let mut txq = TestQueue::new(&mem, GuestAddress(0x20_0000), 256);
    let rx_bufs: Vec<_> = (0..32).map(|_| rxq.writable(4096)).collect();
    for buf in &rx_bufs {
        rxq.add_chain(&[*buf]);
    }
    let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(CountingInterrupt::default());
    let packets = PacketSocket::open(&name);
    net.activate(Activation {
        mem: mem.clone(),
        interrupt: interrupt.clone(),
        queues: vec![
            ActiveQueue {
                index: 0,
                queue: rxq.queue(true),
                kick: rx_kick.try_clone().unwrap(),
            },
            ActiveQueue {
                index: 1,
                queue: txq.queue(true),
                kick: tx_kick.try_clone().unwrap(),
            },
        ],
        acked_features: net.features(),
    })
    .unwrap();

    // Guest -> host: one direct chain (header and frame apart), one indirect.
    let out = ethernet_frame([0xff; 6], GUEST_MAC.0, b"form-vmm virtio-net tx direct");
    let hdr = txq.readable(&[0u8; 12]);
    let body = txq.readable(&out);
    txq.add_chain(&[hdr, body]);
    let mut packet = vec![0u8; 12];
    let out2 = ethernet_frame([0xff; 6], GUEST_MAC.0, b"form-vmm virtio-net tx indirect");
    packet.extend_from_slice(&out2);
    let whole = txq.readable(&packet);
    txq.add_indirect_chain(&[whole]);
    tx_kick.write(1).unwrap();
    assert_eq!(packets.recv().expect("the first frame on the tap"), out);
    assert_eq!(packets.recv().expect("the second frame on the tap"), out2);
    wait_for("both transmit chains used", || txq.used_idx() == 2);
    for n in 0..2 {
        assert_eq!(txq.used_elem(n).len, 0);
    }
    assert!(interrupt.per_queue[1].load(Ordering::SeqCst) >= 1);

    // Host -> guest. The host may send its own frames (IPv6 router solicitations)
    // to the tap as well; look for ours among whatever arrived.
    let inbound = ethernet_frame(GUEST_MAC.0, HOST_MAC, b"form-vmm virtio-net rx");
    packets.send(&inbound);
    let mut seen = 0u16;
    let mut found = None;
    wait_for("the frame in a receive buffer", || {
        while seen != rxq.used_idx() {
            let used = rxq.used_elem(seen);
            let buf = rx_bufs[used.id as usize];
            let data = rxq.read(buf.addr, used.len as usize);
            if data.len() == 12 + inbound.len() && data[12..] == inbound[..] {
                found = Some(data);
            }
            seen += 1;
        }
        found.is_some()
    });
    let data = found.unwrap();
    assert_eq!(u16::from_le_bytes([data[10], data[11]]), 1, "num_buffers");
    assert!(interrupt.per_queue[0].load(Ordering::SeqCst) >= 1);

    net.reset();
    let counters = net.counters();
    assert_eq!(counters.tx_frames, 2);
    assert!(counters.rx_frames >= 1);
    assert_eq!(counters.bad_chains, 0);

    drop(net);
    assert!(
        iface_flags(&name).is_none(),
        "the tap goes away with the device"
    );
}

#[test]
fn a_tap_held_by_another_device_is_refused_as_busy() {
    if !real_taps_usable() {
        return;
    }
    let name = tap_name('b');
    let first = Net::new(NetOptions {
        tap: TapSource::Name(name.clone()),
        mac: None,
    })
    .unwrap();
    assert!(first.mac().is_locally_administered() && !first.mac().is_multicast());
    let err = Net::new(NetOptions {
        tap: TapSource::Name(name.clone()),
        mac: None,
    })
    .err()
    .expect("a second attach fails");
    assert!(matches!(err, NetError::Tap(TapError::Busy { .. })), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

/// Opens a tap the way a parent process that passes fds would.
fn open_tap_fd(name: &str, flags: i32) -> OwnedFd {
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0);
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as i16;
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", io::Error::last_os_error());
    fd
}

#[test]
fn an_open_tap_fd_is_adopted_and_a_wrong_one_refused() {
    if !real_taps_usable() {
        return;
    }
    let name = tap_name('c');
    let fd = open_tap_fd(&name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    let net = Net::new(NetOptions {
        tap: TapSource::Fd(fd.into_raw_fd()),
        mac: None,
    })
    .unwrap();
    assert_eq!(net.tap_name(), name);
    assert_ne!(iface_flags(&name).unwrap() & libc::IFF_UP as u32, 0);
    drop(net);

    let name = tap_name('d');
    let fd = open_tap_fd(&name, libc::IFF_TAP | libc::IFF_NO_PI);
    let err = Net::new(NetOptions {
        tap: TapSource::Fd(fd.as_raw_fd()),
        mac: None,
    })
    .err()
    .expect("a tap without vnet headers is refused");
    assert!(err.to_string().contains("IFF_VNET_HDR"), "{err}");
    // Refused, so still ours to close: closing it must succeed exactly once.
    drop(fd);
}

#[test]
fn an_overlong_tap_name_is_refused_with_the_limit() {
    let err = Net::new(NetOptions {
        tap: TapSource::Name("a-tap-name-too-long".into()),
        mac: None,
    })
    .err()
    .expect("names over 15 bytes are refused");
    assert!(err.to_string().contains("15 bytes"), "{err}");
}
