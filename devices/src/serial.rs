//! COM1: a 16550A UART on the port-I/O bus.
//!
//! The register model is vm-superio's; this module adapts it to the [`BusDevice`]
//! interface and routes its interrupt to an `EventFd` that the VMM registers as a KVM
//! irqfd (GSI 4 for COM1).
//!
//! Accesses wider than one byte are split into consecutive byte accesses, the way an
//! 8-bit ISA device sees a wide access; bytes that fall past the eight registers read as
//! zero and are dropped on write.

use std::io::{self, Write};

use log::warn;
use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Base port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of ports a 16550 decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// IOAPIC pin (and GSI) COM1 interrupts on.
pub const COM1_GSI: u32 = 4;

/// Raises the UART's interrupt by signalling an eventfd (a KVM irqfd on the VMM side).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// A 16550A UART whose transmitter feeds `out` and whose receiver is filled by
/// [`Serial::queue_input`].
pub struct Serial {
    uart: Uart,
}

impl Serial {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(EventFdTrigger::new(interrupt), out),
        }
    }

    /// Hands host input to the guest. Takes as many bytes as the receive FIFO has room
    /// for and returns that count; the caller keeps the rest for later (after the guest
    /// has drained the FIFO). Returns 0 while the FIFO is full or the UART is in
    /// loopback mode, where external input is disconnected.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room_before = self.uart.fifo_capacity();
        if let Err(e) = self.uart.enqueue_raw_bytes(bytes) {
            // A full FIFO is ordinary back-pressure; anything else means the bytes were
            // queued but the guest was not interrupted, which it will notice by polling.
            if !matches!(e, SerialError::FullFifo) {
                warn!("serial: queued input but could not raise the interrupt: {e}");
            }
        }
        // Counting from the FIFO keeps the answer right even when the interrupt failed
        // after the bytes were queued.
        room_before.saturating_sub(self.uart.fifo_capacity())
    }

    /// Free space in the receive FIFO, for callers that want to read just that much
    /// from the host.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        let Ok(register) = u8::try_from(offset) else {
            return;
        };
        if offset >= SERIAL_PORT_LEN {
            return;
        }
        if let Err(e) = self.uart.write(register, value) {
            // The guest cannot be told that the host side failed; losing console
            // output must not stop the guest.
            warn!("serial: write to register {register}: {e}");
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        match u8::try_from(offset) {
            Ok(register) if offset < SERIAL_PORT_LEN => self.uart.read(register),
            _ => 0,
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_register(offset.saturating_add(i as u64));
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_register(offset.saturating_add(i as u64), byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;

    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const IIR_NO_INTERRUPT: u8 = 0x01;
    const IIR_THRE: u8 = 0x02;
    const IIR_RDA: u8 = 0x04;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const LSR_TX_IDLE: u8 = 0x40;

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

    fn serial() -> (Serial, EventFd, SharedBuf) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let s = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (s, irq, out)
    }

    fn read(s: &mut Serial, reg: u64) -> u8 {
        let mut b = [0xaa];
        s.read(COM1_PORT, reg, &mut b);
        b[0]
    }

    fn fired(irq: &EventFd) -> bool {
        irq.read().is_ok()
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let (mut s, _irq, out) = serial();
        for &b in b"hi\n" {
            s.write(COM1_PORT, THR, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn thr_empty_interrupt_fires_only_when_enabled() {
        let (mut s, irq, _out) = serial();
        s.write(COM1_PORT, THR, b"a");
        assert!(!fired(&irq), "THRE interrupt while IER is 0");
        assert_eq!(read(&mut s, IIR) & 0x0f, IIR_NO_INTERRUPT);

        // Enabling THRE with an empty transmitter asserts the interrupt at once.
        s.write(COM1_PORT, IER, &[IER_THRE]);
        assert!(fired(&irq));
        assert_eq!(read(&mut s, IIR) & 0x0f, IIR_THRE);
        // Reading IIR acknowledged it.
        assert_eq!(read(&mut s, IIR) & 0x0f, IIR_NO_INTERRUPT);

        s.write(COM1_PORT, THR, b"b");
        assert!(fired(&irq));
    }

    #[test]
    fn line_status_reflects_receive_fifo() {
        let (mut s, _irq, _out) = serial();
        let lsr = read(&mut s, LSR);
        assert_eq!(lsr & LSR_DATA_READY, 0);
        assert_eq!(
            lsr & (LSR_THR_EMPTY | LSR_TX_IDLE),
            LSR_THR_EMPTY | LSR_TX_IDLE
        );

        assert_eq!(s.queue_input(b"xy"), 2);
        assert_ne!(read(&mut s, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read(&mut s, RBR), b'x');
        assert_ne!(read(&mut s, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read(&mut s, RBR), b'y');
        assert_eq!(read(&mut s, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_raises_rda_interrupt_when_enabled() {
        let (mut s, irq, _out) = serial();
        s.queue_input(b"q");
        assert!(!fired(&irq), "RDA interrupt while IER is 0");
        // Data already waiting: enabling RDA must assert the interrupt immediately.
        s.write(COM1_PORT, IER, &[IER_RDA]);
        assert!(fired(&irq));
        assert_eq!(read(&mut s, IIR) & 0x0f, IIR_RDA);
        assert_eq!(read(&mut s, RBR), b'q');

        s.queue_input(b"r");
        assert!(fired(&irq));
    }

    #[test]
    fn input_respects_fifo_capacity() {
        let (mut s, _irq, _out) = serial();
        let cap = s.input_capacity();
        assert!(cap > 0);
        let big = vec![b'z'; cap + 10];
        assert_eq!(s.queue_input(&big), cap);
        assert_eq!(s.input_capacity(), 0);
        assert_eq!(s.queue_input(b"more"), 0);
        read(&mut s, RBR);
        assert_eq!(s.queue_input(b"more"), 1);
        assert_eq!(s.queue_input(b""), 0);
    }

    #[test]
    fn loopback_mode_refuses_host_input() {
        let (mut s, _irq, _out) = serial();
        s.write(COM1_PORT, MCR, &[0x10]);
        assert_eq!(s.queue_input(b"abc"), 0);
    }

    #[test]
    fn wide_and_out_of_range_accesses_are_split_and_harmless() {
        let (mut s, _irq, out) = serial();
        // A 16-bit write at LCR lands in LCR and MCR.
        s.write(COM1_PORT, LCR, &[0x03, 0x0b]);
        assert_eq!(read(&mut s, LCR), 0x03);
        assert_eq!(read(&mut s, MCR), 0x0b);
        // A 32-bit read at offset 6 covers MSR, SCR and two bytes past the device.
        let mut wide = [0xffu8; 4];
        s.read(COM1_PORT, 6, &mut wide);
        assert_eq!(&wide[2..], &[0, 0]);
        s.write(COM1_PORT, 7, &[1, 2, 3, 4, 5, 6, 7, 8]);
        s.write(COM1_PORT, u64::MAX, &[1, 2]);
        s.read(COM1_PORT, u64::MAX - 1, &mut wide);
        s.read(COM1_PORT, 0, &mut []);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
