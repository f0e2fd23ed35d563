//! Attaching a VM's tap to a Linux bridge, as `ip link set TAP master BR` does, with
//! the bridge ioctl: it needs no netlink library and works on every kernel the VMM
//! runs on.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// linux/sockios.h: add an interface (by index) to the bridge named in the request.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge {bridge} does not exist on this host; create it (ip link add {bridge} type bridge; ip link set {bridge} up) or leave the bridge out")]
    NoSuchBridge { bridge: String },
    #[error("{bridge} is not a bridge, so tap {tap} cannot join it; name a bridge (ip -d link show type bridge lists them)")]
    NotABridge { bridge: String, tap: String },
    #[error("tap {tap} does not exist after the VMM created the VM; see the VMM's log")]
    NoSuchTap { tap: String },
    #[error(
        "cannot attach tap {tap} to bridge {bridge}: {source}; the service needs CAP_NET_ADMIN"
    )]
    Attach {
        tap: String,
        bridge: String,
        source: io::Error,
    },
    #[error("cannot bring tap {tap} up: {source}")]
    LinkUp { tap: String, source: io::Error },
}

impl BridgeError {
    /// Whether the operator's configuration is at fault (a bridge that is missing or
    /// not a bridge), rather than the host or the VMM.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::NoSuchBridge { .. } | Self::NotABridge { .. })
    }
}

/// Adds `tap` to `bridge` and brings it up. Both names must be valid interface
/// names (checked when the VM's configuration was).
pub fn attach_to_bridge(tap: &str, bridge: &str) -> Result<(), BridgeError> {
    if interface_index(bridge).is_none() {
        return Err(BridgeError::NoSuchBridge {
            bridge: bridge.to_string(),
        });
    }
    let tap_index = interface_index(tap).ok_or_else(|| BridgeError::NoSuchTap {
        tap: tap.to_string(),
    })?;
    let attach_error = |source: io::Error| match source.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => BridgeError::NotABridge {
            bridge: bridge.to_string(),
            tap: tap.to_string(),
        },
        Some(libc::ENODEV) => BridgeError::NoSuchBridge {
            bridge: bridge.to_string(),
        },
        _ => BridgeError::Attach {
            tap: tap.to_string(),
            bridge: bridge.to_string(),
            source,
        },
    };
    let socket = control_socket().map_err(attach_error)?;
    let mut request = interface_request(bridge);
    request.ifr_ifru.ifru_ifindex = tap_index;
    // SAFETY: SIOCBRADDIF reads an ifreq (bridge name, interface index) that lives
    // for the call; the socket is open.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCBRADDIF as _, &request) };
    if rc < 0 {
        return Err(attach_error(io::Error::last_os_error()));
    }
    link_up(&socket, tap).map_err(|source| BridgeError::LinkUp {
        tap: tap.to_string(),
        source,
    })
}

/// The interface's index, or None when there is no such interface.
fn interface_index(name: &str) -> Option<libc::c_int> {
    let name = CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    libc::c_int::try_from(index).ok().filter(|i| *i > 0)
}

/// Any socket carries interface ioctls; an AF_INET datagram one exists on every host.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ifreq naming `name`, which fits: interface names are at most 15 bytes.
fn interface_request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid (empty) request.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = byte as libc::c_char;
    }
    request
}

fn link_up(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut request = interface_request(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq it is given, which lives for
    // the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just set the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which lives for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bridge_is_named_and_is_the_operators_to_fix() {
        let err = attach_to_bridge("fv00000000", "fvnobridge0").unwrap_err();
        assert!(matches!(&err, BridgeError::NoSuchBridge { bridge } if bridge == "fvnobridge0"));
        assert!(err.is_configuration());
        assert!(err
            .to_string()
            .contains("ip link add fvnobridge0 type bridge"));
    }

    #[test]
    fn a_missing_tap_is_reported_once_the_bridge_exists() {
        // The loopback interface exists everywhere; the tap does not.
        let err = attach_to_bridge("fvnotap0", "lo").unwrap_err();
        assert!(matches!(&err, BridgeError::NoSuchTap { tap } if tap == "fvnotap0"));
        assert!(!err.is_configuration());
    }

    /// Runs `ip ARGS` (in the calling thread's network namespace).
    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The real ioctls, on a bridge and a tap made in a network namespace of this
    /// thread's own, so the host's interfaces are never touched. Needs root.
    #[test]
    fn attaches_a_tap_to_a_bridge_in_a_private_network_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: attaching to a bridge needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
            return;
        }
        // Namespaces are per thread: this one gets a fresh network namespace, which
        // dies with it, and the ip commands it starts inherit it.
        let outcome = std::thread::spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            ip(&["link", "add", "fvtestbr", "type", "bridge"]);
            ip(&["tuntap", "add", "fvtesttap0", "mode", "tap"]);
            ip(&["tuntap", "add", "fvtesttap1", "mode", "tap"]);
            attach_to_bridge("fvtesttap0", "fvtestbr").unwrap();
            let shown = ip(&["-o", "link", "show", "fvtesttap0"]);
            let not_a_bridge = attach_to_bridge("fvtesttap1", "fvtesttap0").unwrap_err();
            Ok((shown, not_a_bridge))
        })
        .join()
        .unwrap();
        let (shown, not_a_bridge) = match outcome {
            Ok(result) => result,
            Err(e) => {
                eprintln!("skipping: cannot make a network namespace here: {e}");
                return;
            }
        };
        assert!(shown.contains("master fvtestbr"), "{shown}");
        assert!(shown.contains(",UP"), "{shown}");
        assert!(
            matches!(&not_a_bridge, BridgeError::NotABridge { bridge, .. } if bridge == "fvtesttap0"),
            "{not_a_bridge:?}"
        );
    }

    #[test]
    fn requests_carry_the_name_nul_terminated() {
        let request = interface_request("br-lab");
        let name: Vec<u8> = request.ifr_name.iter().map(|c| *c as u8).collect();
        assert_eq!(&name[..7], b"br-lab\0");
    }
}
