//! Each VMM in a cgroup of its VM's ([`crate::cgroups`]), when the service has a
//! delegated cgroup v2 tree.

use crate::api::types::VmInstanceConfig;
use crate::cgroups::VmLimits;

use super::Manager;

impl Manager {
    /// Puts VM `config`'s VMM (`pid`) in its cgroup, with limits for its RAM and
    /// vCPUs and the CPUs and memory of `node`. A failure is logged: the VM runs
    /// without the limits rather than not at all.
    pub(super) fn confine(&self, config: &VmInstanceConfig, node: Option<u32>, pid: u32) {
        let Some(tree) = &self.config.cgroups else {
            return;
        };
        let limits = VmLimits::for_vm(config.memory, config.vcpus, node, &self.config.host.sysfs);
        match tree.confine(&config.name, &limits, pid) {
            Ok(group) => log::info!(
                "VM {}: VMM pid {pid} in {} (memory.max {}, pids.max {}{})",
                config.name,
                group.display(),
                limits.memory_max,
                limits.pids_max,
                limits
                    .cpuset
                    .as_ref()
                    .map(|(cpus, mems)| format!(", cpus {cpus}, mems {mems}"))
                    .unwrap_or_default()
            ),
            Err(e) => log::warn!(
                "VM {}: cannot put its VMM in a cgroup of its own under {}: {e}; it runs without memory, pids and cpuset limits",
                config.name,
                tree.base().display()
            ),
        }
    }

    /// Removes VM `name`'s cgroup once its VMM is gone.
    pub(super) fn remove_cgroup(&self, name: &str) {
        let Some(tree) = &self.config.cgroups else {
            return;
        };
        if let Err(e) = tree.remove(name) {
            log::warn!("VM {name}: cannot remove its cgroup: {e}");
        }
    }
}
