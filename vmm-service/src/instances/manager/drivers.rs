//! Moving GPUs between vfio-pci and their host drivers.
//!
//! A bind waits for the kernel (the VFIO group node to appear) and an unbind waits
//! for the device to go quiet, seconds on a real GPU. That work runs on tokio's
//! blocking pool, never on an async worker, and reaches the driver records through
//! the store's lock one record at a time, never holding it across a sysfs write: a
//! `gpu list` or `vm info` arriving meanwhile is answered at once.

use std::sync::Arc;

use crate::gpu::{Bdf, DriverRecord, DriverRecords, GpuBinder, GpuError};

use super::{InstanceError, Manager};

/// The store's driver records, locked per call.
struct LockedRecords<'a>(&'a Manager);

impl DriverRecords for LockedRecords<'_> {
    fn get(&self, bdf: &Bdf) -> Result<Option<DriverRecord>, GpuError> {
        self.0.store().driver_records().get(bdf)
    }

    fn put(&mut self, bdf: Bdf, record: DriverRecord) -> Result<(), GpuError> {
        self.0.store().driver_records().put(bdf, record)
    }

    fn remove(&mut self, bdf: &Bdf) -> Result<(), GpuError> {
        self.0.store().driver_records().remove(bdf)
    }
}

impl Manager {
    /// Binds `bdf` (and its IOMMU group's other functions) to vfio-pci.
    pub(super) async fn bind(self: &Arc<Self>, bdf: Bdf) -> Result<(), InstanceError> {
        let manager = Arc::clone(self);
        blocking(move || {
            let options = manager.config.bind;
            manager
                .binder_run(|binder| binder.bind(&bdf, &options))
                .map(drop)
                .map_err(InstanceError::from_bind)
        })
        .await
    }

    /// Binds a GPU that no VM holds, with `force` as asked; the outcome as JSON.
    pub(super) async fn bind_free(
        self: &Arc<Self>,
        bdf: Bdf,
        force: bool,
    ) -> Result<serde_json::Value, InstanceError> {
        let manager = Arc::clone(self);
        blocking(move || {
            let options = crate::gpu::BindOptions {
                force,
                ..manager.config.bind
            };
            let outcome = manager
                .binder_run(|binder| binder.bind(&bdf, &options))
                .map_err(InstanceError::from_bind)?;
            serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
        })
        .await
    }

    /// Returns a GPU that no VM holds to its recorded driver; the outcome as JSON.
    pub(super) async fn release_free(
        self: &Arc<Self>,
        bdf: Bdf,
    ) -> Result<serde_json::Value, InstanceError> {
        let manager = Arc::clone(self);
        blocking(move || {
            let outcome = manager
                .binder_run(|binder| binder.release(&bdf))
                .map_err(InstanceError::from_bind)?;
            serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
        })
        .await
    }

    /// Returns each of `bdfs` to its recorded driver and forgets its assignment.
    /// Only for GPUs no VMM holds: an unbind under a live VFIO user blocks in the
    /// kernel until it lets go, and the host driver cannot probe a device whose
    /// group userspace still owns. Failures to unbind are logged: the GPU is free
    /// for another VM either way, as it is still on vfio-pci.
    pub(super) async fn give_back(self: &Arc<Self>, bdfs: Vec<Bdf>, unbind: bool) {
        let manager = Arc::clone(self);
        blocking(move || {
            for bdf in &bdfs {
                if unbind {
                    manager.unbind_now(bdf);
                }
                if let Err(e) = manager.store().unassign_gpu(bdf) {
                    log::error!("cannot forget the assignment of GPU {bdf}: {e}");
                }
            }
        })
        .await
    }

    /// [`Manager::give_back`] for every GPU recorded for VM `name`, once its VMM is
    /// gone.
    pub(super) async fn release_gpus(self: &Arc<Self>, name: &str, unbind: bool) {
        let gpus = match self.store().gpus_of(name) {
            Ok(gpus) => gpus,
            Err(e) => {
                log::error!("cannot read the GPUs of VM {name}: {e}");
                return;
            }
        };
        self.give_back(gpus.into_iter().map(|a| a.bdf).collect(), unbind)
            .await
    }

    fn unbind_now(&self, bdf: &Bdf) {
        match self.binder_run(|binder| binder.release(bdf)) {
            Ok(outcome) => {
                for warning in outcome.warnings {
                    log::warn!("releasing {bdf}: {warning}");
                }
            }
            Err(e) => log::error!("cannot return GPU {bdf} to its driver: {e}"),
        }
    }

    fn binder_run<T>(
        &self,
        work: impl FnOnce(&mut GpuBinder<'_>) -> Result<T, GpuError>,
    ) -> Result<T, GpuError> {
        let mut records = LockedRecords(self);
        work(&mut GpuBinder::new(
            &self.config.host,
            self.writer.as_ref(),
            &mut records,
        ))
    }
}

/// Runs work that may sleep in the kernel (sysfs writes, file reads) on tokio's
/// blocking pool, so that no async worker waits on it.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        // The work panicked: the panic belongs to the caller, as if it ran inline.
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking work was cancelled: {e}"),
        },
    }
}
