//! A stub at the x86 reset vector, so that a guest restarting "through the BIOS"
//! resets the VM.
//!
//! form-vmm has no firmware. Linux on a hardware-reduced ACPI platform without EFI
//! picks EFI as its reboot method, finds no EFI runtime, and falls back to a real
//! mode jump to F000:FFF0, where a PC's BIOS would reset the machine. Without code
//! there the guest runs whatever the memory holds, forever, and never reboots. The
//! stub writes the ACPI reset register, then the i8042's reset line, and halts.

use devices::acpi::{ACPI_PM_PORT, ACPI_RESET_VALUE};
use form_vm_allocator::layout::RESET_VECTOR;
use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::memory::GuestMemoryMmap;

const _: () = assert!(ACPI_PM_PORT <= 0xffff, "the stub loads the port into dx");

/// The i8042 command that pulses the CPU reset line, and its command port.
const I8042_RESET: u8 = 0xfe;
const I8042_COMMAND_PORT: u8 = 0x64;

/// Real-mode (16-bit) code for the reset vector; at most 16 bytes, the room below
/// 1 MiB.
pub fn reset_stub() -> Vec<u8> {
    let [pm_lo, pm_hi] = (ACPI_PM_PORT as u16).to_le_bytes();
    let stub = vec![
        0xb0,
        ACPI_RESET_VALUE, // mov al, ACPI_RESET_VALUE
        0xba,
        pm_lo,
        pm_hi, // mov dx, ACPI_PM_PORT
        0xee,  // out dx, al
        0xb0,
        I8042_RESET, // mov al, 0xfe
        0xe6,
        I8042_COMMAND_PORT, // out 0x64, al
        0xf4,               // hlt
        0xeb,
        0xfd, // jmp back to the hlt
    ];
    debug_assert!(stub.len() <= 16);
    stub
}

/// Writes [`reset_stub`] at the reset vector.
pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&reset_stub(), GuestAddress(RESET_VECTOR))
        .map_err(|source| BootError::GuestWrite {
            what: "the reset vector's stub",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_fits_below_1_mib_and_targets_both_reset_ports() {
        let stub = reset_stub();
        assert!(RESET_VECTOR + stub.len() as u64 <= 0x10_0000);
        // out dx, al with dx = the ACPI PM port and al = the reset value.
        assert_eq!(&stub[..6], &[0xb0, 0x01, 0xba, 0x00, 0x06, 0xee]);
        // out 0x64, al with al = 0xfe, then a halt loop.
        assert_eq!(&stub[6..], &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
        // The jump lands on the hlt: rel8 -3 from the end of the jmp.
        let hlt = stub.iter().position(|&b| b == 0xf4).unwrap();
        assert_eq!(stub.len() as isize - 3, hlt as isize);
    }
}
