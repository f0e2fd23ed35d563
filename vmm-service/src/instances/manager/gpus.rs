//! GPUs added to and removed from VMs whose VMM runs, and GPUs no VM holds.

use std::sync::Arc;

use crate::api::types::{AddGpuRequest, GpuRequest, VmInfo};
use crate::gpu::{Bdf, BindOptions, GpuBinder};
use crate::state::GpuAssignment;
use crate::vmm_client::VmmClient;

use super::vmm_config::device_config;
use super::{vmm_error, InstanceError, Manager};
use crate::instances::validate::{parse_devices, validate_request, GpuSelection};

impl Manager {
    // ----- GPUs on a running VM -----------------------------------------------------

    pub async fn add_gpu(
        self: &Arc<Self>,
        name: &str,
        request: AddGpuRequest,
    ) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        let Some(vmm) = record.vmm.clone() else {
            return Err(InstanceError::InvalidState(format!(
                "VM {name} is stopped; GPUs are added to a VM whose VMM runs"
            )));
        };
        let selection = match (request.device, request.model) {
            (Some(device), None) if request.count.is_none() => {
                GpuSelection::Devices(parse_devices(&[device])?)
            }
            (None, Some(model)) => {
                let request = GpuRequest {
                    model,
                    count: request.count.unwrap_or(1),
                };
                validate_request(&request)?;
                GpuSelection::Model(request)
            }
            _ => {
                return Err(InstanceError::Invalid(
                    "give either device, or model (with an optional count)".into(),
                ))
            }
        };
        let gpus = {
            let mut store = self.store();
            let first_id = next_device_index(&store.gpus_of(name)?);
            let gpus = self.pick_gpus(&store, name, &selection, first_id)?;
            store.assign_gpus(&gpus)?;
            gpus
        };
        let client = VmmClient::new(&vmm.api_socket);
        let unbind = record.config.gpu_options.unbind_on_shutdown;
        for (index, assignment) in gpus.iter().enumerate() {
            let result = match self.bind(&assignment.bdf) {
                Ok(()) => client
                    .add_device(&device_config(
                        assignment,
                        &record.config,
                        &self.config.host,
                    ))
                    .await
                    .map_err(vmm_error),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Give back this GPU and the ones not yet handed over; earlier ones are
                // in the guest now and stay.
                let mut store = self.store();
                for rest in gpus.iter().skip(index) {
                    if unbind {
                        self.unbind(&mut store, &rest.bdf);
                    }
                    store.unassign_gpu(&rest.bdf)?;
                }
                return Err(e);
            }
        }
        self.info(name)
    }

    pub async fn remove_gpu(
        self: &Arc<Self>,
        name: &str,
        device: &str,
    ) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        let bdf = parse_devices(&[device.to_string()])?
            .into_iter()
            .next()
            .ok_or_else(|| InstanceError::Invalid("no GPU given".into()))?;
        let assignment = self
            .store()
            .gpus_of(name)?
            .into_iter()
            .find(|a| a.bdf == bdf)
            .ok_or_else(|| InstanceError::Invalid(format!("VM {name} does not hold GPU {bdf}")))?;
        let Some(vmm) = record.vmm else {
            return Err(InstanceError::InvalidState(format!("VM {name} is stopped")));
        };
        VmmClient::new(&vmm.api_socket)
            .remove_device(&assignment.device_id)
            .await
            .map_err(vmm_error)?;
        let mut store = self.store();
        if record.config.gpu_options.unbind_on_shutdown {
            self.unbind(&mut store, &bdf);
        }
        store.unassign_gpu(&bdf)?;
        drop(store);
        self.info(name)
    }

    // ----- GPUs no VM holds -----------------------------------------------------------

    /// Binds a GPU that no VM holds to vfio-pci (operators do this ahead of time to
    /// check a host); the driver it leaves is recorded like a VM's.
    pub async fn bind_free_gpu(
        &self,
        device: &str,
        force: bool,
    ) -> Result<serde_json::Value, InstanceError> {
        let _changes = self.changes.lock().await;
        let bdf = self.free_gpu(device)?;
        let mut store = self.store();
        let mut records = store.driver_records();
        let options = BindOptions {
            force,
            ..self.config.bind
        };
        let outcome = GpuBinder::new(&self.config.host, self.writer.as_ref(), &mut records)
            .bind(&bdf, &options)
            .map_err(InstanceError::from_bind)?;
        serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
    }

    /// Returns a GPU that no VM holds from vfio-pci to its recorded driver.
    pub async fn unbind_free_gpu(&self, device: &str) -> Result<serde_json::Value, InstanceError> {
        let _changes = self.changes.lock().await;
        let bdf = self.free_gpu(device)?;
        let mut store = self.store();
        let mut records = store.driver_records();
        let outcome = GpuBinder::new(&self.config.host, self.writer.as_ref(), &mut records)
            .release(&bdf)
            .map_err(InstanceError::from_bind)?;
        serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
    }

    fn free_gpu(&self, device: &str) -> Result<Bdf, InstanceError> {
        let bdf = parse_devices(&[device.to_string()])?
            .into_iter()
            .next()
            .ok_or_else(|| InstanceError::Invalid("no GPU given".into()))?;
        self.check_gpu(&bdf)?;
        if let Some(owner) = self.store().owner_of(&bdf)? {
            return Err(InstanceError::GpuInUse { bdf, owner });
        }
        Ok(bdf)
    }
}

fn next_device_index(gpus: &[GpuAssignment]) -> usize {
    gpus.iter()
        .filter_map(|a| a.device_id.strip_prefix("gpu")?.parse::<usize>().ok())
        .max()
        .map_or(0, |max| max + 1)
}
