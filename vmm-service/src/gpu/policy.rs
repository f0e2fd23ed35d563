//! Which PCI functions the operator lets the service give to VMs: classes on an
//! allow-list, and per-device exceptions to the rule that a device must be resettable.
//!
//! GPUs and accelerators are what the service is for, so they are allowed unless the
//! operator says otherwise. A NIC, an NVMe drive or an NVSwitch is as easy to pass
//! through, but it may be the host's own (its boot disk, its management network), so
//! those classes go to VMs only when the operator lists them.

use std::fmt;

use serde::Serialize;

use super::Bdf;

/// One allowed class: a base class (`0x02`: every network controller) or a base class
/// and subclass (`0x0207`: InfiniBand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ClassRule {
    Base(u8),
    Subclass(u16),
}

impl ClassRule {
    pub fn matches(self, class: u32) -> bool {
        match self {
            Self::Base(base) => (class >> 16) & 0xff == u32::from(base),
            Self::Subclass(sub) => (class >> 8) & 0xffff == u32::from(sub),
        }
    }
}

impl fmt::Display for ClassRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Base(base) => write!(f, "0x{base:02x}"),
            Self::Subclass(sub) => write!(f, "0x{sub:04x}"),
        }
    }
}

/// The names `--allow-class` takes, with the classes each stands for.
pub const CLASS_NAMES: &[(&str, &[ClassRule])] = &[
    ("display", &[ClassRule::Base(0x03)]),
    ("accelerator", &[ClassRule::Base(0x12)]),
    ("nic", &[ClassRule::Base(0x02)]),
    ("nvme", &[ClassRule::Subclass(0x0108)]),
    // NVSwitches are "other bridge" (0x0680); PCI-to-PCI bridges (0x0604) never go
    // to a VM whatever the list says.
    ("bridge", &[ClassRule::Subclass(0x0680)]),
    ("nvswitch", &[ClassRule::Subclass(0x0680)]),
    ("audio", &[ClassRule::Subclass(0x0403)]),
];

/// What is allowed by default: display controllers (VGA, 3D, other) and processing
/// accelerators.
pub const DEFAULT_CLASSES: &[ClassRule] = &[ClassRule::Base(0x03), ClassRule::Base(0x12)];

/// Parses one `--allow-class` value: a comma-separated list of names
/// ([`CLASS_NAMES`]) and hexadecimal class codes (`0x02`, `0x0207`).
pub fn parse_classes(text: &str) -> Result<Vec<ClassRule>, String> {
    let mut rules = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lower = item.to_ascii_lowercase();
        if let Some((_, named)) = CLASS_NAMES.iter().find(|(name, _)| *name == lower) {
            rules.extend_from_slice(named);
            continue;
        }
        let digits = lower.strip_prefix("0x").unwrap_or(&lower);
        let rule = match (digits.len(), u16::from_str_radix(digits, 16)) {
            (2, Ok(base)) => ClassRule::Base(base as u8),
            (4, Ok(sub)) => ClassRule::Subclass(sub),
            _ => {
                let names: Vec<&str> = CLASS_NAMES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "'{item}' is not a device class: give one of {} or a class code such as 0x02 (base class) or 0x0207 (base class and subclass)",
                    names.join(", ")
                ));
            }
        };
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err("give at least one class, e.g. nic or 0x0207".to_string());
    }
    Ok(rules)
}

/// The operator's rules for what may go to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePolicy {
    pub allowed_classes: Vec<ClassRule>,
    /// Devices that may go to a VM although the kernel cannot reset them.
    pub allow_no_reset: Vec<Bdf>,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        Self {
            allowed_classes: DEFAULT_CLASSES.to_vec(),
            allow_no_reset: Vec::new(),
        }
    }
}

impl DevicePolicy {
    /// The defaults plus `extra` classes.
    pub fn allowing(extra: &[ClassRule]) -> Self {
        let mut policy = Self::default();
        for rule in extra {
            if !policy.allowed_classes.contains(rule) {
                policy.allowed_classes.push(*rule);
            }
        }
        policy
    }

    pub fn class_allowed(&self, class: u32) -> bool {
        !super::class::is_bridge(class) && self.allowed_classes.iter().any(|r| r.matches(class))
    }

    pub fn reset_waived(&self, bdf: &Bdf) -> bool {
        self.allow_no_reset.contains(bdf)
    }

    /// The `--allow-class` value that would allow `class`: its name where one
    /// covers it, else its code.
    pub fn flag_for(class: u32) -> String {
        let sub = ((class >> 8) & 0xffff) as u16;
        CLASS_NAMES
            .iter()
            .find(|(_, rules)| rules.iter().any(|r| r.matches(class)))
            .map(|(name, _)| (*name).to_string())
            .unwrap_or_else(|| format!("0x{sub:04x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_parse_and_match() {
        let rules = parse_classes("nic, 0x0108,0x12").unwrap();
        assert_eq!(
            rules,
            [
                ClassRule::Base(0x02),
                ClassRule::Subclass(0x0108),
                ClassRule::Base(0x12)
            ]
        );
        assert!(rules[0].matches(0x020700) && rules[0].matches(0x020000));
        assert!(rules[1].matches(0x010802) && !rules[1].matches(0x010601));
        for bad in ["", "nics", "0x1", "0x02070", "zz"] {
            assert!(parse_classes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_allow_gpus_and_accelerators_only_and_never_pci_bridges() {
        let policy = DevicePolicy::default();
        for class in [0x030000, 0x030200, 0x038000, 0x120000] {
            assert!(policy.class_allowed(class), "{class:#x}");
        }
        for class in [0x020700, 0x010802, 0x068000, 0x040300] {
            assert!(!policy.class_allowed(class), "{class:#x}");
        }
        let open = DevicePolicy::allowing(&parse_classes("0x06").unwrap());
        assert!(open.class_allowed(0x068000));
        assert!(
            !open.class_allowed(0x060400),
            "a PCI-to-PCI bridge never goes"
        );
        assert_eq!(DevicePolicy::flag_for(0x020700), "nic");
        assert_eq!(DevicePolicy::flag_for(0x068000), "bridge");
        assert_eq!(DevicePolicy::flag_for(0x0c0330), "0x0c03");
    }
}
