//! Interrupts of a passed-through function, delivered without a userspace hop.
//!
//! Every MSI/MSI-X vector has an eventfd that VFIO signals when the device raises
//! the vector (`VFIO_DEVICE_SET_IRQS`), and the same eventfd is a KVM irqfd on a GSI
//! whose route carries the vector's message. The emulation in [`crate::msi`] and
//! [`crate::msix`] decides when a vector may deliver and drives
//! [`VfioMsiRoute`] through the [`MsiInterruptRoute`] trait:
//!
//! - `enable`: the GSI route gets the message and the irqfd is registered.
//! - `disable` (vector masked, function masked, capability off): the irqfd is
//!   unregistered. VFIO keeps signalling the eventfd, whose counter then holds the
//!   interrupt: nothing is lost.
//! - unmask (`enable` again): re-registering the irqfd makes KVM look at the
//!   counter and inject at once if the device fired while masked.
//! - The pending bits the guest can read (MSI-X PBA, MSI pending register) are
//!   brought up to date from the counters of undelivering vectors before each read
//!   ([`VfioMsiRoute::take_fired_while_masked`]), and a vector found pending that
//!   way is delivered by [`MsiInterruptRoute::trigger`] (a write to the eventfd) on
//!   unmask. A device that fires again after such a read may see one extra
//!   interrupt on unmask; MSI drivers tolerate spurious interrupts, lost ones they
//!   would not.
//!
//! INTx ([`VfioIntx`]) uses an irqfd with resample: VFIO masks the line when the
//! device asserts it and signals the trigger eventfd; KVM asserts the GSI; on the
//! guest's EOI KVM signals the resample eventfd, which VFIO takes as "unmask", so a
//! still-asserted line fires again. INTx is wired only while neither MSI nor MSI-X
//! is enabled.
//!
//! GSIs are allocated on a vector's first enable and kept until the device is
//! released. Eventfds are created on first use too, so a function with a 2048-entry
//! MSI-X table does not hold 2048 descriptors when the guest uses four vectors.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{BoxError, InterruptRouting};
use crate::vfio::counters::VfioCounters;
use crate::vfio::ops::{IrqIndex, VfioDeviceOps, VfioOpsError};
use crate::{MsiInterruptRoute, MsiMessage, MsiRouteError};

#[derive(Default)]
struct Vector {
    eventfd: Option<EventFd>,
    gsi: Option<u32>,
    irqfd: bool,
}

struct RouteState {
    vectors: Vec<Vector>,
    /// Vectors VFIO was enabled with in the host; 0 while the index is off.
    vfio_enabled: u32,
}

/// The [`MsiInterruptRoute`] of one MSI or MSI-X capability of a VFIO device.
pub struct VfioMsiRoute {
    index: IrqIndex,
    ops: Arc<dyn VfioDeviceOps>,
    routing: Arc<dyn InterruptRouting>,
    counters: Arc<VfioCounters>,
    state: Mutex<RouteState>,
}

fn new_eventfd() -> Result<EventFd, VfioOpsError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VfioOpsError::kernel("eventfd", e))
}

impl VfioMsiRoute {
    /// A route for `vectors` vectors of `index` (MSI or MSI-X).
    pub fn new(
        index: IrqIndex,
        vectors: usize,
        ops: Arc<dyn VfioDeviceOps>,
        routing: Arc<dyn InterruptRouting>,
        counters: Arc<VfioCounters>,
    ) -> Self {
        Self {
            index,
            ops,
            routing,
            counters,
            state: Mutex::new(RouteState {
                vectors: (0..vectors).map(|_| Vector::default()).collect(),
                vfio_enabled: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the index on in the host with `count` vectors, handing VFIO the
    /// eventfds that exist (the others are attached when first enabled). A
    /// different count while on turns it off first, as VFIO cannot resize every
    /// device's allocation.
    pub fn vfio_enable(&self, count: u32) -> Result<(), VfioOpsError> {
        let mut state = self.lock();
        let count = count.min(state.vectors.len() as u32);
        if state.vfio_enabled == count {
            return Ok(());
        }
        if state.vfio_enabled != 0 {
            self.ops.disable_irqs(self.index)?;
            state.vfio_enabled = 0;
        }
        if count == 0 {
            return Ok(());
        }
        let fds: Vec<Option<&EventFd>> = state
            .vectors
            .iter()
            .take(count as usize)
            .map(|v| v.eventfd.as_ref())
            .collect();
        self.ops.set_irq_eventfds(self.index, 0, &fds)?;
        state.vfio_enabled = count;
        Ok(())
    }

    /// Turns the index off in the host.
    pub fn vfio_disable(&self) -> Result<(), VfioOpsError> {
        self.vfio_enable(0)
    }

    pub fn vfio_enabled_vectors(&self) -> u32 {
        self.lock().vfio_enabled
    }

    /// Whether `vector` currently has a registered irqfd.
    pub fn is_delivering(&self, vector: usize) -> bool {
        self.lock().vectors.get(vector).is_some_and(|v| v.irqfd)
    }

    /// The GSI of `vector`, once it was enabled.
    pub fn gsi(&self, vector: usize) -> Option<u32> {
        self.lock().vectors.get(vector).and_then(|v| v.gsi)
    }

    /// Vectors whose device interrupt arrived while they were not delivering,
    /// consuming those interrupts: the caller latches them as pending.
    pub fn take_fired_while_masked(&self) -> Vec<usize> {
        let state = self.lock();
        state
            .vectors
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.irqfd)
            .filter_map(|(i, v)| {
                let fd = v.eventfd.as_ref()?;
                matches!(fd.read(), Ok(n) if n > 0).then_some(i)
            })
            .collect()
    }

    /// Unregisters every irqfd, removes every route and frees every GSI. The
    /// host side is turned off too.
    pub fn release(&self) {
        if let Err(e) = self.vfio_disable() {
            warn!("vfio: turning {:?} off: {e}", self.index);
        }
        let mut state = self.lock();
        for v in state.vectors.iter_mut() {
            if let (true, Some(fd), Some(gsi)) = (v.irqfd, v.eventfd.as_ref(), v.gsi) {
                if let Err(e) = self.routing.unregister_irqfd(fd, gsi) {
                    warn!("vfio: unregistering irqfd of GSI {gsi}: {e}");
                }
            }
            v.irqfd = false;
            if let Some(gsi) = v.gsi.take() {
                if let Err(e) = self.routing.remove_msi_route(gsi) {
                    warn!("vfio: removing route of GSI {gsi}: {e}");
                }
                self.routing.free_gsi(gsi);
            }
            v.eventfd = None;
        }
    }

    fn enable_locked(
        &self,
        state: &mut RouteState,
        vector: usize,
        msg: MsiMessage,
    ) -> Result<(), BoxError> {
        let vfio_enabled = state.vfio_enabled as usize;
        let v = state
            .vectors
            .get_mut(vector)
            .ok_or_else(|| format!("vector {vector} is beyond the device's vectors"))?;
        let gsi = match v.gsi {
            Some(gsi) => gsi,
            None => {
                let gsi = self.routing.allocate_gsi()?;
                v.gsi = Some(gsi);
                gsi
            }
        };
        self.routing.set_msi_route(gsi, msg)?;
        if v.eventfd.is_none() {
            let fd = new_eventfd()?;
            if vector < vfio_enabled {
                self.ops
                    .set_irq_eventfds(self.index, vector as u32, &[Some(&fd)])?;
            }
            v.eventfd = Some(fd);
        }
        if !v.irqfd {
            if let Some(fd) = v.eventfd.as_ref() {
                self.routing.register_irqfd(fd, gsi)?;
                v.irqfd = true;
            }
        }
        Ok(())
    }
}

impl Drop for VfioMsiRoute {
    fn drop(&mut self) {
        self.release();
    }
}

impl MsiInterruptRoute for VfioMsiRoute {
    fn enable(&self, vector: usize, msg: MsiMessage) -> Result<(), MsiRouteError> {
        let mut state = self.lock();
        self.enable_locked(&mut state, vector, msg)
            .map_err(|e| MsiRouteError::new(vector, e))?;
        self.counters.vector_enables.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn disable(&self, vector: usize) -> Result<(), MsiRouteError> {
        let mut state = self.lock();
        let Some(v) = state.vectors.get_mut(vector) else {
            return Ok(());
        };
        if let (true, Some(fd), Some(gsi)) = (v.irqfd, v.eventfd.as_ref(), v.gsi) {
            self.routing
                .unregister_irqfd(fd, gsi)
                .map_err(|e| MsiRouteError::new(vector, e))?;
        }
        v.irqfd = false;
        self.counters
            .vector_disables
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn trigger(&self, vector: usize) -> Result<(), MsiRouteError> {
        let state = self.lock();
        let fd = state
            .vectors
            .get(vector)
            .and_then(|v| v.eventfd.as_ref())
            .ok_or_else(|| MsiRouteError::new(vector, "vector has no eventfd"))?;
        fd.write(1).map_err(|e| MsiRouteError::new(vector, e))?;
        self.counters
            .interrupts_injected
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The legacy interrupt of a VFIO device, on an IOAPIC GSI the VMM chose.
pub struct VfioIntx {
    gsi: u32,
    ops: Arc<dyn VfioDeviceOps>,
    routing: Arc<dyn InterruptRouting>,
    trigger: EventFd,
    resample: EventFd,
    enabled: bool,
}

impl VfioIntx {
    pub fn new(
        gsi: u32,
        ops: Arc<dyn VfioDeviceOps>,
        routing: Arc<dyn InterruptRouting>,
    ) -> Result<Self, VfioOpsError> {
        Ok(Self {
            gsi,
            ops,
            routing,
            trigger: new_eventfd()?,
            resample: new_eventfd()?,
            enabled: false,
        })
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Wires the line: irqfd with resample in KVM, trigger and unmask eventfds in
    /// VFIO.
    pub fn enable(&mut self) -> Result<(), BoxError> {
        if self.enabled {
            return Ok(());
        }
        self.routing
            .register_irqfd_with_resample(&self.trigger, &self.resample, self.gsi)?;
        let wired = self
            .ops
            .set_irq_eventfds(IrqIndex::Intx, 0, &[Some(&self.trigger)])
            .and_then(|()| self.ops.set_intx_unmask_eventfd(&self.resample));
        if let Err(e) = wired {
            let _ = self.ops.disable_irqs(IrqIndex::Intx);
            let _ = self.routing.unregister_irqfd(&self.trigger, self.gsi);
            return Err(e.into());
        }
        self.enabled = true;
        Ok(())
    }

    pub fn disable(&mut self) -> Result<(), BoxError> {
        if !self.enabled {
            return Ok(());
        }
        self.enabled = false;
        let host = self.ops.disable_irqs(IrqIndex::Intx);
        self.routing.unregister_irqfd(&self.trigger, self.gsi)?;
        host?;
        Ok(())
    }
}

impl Drop for VfioIntx {
    fn drop(&mut self) {
        if let Err(e) = self.disable() {
            warn!("vfio: turning INTx off: {e}");
        }
    }
}
