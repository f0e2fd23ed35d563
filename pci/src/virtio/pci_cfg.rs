//! The PCI configuration access capability (virtio 1.2, 4.1.4.9): a window in
//! config space through which a driver that cannot map BAR0 (firmware, early boot)
//! reaches it. The driver writes the BAR, offset and length fields, then reading
//! or writing the data dword performs that access on the BAR.

use crate::config::PciConfiguration;
use crate::virtio::layout::{BAR0, CAP_BAR, CAP_LENGTH, CAP_OFFSET, PCI_CFG_DATA};
use crate::virtio::VIRTIO_PCI_BAR_SIZE;

/// A BAR0 access the window asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAccess {
    pub offset: u64,
    pub len: usize,
}

pub struct PciCfgWindow {
    cap: usize,
}

impl PciCfgWindow {
    pub fn new(cap_offset: usize) -> Self {
        Self { cap: cap_offset }
    }

    #[cfg(test)]
    pub fn cap_offset(&self) -> usize {
        self.cap
    }

    /// Whether config register `reg_idx` is the data dword.
    pub fn is_data_register(&self, reg_idx: usize) -> bool {
        reg_idx == (self.cap + PCI_CFG_DATA) / 4
    }

    /// The access the fields describe; `None` when it is not a 1, 2 or 4-byte
    /// access inside BAR0 (the window then reads as zero and drops writes).
    pub fn access(&self, config: &PciConfiguration) -> Option<WindowAccess> {
        let bar = config.read_u8(self.cap + CAP_BAR);
        let offset = u64::from(config.read_u32(self.cap + CAP_OFFSET));
        let len = config.read_u32(self.cap + CAP_LENGTH);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| matches!(l, 1 | 2 | 4))?;
        let inside = offset + len as u64 <= VIRTIO_PCI_BAR_SIZE;
        (bar == BAR0 && inside).then_some(WindowAccess { offset, len })
    }

    /// Stores what a window read returned in the data dword.
    pub fn store_data(&self, config: &mut PciConfiguration, data: &[u8]) {
        let mut dword = [0u8; 4];
        for (d, s) in dword.iter_mut().zip(data) {
            *d = *s;
        }
        config.write_bytes(self.cap + PCI_CFG_DATA, &dword);
    }

    /// The first `len` bytes of the data dword, for a window write.
    pub fn data(&self, config: &PciConfiguration, len: usize) -> Vec<u8> {
        let dword = config.read_u32(self.cap + PCI_CFG_DATA).to_le_bytes();
        dword.iter().take(len).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PciClassCode, PciHeader, PciInterruptPin};
    use crate::virtio::layout::add_virtio_capabilities;

    fn window() -> (PciConfiguration, PciCfgWindow) {
        let mut c = PciConfiguration::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            class: PciClassCode {
                class: 2,
                subclass: 0,
                prog_if: 0,
            },
            revision_id: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 1,
            multifunction: false,
            interrupt_pin: PciInterruptPin::None,
        });
        let cap = add_virtio_capabilities(&mut c, 2).unwrap();
        (c, PciCfgWindow::new(cap))
    }

    fn set(c: &mut PciConfiguration, w: &PciCfgWindow, bar: u8, offset: u32, len: u32) {
        let reg = |f: usize| (w.cap + f) / 4;
        c.write_config_register(reg(CAP_BAR), ((w.cap + CAP_BAR) % 4) as u64, &[bar]);
        c.write_config_register(reg(CAP_OFFSET), 0, &offset.to_le_bytes());
        c.write_config_register(reg(CAP_LENGTH), 0, &len.to_le_bytes());
    }

    #[test]
    fn describes_only_small_accesses_inside_bar0() {
        let (mut c, w) = window();
        assert_eq!(w.access(&c), None, "length 0 at reset");
        set(&mut c, &w, 0, 0x14, 1);
        assert_eq!(
            w.access(&c),
            Some(WindowAccess {
                offset: 0x14,
                len: 1
            })
        );
        set(&mut c, &w, 1, 0x14, 1);
        assert_eq!(w.access(&c), None, "BAR 1 does not exist");
        set(&mut c, &w, 0, 0x7ffe, 4);
        assert_eq!(w.access(&c), None, "spills past the BAR");
        set(&mut c, &w, 0, u32::MAX, 2);
        assert_eq!(w.access(&c), None);
        set(&mut c, &w, 0, 0, 8);
        assert_eq!(w.access(&c), None);
        assert!(w.is_data_register((w.cap + PCI_CFG_DATA) / 4));
    }

    #[test]
    fn data_dword_carries_values_both_ways() {
        let (mut c, w) = window();
        w.store_data(&mut c, &[0xaa, 0xbb]);
        assert_eq!(c.read_u32(w.cap + PCI_CFG_DATA), 0xbbaa);
        let reg = (w.cap + PCI_CFG_DATA) / 4;
        c.write_config_register(reg, 0, &0x1122_3344u32.to_le_bytes());
        assert_eq!(w.data(&c, 2), vec![0x44, 0x33]);
    }
}
