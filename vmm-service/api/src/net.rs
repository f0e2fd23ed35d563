//! Interface names and MAC addresses as a VM's configuration gives them, checked the
//! same way by the service and by clients before they send a request.

use form_vmm_api::config::ConfigError;

/// Linux interface names are at most 15 bytes (IFNAMSIZ 16 with the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

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
    // form-vmm's parser, so the service never accepts an address form-vmm refuses.
    form_vmm_api::config::virtio::parse_mac(text).map_err(|e| match e {
        ConfigError::MacMulticast(_) => MacError::Multicast(text.to_string()),
        ConfigError::MacZero(_) => MacError::Zero(text.to_string()),
        _ => MacError::Syntax(text.escape_default().to_string()),
    })
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
            "+5:54:00:12:34:56",
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
