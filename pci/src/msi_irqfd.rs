//! MSI/MSI-X delivery for devices the VMM emulates (virtio): each vector is a KVM
//! GSI whose route carries the vector's message, with an eventfd registered as its
//! irqfd, so raising the vector is one eventfd write from whichever thread the
//! device runs on.
//!
//! GSIs and eventfds are created on a vector's first enable and kept until
//! [`IrqfdMsiRoute::release`] (or drop); the irqfd is registered only while the
//! emulation lets the vector deliver, so a masked vector cannot reach the guest.

use std::sync::{Mutex, MutexGuard};

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{BoxError, InterruptRouting};
use crate::interrupt::{MsiInterruptRoute, MsiMessage, MsiRouteError};
use std::sync::Arc;

#[derive(Default)]
struct Vector {
    gsi: Option<u32>,
    eventfd: Option<EventFd>,
    irqfd: bool,
}

/// The [`MsiInterruptRoute`] of one emulated MSI or MSI-X capability.
pub struct IrqfdMsiRoute {
    routing: Arc<dyn InterruptRouting>,
    vectors: Mutex<Vec<Vector>>,
}

impl IrqfdMsiRoute {
    pub fn new(vectors: usize, routing: Arc<dyn InterruptRouting>) -> Self {
        Self {
            routing,
            vectors: Mutex::new((0..vectors).map(|_| Vector::default()).collect()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Vector>> {
        self.vectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The GSI of `vector`, once it was enabled.
    pub fn gsi(&self, vector: usize) -> Option<u32> {
        self.lock().get(vector).and_then(|v| v.gsi)
    }

    /// Whether `vector` has its irqfd registered.
    pub fn is_delivering(&self, vector: usize) -> bool {
        self.lock().get(vector).is_some_and(|v| v.irqfd)
    }

    /// Unregisters every irqfd, removes every route and frees every GSI. Failures
    /// are logged: there is nobody left to tell.
    pub fn release(&self) {
        for v in self.lock().iter_mut() {
            if let (true, Some(fd), Some(gsi)) = (v.irqfd, v.eventfd.as_ref(), v.gsi) {
                if let Err(e) = self.routing.unregister_irqfd(fd, gsi) {
                    warn!("msi: unregistering the irqfd of GSI {gsi}: {e}");
                }
            }
            v.irqfd = false;
            if let Some(gsi) = v.gsi.take() {
                if let Err(e) = self.routing.remove_msi_route(gsi) {
                    warn!("msi: removing the route of GSI {gsi}: {e}");
                }
                self.routing.free_gsi(gsi);
            }
            v.eventfd = None;
        }
    }

    fn enable_vector(&self, v: &mut Vector, msg: MsiMessage) -> Result<(), BoxError> {
        let gsi = match v.gsi {
            Some(gsi) => gsi,
            None => {
                let gsi = self.routing.allocate_gsi()?;
                v.gsi = Some(gsi);
                gsi
            }
        };
        self.routing.set_msi_route(gsi, msg)?;
        let fd = match v.eventfd.take() {
            Some(fd) => fd,
            None => EventFd::new(libc::EFD_NONBLOCK)?,
        };
        let fd = v.eventfd.insert(fd);
        if !v.irqfd {
            self.routing.register_irqfd(fd, gsi)?;
            v.irqfd = true;
        }
        Ok(())
    }
}

impl MsiInterruptRoute for IrqfdMsiRoute {
    fn enable(&self, vector: usize, msg: MsiMessage) -> Result<(), MsiRouteError> {
        let mut vectors = self.lock();
        let v = vectors.get_mut(vector).ok_or_else(|| {
            MsiRouteError::new(vector, "the vector is beyond the capability's vectors")
        })?;
        self.enable_vector(v, msg)
            .map_err(|e| MsiRouteError::new(vector, e))
    }

    fn disable(&self, vector: usize) -> Result<(), MsiRouteError> {
        let mut vectors = self.lock();
        let Some(v) = vectors.get_mut(vector) else {
            return Ok(());
        };
        if let (true, Some(fd), Some(gsi)) = (v.irqfd, v.eventfd.as_ref(), v.gsi) {
            self.routing
                .unregister_irqfd(fd, gsi)
                .map_err(|e| MsiRouteError::new(vector, e))?;
        }
        v.irqfd = false;
        Ok(())
    }

    fn trigger(&self, vector: usize) -> Result<(), MsiRouteError> {
        let vectors = self.lock();
        let fd = vectors
            .get(vector)
            .filter(|v| v.irqfd)
            .and_then(|v| v.eventfd.as_ref())
            .ok_or_else(|| MsiRouteError::new(vector, "the vector is not enabled"))?;
        fd.write(1).map_err(|e| MsiRouteError::new(vector, e))
    }
}

impl Drop for IrqfdMsiRoute {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::FakeRouting;

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data,
        }
    }

    #[test]
    fn enable_allocates_a_gsi_routes_it_and_registers_an_irqfd() {
        let routing = Arc::new(FakeRouting::default());
        let route = IrqfdMsiRoute::new(2, routing.clone());
        route.enable(1, msg(0x41)).unwrap();
        let gsi = route.gsi(1).unwrap();
        let s = routing.snapshot();
        assert_eq!(s.routes.get(&gsi), Some(&msg(0x41)));
        assert!(s.irqfds.contains_key(&gsi));
        assert!(route.is_delivering(1));
        // Reprogramming keeps the GSI and the irqfd.
        route.enable(1, msg(0x42)).unwrap();
        assert_eq!(route.gsi(1), Some(gsi));
        assert_eq!(routing.snapshot().routes.get(&gsi), Some(&msg(0x42)));
        assert_eq!(route.gsi(0), None, "vector 0 was never enabled");
    }

    #[test]
    fn disable_unregisters_the_irqfd_and_trigger_needs_an_enabled_vector() {
        let routing = Arc::new(FakeRouting::default());
        let route = IrqfdMsiRoute::new(1, routing.clone());
        assert!(route.trigger(0).is_err());
        route.enable(0, msg(1)).unwrap();
        route.trigger(0).unwrap();
        route.disable(0).unwrap();
        assert!(routing.snapshot().irqfds.is_empty());
        assert!(route.trigger(0).is_err(), "masked vectors do not deliver");
        route.enable(0, msg(1)).unwrap();
        assert_eq!(routing.snapshot().irqfds.len(), 1);
    }

    #[test]
    fn trigger_writes_the_irqfd_eventfd() {
        let routing = Arc::new(FakeRouting::default());
        let route = IrqfdMsiRoute::new(1, routing.clone());
        route.enable(0, msg(1)).unwrap();
        route.trigger(0).unwrap();
        route.trigger(0).unwrap();
        let vectors = route.lock();
        assert_eq!(vectors[0].eventfd.as_ref().unwrap().read().unwrap(), 2);
    }

    #[test]
    fn out_of_range_vectors_are_errors_not_panics() {
        let routing = Arc::new(FakeRouting::default());
        let route = IrqfdMsiRoute::new(1, routing);
        assert!(route.enable(1, msg(0)).is_err());
        assert!(route.disable(usize::MAX).is_ok());
        assert!(route.trigger(usize::MAX).is_err());
    }

    #[test]
    fn release_and_drop_free_everything() {
        let routing = Arc::new(FakeRouting::default());
        let route = IrqfdMsiRoute::new(3, routing.clone());
        route.enable(0, msg(0)).unwrap();
        route.enable(2, msg(2)).unwrap();
        route.disable(2).unwrap();
        assert_eq!(routing.snapshot().allocated.len(), 2);
        drop(route);
        let s = routing.snapshot();
        assert!(s.allocated.is_empty() && s.routes.is_empty() && s.irqfds.is_empty());
    }
}
