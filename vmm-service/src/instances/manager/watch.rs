//! Watching VMM processes: our own children, and after a restart the ones adopted
//! again; and the reconciliation that decides which is which.

use std::sync::Arc;

use tokio::process::Child;

use crate::api::types::ExitInfo;
use crate::state::{now, VmmProcess};
use crate::supervisor;

use super::drivers::Release;
use super::{InstanceError, Manager, ADOPTED_POLL};

impl Manager {
    pub(super) fn watch_child(self: &Arc<Self>, name: String, pid: u32, mut child: Child) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => supervisor::describe_exit(status),
                Err(e) => ExitInfo {
                    code: None,
                    signal: None,
                    reason: format!("waiting for the VMM failed: {e}"),
                    at: now(),
                },
            };
            let _changes = manager.changes.lock().await;
            manager.finish(&name, pid, exit).await;
        });
    }

    fn watch_adopted(self: &Arc<Self>, name: String, vmm: VmmProcess) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            while supervisor::is_alive(vmm.pid, vmm.start_time) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            let exit = ExitInfo {
                code: None,
                signal: None,
                reason:
                    "the VMM ended (adopted after a service restart, so its exit status is unknown)"
                        .to_string(),
                at: now(),
            };
            let _changes = manager.changes.lock().await;
            manager.finish(&name, vmm.pid, exit).await;
        });
    }

    // ----- restart ------------------------------------------------------------------

    /// After a (re)start: adopts every recorded VMM that still runs, and for those that
    /// do not, records the exit and releases their GPUs. Returns the names adopted.
    pub async fn reconcile(self: &Arc<Self>) -> Result<Vec<String>, InstanceError> {
        let _changes = self.changes.lock().await;
        let records = self.store().instances()?;
        let mut adopted = Vec::new();
        for record in records {
            let name = record.config.name.clone();
            match record.vmm.clone() {
                Some(vmm) if self.vmm_alive(&vmm).await => {
                    log::info!("VM {name}: re-adopting VMM pid {}", vmm.pid);
                    self.adopt_uid(&name, vmm.pid);
                    self.watch_adopted(name.clone(), vmm);
                    adopted.push(name);
                }
                Some(vmm) => {
                    let exit = ExitInfo {
                        code: None,
                        signal: None,
                        reason: "the VMM ended while the service was not running".to_string(),
                        at: now(),
                    };
                    self.finish(&name, vmm.pid, exit).await;
                }
                // Stopped, but GPUs still recorded: the service died mid-create or
                // mid-release.
                None => {
                    let how = Release::after_vmm(record.config.gpu_options.unbind_on_shutdown);
                    self.release_gpus(&name, how).await
                }
            }
        }
        Ok(adopted)
    }

    /// The recorded process runs (same pid, same start time), or, if the start time was
    /// not known, its socket answers.
    async fn vmm_alive(&self, vmm: &VmmProcess) -> bool {
        if vmm.start_time != 0 {
            return supervisor::is_alive(vmm.pid, vmm.start_time);
        }
        matches!(self.vmm(&vmm.api_socket).ping().await, Ok(ping) if ping.pid == vmm.pid)
    }
}
