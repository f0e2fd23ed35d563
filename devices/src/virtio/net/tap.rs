//! The host side of a virtio-net device: a Linux tap interface opened with virtio
//! net headers (IFF_VNET_HDR), so frames cross between the guest's queues and the
//! tap with the same 12-byte header the guest uses.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::header::VNET_HDR_LEN;

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Attach to the tap interface of this name, creating it when absent.
    Name(String),
    /// A tap file descriptor someone else opened (with IFF_TAP, IFF_NO_PI and
    /// IFF_VNET_HDR). On success the device owns it and closes it when dropped; on
    /// error it is left open.
    Fd(RawFd),
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("/dev/net/tun does not exist: load the tun module (modprobe tun)")]
    NoTunDevice,
    #[error("cannot open /dev/net/tun: {0}; run form-vmm as root or give it CAP_NET_ADMIN")]
    TunPermission(#[source] io::Error),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    #[error("tap {name} is in use by another process; stop that process or choose another name")]
    Busy { name: String },
    #[error(
        "creating or attaching tap {name} needs CAP_NET_ADMIN: run form-vmm as root, or create \
         the tap beforehand for this user (ip tuntap add {name} mode tap vnet_hdr user UID)"
    )]
    NotPermitted { name: String },
    #[error(
        "{name} exists but is not a single-queue tap (it is another kind of interface, a tun \
         device or a multiqueue tap): choose another name, or delete it (ip link del {name}) \
         if it is a stale tap"
    )]
    WrongKind { name: String },
    #[error("cannot attach to tap {name}: {source}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not an open file descriptor")]
    FdNotOpen { fd: RawFd },
    #[error(
        "fd {fd} is not a tap device ({reason}); pass a /dev/net/tun fd attached with TUNSETIFF"
    )]
    FdNotTap { fd: RawFd, reason: String },
    #[error(
        "the tap behind fd {fd} lacks {missing}; open it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
    )]
    FdFlags { fd: RawFd, missing: &'static str },
    #[error("cannot configure tap {name} ({what}): {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot bring tap {name} up: {source}; bring it up beforehand (ip link set {name} up) \
         or give form-vmm CAP_NET_ADMIN"
    )]
    LinkUp {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// An open, non-blocking tap with 12-byte virtio net headers, link up.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// What the rx/tx paths need from a tap; tests substitute a datagram socket pair,
/// which keeps frame boundaries the way a tap does.
pub(crate) trait TapIo: AsRawFd + Send + 'static {
    /// Reads one frame (header included); `WouldBlock` when none is queued.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header included) gathered from `iov`.
    ///
    /// # Safety
    /// Every iovec must describe memory that stays readable until this returns.
    unsafe fn write_iovecs(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller vouches for the iovecs; writev only reads them.
        unsafe { writev(self.as_raw_fd(), iov) }
    }
}

/// writev(2) on `fd`, one frame per call on a tap or a datagram socket.
///
/// # Safety
/// Every iovec must describe memory that stays readable until this returns.
unsafe fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    let count = libc::c_int::try_from(iov.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many iovecs"))?;
    loop {
        // SAFETY: `iov` holds `count` iovecs, each readable per the caller.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), count) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Tap {
    pub fn open(source: &TapSource) -> Result<Tap, TapError> {
        match source {
            TapSource::Name(name) => Self::open_named(name),
            TapSource::Fd(fd) => Self::from_fd(*fd),
        }
    }

    /// The interface name ("tap0").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second descriptor on the same attachment to the tap (dup(2), close-on-exec).
    /// The interface lives while either is open, so a VM being replaced can hand its
    /// tap to the next one: a tap form-vmm created would otherwise vanish with its
    /// last descriptor, and with it the bridge it had joined.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.file.try_clone().map(OwnedFd::from)
    }

    /// Tells the kernel which offloads (`TUN_F_*`) it may use in frames it hands us:
    /// only those the driver accepted, since the guest must cope with them.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Configure {
                name: self.name.clone(),
                what: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn open_named(name: &str) -> Result<Tap, TapError> {
        let mut req = ifreq_for(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    TapError::NoTunDevice
                }
                Some(libc::EACCES) | Some(libc::EPERM) => TapError::TunPermission(e),
                _ => TapError::OpenTun(e),
            })?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy { name },
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NotPermitted { name },
                Some(libc::EINVAL) => TapError::WrongKind { name },
                _ => TapError::Attach { name, source: e },
            });
        }
        // The kernel may have expanded a pattern such as "tap%d"; keep its answer.
        let name = name_of(&req);
        let tap = Tap { file, name };
        tap.configure()?;
        Ok(tap)
    }

    fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::FdNotOpen { fd });
        }
        // SAFETY: an all-zero ifreq is a valid value (empty name, zero union).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF fills one ifreq, which `req` is.
        let ret = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::FdNotTap {
                fd,
                reason: format!("TUNGETIFF: {}", io::Error::last_os_error()),
            });
        }
        // SAFETY: TUNGETIFF stored the interface flags in the union's flags field.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags }) & 0xffff;
        if flags & libc::IFF_TAP == 0 {
            return Err(TapError::FdNotTap {
                fd,
                reason: "it is a tun (layer 3) device".to_string(),
            });
        }
        if flags & libc::IFF_NO_PI == 0 {
            return Err(TapError::FdFlags {
                fd,
                missing: "IFF_NO_PI",
            });
        }
        if flags & libc::IFF_VNET_HDR == 0 {
            return Err(TapError::FdFlags {
                fd,
                missing: "IFF_VNET_HDR",
            });
        }
        // SAFETY: the caller handed this open descriptor over; from here on we own it
        // (and nothing else does, per TapSource::Fd's contract).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        let tap = Tap {
            file,
            name: name_of(&req),
        };
        // Never block the I/O thread, whatever mode the descriptor came in.
        // SAFETY: F_GETFL/F_SETFL/F_SETFD only change the descriptor's flags.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(tap.configure_error("O_NONBLOCK"));
            }
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        tap.configure()?;
        Ok(tap)
    }

    fn configure_error(&self, what: &'static str) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Header size, no offloads until the driver accepts some, link up.
    fn configure(&self) -> Result<(), TapError> {
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(self.configure_error("TUNSETVNETHDRSZ"));
        }
        self.set_offload(0)?;
        set_link_up(&self.name).map_err(|source| TapError::LinkUp {
            name: self.name.clone(),
            source,
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapIo for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }
}

impl<T: TapIo + Sync> TapIo for std::sync::Arc<T> {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_frame(buf)
    }

    unsafe fn write_iovecs(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller's promise about `iov` is passed on unchanged.
        unsafe { (**self).write_iovecs(iov) }
    }
}

/// An ifreq naming `name`, after checking the kernel would accept the name.
fn ifreq_for(name: &str) -> Result<libc::ifreq, TapError> {
    let invalid = |reason| TapError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid("longer than 15 bytes (Linux's IFNAMSIZ)"));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(invalid("contains a NUL, '/' or whitespace"));
    }
    if name == "." || name == ".." {
        return Err(invalid("'.' and '..' are not interface names"));
    }
    // SAFETY: an all-zero ifreq is a valid value (empty name, zero union).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn name_of(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sets IFF_UP on the interface unless it is up already (so a tap prepared and
/// brought up by someone else needs no privilege here).
fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a descriptor socket(2) just returned to us alone.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut req = ifreq_for(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: SIOCGIFFLAGS fills the flags of one ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS stored the flags in the union's flags field.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if i32::from(flags) & libc::IFF_UP != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_before_any_syscall() {
        for (name, reason) in [
            ("", "empty"),
            ("a-name-of-16-byt", "longer than 15"),
            ("has space", "whitespace"),
            ("a/b", "'/'"),
            ("..", "'..'"),
        ] {
            let err = Tap::open(&TapSource::Name(name.into())).unwrap_err();
            assert!(
                matches!(err, TapError::InvalidName { .. }),
                "{name:?}: {err}"
            );
            assert!(err.to_string().contains(reason), "{name:?}: {err}");
        }
        assert!(ifreq_for("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn a_closed_fd_is_refused_without_being_touched() {
        let err = Tap::open(&TapSource::Fd(987_654)).unwrap_err();
        assert!(matches!(err, TapError::FdNotOpen { fd: 987_654 }), "{err}");
    }

    /// Root and /dev/net/tun, or a printed reason to skip (in CI too: CI containers
    /// often lack /dev/net/tun, as the tap integration tests note).
    fn real_taps_usable(test: &str) -> bool {
        let reason = if !std::path::Path::new("/dev/net/tun").exists() {
            "/dev/net/tun is missing (load the tun module)"
        // SAFETY: geteuid has no preconditions.
        } else if unsafe { libc::geteuid() } != 0 {
            "creating taps needs root (CAP_NET_ADMIN)"
        } else {
            return true;
        };
        eprintln!("skipping {test}: {reason}");
        false
    }

    const ETHERTYPE: u16 = 0x88b5;

    /// An AF_PACKET socket on `ifindex` seeing only ETHERTYPE frames.
    fn packet_socket(ifindex: i32) -> OwnedFd {
        let proto = ETHERTYPE.to_be();
        // SAFETY: socket(2) with constant arguments, checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "AF_PACKET: {}", io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a sockaddr_ll of the size given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
        fd
    }

    fn ifindex(name: &str) -> Option<i32> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits up to 5 s for a frame of ETHERTYPE that `read` returns after a
    /// `skip`-byte header, passing over the host's own chatter (IPv6 router
    /// solicitations and the like).
    fn read_test_frame(
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
        skip: usize,
    ) -> Vec<u8> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut buf = vec![0u8; 2048];
        loop {
            match read(&mut buf) {
                Ok(n) if n >= skip + 14 && buf[skip + 12..skip + 14] == ETHERTYPE.to_be_bytes() => {
                    return buf[..n].to_vec();
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("reading a frame: {e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no test frame within 5 s"
            );
        }
    }

    #[test]
    fn a_cloned_fd_keeps_the_tap_and_carries_frames_after_the_first_is_closed() {
        if !real_taps_usable(
            "a_cloned_fd_keeps_the_tap_and_carries_frames_after_the_first_is_closed",
        ) {
            return;
        }
        let name = format!("fvkt{:x}", std::process::id() & 0xff_ffff);
        let first = Tap::open(&TapSource::Name(name.clone())).unwrap();
        let index = ifindex(&name).expect("the tap exists");
        let kept = first.try_clone_fd().unwrap();
        drop(first);
        assert_eq!(
            ifindex(&name),
            Some(index),
            "closing one fd deleted the tap"
        );

        let kept_raw = kept.as_raw_fd();
        let tap = Tap::open(&TapSource::Fd(kept.into_raw_fd())).unwrap();
        assert_eq!(tap.name(), name);
        assert_eq!(
            tap.as_raw_fd(),
            kept_raw,
            "the kept descriptor itself is adopted"
        );
        // One single-queue attachment, still held: the name cannot be opened again.
        assert!(matches!(
            Tap::open(&TapSource::Name(name.clone())),
            Err(TapError::Busy { .. })
        ));

        let socket = packet_socket(index);
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
        frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
        frame.resize(60, 0x5a);

        // Guest to host: a zero virtio-net header, then the frame.
        let mut packet = vec![0u8; VNET_HDR_LEN];
        packet.extend_from_slice(&frame);
        let iov = [libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        }];
        // SAFETY: `packet` outlives the call.
        assert_eq!(unsafe { tap.write_iovecs(&iov) }.unwrap(), packet.len());
        let seen = read_test_frame(
            // SAFETY: `buf` is writable for its whole length.
            |buf| match unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            } {
                n if n < 0 => Err(io::Error::last_os_error()),
                n => Ok(n as usize),
            },
            0,
        );
        assert_eq!(seen, frame);

        // Host to guest: the frame comes with the 12-byte header the first open set.
        // SAFETY: `frame` is readable for its length.
        let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
        let got = read_test_frame(|buf| tap.read_frame(buf), VNET_HDR_LEN);
        assert_eq!(got.len(), VNET_HDR_LEN + frame.len());
        assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);

        drop(tap);
        assert_eq!(ifindex(&name), None, "the tap outlived its last descriptor");
    }

    #[test]
    fn an_fd_that_is_not_a_tap_is_refused_and_left_open() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = a.as_raw_fd();
        let err = Tap::open(&TapSource::Fd(fd)).unwrap_err();
        assert!(matches!(err, TapError::FdNotTap { .. }), "{err}");
        assert!(err.to_string().contains("not a tap"), "{err}");
        // Still ours: sending works, and dropping `a` closes it exactly once.
        a.send(b"x").unwrap();
    }
}
