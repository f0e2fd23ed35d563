//! Keeping each VM's logs within the operator's cap ([`LogLimits`]): a task that
//! checks every VM directory's `serial.log` and `vmm.log` and rotates those over it.

use std::sync::Arc;

use crate::supervisor;

use super::drivers::blocking;
use super::Manager;

/// The logs of a VM directory that are rotated.
const LOGS: [&str; 2] = ["serial.log", "vmm.log"];

impl Manager {
    /// Starts the rotation task; it runs for as long as the runtime does.
    pub fn spawn_log_rotation(self: &Arc<Self>) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(manager.config.logs.interval).await;
                let this = Arc::clone(&manager);
                blocking(move || this.rotate_logs()).await;
            }
        });
    }

    /// One pass over every VM directory; returns the logs rotated.
    pub fn rotate_logs(&self) -> Vec<std::path::PathBuf> {
        let limits = self.config.logs;
        let vms = self.config.state_dir.join("vms");
        let Ok(entries) = std::fs::read_dir(&vms) else {
            return Vec::new();
        };
        let mut rotated = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            for name in LOGS {
                let path = entry.path().join(name);
                match supervisor::rotate_log(&path, limits.max_bytes, limits.keep) {
                    Ok(true) => {
                        log::info!(
                            "rotated {} (over {} bytes; {} older kept)",
                            path.display(),
                            limits.max_bytes,
                            limits.keep
                        );
                        rotated.push(path);
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("cannot rotate {}: {e}", path.display()),
                }
            }
        }
        rotated
    }
}
