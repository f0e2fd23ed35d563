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
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let reason = if !Path::new("/dev/net/tun").exists() {
        "/dev/net/tun is missing (load the tun module)"
    } else if euid != 0 {
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
        // SAFETY: `name` is a NUL-terminated CString that outlives the call, which
        // only reads it.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {iface}");
        let proto = ETHERTYPE.to_be();
        // SAFETY: socket takes no pointers; the returned fd is checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just returned by socket (checked non-negative above) and
        // nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is a plain C struct of integers and byte arrays, for
        // which all-zero bytes are a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a live, initialised sockaddr_ll and the length passed is
        // its exact size; bind only reads it.
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
        // SAFETY: `timeout` is a live timeval and the length passed is its exact
        // size, as SO_RCVTIMEO expects; setsockopt only reads it.
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
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which is
        // owned here and lives across the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: sockaddr_ll is a plain C struct of integers and byte arrays, for
        // which all-zero bytes are a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sendto only reads `frame.len()` bytes of `frame` and the whole of
        // `addr`, whose exact size is passed; both outlive the call.
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
    // SAFETY: the path is a NUL-terminated C string literal with static lifetime.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just returned by open (checked above) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is a plain C struct and union of integers and byte arrays, for
    // which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq, and `req` is a live one; the
    // name is NUL-terminated because tap names are shorter than IFNAMSIZ and the
    // rest of `req` was zeroed.
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

// ---- offloads, end to end: a TCP connection between the host's stack and a
// ---- hand-rolled guest, across the device and the tap ----

const GSO_TCPV4: u8 = 1;
const NEEDS_CSUM: u8 = 1;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let hi = pair[0];
        let lo = pair.get(1).copied().unwrap_or(0);
        acc += u32::from(u16::from_be_bytes([hi, lo]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

struct Tcp<'a> {
    seq: u32,
    ack: u32,
    flags: u8,
    options: &'a [u8],
    payload: &'a [u8],
}

/// An Ethernet + IPv4 + TCP frame from the guest. With `partial` the TCP checksum
/// holds only the pseudo-header sum and the device header asks the host to finish
/// it (and to segment when `gso_size` is set), as a driver using offloads does.
fn guest_tcp_frame(
    net: &Addrs,
    tcp: &Tcp<'_>,
    partial: bool,
    gso_size: u16,
) -> (Vec<u8>, [u8; 12]) {
    let tcp_len = 20 + tcp.options.len() + tcp.payload.len();
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&net.guest_ip);
    ip[16..20].copy_from_slice(&net.host_ip);
    let ip_csum = !fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());

    let mut seg = Vec::with_capacity(tcp_len);
    seg.extend_from_slice(&net.guest_port.to_be_bytes());
    seg.extend_from_slice(&net.host_port.to_be_bytes());
    seg.extend_from_slice(&tcp.seq.to_be_bytes());
    seg.extend_from_slice(&tcp.ack.to_be_bytes());
    seg.push((((20 + tcp.options.len()) / 4) as u8) << 4);
    seg.push(tcp.flags);
    seg.extend_from_slice(&65535u16.to_be_bytes());
    seg.extend_from_slice(&[0, 0, 0, 0]);
    seg.extend_from_slice(tcp.options);
    seg.extend_from_slice(tcp.payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&net.guest_ip);
    pseudo.extend_from_slice(&net.host_ip);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let csum = if partial {
        fold(sum16(&pseudo, 0))
    } else {
        !fold(sum16(&seg, sum16(&pseudo, 0)))
    };
    seg[16..18].copy_from_slice(&csum.to_be_bytes());

    let mut frame = Vec::new();
    frame.extend_from_slice(&net.host_mac);
    frame.extend_from_slice(&GUEST_MAC.0);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&seg);

    let mut hdr = [0u8; 12];
    if partial {
        hdr[0] = NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: its checksum
    }
    if gso_size != 0 {
        hdr[1] = GSO_TCPV4;
        hdr[2..4].copy_from_slice(&((14 + 20 + 20 + tcp.options.len()) as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&gso_size.to_le_bytes());
    }
    (frame, hdr)
}

struct Addrs {
    host_mac: [u8; 6],
    host_ip: [u8; 4],
    guest_ip: [u8; 4],
    host_port: u16,
    guest_port: u16,
}

/// A TCP segment the host sent the guest.
struct Segment {
    header: [u8; 12],
    frame_len: usize,
    seq: u32,
    flags: u8,
    payload: Vec<u8>,
}

/// The guest's side of the device: posts receive buffers, sends frames, and takes
/// received frames apart (num_buffers buffers each).
struct Guest<'m> {
    rxq: TestQueue<'m>,
    txq: TestQueue<'m>,
    rx_bufs: Vec<devices::virtio::testing::Segment>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    seen: u16,
}

impl Guest<'_> {
    fn send(&mut self, hdr: [u8; 12], frame: &[u8]) {
        let mut packet = hdr.to_vec();
        packet.extend_from_slice(frame);
        let seg = self.txq.readable(&packet);
        self.txq.add_chain(&[seg]);
        self.tx_kick.write(1).unwrap();
    }

    /// The next frame, header apart; its buffers go straight back to the ring.
    fn recv(&mut self) -> ([u8; 12], Vec<u8>) {
        let mut data = Vec::new();
        let mut wanted = 1;
        let mut got = 0;
        while got < wanted {
            wait_for("a received frame", || self.rxq.used_idx() != self.seen);
            let used = self.rxq.used_elem(self.seen);
            self.seen = self.seen.wrapping_add(1);
            let buf = self.rx_bufs[used.id as usize % self.rx_bufs.len()];
            data.extend(self.rxq.read(buf.addr, used.len as usize));
            if got == 0 {
                wanted = u16::from_le_bytes([data[10], data[11]]);
            }
            got += 1;
            self.rxq.add_chain(&[buf]);
            self.rx_kick.write(1).unwrap();
        }
        let header: [u8; 12] = data[..12].try_into().unwrap();
        (header, data.split_off(12))
    }

    /// The next TCP segment from the host's port, skipping anything else.
    fn recv_tcp(&mut self, net: &Addrs) -> Segment {
        loop {
            let (header, frame) = self.recv();
            if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
                continue;
            }
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let ip_total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            let tcp = &frame[14 + ihl..14 + ip_total];
            if u16::from_be_bytes([tcp[0], tcp[1]]) != net.host_port {
                continue;
            }
            let data_off = usize::from(tcp[12] >> 4) * 4;
            return Segment {
                header,
                frame_len: frame.len(),
                seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
                flags: tcp[13],
                payload: tcp[data_off..].to_vec(),
            };
        }
    }
}

fn ip_cmd(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

#[test]
fn tcp_with_checksum_and_segmentation_offloads_both_ways() {
    if !real_taps_usable() {
        return;
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping: the ip command (iproute2) is missing");
        return;
    }
    let name = tap_name('t');
    let mut net = Net::new(NetOptions {
        tap: TapSource::Name(name.clone()),
        mac: Some(GUEST_MAC),
    })
    .unwrap();
    // 198.18.0.0/15 is set aside for network tests (RFC 2544).
    let subnet = (std::process::id() % 250) as u8;
    let host_ip = [198, 18, subnet, 1];
    let guest_ip = [198, 18, subnet, 2];
    let host_ip_s = format!("198.18.{subnet}.1");
    let guest_ip_s = format!("198.18.{subnet}.2");
    ip_cmd(&["addr", "add", &format!("{host_ip_s}/24"), "dev", &name]);
    ip_cmd(&[
        "neigh",
        "replace",
        &guest_ip_s,
        "lladdr",
        &GUEST_MAC.to_string(),
        "dev",
        &name,
        "nud",
        "permanent",
    ]);
    let host_mac_text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let host_mac = host_mac_text.trim().parse::<MacAddr>().unwrap().0;
    let listener = std::net::TcpListener::bind((host_ip_s.as_str(), 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addrs = Addrs {
        host_mac,
        host_ip,
        guest_ip,
        host_port: listener.local_addr().unwrap().port(),
        guest_port: 40_000,
    };

    let mem = guest_memory(8 << 20);
    let mut rxq = TestQueue::new(&mem, GuestAddress(0), 256);
    let txq = TestQueue::new(&mem, GuestAddress(0x40_0000), 256);
    let rx_bufs: Vec<_> = (0..64).map(|_| rxq.writable(4096)).collect();
    for buf in &rx_bufs {
        rxq.add_chain(&[*buf]);
    }
    let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    net.activate(Activation {
        mem: mem.clone(),
        interrupt: Arc::new(CountingInterrupt::default()),
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
    let mut guest = Guest {
        rxq,
        txq,
        rx_bufs,
        rx_kick,
        tx_kick,
        seen: 0,
    };

    // Handshake, checksums computed by the "guest".
    let mss_1460 = [2, 4, 0x05, 0xb4];
    let (syn, hdr) = guest_tcp_frame(
        &addrs,
        &Tcp {
            seq: 1000,
            ack: 0,
            flags: 0x02,
            options: &mss_1460,
            payload: &[],
        },
        false,
        0,
    );
    guest.send(hdr, &syn);
    let syn_ack = guest.recv_tcp(&addrs);
    assert_eq!(syn_ack.flags & 0x12, 0x12, "SYN-ACK");
    let mut host_next = syn_ack.seq.wrapping_add(1);
    let (ack, hdr) = guest_tcp_frame(
        &addrs,
        &Tcp {
            seq: 1001,
            ack: host_next,
            flags: 0x10,
            options: &[],
            payload: &[],
        },
        false,
        0,
    );
    guest.send(hdr, &ack);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the host never accepted");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    // Guest -> host: one 3000-byte TSO segment with a partial checksum; the host
    // kernel takes it as it is (the checksum is not even valid as it stands).
    let upload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let (big, hdr) = guest_tcp_frame(
        &addrs,
        &Tcp {
            seq: 1001,
            ack: host_next,
            flags: 0x18,
            options: &[],
            payload: &upload,
        },
        true,
        1448,
    );
    guest.send(hdr, &big);
    let mut got = vec![0u8; upload.len()];
    use std::io::{Read, Write};
    stream
        .read_exact(&mut got)
        .expect("the host receives the segment");
    assert_eq!(got, upload);

    // Host -> guest: the kernel hands the tap segments larger than the MTU, with
    // partial checksums, and the device passes them on whole.
    let download: Vec<u8> = (0..12_000u32).map(|i| (i % 241) as u8).collect();
    stream.write_all(&download).unwrap();
    let mut received = Vec::new();
    let mut largest = 0;
    let mut saw_gso = false;
    while received.len() < download.len() {
        let seg = guest.recv_tcp(&addrs);
        if seg.payload.is_empty() {
            continue;
        }
        assert_eq!(seg.seq, host_next, "in order");
        host_next = host_next.wrapping_add(seg.payload.len() as u32);
        largest = largest.max(seg.frame_len);
        saw_gso |= seg.header[1] == GSO_TCPV4;
        assert_eq!(
            seg.header[0] & NEEDS_CSUM,
            NEEDS_CSUM,
            "checksum left to the guest"
        );
        received.extend(seg.payload);
    }
    assert_eq!(received, download);
    assert!(
        saw_gso && largest > 1514,
        "no TSO frame reached the guest (largest {largest})"
    );
    net.reset();
}

#[test]
fn an_interface_that_is_not_a_tap_is_refused_by_kind() {
    if !real_taps_usable() {
        return;
    }
    let err = Net::new(NetOptions {
        tap: TapSource::Name("lo".into()),
        mac: None,
    })
    .err()
    .expect("the loopback is no tap");
    assert!(
        matches!(err, NetError::Tap(TapError::WrongKind { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("choose another name"), "{err}");
    assert!(iface_flags("lo").is_some(), "and it is left alone");
}
