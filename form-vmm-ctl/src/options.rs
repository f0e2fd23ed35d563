//! The comma-separated values of `create --disk` and `--net`, checked as the service
//! would check them so a typo fails before any request.

use std::path::PathBuf;

use form_service_api::{parse_mac, validate_ifname};

/// `--disk PATH[,readonly=on]` (`path=PATH` is accepted too, as form-vmm writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    pub path: PathBuf,
    pub readonly: bool,
}

/// `--net [bridge=BR][,mac=MAC]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetArg {
    pub bridge: Option<String>,
    pub mac: Option<String>,
}

pub fn parse_disk(text: &str) -> Result<DiskArg, String> {
    let mut parts = text.split(',');
    let first = parts.next().unwrap_or_default();
    let path = first.strip_prefix("path=").unwrap_or(first);
    if path.is_empty() {
        return Err(format!(
            "'{text}': give the image's path first, like /var/lib/images/root.raw,readonly=on"
        ));
    }
    let mut readonly = false;
    for option in parts {
        match option.split_once('=') {
            Some(("readonly", value)) => readonly = parse_switch("readonly", value)?,
            _ => {
                return Err(format!(
                    "'{option}' is not a disk option; the one there is: readonly=on|off"
                ))
            }
        }
    }
    Ok(DiskArg {
        path: PathBuf::from(path),
        readonly,
    })
}

pub fn parse_net(text: &str) -> Result<NetArg, String> {
    let mut net = NetArg::default();
    for option in text.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("bridge", bridge)) => {
                validate_ifname(bridge).map_err(|why| format!("bridge: {why}"))?;
                net.bridge = Some(bridge.to_string());
            }
            Some(("mac", mac)) => {
                parse_mac(mac).map_err(|e| format!("mac: {e}"))?;
                net.mac = Some(mac.to_string());
            }
            _ => {
                return Err(format!(
                    "'{option}' is not a network option; they are bridge=BRIDGE and mac=MAC"
                ))
            }
        }
    }
    Ok(net)
}

fn parse_switch(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{name}={value}: use {name}=on or {name}=off")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn disks_take_a_path_and_readonly() {
        assert_eq!(
            parse_disk("/img/root.raw").unwrap(),
            DiskArg {
                path: "/img/root.raw".into(),
                readonly: false
            }
        );
        assert_eq!(
            parse_disk("data.raw,readonly=on").unwrap(),
            DiskArg {
                path: "data.raw".into(),
                readonly: true
            }
        );
        assert_eq!(
            parse_disk("path=/a.raw,readonly=off").unwrap().path,
            Path::new("/a.raw")
        );
        assert!(parse_disk("").unwrap_err().contains("path first"));
        assert!(parse_disk("/a,readonly=maybe")
            .unwrap_err()
            .contains("readonly=on"));
        assert!(parse_disk("/a,direct=on")
            .unwrap_err()
            .contains("not a disk option"));
    }

    #[test]
    fn nets_take_a_bridge_and_a_mac_or_nothing() {
        assert_eq!(parse_net("").unwrap(), NetArg::default());
        assert_eq!(
            parse_net("bridge=br0,mac=52:54:00:12:34:56").unwrap(),
            NetArg {
                bridge: Some("br0".into()),
                mac: Some("52:54:00:12:34:56".into())
            }
        );
        assert_eq!(parse_net("mac=52:54:00:12:34:56").unwrap().bridge, None);
        assert!(parse_net("bridge=a/b").unwrap_err().starts_with("bridge:"));
        assert!(parse_net("mac=01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_net("tap=tap0").unwrap_err().contains("bridge=BRIDGE"));
    }
}
