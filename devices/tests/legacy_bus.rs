//! The legacy devices placed on one port-I/O bus at their platform addresses, the way
//! the VMM wires them: accesses reach the right device with the right offset.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use devices::acpi::{AcpiPmDevice, ACPI_PM_PORT, ACPI_PM_PORT_LEN, SLEEP_CONTROL_S5};
use devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use devices::serial::{Serial, COM1_PORT, SERIAL_PORT_LEN};
use devices::Bus;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);
impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Platform {
    bus: Bus,
    out: SharedBuf,
    exit: EventFd,
    reset: EventFd,
}

fn platform() -> Platform {
    let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
    let (exit, reset, irq) = (evt(), evt(), evt());
    let out = SharedBuf::default();
    let bus = Bus::new();
    let serial = Serial::new(irq, Box::new(out.clone()));
    bus.insert(Arc::new(Mutex::new(serial)), COM1_PORT, SERIAL_PORT_LEN)
        .unwrap();
    let i8042 = I8042::new(reset.try_clone().unwrap());
    bus.insert(Arc::new(Mutex::new(i8042)), I8042_PORT, I8042_PORT_LEN)
        .unwrap();
    let pm = AcpiPmDevice::new(exit.try_clone().unwrap(), reset.try_clone().unwrap());
    bus.insert(Arc::new(Mutex::new(pm)), ACPI_PM_PORT, ACPI_PM_PORT_LEN)
        .unwrap();
    Platform {
        bus,
        out,
        exit,
        reset,
    }
}

#[test]
fn console_output_through_the_bus() {
    let p = platform();
    for &b in b"ok" {
        assert!(p.bus.write(0x3f8, &[b]));
    }
    assert_eq!(p.out.0.lock().unwrap().as_slice(), b"ok");
    let mut lsr = [0u8];
    assert!(p.bus.read(0x3fd, &mut lsr));
    assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    assert!(!p.bus.read(0x400, &mut lsr), "port past COM1 is unclaimed");
}

#[test]
fn keyboard_controller_reset_through_port_0x64() {
    let p = platform();
    assert!(p.bus.write(0x64, &[0xfe]));
    assert_eq!(p.reset.read().unwrap(), 1);
    assert!(!p.bus.write(0x65, &[0xfe]), "0x65 is not the controller's");
}

#[test]
fn acpi_power_off_and_reset_through_port_0x600() {
    let p = platform();
    assert!(p.bus.write(0x600, &[SLEEP_CONTROL_S5]));
    assert_eq!(p.exit.read().unwrap(), 1);
    assert!(p.bus.write(0x600, &[0x01]));
    assert_eq!(p.reset.read().unwrap(), 1);
}
