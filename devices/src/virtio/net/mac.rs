//! Ethernet MAC addresses for the guest's NIC.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

/// A 48-bit Ethernet address, in transmission order ("52:54:00:12:34:56").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Bit 0 of the first byte: the address names a group, never one NIC.
const MULTICAST_BIT: u8 = 0x01;
/// Bit 1 of the first byte: the address was not assigned by a vendor (IEEE 802).
const LOCAL_BIT: u8 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: {reason}; write six hex bytes separated by colons, e.g. 52:54:00:12:34:56")]
pub struct MacParseError {
    input: String,
    reason: &'static str,
}

impl MacAddr {
    /// A random unicast address with the locally-administered bit set, so it cannot
    /// collide with a vendor-assigned one.
    pub fn random_local() -> MacAddr {
        let mut bytes = random_bytes();
        bytes[0] = (bytes[0] | LOCAL_BIT) & !MULTICAST_BIT;
        MacAddr(bytes)
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & MULTICAST_BIT != 0
    }

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & LOCAL_BIT != 0
    }
}

fn random_bytes() -> [u8; 6] {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(n).ok() == Some(bytes.len()) {
        return bytes;
    }
    // getrandom(2) only fails on kernels older than 3.17 or under a seccomp filter;
    // the standard library's hasher keys are random per process and good enough to
    // tell a few NICs apart.
    let value = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let le = value.to_le_bytes();
    bytes.copy_from_slice(&le[..6]);
    bytes
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| MacParseError {
            input: s.to_string(),
            reason,
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in bytes.iter_mut() {
            let part = parts.next().ok_or_else(|| fail("fewer than six bytes"))?;
            if part.len() != 2 {
                return Err(fail("each byte takes exactly two hex digits"));
            }
            // from_str_radix would take a sign ("+5") as part of the number.
            if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(fail("not a hex digit"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| fail("not a hex digit"))?;
        }
        if parts.next().is_some() {
            return Err(fail("more than six bytes"));
        }
        let mac = MacAddr(bytes);
        if mac.is_multicast() {
            return Err(fail(
                "a multicast address (lowest bit of the first byte set) cannot name a NIC",
            ));
        }
        if bytes == [0; 6] {
            return Err(fail("the all-zero address cannot name a NIC"));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_same_address() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac, MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn refuses_malformed_addresses_with_the_reason() {
        for (input, reason) in [
            ("52:54:00:12:34", "fewer than six bytes"),
            ("52:54:00:12:34:56:78", "more than six bytes"),
            ("52:54:00:12:34:5", "two hex digits"),
            ("52:54:00:12:34:zz", "not a hex digit"),
            ("+2:54:00:12:34:56", "not a hex digit"),
            ("52-54-00-12-34-56", "two hex digits"),
            ("", "two hex digits"),
            ("01:00:5e:00:00:01", "multicast"),
            ("00:00:00:00:00:00", "all-zero"),
        ] {
            let err = input.parse::<MacAddr>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(
                err.contains("52:54:00:12:34:56"),
                "says how to write one: {err}"
            );
        }
    }

    #[test]
    fn random_addresses_are_local_unicast_and_differ() {
        let a = MacAddr::random_local();
        let b = MacAddr::random_local();
        for mac in [a, b] {
            assert!(mac.is_locally_administered(), "{mac}");
            assert!(!mac.is_multicast(), "{mac}");
            assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        }
        // 46 random bits: equal twice in a row means the randomness is broken.
        assert_ne!(a, b);
    }
}
