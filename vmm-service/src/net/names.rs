//! Names and addresses of a VM's interfaces. Both derive from the VM's name so they
//! stay the same across restarts of the VM and of the service: a DHCP server keeps
//! its lease, and an operator can tell from `ip link` which VM a tap belongs to.

/// Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// "fv" + 8 hex digits leaves 5 bytes for the index; 8 interfaces is plenty and keeps
/// the index one digit.
pub const MAX_NETWORKS_PER_VM: usize = 8;

/// FNV-1a, 32 bits: a hash whose value never changes with the Rust release, unlike
/// the standard library's.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in *part {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The tap of interface `index` of VM `vm`: `fv`, 8 hex digits of the name's hash,
/// the index (at most 11 bytes for the indexes the service allows).
pub fn tap_name(vm: &str, index: usize) -> String {
    format!("fv{:08x}{index}", fnv1a(&[vm.as_bytes()]))
}

/// A locally stable MAC for interface `index` of VM `vm`, in the 52:54:00 range
/// KVM guests conventionally use (locally administered, unicast).
pub fn default_mac(vm: &str, index: usize) -> String {
    let index = u32::try_from(index).unwrap_or(u32::MAX).to_le_bytes();
    let [a, b, c, _] = fnv1a(&[vm.as_bytes(), b"\0", &index]).to_le_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("'{0}' is not a MAC address: write six hex byte pairs separated by colons, like 52:54:00:12:34:56")]
    Syntax(String),
    #[error("{0} is a multicast address (lowest bit of the first byte set); an interface needs a unicast one, like 52:54:00:12:34:56")]
    Multicast(String),
    #[error("{0} is the all-zero address, which no interface may have")]
    Zero(String),
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case) into bytes, refusing addresses no
/// interface can have.
pub fn parse_mac(text: &str) -> Result<[u8; 6], MacError> {
    let syntax = || MacError::Syntax(text.escape_default().to_string());
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(syntax)?;
        if part.len() != 2 {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    if bytes[0] & 1 == 1 {
        return Err(MacError::Multicast(text.to_string()));
    }
    if bytes == [0; 6] {
        return Err(MacError::Zero(text.to_string()));
    }
    Ok(bytes)
}

/// Whether the kernel would accept `name` as an interface name: 1 to 15 bytes, not
/// `.` or `..`, no `/`, `:` or whitespace. Returns why not.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "'{}' is not an interface name: use 1 to {MAX_IFNAME_LEN} bytes",
            name.escape_default()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("'{name}' is not an interface name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{}' is not an interface name: '{}' is not allowed in one",
            name.escape_default(),
            bad.escape_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_depend_on_name_and_index() {
        let long = "a".repeat(63);
        let tap = tap_name(&long, MAX_NETWORKS_PER_VM - 1);
        assert!(tap.len() <= MAX_IFNAME_LEN, "{tap}");
        assert!(validate_ifname(&tap).is_ok());
        assert!(tap.starts_with("fv"));
        assert_eq!(tap_name("vm1", 0), tap_name("vm1", 0));
        assert_ne!(tap_name("vm1", 0), tap_name("vm2", 0));
        assert_ne!(tap_name("vm1", 0), tap_name("vm1", 1));
        // The hash is fixed: FNV-1a of "vm1".
        assert_eq!(tap_name("vm1", 0), format!("fv{:08x}0", fnv1a(&[b"vm1"])));
        assert_eq!(fnv1a(&[b"a"]), 0xe40c_292c);
    }

    /// The derivations are a contract (docs/service-api.md shows these values; a DHCP
    /// server keys leases on the MAC): changing them renames every VM's taps.
    #[test]
    fn derived_names_are_the_documented_ones() {
        assert_eq!(tap_name("train-1", 0), "fv322a1d070");
        assert_eq!(tap_name("gpu-vm", 0), "fvb20f09b50");
        assert_eq!(default_mac("train-1", 1), "52:54:00:44:ce:85");
        assert_eq!(default_mac("gpu-vm", 0), "52:54:00:df:97:38");
    }

    #[test]
    fn default_macs_are_stable_unicast_and_distinct_per_interface() {
        let mac = default_mac("vm1", 0);
        assert_eq!(mac, default_mac("vm1", 0));
        assert_ne!(mac, default_mac("vm1", 1));
        assert!(mac.starts_with("52:54:00:"), "{mac}");
        assert!(parse_mac(&mac).is_ok());
    }

    #[test]
    fn macs_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "5:54:00:12:34:567",
            "zz:54:00:12:34:56",
        ] {
            assert!(matches!(parse_mac(bad), Err(MacError::Syntax(_))), "{bad}");
        }
        assert!(matches!(
            parse_mac("01:00:5e:00:00:01"),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            parse_mac("00:00:00:00:00:00"),
            Err(MacError::Zero(_))
        ));
    }

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        for good in ["br0", "virbr0", "br-lab.10", "a", "fifteen-bytes-x"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "br/0",
            "br:0",
            "br 0",
            "sixteen-bytes-xx",
            "br\n",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
