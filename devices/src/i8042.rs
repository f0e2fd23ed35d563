//! The part of an i8042 keyboard controller a keyboard-less guest needs: the reset line.
//!
//! Linux (`reboot=k`, and its fallback chain) and firmware reset the machine by writing
//! the "pulse reset line" command `0xFE` to the command port `0x64`. Nothing else is
//! emulated: the data port reads as an empty buffer and the status register always says
//! "output buffer empty, input buffer empty", so a probing driver sees a controller that
//! never answers and gives up cleanly.
//!
//! Inserted at port `0x60` with length 5, so offset 0 is the data port and offset 4 the
//! status/command port.

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First port of the controller (the data port).
pub const I8042_PORT: u64 = 0x60;
/// Ports covered from [`I8042_PORT`]: `0x60..=0x64`.
pub const I8042_PORT_LEN: u64 = 5;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Command byte that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Status: bit 2 (system flag) says the controller passed its self-test; output buffer
/// full (bit 0) and input buffer full (bit 1) stay clear: no data, ready for commands.
const STATUS_IDLE: u8 = 0x04;

pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == COMMAND_OFFSET {
            if let Some(status) = data.first_mut() {
                *status = STATUS_IDLE;
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (COMMAND_OFFSET, Some(&CMD_RESET_CPU)) => {
                if let Err(e) = self.reset_evt.write(1) {
                    warn!("i8042: guest asked for a reset but signalling it failed: {e}");
                }
            }
            (COMMAND_OFFSET | DATA_OFFSET, Some(byte)) => {
                debug!("i8042: ignoring {byte:#04x} written at offset {offset}");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (I8042, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    #[test]
    fn reset_command_signals_reset() {
        let (mut dev, evt) = device();
        dev.write(I8042_PORT, COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_reset() {
        let (mut dev, evt) = device();
        dev.write(I8042_PORT, DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(I8042_PORT, COMMAND_OFFSET, &[0xfd]);
        dev.write(I8042_PORT, COMMAND_OFFSET, &[]);
        dev.write(I8042_PORT, 2, &[CMD_RESET_CPU]);
        dev.write(I8042_PORT, u64::MAX, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err());
    }

    #[test]
    fn status_reports_idle_and_data_reads_zero() {
        let (mut dev, _evt) = device();
        let mut b = [0xffu8];
        dev.read(I8042_PORT, COMMAND_OFFSET, &mut b);
        assert_eq!(
            b[0] & 0x03,
            0,
            "output/input buffer full bits must be clear"
        );
        dev.read(I8042_PORT, DATA_OFFSET, &mut b);
        assert_eq!(b[0], 0);
        let mut wide = [0xffu8; 4];
        dev.read(I8042_PORT, 1, &mut wide);
        assert_eq!(wide, [0; 4]);
        dev.read(I8042_PORT, COMMAND_OFFSET, &mut []);
    }
}
