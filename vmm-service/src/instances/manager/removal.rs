//! Devices taken out of VMs whose VMM runs.
//!
//! A unit leaves the VM whole, as it came: form-vmm removes a guest slot with all of
//! its functions (the guest ejects slots), so removing the unit's head takes its
//! slot's functions too; group members in other slots are removed one by one after.
//! The service unbinds nothing from vfio-pci before form-vmm has said it let go:
//! by answering `vm.remove-device`, or, when that answer does not come in time, by
//! no longer listing the device in `vm.info`. A form-vmm that says neither keeps the
//! device recorded with its VM (still on vfio-pci), so the record never claims a
//! device is free while a VMM may still hold it; and a group part of which a VM
//! still holds stays bound.

use std::sync::Arc;

use crate::api::types::{DeviceRole, VmInfo};
use crate::gpu::Bdf;
use crate::state::GpuAssignment;
use crate::vmm_client::{VmmClient, VmmClientError, GUEST_EJECT_WAIT};

use super::drivers::Release;
use super::gpus::Held;
use super::{vmm_error, InstanceError, Manager};
use crate::instances::validate::parse_devices;

impl Manager {
    /// Takes the unit holding `device` (any of its functions' addresses) out of VM
    /// `name`. The guest is asked to eject it; one that does not within
    /// [`GUEST_EJECT_WAIT`] keeps it (`eject_timeout`), unless `force`, which
    /// detaches it anyway. Either way the answer comes within the removal's deadline
    /// plus the hold check's ([`super::ServiceConfig`]), per form-vmm device.
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
            .ok_or_else(|| InstanceError::Invalid("no device given".into()))?;
        let rows = self.store().gpus_of(name)?;
        let unit_id = rows
            .iter()
            .find(|a| a.bdf == bdf)
            .map(|a| a.unit.clone())
            .ok_or_else(|| InstanceError::Invalid(format!("VM {name} does not hold {bdf}")))?;
        let unit: Vec<GpuAssignment> = rows.into_iter().filter(|a| a.unit == unit_id).collect();
        let Some(vmm) = record.vmm else {
            return Err(InstanceError::InvalidState(format!("VM {name} is stopped")));
        };
        let client = self.vmm_for(&vmm.api_socket, record.config.memory);
        let back = Release::after_vmm(record.config.gpu_options.unbind_on_shutdown);
        // The head's slot first (its id even if an earlier removal took the head
        // already: form-vmm then answers unknown_device), then other slots.
        let shown = |a: &GpuAssignment| a.bdf;
        let head_bdf = unit.iter().find(|a| a.heads_unit()).map_or(bdf, shown);
        self.remove_one(&client, name, &unit_id, head_bdf, force)
            .await?;
        let mut gone: Vec<GpuAssignment> = unit
            .iter()
            .filter(|a| a.role != DeviceRole::GroupMember)
            .cloned()
            .collect();
        for member in unit.iter().filter(|a| a.role == DeviceRole::GroupMember) {
            if let Err(e) = self
                .remove_one(&client, name, &member.device_id, member.bdf, force)
                .await
            {
                // What left the VM is forgotten; the group stays bound, unreset,
                // since form-vmm still holds a member of it.
                self.give_back(gone, back).await;
                return Err(e);
            }
            gone.push(member.clone());
        }
        self.give_back(gone, back).await;
        self.info(name)
    }

    /// `vm.remove-device` for `id`; `Ok` once form-vmm no longer holds it.
    async fn remove_one(
        &self,
        client: &VmmClient,
        name: &str,
        id: &str,
        bdf: Bdf,
        force: bool,
    ) -> Result<(), InstanceError> {
        match client.remove_device(id, !force).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("unknown_device") => {
                log::info!("VM {name}: form-vmm no longer holds {id} ({bdf}): the guest ejected it on its own, or it left with its slot");
                Ok(())
            }
            Err(e) if e.code() == Some("eject_timeout") => Err(not_ejected(name, bdf)),
            Err(VmmClientError::Refused {
                status: 400,
                code: None,
                ..
            }) if !force => {
                // A form-vmm from before require_eject (adopted across a service
                // upgrade) refuses the field; it has no error codes either.
                Err(InstanceError::NotSupported(format!(
                    "the VMM of VM {name} predates removals that wait for the guest's eject; remove {bdf} with force (form-vmm-ctl remove-device --force), or restart the VM; nothing was changed"
                )))
            }
            Err(e) if e.changed_nothing() => Err(vmm_error(e)),
            Err(e) => match self.holds(client, id).await {
                Held::No => Ok(()),
                Held::Yes if !force => Err(not_ejected(name, bdf)),
                Held::Yes | Held::Unknown => Err(InstanceError::VmmUnresponsive(format!(
                    "the VMM of VM {name} did not finish the removal of {bdf} ({e}); it stays recorded with the VM, on vfio-pci, until the VMM lets it go: retry, or delete the VM to free it"
                ))),
            },
        }
    }
}

fn not_ejected(name: &str, bdf: Bdf) -> InstanceError {
    InstanceError::EjectTimeout(format!(
        "the guest of VM {name} did not eject GPU {bdf} within {}s; the GPU stays in the VM and recorded as its own. Retry once the guest has released it, remove it without the guest's consent with force (form-vmm-ctl remove-device --force), or shut the VM down",
        GUEST_EJECT_WAIT.as_secs()
    ))
}
