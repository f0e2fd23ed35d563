//! Devices a VMM gave up without being asked: a guest that ejected one on its own
//! (an administrator powering its slot off), or the host taking one back (an unbind
//! from vfio-pci, which form-vmm answers by ejecting the slot). form-vmm drops them
//! from its configuration; the service notices here and releases them as after a
//! removal, so its records and `gpu list` do not claim a device the VM no longer
//! has, and the device is reset and returned instead of sitting on vfio-pci.

use std::sync::Arc;
use std::time::Duration;

use super::drivers::Release;
use super::Manager;
use crate::state::GpuAssignment;

/// How often each running VMM is asked which devices it still holds.
pub const DEVICE_SYNC_INTERVAL: Duration = Duration::from_secs(10);

impl Manager {
    /// Runs [`Manager::sync_devices`] every [`DEVICE_SYNC_INTERVAL`] for as long as
    /// the manager lives.
    pub fn spawn_device_sync(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DEVICE_SYNC_INTERVAL).await;
                let Some(manager) = weak.upgrade() else {
                    return;
                };
                manager.sync_devices().await;
            }
        });
    }

    /// Releases every device recorded with a running VM whose VMM no longer lists
    /// it; returns them. A VMM that does not answer keeps what it has: the record
    /// never calls a device free while a VMM may hold it.
    pub async fn sync_devices(self: &Arc<Self>) -> Vec<GpuAssignment> {
        let _changes = self.changes.lock().await;
        let records = match self.store().instances() {
            Ok(records) => records,
            Err(e) => {
                log::error!("device sync: cannot read the VMs: {e}");
                return Vec::new();
            }
        };
        let mut released = Vec::new();
        for record in records {
            let name = &record.config.name;
            let Some(vmm) = &record.vmm else { continue };
            let rows = match self.store().gpus_of(name) {
                Ok(rows) if !rows.is_empty() => rows,
                Ok(_) => continue,
                Err(e) => {
                    log::error!("device sync: VM {name}: {e}");
                    continue;
                }
            };
            let Ok(held) = self.vmm(&vmm.api_socket).device_ids().await else {
                continue;
            };
            let gone: Vec<GpuAssignment> = rows
                .into_iter()
                .filter(|a| !held.contains(&a.device_id))
                .collect();
            if gone.is_empty() {
                continue;
            }
            log::warn!(
                "VM {name}: its VMM let go of {} on its own (the guest ejected them, or the host took them back); releasing them",
                gone.iter()
                    .map(|a| format!("{} ({})", a.device_id, a.bdf))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let how = Release::after_vmm(record.config.gpu_options.unbind_on_shutdown);
            self.give_back(gone.clone(), how).await;
            released.extend(gone);
        }
        released
    }
}
