//! Per-device counters the VMM reports (e.g. in `vm.counters`).
//!
//! Interrupts that go device → VFIO eventfd → KVM irqfd never pass through the
//! VMM, which is the point; they are not counted. What is counted is everything
//! the VMM itself sees or does.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct VfioCounters {
    pub mmio_reads: AtomicU64,
    pub mmio_writes: AtomicU64,
    pub pio_reads: AtomicU64,
    pub pio_writes: AtomicU64,
    /// Of the MMIO accesses, those that hit the MSI-X table or PBA.
    pub msix_table_accesses: AtomicU64,
    pub config_reads: AtomicU64,
    pub config_writes: AtomicU64,
    /// Vector routes (re)enabled: unmasks and reprogramming.
    pub vector_enables: AtomicU64,
    /// Vector routes disabled: masks.
    pub vector_disables: AtomicU64,
    /// Interrupts the VMM injected itself: pending vectors delivered on unmask.
    pub interrupts_injected: AtomicU64,
    /// Interrupts found latched in an eventfd while their vector was masked.
    pub interrupts_while_masked: AtomicU64,
}

impl VfioCounters {
    /// `(name, value)` pairs, in a stable order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("mmio_reads", get(&self.mmio_reads)),
            ("mmio_writes", get(&self.mmio_writes)),
            ("pio_reads", get(&self.pio_reads)),
            ("pio_writes", get(&self.pio_writes)),
            ("msix_table_accesses", get(&self.msix_table_accesses)),
            ("config_reads", get(&self.config_reads)),
            ("config_writes", get(&self.config_writes)),
            ("vector_enables", get(&self.vector_enables)),
            ("vector_disables", get(&self.vector_disables)),
            ("interrupts_injected", get(&self.interrupts_injected)),
            (
                "interrupts_while_masked",
                get(&self.interrupts_while_masked),
            ),
        ]
    }
}
