//! PCI addresses (segment:bus:device.function) as given by users and found in sysfs.

use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a usable PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BdfError {
    #[error("'{input}' is not a PCI address: expected DDDD:BB:SS.F (e.g. 0000:01:00.0) or BB:SS.F (e.g. 01:00.0), all hexadecimal")]
    Malformed { input: String },
    #[error("'{input}': device number {device:#x} is out of range (0x00-0x1f)")]
    DeviceOutOfRange { input: String, device: u8 },
    #[error("'{input}': function number {function} is out of range (0-7)")]
    FunctionOutOfRange { input: String, function: u8 },
    #[error("'{input}' is not a PCI device path: give a BDF or /sys/bus/pci/devices/<BDF> (no '.' or '..' components)")]
    BadPath { input: String },
}

/// A PCI function address: segment (domain), bus, device (0-31) and function (0-7).
///
/// Displays in the kernel's sysfs form, `0000:01:00.0`, which is also the name of the
/// function's directory under `/sys/bus/pci/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// Builds an address, checking the device and function ranges.
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, BdfError> {
        let input = format!("{segment:04x}:{bus:02x}:{device:02x}.{function:x}");
        Self::checked(&input, segment, bus, device, function)
    }

    fn checked(
        input: &str,
        segment: u16,
        bus: u8,
        device: u8,
        function: u8,
    ) -> Result<Self, BdfError> {
        if device > 0x1f {
            return Err(BdfError::DeviceOutOfRange {
                input: input.to_string(),
                device,
            });
        }
        if function > 7 {
            return Err(BdfError::FunctionOutOfRange {
                input: input.to_string(),
                function,
            });
        }
        Ok(Self {
            segment,
            bus,
            device,
            function,
        })
    }

    pub fn segment(&self) -> u16 {
        self.segment
    }

    pub fn bus(&self) -> u8 {
        self.bus
    }

    pub fn device(&self) -> u8 {
        self.device
    }

    pub fn function(&self) -> u8 {
        self.function
    }

    /// True when both addresses are functions of the same physical slot (same
    /// segment, bus and device), as a GPU and its HDMI audio function are.
    pub fn same_slot(&self, other: &Bdf) -> bool {
        self.segment == other.segment && self.bus == other.bus && self.device == other.device
    }

    /// Parses what an operator typed: a BDF (`0000:01:00.0`, `01:00.0`) or the sysfs
    /// directory of one (`/sys/bus/pci/devices/0000:01:00.0`, or a
    /// `/sys/devices/pci0000:00/...` path). Only the address is kept; callers look the
    /// device up under their own sysfs root, so a path can never lead elsewhere. Paths
    /// with `.` or `..` components are refused rather than resolved.
    pub fn from_user_input(input: &str) -> Result<Self, BdfError> {
        let trimmed = input.trim();
        if !trimmed.contains('/') {
            return trimmed.parse();
        }
        let bad_path = || BdfError::BadPath {
            input: input.to_string(),
        };
        let path = Path::new(trimmed);
        let mut names = Vec::new();
        for component in path.components() {
            match component {
                Component::RootDir => {}
                Component::Normal(name) => names.push(name.to_str().ok_or_else(bad_path)?),
                Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad_path())
                }
            }
        }
        // `Path::components` silently drops interior "." components; refuse them too.
        if trimmed.split('/').any(|part| part == "." || part == "..") {
            return Err(bad_path());
        }
        let (last, parents) = names.split_last().ok_or_else(bad_path)?;
        let under_bus = parents.ends_with(&["bus", "pci", "devices"]);
        let under_devices = parents.len() >= 2
            && parents.contains(&"devices")
            && parents.iter().any(|p| p.starts_with("pci"));
        if !under_bus && !under_devices {
            return Err(bad_path());
        }
        last.parse().map_err(|_| bad_path())
    }
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let malformed = || BdfError::Malformed {
            input: input.to_string(),
        };
        let (head, function) = input.rsplit_once('.').ok_or_else(malformed)?;
        let fields: Vec<&str> = head.split(':').collect();
        let (segment, bus, device) = match fields.as_slice() {
            [segment, bus, device] => (Some(*segment), *bus, *device),
            [bus, device] => (None, *bus, *device),
            _ => return Err(malformed()),
        };
        let segment = match segment {
            Some(s) => hex_field(s, 4).ok_or_else(malformed)?,
            None => 0,
        };
        let bus = hex_field(bus, 2).ok_or_else(malformed)?;
        let device = hex_field(device, 2).ok_or_else(malformed)?;
        let function = hex_field(function, 1).ok_or_else(malformed)?;
        let bus = u8::try_from(bus).map_err(|_| malformed())?;
        let device = u8::try_from(device).map_err(|_| malformed())?;
        let function = u8::try_from(function).map_err(|_| malformed())?;
        Self::checked(input, segment, bus, device, function)
    }
}

/// A hexadecimal field of exactly `width` digits (sysfs names are zero-padded, and
/// accepting other widths would let `1:0.0` and `01:00.0` both mean the same device
/// while `001:00.0` silently meant something else).
fn hex_field(text: &str, width: usize) -> Option<u16> {
    if text.len() != width || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bdf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let full: Bdf = "0000:01:00.0".parse().unwrap();
        let short: Bdf = "01:00.0".parse().unwrap();
        assert_eq!(full, short);
        let other: Bdf = "000a:e3:1f.7".parse().unwrap();
        assert_eq!(
            (
                other.segment(),
                other.bus(),
                other.device(),
                other.function()
            ),
            (0xa, 0xe3, 0x1f, 7)
        );
        assert_eq!(other.to_string(), "000a:e3:1f.7");
        assert_eq!(
            "0000:1B:00.0".parse::<Bdf>().unwrap().to_string(),
            "0000:1b:00.0"
        );
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "01:00",
            "1:0.0",
            "0000:01:00.0.1",
            "00000:01:00.0",
            "0000:01:00.a0",
            "zz:00.0",
            "0000:01:00.",
            "0000:01:00.0 extra",
            "+1:00.0",
            "0000::01:00.0",
        ] {
            let err = bad.parse::<Bdf>().unwrap_err();
            assert!(
                matches!(err, BdfError::Malformed { .. }),
                "{bad:?} gave {err:?}"
            );
            assert!(
                err.to_string().contains("0000:01:00.0"),
                "message shows the form"
            );
        }
    }

    #[test]
    fn rejects_out_of_range_device_and_function() {
        assert_eq!(
            "0000:01:20.0".parse::<Bdf>().unwrap_err(),
            BdfError::DeviceOutOfRange {
                input: "0000:01:20.0".into(),
                device: 0x20
            }
        );
        assert!(matches!(
            "01:00.8".parse::<Bdf>().unwrap_err(),
            BdfError::FunctionOutOfRange { function: 8, .. }
        ));
        assert!(Bdf::new(0, 0, 32, 0).is_err());
        assert!(Bdf::new(0, 0, 31, 7).is_ok());
    }

    #[test]
    fn accepts_sysfs_paths_and_keeps_only_the_address() {
        let expected: Bdf = "0000:01:00.0".parse().unwrap();
        for path in [
            "/sys/bus/pci/devices/0000:01:00.0",
            "/sys/bus/pci/devices/0000:01:00.0/",
            "/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0",
            "0000:01:00.0",
            " 01:00.0\n",
        ] {
            assert_eq!(Bdf::from_user_input(path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn refuses_traversal_and_foreign_paths() {
        for path in [
            "/sys/bus/pci/devices/../../../etc",
            "/sys/bus/pci/devices/0000:01:00.0/..",
            "/sys/bus/pci/devices/./0000:01:00.0",
            "/sys/bus/pci/devices/../devices/0000:01:00.0",
            "/etc/passwd",
            "/tmp/0000:01:00.0",
            "/sys/bus/pci/devices/",
            "/sys/bus/pci/devices/not-a-bdf",
        ] {
            let err = Bdf::from_user_input(path).unwrap_err();
            assert!(matches!(err, BdfError::BadPath { .. }), "{path}: {err:?}");
        }
    }

    #[test]
    fn orders_and_groups_by_slot() {
        let gpu: Bdf = "0000:01:00.0".parse().unwrap();
        let audio: Bdf = "0000:01:00.1".parse().unwrap();
        let other: Bdf = "0000:02:00.0".parse().unwrap();
        assert!(gpu.same_slot(&audio));
        assert!(!gpu.same_slot(&other));
        assert!(gpu < audio && audio < other);
    }

    #[test]
    fn serializes_as_a_string() {
        let bdf: Bdf = "0000:01:00.1".parse().unwrap();
        let json = serde_json::to_string(&bdf).unwrap();
        assert_eq!(json, "\"0000:01:00.1\"");
        assert_eq!(serde_json::from_str::<Bdf>(&json).unwrap(), bdf);
        assert!(serde_json::from_str::<Bdf>("\"nonsense\"").is_err());
    }
}
