//! The virtio devices of a VM's configuration: disks, network interfaces and the
//! entropy source (the console is the shared [`super::ConsoleConfig`]). Field names
//! follow Cloud Hypervisor's JSON; the files and taps they name are opened when the
//! VM is built, so only what is wrong whatever the host is checked here.

use super::options::{OptionValue, Options};
use super::{invalid, ConfigError, ParseError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_TAP_NAME: usize = 15;
/// The virtio-blk device id string (VIRTIO_BLK_T_GET_ID) is 20 bytes.
const MAX_DISK_SERIAL: usize = 20;
/// Where `--rng` and `"rng": {}` read entropy from unless told otherwise.
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";

/// A raw disk image presented as a virtio-blk device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    /// Open the image with O_DIRECT, bypassing the host page cache.
    #[serde(default)]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What the guest reads as the disk's serial number (virtio-blk GET_ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Boot from this disk: with no `payload.kernel`, the VM boots the default
    /// entry of the image's own boot configuration (grub.cfg, BLS entries or the
    /// newest /boot/vmlinuz-*), read when the VM is built. At most one disk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
    /// The image's format. Left out, form-vmm reads it from the image's first
    /// bytes when it first opens the disk and keeps it in the configuration
    /// (`vm.info` shows it) for every later open: a guest that writes a qcow2
    /// header into its raw disk must not turn it into a qcow2 image whose backing
    /// file is some other file of the host at the next reboot. Whoever restarts a
    /// VM from its configuration passes it on (vmm-service records it at create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
}

/// A disk image's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl OptionValue for DiskFormat {
    fn from_option(raw: &str) -> Result<DiskFormat, String> {
        match raw {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            _ => Err("expected raw or qcow2".to_string()),
        }
    }
}

impl DiskConfig {
    pub const OPTIONS: &'static [&'static str] = &[
        "path", "readonly", "direct", "id", "serial", "boot", "format",
    ];

    /// Parses `--disk path=IMG[,readonly=on][,direct=on][,id=ID][,serial=S][,boot=on][,format=raw|qcow2]`.
    pub fn parse(input: &str) -> Result<DiskConfig, ParseError> {
        const FLAG: &str = "--disk";
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let disk = DiskConfig {
            path: opts.require("path")?,
            readonly: opts.get("readonly")?.unwrap_or(false),
            direct: opts.get("direct")?.unwrap_or(false),
            id: opts.get("id")?,
            serial: opts.get("serial")?,
            boot: opts.get("boot")?.unwrap_or(false),
            format: opts.get("format")?,
        };
        disk.validate().map_err(invalid(FLAG, input))?;
        Ok(disk)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyDiskPath);
        }
        if let Some(id) = &self.id {
            check_id(id)?;
        }
        if let Some(serial) = &self.serial {
            if serial.len() > MAX_DISK_SERIAL || !serial.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::DiskSerial(serial.clone()));
            }
        }
        Ok(())
    }
}

/// A virtio-net device on a host tap interface: one form-vmm opens (and creates
/// when absent) by name, or one the caller already opened and passes as an fd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// Cloud Hypervisor's spelling of `fd`: one descriptor per queue pair, so a list
    /// of exactly one here. JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    /// `52:54:00:12:34:56`; a random locally administered address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl NetConfig {
    pub const OPTIONS: &'static [&'static str] = &["tap", "fd", "mac", "id"];

    /// Parses `--net tap=NAME[,mac=MAC][,id=ID]` or `--net fd=N[,mac=MAC][,id=ID]`.
    pub fn parse(input: &str) -> Result<NetConfig, ParseError> {
        const FLAG: &str = "--net";
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let net = NetConfig {
            tap: opts.get("tap")?,
            fd: opts.get::<FdNumber>("fd")?.map(|fd| fd.0),
            fds: None,
            mac: opts.get("mac")?,
            id: opts.get("id")?,
        };
        net.validate().map_err(invalid(FLAG, input))?;
        Ok(net)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fd.is_some() && self.fds.is_some() {
            return Err(ConfigError::NetFdAndFds);
        }
        if let Some(fds) = &self.fds {
            if fds.len() != 1 {
                return Err(ConfigError::NetFdsCount(fds.len()));
            }
        }
        match (&self.tap, self.tap_fd()) {
            (Some(_), Some(_)) | (None, None) => return Err(ConfigError::NetTapOrFd),
            (Some(tap), None) => check_tap_name(tap)?,
            (None, Some(fd)) if fd < 0 => return Err(ConfigError::NetFd(fd)),
            (None, Some(_)) => {}
        }
        if let Some(mac) = &self.mac {
            parse_mac(mac)?;
        }
        if let Some(id) = &self.id {
            check_id(id)?;
        }
        Ok(())
    }

    /// The tap descriptor, given as `fd` or as `fds`' only entry.
    pub fn tap_fd(&self) -> Option<i32> {
        self.fd
            .or_else(|| self.fds.as_deref().and_then(|fds| fds.first().copied()))
    }

    /// The configured MAC address's bytes, if one is given and well formed.
    pub fn mac_bytes(&self) -> Option<Result<[u8; 6], ConfigError>> {
        self.mac.as_deref().map(parse_mac)
    }
}

/// A virtio-rng device reading from a host entropy source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngConfig {
    #[serde(default = "RngConfig::default_source")]
    pub src: PathBuf,
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            src: Self::default_source(),
        }
    }
}

impl RngConfig {
    pub const OPTIONS: &'static [&'static str] = &["src"];

    fn default_source() -> PathBuf {
        PathBuf::from(DEFAULT_RNG_SOURCE)
    }

    /// Parses `--rng [src=PATH]`; an empty string means the default source.
    pub fn parse(input: &str) -> Result<RngConfig, ParseError> {
        const FLAG: &str = "--rng";
        if input.trim().is_empty() {
            return Ok(RngConfig::default());
        }
        let opts = Options::parse(FLAG, input, Self::OPTIONS)?;
        let rng = RngConfig {
            src: opts.get("src")?.unwrap_or_else(Self::default_source),
        };
        rng.validate().map_err(invalid(FLAG, input))?;
        Ok(rng)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.src.as_os_str().is_empty() {
            return Err(ConfigError::EmptyRngSource);
        }
        Ok(())
    }
}

/// A file descriptor number on the command line: 0 or more, fitting an `i32`.
struct FdNumber(i32);

impl OptionValue for FdNumber {
    fn from_option(raw: &str) -> Result<FdNumber, String> {
        raw.parse::<u32>()
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .map(FdNumber)
            .ok_or_else(|| "expected an open file descriptor's number (0 or more)".to_string())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case) into a unicast address: a NIC
/// with a multicast address would receive nothing addressed to it.
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::MacSyntax(text.to_string());
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if bytes[0] & 1 != 0 {
        return Err(ConfigError::MacMulticast(text.to_string()));
    }
    if bytes == [0; 6] {
        return Err(ConfigError::MacZero(text.to_string()));
    }
    Ok(bytes)
}

fn check_tap_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TAP_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::TapName(name.to_string()))
    }
}

/// Ids appear in API paths and logs; an empty one could never be named again.
fn check_id(id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(ConfigError::EmptyDeviceId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::options::OptionError;

    /// Whether `error` came from the option string itself rather than its meaning.
    fn is_option_error(error: &ParseError) -> bool {
        matches!(error, ParseError::Option(OptionError::InvalidValue { .. }))
    }

    #[test]
    fn disk_option_parses_every_key() {
        assert_eq!(
            DiskConfig::parse(
                "path=/img.raw,readonly=on,direct=on,id=root,serial=SN01,boot=on,format=raw"
            )
            .unwrap(),
            DiskConfig {
                path: "/img.raw".into(),
                readonly: true,
                direct: true,
                id: Some("root".into()),
                serial: Some("SN01".into()),
                boot: true,
                format: Some(DiskFormat::Raw),
            }
        );
        let err = DiskConfig::parse("path=/img,format=vmdk").unwrap_err();
        assert!(err.to_string().contains("raw or qcow2"), "{err}");
        assert_eq!(
            DiskConfig::parse("path=/img.raw").unwrap(),
            DiskConfig {
                path: "/img.raw".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn disk_option_errors_name_the_flag_and_key() {
        let err = |s| DiskConfig::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("readonly=on"),
            "--disk: option 'path' is required (path=...)"
        );
        assert_eq!(
            err("path=/a,ro=on"),
            "--disk: unknown option 'ro'; valid options: path, readonly, direct, id, serial, boot, format"
        );
        assert_eq!(
            err("path=/a,readonly=yes"),
            "--disk readonly=yes: expected on or off"
        );
        assert_eq!(
            err("path=/a,serial=abcdefghijklmnopqrstu"),
            "--disk path=/a,serial=abcdefghijklmnopqrstu: disk serial 'abcdefghijklmnopqrstu' must be at most 20 printable ASCII characters without spaces"
        );
        assert_eq!(
            err("path="),
            "--disk: option 'path' needs a value (path=...)"
        );
    }

    #[test]
    fn net_option_takes_a_tap_name_or_an_fd() {
        assert_eq!(
            NetConfig::parse("tap=tap0,mac=52:54:00:12:34:56,id=eth0").unwrap(),
            NetConfig {
                tap: Some("tap0".into()),
                fd: None,
                fds: None,
                mac: Some("52:54:00:12:34:56".into()),
                id: Some("eth0".into()),
            }
        );
        assert_eq!(
            NetConfig::parse("fd=5").unwrap(),
            NetConfig {
                fd: Some(5),
                ..Default::default()
            }
        );
    }

    #[test]
    fn net_option_errors() {
        let err = |s| NetConfig::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("tap=tap0,fd=5"),
            "--net tap=tap0,fd=5: give exactly one of tap=NAME (form-vmm opens or creates the tap) or fd=N (an open tap's descriptor)"
        );
        assert_eq!(
            err("mac=52:54:00:12:34:56"),
            "--net mac=52:54:00:12:34:56: give exactly one of tap=NAME (form-vmm opens or creates the tap) or fd=N (an open tap's descriptor)"
        );
        assert_eq!(
            err("tap=a-name-much-too-long"),
            "--net tap=a-name-much-too-long: tap name 'a-name-much-too-long' must be 1 to 15 characters without '/', ':' or spaces"
        );
        assert_eq!(
            err("tap=tap0,mac=52:54:00:12:34"),
            "--net tap=tap0,mac=52:54:00:12:34: MAC address '52:54:00:12:34' is not six hex bytes separated by colons (e.g. 52:54:00:12:34:56)"
        );
        assert_eq!(
            err("tap=tap0,mac=01:00:5e:00:00:01"),
            "--net tap=tap0,mac=01:00:5e:00:00:01: MAC address '01:00:5e:00:00:01' is a multicast address; a NIC needs a unicast one (the first byte's lowest bit clear)"
        );
        let fd_err = NetConfig::parse("fd=-1").unwrap_err();
        assert!(is_option_error(&fd_err), "{fd_err}");
        assert_eq!(
            fd_err.to_string(),
            "--net fd=-1: expected an open file descriptor's number (0 or more)"
        );
        assert_eq!(
            err("tap=tap0,vhost=on"),
            "--net: unknown option 'vhost'; valid options: tap, fd, mac, id"
        );
    }

    #[test]
    fn json_net_takes_cloud_hypervisors_fds_as_a_list_of_one() {
        let net = |json: &str| serde_json::from_str::<NetConfig>(json).unwrap();
        let listed = net(r#"{"fds":[7],"mac":"52:54:00:12:34:56"}"#);
        assert_eq!(listed.validate(), Ok(()));
        assert_eq!(listed.tap_fd(), Some(7));
        // Reported back as given, the way Cloud Hypervisor echoes it.
        assert_eq!(
            serde_json::to_string(&listed).unwrap(),
            r#"{"fds":[7],"mac":"52:54:00:12:34:56"}"#
        );
        let single = net(r#"{"fd":7}"#);
        assert_eq!(single.validate(), Ok(()));
        assert_eq!(single.tap_fd(), Some(7));
        assert_eq!(net(r#"{"tap":"tap0"}"#).tap_fd(), None);
    }

    #[test]
    fn fds_of_more_or_less_than_one_or_beside_fd_or_tap_are_refused() {
        let check = |json: &str| serde_json::from_str::<NetConfig>(json).unwrap().validate();
        let err = check(r#"{"fds":[7,8]}"#).unwrap_err();
        assert_eq!(err, ConfigError::NetFdsCount(2));
        assert_eq!(
            err.to_string(),
            "fds lists 2 descriptors, but form-vmm's NIC has one queue pair and takes exactly one tap descriptor: give fds as [N]"
        );
        assert_eq!(check(r#"{"fds":[]}"#), Err(ConfigError::NetFdsCount(0)));
        assert_eq!(
            check(r#"{"fd":7,"fds":[7]}"#),
            Err(ConfigError::NetFdAndFds)
        );
        assert_eq!(
            check(r#"{"tap":"tap0","fds":[7]}"#),
            Err(ConfigError::NetTapOrFd)
        );
        assert_eq!(check(r#"{"fds":[-1]}"#), Err(ConfigError::NetFd(-1)));
        // The command line keeps its one spelling.
        assert!(NetConfig::parse("fds=7").is_err());
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:ef").unwrap(),
            [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]
        );
        for bad in [
            "",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52-54-00-12-34-56",
            "52:54:00:12:34:gg",
            "+5:54:00:12:34:56",
            "52:54:00:12:34:56:",
        ] {
            assert_eq!(
                parse_mac(bad),
                Err(ConfigError::MacSyntax(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_mac("00:00:00:00:00:00"),
            Err(ConfigError::MacZero("00:00:00:00:00:00".into()))
        );
    }

    #[test]
    fn rng_option_defaults_to_urandom() {
        assert_eq!(
            RngConfig::parse("").unwrap().src,
            PathBuf::from("/dev/urandom")
        );
        assert_eq!(
            RngConfig::parse("src=/dev/hwrng").unwrap().src,
            PathBuf::from("/dev/hwrng")
        );
        assert_eq!(
            RngConfig::parse("source=/dev/hwrng")
                .unwrap_err()
                .to_string(),
            "--rng: unknown option 'source'; valid options: src"
        );
        let rng: RngConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(rng, RngConfig::default());
    }

    #[test]
    fn json_shapes_match_the_contract() {
        let disk: DiskConfig = serde_json::from_str(r#"{"path":"/img.raw"}"#).unwrap();
        assert_eq!(disk.path, PathBuf::from("/img.raw"));
        assert!(!disk.readonly && !disk.direct && disk.id.is_none());
        assert_eq!(
            serde_json::to_string(&disk).unwrap(),
            r#"{"path":"/img.raw","readonly":false,"direct":false}"#
        );
        let boot: DiskConfig = serde_json::from_str(r#"{"path":"/img","boot":true}"#).unwrap();
        assert!(boot.boot);
        assert_eq!(
            serde_json::to_string(&boot).unwrap(),
            r#"{"path":"/img","readonly":false,"direct":false,"boot":true}"#
        );
        let net: NetConfig = serde_json::from_str(r#"{"fd":5,"mac":"52:54:00:12:34:56"}"#).unwrap();
        assert_eq!(net.fd, Some(5));
        assert_eq!(
            serde_json::to_string(&net).unwrap(),
            r#"{"fd":5,"mac":"52:54:00:12:34:56"}"#
        );
    }
}
