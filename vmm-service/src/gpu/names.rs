//! Human names for PCI IDs, from the PCI ID database compiled into the binary (so a
//! minimal host without `pci.ids` still shows "GH100 [H100 SXM5 80GB]").

use pci_ids::FromId;

pub fn vendor_name(vendor: u16) -> Option<&'static str> {
    pci_ids::Vendor::from_id(vendor).map(|v| v.name())
}

pub fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    pci_ids::Device::from_vid_pid(vendor, device).map(|d| d.name())
}

/// The board name for a subsystem ID pair, where the database knows this card.
pub fn subsystem_name(
    vendor: u16,
    device: u16,
    subsystem_vendor: u16,
    subsystem_device: u16,
) -> Option<&'static str> {
    pci_ids::Device::from_vid_pid(vendor, device)?
        .subsystems()
        .find(|s| s.subvendor() == subsystem_vendor && s.subdevice() == subsystem_device)
        .map(|s| s.name())
}

/// The subclass name of a 24-bit class code ("3D controller", "Ethernet controller").
pub fn class_name(class: u32) -> Option<&'static str> {
    let base = u8::try_from((class >> 16) & 0xff).ok()?;
    let sub = u8::try_from((class >> 8) & 0xff).ok()?;
    pci_ids::Subclass::from_cid_sid(base, sub).map(|s| s.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_data_centre_gpus() {
        assert_eq!(vendor_name(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(device_name(0x10de, 0x2330), Some("GH100 [H100 SXM5 80GB]"));
        assert_eq!(class_name(0x030200), Some("3D controller"));
        assert_eq!(device_name(0x10de, 0xfff0), None);
        assert_eq!(
            subsystem_name(0x8086, 0x1521, 0x1028, 0x0602),
            Some("Gigabit 2P I350-t LOM")
        );
        assert_eq!(subsystem_name(0x8086, 0x1521, 0x1028, 0xfff0), None);
    }
}
