//! Legacy platform devices: COM1, the i8042 reset line, the ACPI sleep/reset
//! register and the ACPI GED.

use super::error::{eventfd, DeviceError};
use super::log_file::open_guest_log;
use crate::config::{ConsoleConfig, ConsoleOutputMode};
use crate::io_buses::IoBuses;
use devices::acpi::{AcpiPmDevice, Ged, GedEvent, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use devices::serial::{Serial, COM1_GSI, COM1_PORT, SERIAL_PORT_LEN};
use form_vm_allocator::layout::{GED_GSI, GED_MMIO_START};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};
use vmm_sys_util::eventfd::EventFd;

pub struct LegacyDevices {
    pub serial: Arc<Mutex<Serial>>,
    pub ged: Arc<Mutex<Ged>>,
    /// Written by the ACPI PM device when the guest enters S5.
    pub power_off: EventFd,
    /// Written by the ACPI PM device or the i8042 when the guest asks for a reset.
    pub reset: EventFd,
}

fn clone_fd(fd: &EventFd, what: &'static str) -> Result<EventFd, DeviceError> {
    fd.try_clone()
        .map_err(|source| DeviceError::EventFd { what, source })
}

fn serial_output(cfg: &ConsoleConfig) -> Result<Box<dyn Write + Send>, DeviceError> {
    Ok(match cfg.mode {
        ConsoleOutputMode::Tty => Box::new(std::io::stdout()),
        ConsoleOutputMode::File => {
            let path = cfg.file.as_ref().ok_or(DeviceError::SerialFileMissing)?;
            let file = open_guest_log(path).map_err(|source| DeviceError::SerialFile {
                path: path.clone(),
                source,
            })?;
            Box::new(file)
        }
        ConsoleOutputMode::Off | ConsoleOutputMode::Null => Box::new(std::io::sink()),
        mode @ ConsoleOutputMode::Pty => return Err(DeviceError::SerialModeUnsupported(mode)),
    })
}

/// Whether stdin is something a person or a pipe types into (not /dev/null or a file).
fn stdin_is_interactive() -> bool {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: isatty and fstat only read the descriptor's state.
    if unsafe { libc::isatty(fd) } == 1 {
        return true;
    }
    // SAFETY: st is plain old data and fully written by fstat on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO }
}

/// Feeds host stdin to the guest's COM1. The thread ends at EOF or once the serial
/// device is gone; it is not joined, since a read on stdin cannot be cancelled.
fn spawn_stdin_reader(serial: Weak<Mutex<Serial>>) -> Result<(), DeviceError> {
    std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            crate::sandbox::enter_or_abort(crate::sandbox::ThreadKind::SerialStdin);
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let Some(serial) = serial.upgrade() else {
                    return;
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .queue_input(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        // The guest is not draining its FIFO; drop rather than block it.
                        break;
                    }
                }
            }
        })
        .map(drop)
        .map_err(|source| DeviceError::Thread {
            what: "serial stdin",
            source,
        })
}

pub fn attach_legacy_devices(
    vm: &hypervisor::Vm,
    buses: &IoBuses,
    serial_cfg: &ConsoleConfig,
) -> Result<LegacyDevices, DeviceError> {
    let serial_irq = eventfd("the COM1 interrupt")?;
    vm.register_irqfd(&serial_irq, COM1_GSI)
        .map_err(|source| DeviceError::Irqfd {
            what: "COM1",
            gsi: COM1_GSI,
            source,
        })?;
    let serial = Arc::new(Mutex::new(Serial::new(
        serial_irq,
        serial_output(serial_cfg)?,
    )));
    buses
        .pio
        .insert(serial.clone(), COM1_PORT, SERIAL_PORT_LEN)
        .map_err(|source| DeviceError::Bus {
            what: "COM1",
            source,
        })?;

    let reset = eventfd("reset requests")?;
    let power_off = eventfd("power-off requests")?;
    let i8042 = I8042::new(clone_fd(&reset, "the i8042 reset line")?);
    buses
        .pio
        .insert(Arc::new(Mutex::new(i8042)), I8042_PORT, I8042_PORT_LEN)
        .map_err(|source| DeviceError::Bus {
            what: "i8042",
            source,
        })?;
    let pm = AcpiPmDevice::new(
        clone_fd(&power_off, "the ACPI sleep register")?,
        clone_fd(&reset, "the ACPI reset register")?,
    );
    buses
        .pio
        .insert(Arc::new(Mutex::new(pm)), ACPI_PM_PORT, ACPI_PM_PORT_LEN)
        .map_err(|source| DeviceError::Bus {
            what: "ACPI PM register",
            source,
        })?;

    let ged_irq = eventfd("the GED interrupt")?;
    vm.register_irqfd(&ged_irq, GED_GSI)
        .map_err(|source| DeviceError::Irqfd {
            what: "GED",
            gsi: GED_GSI,
            source,
        })?;
    let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
    buses
        .mmio
        .insert(ged.clone(), GED_MMIO_START, devices::acpi::GED_MMIO_SIZE)
        .map_err(|source| DeviceError::Bus {
            what: "ACPI GED",
            source,
        })?;

    if serial_cfg.mode == ConsoleOutputMode::Tty && stdin_is_interactive() {
        spawn_stdin_reader(Arc::downgrade(&serial))?;
    }
    Ok(LegacyDevices {
        serial,
        ged,
        power_off,
        reset,
    })
}

impl LegacyDevices {
    pub fn press_power_button(&self) {
        self.ged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .notify(GedEvent::PowerButton);
    }
}
