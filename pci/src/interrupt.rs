//! The seam between MSI/MSI-X emulation and whatever delivers message-signalled
//! interrupts (on form-vmm: KVM GSI routes plus irqfds).
//!
//! The emulation decides *when* a vector may deliver: the capability or table is
//! enabled, the function is not masked, the vector is not masked. It tells the route
//! with [`MsiInterruptRoute::enable`] and [`MsiInterruptRoute::disable`]; between a
//! disable and the next enable the route must not deliver that vector. Interrupts a
//! device raises through the emulation while a vector is masked are latched as pending
//! bits and delivered with [`MsiInterruptRoute::trigger`] when the vector is unmasked.

use std::error::Error;
use vmm_sys_util::eventfd::EventFd;

/// The address/data pair a vector writes to signal an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// A route operation for one vector failed. The guest cannot be told; the emulation
/// logs it and retries the route the next time the guest reprograms the vector.
#[derive(Debug, thiserror::Error)]
#[error("interrupt route for MSI vector {vector}: {source}")]
pub struct MsiRouteError {
    pub vector: usize,
    #[source]
    pub source: Box<dyn Error + Send + Sync>,
}

impl MsiRouteError {
    pub fn new(vector: usize, source: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self {
            vector,
            source: source.into(),
        }
    }
}

/// Delivers the vectors of one MSI or MSI-X capability.
pub trait MsiInterruptRoute: Send + Sync {
    /// Points `vector` at `msg` and lets it deliver. Called again with the new message
    /// when the guest reprograms a vector that is delivering.
    fn enable(&self, vector: usize, msg: MsiMessage) -> Result<(), MsiRouteError>;

    /// Stops `vector` from delivering: it was masked, or MSI/MSI-X was turned off.
    fn disable(&self, vector: usize) -> Result<(), MsiRouteError>;

    /// Delivers one interrupt on an enabled `vector` now.
    fn trigger(&self, vector: usize) -> Result<(), MsiRouteError>;
}

/// A boxed error from the VMM's side of a trait (KVM, the allocators).
pub type BoxError = Box<dyn Error + Send + Sync>;

/// What the VMM provides for interrupt delivery; it implements this with the
/// hypervisor crate's `Vm` (GSI routing, irqfds) and vm-allocator's `GsiAllocator`.
pub trait InterruptRouting: Send + Sync {
    fn allocate_gsi(&self) -> Result<u32, BoxError>;
    fn free_gsi(&self, gsi: u32);
    /// Adds or updates the MSI route of `gsi`.
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), BoxError>;
    fn remove_msi_route(&self, gsi: u32) -> Result<(), BoxError>;
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), BoxError>;
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), BoxError>;
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), BoxError>;
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::Mutex;

    /// What a route was asked to do, in order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RouteOp {
        Enable(usize, MsiMessage),
        Disable(usize),
        Trigger(usize),
    }

    #[derive(Default)]
    pub struct RecordingRoute {
        pub ops: Mutex<Vec<RouteOp>>,
    }

    impl RecordingRoute {
        pub fn take(&self) -> Vec<RouteOp> {
            std::mem::take(&mut self.ops.lock().unwrap())
        }
    }

    impl MsiInterruptRoute for RecordingRoute {
        fn enable(&self, vector: usize, msg: MsiMessage) -> Result<(), MsiRouteError> {
            self.ops.lock().unwrap().push(RouteOp::Enable(vector, msg));
            Ok(())
        }
        fn disable(&self, vector: usize) -> Result<(), MsiRouteError> {
            self.ops.lock().unwrap().push(RouteOp::Disable(vector));
            Ok(())
        }
        fn trigger(&self, vector: usize) -> Result<(), MsiRouteError> {
            self.ops.lock().unwrap().push(RouteOp::Trigger(vector));
            Ok(())
        }
    }
}
