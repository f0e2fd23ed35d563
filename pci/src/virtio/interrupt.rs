//! How a virtio device interrupts the driver: ISR status bits plus the MSI-X vector
//! the driver assigned to the queue or to configuration changes.
//!
//! A device's I/O thread calls [`VirtioPciInterrupt`] without the transport's lock:
//! it reads the vector assignments from atomics the transport keeps current, and
//! takes only the MSI-X state's own lock to trigger, which delivers the vector or
//! latches it in the PBA while masked.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use devices::virtio::VirtioInterrupt;

use crate::msix::Msix;
use crate::virtio::common_config::NO_VECTOR;

/// ISR bit 0: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1 << 0;
/// ISR bit 1: the device configuration changed.
pub const ISR_CONFIG: u8 = 1 << 1;

/// The interrupt side of one virtio-pci function.
pub struct VirtioPciInterrupt {
    msix: Arc<Mutex<Msix>>,
    isr: AtomicU8,
    generation: Arc<AtomicU8>,
    config_vector: AtomicU16,
    queue_vectors: Box<[AtomicU16]>,
}

impl VirtioPciInterrupt {
    /// `generation` is the config_generation the common configuration reads.
    pub fn new(msix: Arc<Mutex<Msix>>, num_queues: usize, generation: Arc<AtomicU8>) -> Self {
        Self {
            msix,
            isr: AtomicU8::new(0),
            generation,
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        }
    }

    pub fn msix(&self) -> &Arc<Mutex<Msix>> {
        &self.msix
    }

    /// Takes the driver's vector assignments (after every common configuration
    /// write). Queues past `queue_vectors` keep no vector.
    pub fn set_vectors(&self, config_vector: u16, queue_vectors: impl IntoIterator<Item = u16>) {
        self.config_vector.store(config_vector, Ordering::Release);
        let mut given = queue_vectors.into_iter();
        for slot in self.queue_vectors.iter() {
            slot.store(given.next().unwrap_or(NO_VECTOR), Ordering::Release);
        }
    }

    /// The guest read the ISR: returns it and clears it.
    pub fn read_and_clear_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// Device reset: nothing is pending any more.
    pub fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.set_vectors(NO_VECTOR, []);
    }

    fn trigger(&self, vector: u16) {
        if vector == NO_VECTOR {
            return;
        }
        // Msix::trigger drops vectors past its table, so any value is safe.
        self.msix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trigger(usize::from(vector));
    }
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn notify_queue(&self, queue_index: u16) -> io::Result<()> {
        self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
        let vector = self
            .queue_vectors
            .get(usize::from(queue_index))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.trigger(vector);
        Ok(())
    }

    fn notify_config(&self) -> io::Result<()> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
        self.trigger(self.config_vector.load(Ordering::Acquire));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PciClassCode, PciConfiguration, PciHeader, PciInterruptPin};
    use crate::interrupt::testing::{RecordingRoute, RouteOp};
    use crate::virtio::layout::msix_layout;

    struct Fixture {
        config: PciConfiguration,
        interrupt: VirtioPciInterrupt,
        route: Arc<RecordingRoute>,
        generation: Arc<AtomicU8>,
    }

    fn fixture() -> Fixture {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1044,
            class: PciClassCode {
                class: 0xff,
                subclass: 0,
                prog_if: 0,
            },
            revision_id: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 4,
            multifunction: false,
            interrupt_pin: PciInterruptPin::None,
        });
        let route = Arc::new(RecordingRoute::default());
        let msix = Msix::add_to(&mut config, msix_layout(3), route.clone()).unwrap();
        let generation = Arc::new(AtomicU8::new(0));
        let interrupt = VirtioPciInterrupt::new(Arc::new(Mutex::new(msix)), 2, generation.clone());
        Fixture {
            config,
            interrupt,
            route,
            generation,
        }
    }

    impl Fixture {
        /// Enables MSI-X with every vector unmasked.
        fn enable_msix(&mut self) {
            let mut msix = self.interrupt.msix().lock().unwrap();
            for v in 0..3u64 {
                msix.write_table(v * 16, &(0xfee0_0000u64 + v).to_le_bytes());
                msix.write_table(v * 16 + 12, &0u32.to_le_bytes());
            }
            let control = msix.cap_offset() + 2;
            self.config
                .write_config_register(control / 4, (control % 4) as u64, &[0, 0x80]);
            msix.config_written(&self.config);
            drop(msix);
            self.route.take();
        }
    }

    #[test]
    fn queue_notification_sets_isr_and_triggers_the_queue_vector() {
        let mut f = fixture();
        f.enable_msix();
        f.interrupt.set_vectors(0, [1, 2]);
        f.interrupt.notify_queue(1).unwrap();
        assert_eq!(f.route.take(), vec![RouteOp::Trigger(2)]);
        assert_eq!(f.interrupt.read_and_clear_isr(), ISR_QUEUE);
        assert_eq!(f.interrupt.read_and_clear_isr(), 0, "read clears");
    }

    #[test]
    fn config_notification_bumps_generation_and_uses_the_config_vector() {
        let mut f = fixture();
        f.enable_msix();
        f.interrupt.set_vectors(0, [1, 2]);
        f.interrupt.notify_config().unwrap();
        assert_eq!(f.route.take(), vec![RouteOp::Trigger(0)]);
        assert_eq!(f.generation.load(Ordering::Acquire), 1);
        assert_eq!(f.interrupt.read_and_clear_isr(), ISR_CONFIG);
    }

    #[test]
    fn no_vector_unknown_queue_and_masked_vectors_never_panic() {
        let mut f = fixture();
        f.interrupt.notify_queue(0).unwrap();
        f.interrupt.notify_queue(u16::MAX).unwrap();
        assert!(f.route.take().is_empty());
        f.enable_msix();
        // A vector past the table (the transport never stores one, but be safe).
        f.interrupt.set_vectors(7, [0x7ff, 1]);
        f.interrupt.notify_config().unwrap();
        f.interrupt.notify_queue(0).unwrap();
        assert!(f.route.take().is_empty());
        // Masked: latched in the PBA, delivered on unmask.
        let mut msix = f.interrupt.msix().lock().unwrap();
        msix.write_table(16 + 12, &1u32.to_le_bytes());
        drop(msix);
        f.route.take();
        f.interrupt.notify_queue(1).unwrap();
        assert!(f.route.take().is_empty());
        assert!(f.interrupt.msix().lock().unwrap().is_pending(1));
    }

    #[test]
    fn reset_clears_isr_and_vectors() {
        let mut f = fixture();
        f.enable_msix();
        f.interrupt.set_vectors(0, [1, 2]);
        f.interrupt.notify_queue(0).unwrap();
        f.route.take();
        f.interrupt.reset();
        assert_eq!(f.interrupt.read_and_clear_isr(), 0);
        f.interrupt.notify_queue(0).unwrap();
        f.interrupt.notify_config().unwrap();
        assert!(f.route.take().is_empty());
    }
}
