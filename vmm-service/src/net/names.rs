//! Names and addresses of a VM's interfaces. Both derive from the VM's name so they
//! stay the same across restarts of the VM and of the service: a DHCP server keeps
//! its lease, and an operator can tell from `ip link` which VM a tap belongs to.

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

#[cfg(test)]
mod tests {
    use form_service_api::{parse_mac, validate_ifname, MAX_IFNAME_LEN};

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
}
