//! Where a VM's RAM and vCPUs go (its GPUs' host nodes) and whether the huge pages
//! it takes are there: decided before anything is bound, so a refusal changes
//! nothing.

use crate::api::types::{DeviceRole, NumaMode, VmInstanceConfig};
use crate::gpu::{self, Bdf};
use crate::state::GpuAssignment;

use super::{InstanceError, Manager};
use crate::instances::guest_numa::{mirror, Layout, Placement, BASE_PAGE};
use crate::instances::hugepages::{check_pools, page_size};
use crate::instances::numa::{host_distance, numa_placement, HostNuma, NumaPlacement};

impl Manager {
    /// The placement of VM `config` with `devices`, its huge page pools checked.
    /// Why a VM is left unbound is logged, since the operator may have expected
    /// otherwise.
    pub(super) fn placement(
        &self,
        config: &VmInstanceConfig,
        devices: &[GpuAssignment],
    ) -> Result<Placement, InstanceError> {
        let host = &self.config.host;
        let hugepage = page_size(config, host)?;
        // The GPUs decide: a NIC on the other node should not unbind the VM.
        let gpus: Vec<&GpuAssignment> = devices
            .iter()
            .filter(|a| a.role == DeviceRole::Gpu)
            .collect();
        let gpu_nodes: Vec<(Bdf, Option<u32>)> = gpus
            .iter()
            .map(|a| {
                let node = gpu::PciFunction::read(host, &a.bdf)
                    .ok()
                    .and_then(|f| f.numa_node);
                (a.bdf, node)
            })
            .collect();
        let name = &config.name;
        let mirror_nodes = config.numa.unwrap_or(NumaMode::Mirror) == NumaMode::Mirror;
        let layout = match numa_placement(
            config.gpu_options.numa_affinity,
            mirror_nodes,
            &gpu_nodes,
            &HostNuma::read(host),
        ) {
            NumaPlacement::Bound(node) => {
                log::info!("VM {name}: RAM and vCPUs on NUMA node {node}, with its GPUs");
                Layout::Node(node)
            }
            NumaPlacement::Mirrored(nodes) => {
                let hosts: Vec<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
                let hosts = hosts.join(", ");
                match mirror(
                    &nodes,
                    config.vcpus,
                    config.memory,
                    hugepage.unwrap_or(BASE_PAGE),
                    &config.numa_vcpus,
                    |from, to| host_distance(host, from, to),
                ) {
                    Ok(guest) => {
                        log::info!(
                            "VM {name}: {} guest NUMA nodes on host nodes {hosts}, with its GPUs",
                            guest.len()
                        );
                        Layout::Mirrored(guest)
                    }
                    // Asked for, it is the client's to fix; by default a VM too
                    // small to share out starts as it did before mirroring.
                    Err(why) if config.numa.is_some() || !config.numa_vcpus.is_empty() => {
                        return Err(InstanceError::Invalid(why))
                    }
                    Err(why) => {
                        log::info!("VM {name}: one guest NUMA node, bound nowhere: {why}");
                        Layout::Flat
                    }
                }
            }
            NumaPlacement::Unbound(why) => {
                if !gpus.is_empty() {
                    log::info!("VM {name}: not bound to a NUMA node: {why}");
                }
                Layout::Flat
            }
        };
        if !config.numa_vcpus.is_empty() && !matches!(layout, Layout::Mirrored(_)) {
            return Err(InstanceError::Invalid(
                "numa_vcpus shares the vCPUs between mirrored guest NUMA nodes, but this VM gets one node (its GPUs sit on one host node, or on a host of one): leave numa_vcpus out".into(),
            ));
        }
        let placement = Placement { layout, hugepage };
        check_pools(host, &placement, config.memory)?;
        Ok(placement)
    }
}
