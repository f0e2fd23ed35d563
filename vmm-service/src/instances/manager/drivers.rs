//! Moving GPUs between vfio-pci and their host drivers.
//!
//! A bind waits for the kernel (the VFIO group node to appear) and an unbind waits
//! for the device to go quiet, seconds on a real GPU. That work runs on tokio's
//! blocking pool, never on an async worker, and reaches the driver records through
//! the store's lock one record at a time, never holding it across a sysfs write: a
//! `gpu list` or `vm info` arriving meanwhile is answered at once.

use std::sync::Arc;

use crate::api::types::DeviceRole;
use crate::gpu::{
    reset_function, Bdf, DriverRecord, DriverRecords, GpuBinder, GpuError, PciFunction, VFIO_PCI,
};
use crate::state::GpuAssignment;

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

/// What a release does with the functions form-vmm let go of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    /// Only forget the rows: the functions were never bound by this change, or a
    /// VMM may still hold them (one still exiting after SIGKILL).
    Forget,
    /// Reset them and leave them on vfio-pci (`unbind_on_shutdown` off).
    Keep,
    /// Reset them and return them to the drivers recorded at bind time.
    Return,
}

impl Release {
    /// After a VMM let go: back to the host drivers if the VM asks for it.
    pub(super) fn after_vmm(unbind: bool) -> Self {
        if unbind {
            Self::Return
        } else {
            Self::Keep
        }
    }
}

impl Manager {
    /// Binds the IOMMU group of unit `head` (one of `rows`) to vfio-pci; members of
    /// the unit in other slots were approved for the VM when it was planned.
    pub(super) async fn bind_unit(
        self: &Arc<Self>,
        rows: &[GpuAssignment],
        head: &GpuAssignment,
    ) -> Result<(), InstanceError> {
        let approved: Vec<Bdf> = rows
            .iter()
            .filter(|a| a.unit == head.unit && a.role == DeviceRole::GroupMember)
            .map(|a| a.bdf)
            .collect();
        let bdf = head.bdf;
        let manager = Arc::clone(self);
        blocking(move || {
            let options = manager.config.bind;
            manager
                .binder_run(|binder| binder.bind_group(&bdf, &options, &approved))
                .map(drop)
                .map_err(InstanceError::from_bind)
        })
        .await?;
        self.hand_vfio_group(&head.instance, &bdf);
        Ok(())
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

    /// Returns a GPU that no VM holds to its recorded driver, resetting its group's
    /// functions first (a failed reset is one of the outcome's warnings); the
    /// outcome as JSON.
    pub(super) async fn release_free(
        self: &Arc<Self>,
        bdf: Bdf,
    ) -> Result<serde_json::Value, InstanceError> {
        let manager = Arc::clone(self);
        blocking(move || {
            let warnings = manager.reset_group(&bdf);
            let mut outcome = manager
                .binder_run(|binder| binder.release(&bdf))
                .map_err(InstanceError::from_bind)?;
            outcome.warnings.splice(0..0, warnings);
            serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
        })
        .await
    }

    /// Forgets `released` (functions no VMM holds) and, unless `how` is
    /// [`Release::Forget`], resets each IOMMU group among them that no function
    /// still recorded with a VM shares, and returns it to its drivers with
    /// [`Release::Return`]. A group part of which a VM still holds stays as it is:
    /// unbinding under a live VFIO user blocks in the kernel, and resetting would
    /// reset a device in use. The store's lock is taken per query, never across a
    /// sysfs write. Failures are logged: the functions are free either way.
    pub(super) async fn give_back(self: &Arc<Self>, released: Vec<GpuAssignment>, how: Release) {
        let manager = Arc::clone(self);
        blocking(move || {
            if how != Release::Forget {
                for head in groups_of(&manager.config.host, &released) {
                    manager.release_group(&head, &released, how);
                }
            }
            manager.take_back_vfio_groups(&released);
            for assignment in &released {
                if let Err(e) = manager.store().unassign_gpu(&assignment.bdf) {
                    log::error!("cannot forget the assignment of {}: {e}", assignment.bdf);
                }
            }
        })
        .await
    }

    /// [`Manager::give_back`] for every function recorded for VM `name`, once its
    /// VMM is gone.
    pub(super) async fn release_gpus(self: &Arc<Self>, name: &str, how: Release) {
        let gpus = match self.store().gpus_of(name) {
            Ok(gpus) => gpus,
            Err(e) => {
                log::error!("cannot read the GPUs of VM {name}: {e}");
                return;
            }
        };
        self.give_back(gpus, how).await
    }

    /// The functions of `bdf`'s IOMMU group (other than `except`) recorded with a
    /// VM, as "BDF (VM name)".
    pub(super) fn group_holders(
        &self,
        bdf: &Bdf,
        except: &[Bdf],
    ) -> Result<Vec<String>, InstanceError> {
        let host = &self.config.host;
        let group_of = |b: &Bdf| PciFunction::read(host, b).ok().and_then(|f| f.iommu_group);
        let group = group_of(bdf);
        Ok(self
            .store()
            .all_gpus()?
            .into_iter()
            .filter(|a| !except.contains(&a.bdf) && group_of(&a.bdf) == group)
            .map(|a| format!("{} (VM {})", a.bdf, a.instance))
            .collect())
    }

    /// Resets and (with [`Release::Return`]) unbinds the group of `bdf`, one of
    /// `released`, unless a function of it is still recorded with a VM otherwise.
    fn release_group(&self, bdf: &Bdf, released: &[GpuAssignment], how: Release) {
        let except: Vec<Bdf> = released.iter().map(|r| r.bdf).collect();
        let still_held = match self.group_holders(bdf, &except) {
            Ok(held) => held,
            Err(e) => {
                log::error!(
                    "cannot tell whether the group of {bdf} is still held ({e}); leaving it bound"
                );
                return;
            }
        };
        if !still_held.is_empty() {
            log::info!(
                "{bdf}: its IOMMU group stays on vfio-pci, unreset: {} still held",
                still_held.join(", ")
            );
            return;
        }
        for warning in self.reset_group(bdf) {
            log::warn!("{warning}");
        }
        if how == Release::Return {
            self.unbind_now(bdf);
        }
    }

    /// Resets every function of `bdf`'s group that is on vfio-pci (functions on a
    /// host driver were never the VM's); warnings for those that failed.
    fn reset_group(&self, bdf: &Bdf) -> Vec<String> {
        let host = &self.config.host;
        let Some(group) = PciFunction::read(host, bdf)
            .ok()
            .and_then(|f| f.iommu_group)
        else {
            return Vec::new();
        };
        let members = crate::gpu::iommu_group_members(host, group).unwrap_or_default();
        let mut warnings = Vec::new();
        for member in members {
            let on_vfio = PciFunction::read(host, &member)
                .is_ok_and(|f| !f.is_bridge() && f.driver.as_deref() == Some(VFIO_PCI));
            if on_vfio {
                if let Err(warning) = reset_function(host, self.writer.as_ref(), &member) {
                    warnings.push(warning);
                }
            }
        }
        warnings
    }

    fn unbind_now(&self, bdf: &Bdf) {
        match self.binder_run(|binder| binder.release_group(bdf)) {
            Ok(outcome) => {
                for warning in outcome.warnings {
                    log::warn!("releasing {bdf}: {warning}");
                }
            }
            Err(e) => log::error!("cannot return {bdf} to its driver: {e}"),
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

/// One function of each IOMMU group among `released` (functions that can no longer
/// be read are left out: there is nothing to release).
fn groups_of(host: &crate::gpu::HostPaths, released: &[GpuAssignment]) -> Vec<Bdf> {
    let mut seen = Vec::new();
    let mut heads = Vec::new();
    for assignment in released {
        let Some(group) = PciFunction::read(host, &assignment.bdf)
            .ok()
            .and_then(|f| f.iommu_group)
        else {
            continue;
        };
        if !seen.contains(&group) {
            seen.push(group);
            heads.push(assignment.bdf);
        }
    }
    heads
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
