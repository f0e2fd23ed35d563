//! Devices added to VMs whose VMM runs, and GPUs no VM holds.
//!
//! A GPU (or companion) is added with its IOMMU group: the functions of one unit go
//! to form-vmm in one request (`vm.add-devices`, all or none), so the functions of
//! one host slot land in one guest slot, which the guest scans once.

use std::sync::Arc;
use std::time::Duration;

use crate::api::types::{AddDevicesRequest, AddGpuRequest, GpuRequest, VmInfo};
use crate::gpu::Bdf;
use crate::state::{GpuAssignment, InstanceRecord, VmmProcess};
use crate::vmm_client::{VmmClient, VmmClientError};

use super::drivers::Release;
use super::vmm_config::device_config;
use super::{vmm_error, InstanceError, Manager};
use crate::instances::validate::{parse_companions, parse_devices, validate_request, GpuSelection};

const HOLD_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What form-vmm said about one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Yes,
    No,
    /// form-vmm did not answer.
    Unknown,
}

impl Manager {
    // ----- devices added to a running VM --------------------------------------------

    pub async fn add_gpu(
        self: &Arc<Self>,
        name: &str,
        request: AddGpuRequest,
    ) -> Result<VmInfo, InstanceError> {
        let selection = match (request.device, request.model) {
            (Some(device), None) if request.count.is_none() => {
                GpuSelection::Devices(parse_devices(&[device])?)
            }
            (None, Some(model)) => {
                let request = GpuRequest::new(model, request.count.unwrap_or(1));
                validate_request(&request)?;
                GpuSelection::Model(request)
            }
            _ => {
                return Err(InstanceError::Invalid(
                    "give either device, or model (with an optional count)".into(),
                ))
            }
        };
        self.add(name, selection, Vec::new()).await
    }

    /// Companion devices (NICs, NVMe drives, NVSwitches) by address, each with its
    /// IOMMU group.
    pub async fn add_devices(
        self: &Arc<Self>,
        name: &str,
        request: AddDevicesRequest,
    ) -> Result<VmInfo, InstanceError> {
        if request.devices.is_empty() {
            return Err(InstanceError::Invalid(
                "devices is empty; give the PCI addresses of the devices to add".into(),
            ));
        }
        let companions = parse_companions(&request.devices)?;
        self.add(name, GpuSelection::None, companions).await
    }

    async fn add(
        self: &Arc<Self>,
        name: &str,
        selection: GpuSelection,
        companions: Vec<Bdf>,
    ) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        let Some(vmm) = record.vmm.clone() else {
            return Err(InstanceError::InvalidState(format!(
                "VM {name} is stopped; devices are added to a VM whose VMM runs"
            )));
        };
        let rows = {
            let mut store = self.store();
            let rows = self.pick(&store, name, &selection, &companions)?;
            store.assign_gpus(&rows)?;
            rows
        };
        self.hotplug(&record, &vmm, rows).await?;
        self.info(name)
    }

    /// Binds and hands form-vmm each unit of `rows` (recorded with the VM), one
    /// request per unit. Earlier units are in the guest and stay; the failing one
    /// goes back to its driver unless form-vmm may hold it; later ones were never
    /// touched, so only their rows go.
    async fn hotplug(
        self: &Arc<Self>,
        record: &InstanceRecord,
        vmm: &VmmProcess,
        rows: Vec<GpuAssignment>,
    ) -> Result<(), InstanceError> {
        let name = &record.config.name;
        let client = self.vmm_for(&vmm.api_socket, record.config.memory);
        let back = Release::after_vmm(record.config.gpu_options.unbind_on_shutdown);
        let heads: Vec<&GpuAssignment> = rows.iter().filter(|a| a.heads_unit()).collect();
        for (index, head) in heads.iter().enumerate() {
            let unit: Vec<GpuAssignment> = rows
                .iter()
                .filter(|a| a.unit == head.unit)
                .cloned()
                .collect();
            let untouched: Vec<GpuAssignment> = heads[index + 1..]
                .iter()
                .flat_map(|h| rows.iter().filter(|a| a.unit == h.unit).cloned())
                .collect();
            if let Err(e) = self.bind_unit(&rows, head).await {
                self.give_back(unit, back).await;
                self.give_back(untouched, Release::Forget).await;
                return Err(e);
            }
            let Err(e) = self.plug(&client, record, &unit).await else {
                continue;
            };
            let held = if e.changed_nothing() {
                Held::No
            } else {
                self.holds(&client, &head.device_id).await
            };
            match held {
                Held::Yes => {
                    log::warn!(
                        "VM {name}: adding {} got no answer ({e}), but form-vmm holds it",
                        head.bdf
                    );
                }
                Held::No => {
                    self.give_back(unit, back).await;
                    self.give_back(untouched, Release::Forget).await;
                    return Err(add_error(e));
                }
                Held::Unknown => {
                    self.give_back(untouched, Release::Forget).await;
                    return Err(InstanceError::VmmUnresponsive(format!(
                        "the VMM of VM {name} did not answer while {} was being added ({e}); it stays recorded with the VM, on vfio-pci, until the VMM answers: remove it, or delete the VM to free it",
                        head.bdf
                    )));
                }
            }
        }
        Ok(())
    }

    /// One unit to form-vmm: `vm.add-device` for a lone function (which every
    /// form-vmm with hotplug has), `vm.add-devices` for a group.
    async fn plug(
        &self,
        client: &VmmClient,
        record: &InstanceRecord,
        unit: &[GpuAssignment],
    ) -> Result<(), VmmClientError> {
        let devices: Vec<_> = unit
            .iter()
            .map(|a| device_config(a, &record.config, &self.config.host, None))
            .collect();
        match devices.as_slice() {
            [one] => client.add_device(one).await,
            _ => client.add_devices(&devices).await.map(drop),
        }
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
        // Releasing resets and unbinds the whole group: never under a VM that
        // still holds another member of it.
        let holders = self.group_holders(&bdf, &[])?;
        if !holders.is_empty() {
            return Err(InstanceError::GroupInUse(format!(
                "the IOMMU group of {bdf} also holds {}, which a VM holds; releasing {bdf} would reset and unbind them under it. Remove them from the VM first",
                holders.join(", ")
            )));
        }
        Ok(bdf)
    }

    /// Asks form-vmm, until the hold check's deadline, whether it holds device
    /// `id`. `vm.info` waits behind a request form-vmm is still working on, so its
    /// answer comes after that request finished.
    pub(super) async fn holds(&self, client: &VmmClient, id: &str) -> Held {
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

/// A form-vmm that does not know `vm.add-devices` (older than multi-function
/// hotplug) answers 404 without a code.
fn add_error(e: VmmClientError) -> InstanceError {
    match e {
        VmmClientError::Refused {
            ref endpoint,
            status: 404,
            code: None,
            ..
        } if endpoint == "vm.add-devices" => InstanceError::NotSupported(format!(
            "the VMM of this VM predates vm.add-devices, which a device with other functions in its IOMMU group needs ({e}); update form-vmm and restart the VM; nothing was changed"
        )),
        other => vmm_error(other),
    }
}
