//! GPUs added to and removed from VMs whose VMM runs, and GPUs no VM holds.
//!
//! The service unbinds a GPU from vfio-pci only once form-vmm has said that it let
//! go of it: by answering `vm.remove-device`, or, when that answer does not come in
//! time, by no longer listing the device in `vm.info`. A form-vmm that says neither
//! keeps the GPU recorded with its VM (still on vfio-pci), so the record never
//! claims a GPU is free while a VMM may still hold it.

use std::sync::Arc;
use std::time::Duration;

use crate::api::types::{AddGpuRequest, GpuRequest, VmInfo};
use crate::gpu::Bdf;
use crate::state::GpuAssignment;
use crate::vmm_client::{VmmClient, VmmClientError, GUEST_EJECT_WAIT};

use super::vmm_config::device_config;
use super::{vmm_error, InstanceError, Manager};
use crate::instances::validate::{parse_devices, validate_request, GpuSelection};

const HOLD_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What form-vmm said about one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Yes,
    No,
    /// form-vmm did not answer.
    Unknown,
}

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
        let client = self.vmm(&vmm.api_socket);
        let unbind = record.config.gpu_options.unbind_on_shutdown;
        for (index, assignment) in gpus.iter().enumerate() {
            // Earlier GPUs are in the guest now and stay. This one was bound here and
            // goes back to its driver unless form-vmm may hold it; later ones were
            // never touched, so only their assignments go.
            let bdfs = |range: std::ops::Range<usize>| gpus[range].iter().map(|a| a.bdf).collect();
            let untouched = index + 1..gpus.len();
            if let Err(e) = self.bind(assignment.bdf).await {
                self.give_back(bdfs(index..index + 1), unbind).await;
                self.give_back(bdfs(untouched), false).await;
                return Err(e);
            }
            let device = device_config(assignment, &record.config, &self.config.host);
            let Err(e) = client.add_device(&device).await else {
                continue;
            };
            let held = if e.changed_nothing() {
                Held::No
            } else {
                self.holds(&client, &assignment.device_id).await
            };
            match held {
                Held::Yes => {
                    log::warn!("VM {name}: vm.add-device for {} got no answer ({e}), but form-vmm holds it", assignment.bdf);
                }
                Held::No => {
                    self.give_back(bdfs(index..index + 1), unbind).await;
                    self.give_back(bdfs(untouched), false).await;
                    return Err(vmm_error(e));
                }
                Held::Unknown => {
                    self.give_back(bdfs(untouched), false).await;
                    return Err(InstanceError::VmmUnresponsive(format!(
                        "the VMM of VM {name} did not answer while GPU {} was being added ({e}); the GPU stays recorded with the VM, on vfio-pci, until the VMM answers: remove it, or delete the VM to free it",
                        assignment.bdf
                    )));
                }
            }
        }
        self.info(name)
    }

    /// Takes GPU `device` out of VM `name`. The guest is asked to eject it; one that
    /// does not within [`GUEST_EJECT_WAIT`] keeps it (`eject_timeout`), unless
    /// `force`, which detaches it anyway. Either way the answer comes within the
    /// removal's deadline plus the hold check's ([`super::ServiceConfig`]).
    pub async fn remove_gpu(
        self: &Arc<Self>,
        name: &str,
        device: &str,
        force: bool,
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
        let client = self.vmm(&vmm.api_socket);
        let id = &assignment.device_id;
        match client.remove_device(id, !force).await {
            Ok(()) => {}
            Err(e) if e.code() == Some("unknown_device") => {
                log::info!("VM {name}: form-vmm no longer holds {id} ({bdf}): the guest ejected it on its own");
            }
            Err(e) if e.code() == Some("eject_timeout") => {
                return Err(not_ejected(name, bdf));
            }
            Err(VmmClientError::Refused {
                status: 400,
                code: None,
                ..
            }) if !force => {
                // A form-vmm from before require_eject (adopted across a service
                // upgrade) refuses the field; it has no error codes either.
                return Err(InstanceError::NotSupported(format!(
                    "the VMM of VM {name} predates removals that wait for the guest's eject; remove GPU {bdf} with force (form-vmm-ctl remove-device --force), or restart the VM; nothing was changed"
                )));
            }
            Err(e) if e.changed_nothing() => return Err(vmm_error(e)),
            Err(e) => match self.holds(&client, id).await {
                Held::No => {}
                Held::Yes if !force => return Err(not_ejected(name, bdf)),
                Held::Yes | Held::Unknown => {
                    return Err(InstanceError::VmmUnresponsive(format!(
                        "the VMM of VM {name} did not finish the removal of GPU {bdf} ({e}); the GPU stays recorded with the VM, on vfio-pci, until the VMM lets it go: retry, or delete the VM to free it"
                    )))
                }
            },
        }
        self.give_back(vec![bdf], record.config.gpu_options.unbind_on_shutdown)
            .await;
        self.info(name)
    }

    // ----- GPUs no VM holds -----------------------------------------------------------

    /// Binds a GPU that no VM holds to vfio-pci (operators do this ahead of time to
    /// check a host); the driver it leaves is recorded like a VM's.
    pub async fn bind_free_gpu(
        self: &Arc<Self>,
        device: &str,
        force: bool,
    ) -> Result<serde_json::Value, InstanceError> {
        let _changes = self.changes.lock().await;
        let bdf = self.free_gpu(device)?;
        self.bind_free(bdf, force).await
    }

    /// Returns a GPU that no VM holds from vfio-pci to its recorded driver.
    pub async fn unbind_free_gpu(
        self: &Arc<Self>,
        device: &str,
    ) -> Result<serde_json::Value, InstanceError> {
        let _changes = self.changes.lock().await;
        let bdf = self.free_gpu(device)?;
        self.release_free(bdf).await
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

fn not_ejected(name: &str, bdf: Bdf) -> InstanceError {
    InstanceError::EjectTimeout(format!(
        "the guest of VM {name} did not eject GPU {bdf} within {}s; the GPU stays in the VM and recorded as its own. Retry once the guest has released it, remove it without the guest's consent with force (form-vmm-ctl remove-device --force), or shut the VM down",
        GUEST_EJECT_WAIT.as_secs()
    ))
}

impl Manager {
    /// Asks form-vmm, until the hold check's deadline, whether it holds device
    /// `id`. `vm.info` waits behind a request form-vmm is still working on, so its
    /// answer comes after that request finished.
    async fn holds(&self, client: &VmmClient, id: &str) -> Held {
        let deadline = tokio::time::Instant::now() + self.config.hold_check;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = tokio::time::timeout(left, client.device_ids()).await;
            // An error or no answer: form-vmm is not up or still busy; ask again
            // until the deadline.
            if let Ok(Ok(ids)) = answer {
                return if ids.iter().any(|d| d == id) {
                    Held::Yes
                } else {
                    Held::No
                };
            }
            if tokio::time::Instant::now() + HOLD_CHECK_INTERVAL >= deadline {
                return Held::Unknown;
            }
            tokio::time::sleep(HOLD_CHECK_INTERVAL).await;
        }
    }
}

fn next_device_index(gpus: &[GpuAssignment]) -> usize {
    gpus.iter()
        .filter_map(|a| a.device_id.strip_prefix("gpu")?.parse::<usize>().ok())
        .max()
        .map_or(0, |max| max + 1)
}
