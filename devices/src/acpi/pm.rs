//! The hardware-reduced ACPI sleep control and reset register, one byte at port 0x600.
//!
//! The FADT advertises this port as both `SLEEP_CONTROL_REG` and `RESET_REG`. A guest
//! powers off by writing `SLP_TYP` (bits 2-4, the value from `\_S5`) together with
//! `SLP_EN` (bit 5), and resets by writing the FADT's `RESET_VALUE`.

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Port of the sleep control / reset register.
pub const ACPI_PM_PORT: u64 = 0x600;
/// Ports the register occupies.
pub const ACPI_PM_PORT_LEN: u64 = 1;

/// `SLP_EN`: the write requests a transition to the state in `SLP_TYP`.
pub const SLP_EN_BIT: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
/// The `SLP_TYP` value the DSDT's `\_S5` package must carry.
pub const SLP_TYP_S5: u8 = 5;
/// The whole byte a guest writes to enter S5 (`0x34`).
pub const SLEEP_CONTROL_S5: u8 = (SLP_TYP_S5 << SLP_TYP_SHIFT) | SLP_EN_BIT;
/// The FADT's `RESET_VALUE`: writing it to the register resets the VM.
pub const ACPI_RESET_VALUE: u8 = 0x01;

pub struct AcpiPmDevice {
    exit_evt: EventFd,
    reset_evt: EventFd,
}

impl AcpiPmDevice {
    pub fn new(exit_evt: EventFd, reset_evt: EventFd) -> Self {
        Self {
            exit_evt,
            reset_evt,
        }
    }

    fn handle(&self, value: u8) {
        if value == ACPI_RESET_VALUE {
            if let Err(e) = self.reset_evt.write(1) {
                warn!("acpi: guest asked for a reset but signalling it failed: {e}");
            }
        } else if value & SLP_EN_BIT != 0 && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == SLP_TYP_S5 {
            if let Err(e) = self.exit_evt.write(1) {
                warn!("acpi: guest asked for power-off but signalling it failed: {e}");
            }
        } else {
            debug!("acpi: ignoring {value:#04x} written to the sleep control register");
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // The register is one byte; a wider write carries it in its low byte.
        match (offset, data.first()) {
            (0, Some(&value)) => self.handle(value),
            _ => debug!(
                "acpi: ignoring {}-byte write at offset {offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Fixture {
        dev: AcpiPmDevice,
        exit: EventFd,
        reset: EventFd,
    }

    fn fixture() -> Fixture {
        let exit = EventFd::new(EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        Fixture {
            dev: AcpiPmDevice::new(exit.try_clone().unwrap(), reset.try_clone().unwrap()),
            exit,
            reset,
        }
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut f = fixture();
        assert_eq!(SLEEP_CONTROL_S5, 0x34);
        f.dev.write(ACPI_PM_PORT, 0, &[SLEEP_CONTROL_S5]);
        assert_eq!(f.exit.read().unwrap(), 1);
        assert!(f.reset.read().is_err());
    }

    #[test]
    fn reset_value_resets() {
        let mut f = fixture();
        f.dev.write(ACPI_PM_PORT, 0, &[ACPI_RESET_VALUE]);
        assert_eq!(f.reset.read().unwrap(), 1);
        assert!(f.exit.read().is_err());
    }

    #[test]
    fn other_values_and_offsets_are_ignored() {
        let mut f = fixture();
        // S5 without SLP_EN, SLP_EN with S3, garbage, empty and out-of-range writes.
        for v in [SLP_TYP_S5 << 2, (3 << 2) | SLP_EN_BIT, 0x00, 0xff, 0x02] {
            f.dev.write(ACPI_PM_PORT, 0, &[v]);
        }
        f.dev.write(ACPI_PM_PORT, 0, &[]);
        f.dev.write(ACPI_PM_PORT, 1, &[SLEEP_CONTROL_S5]);
        assert!(f.exit.read().is_err());
        assert!(f.reset.read().is_err());
    }

    #[test]
    fn wide_write_uses_the_low_byte_and_reads_are_zero() {
        let mut f = fixture();
        f.dev.write(ACPI_PM_PORT, 0, &[SLEEP_CONTROL_S5, 0xff]);
        assert_eq!(f.exit.read().unwrap(), 1);
        let mut b = [0xffu8; 2];
        f.dev.read(ACPI_PM_PORT, 0, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
