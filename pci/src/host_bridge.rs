//! The host bridge in slot 0 of bus 0: it has no BARs and does nothing, but guests
//! expect a class 06/00 function there.
//!
//! It uses the IDs Red Hat assigned to QEMU's generic PCIe host bridge (vendor
//! `0x1b36`, device `0x0008`), which Linux knows needs no driver.

use std::any::Any;

use crate::config::{BarReprogram, PciClassCode, PciConfiguration, PciHeader, PciInterruptPin};
use crate::device::PciDevice;

pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST_BRIDGE: u8 = 0x00;

pub struct HostBridge {
    config: PciConfiguration,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    pub fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class: PciClassCode {
                    class: CLASS_BRIDGE,
                    subclass: SUBCLASS_HOST_BRIDGE,
                    prog_if: 0,
                },
                revision_id: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                multifunction: false,
                interrupt_pin: PciInterruptPin::None,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.config.read_config_register(reg_idx)
    }

    fn write_config_register(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
    ) -> Option<BarReprogram> {
        self.config.write_config_register(reg_idx, offset, data)
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_a_host_bridge_without_bars() {
        let mut hb = HostBridge::new();
        assert_eq!(hb.read_config_register(0), 0x0008_1b36);
        assert_eq!(hb.read_config_register(2) >> 16, 0x0600);
        assert!(hb.bars().is_empty());
        for reg in 4..10 {
            assert_eq!(hb.write_config_register(reg, 0, &[0xff; 4]), None);
            assert_eq!(hb.read_config_register(reg), 0);
        }
    }
}
