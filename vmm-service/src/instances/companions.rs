//! Companion devices a `gpu_request` asks for next to its GPUs: the host's
//! NVSwitches (HGX full passthrough) and NICs placed for GPUDirect RDMA.

use crate::api::types::{DeviceRole, GpuRequest, NicRequest};
use crate::gpu::{self, Bdf, HostPaths, PciFunction};

use super::allocate::{switch_of, upstream_bridges};
use super::error::InstanceError;
use super::units::{Planner, Unit};

const NVIDIA: u16 = 0x10de;
const OTHER_BRIDGE: u16 = 0x0680;
const NETWORK: u32 = 0x02;

/// An NVIDIA NVSwitch: NVIDIA's "other bridge" function (a PCI-to-PCI bridge is
/// 0x0604 and never goes to a VM).
pub fn is_nvswitch(function: &PciFunction) -> bool {
    function.vendor_id == NVIDIA && (function.class >> 8) & 0xffff == u32::from(OTHER_BRIDGE)
}

pub fn is_nic(function: &PciFunction) -> bool {
    (function.class >> 16) & 0xff == NETWORK
}

/// The companion units `request` asks for besides its GPUs (`gpus`, chosen already).
pub fn companions_for(
    planner: &Planner<'_>,
    request: &GpuRequest,
    gpus: &[Bdf],
) -> Result<Vec<Unit>, InstanceError> {
    if !request.nvswitches && request.nics.is_none() {
        return Ok(Vec::new());
    }
    let functions = all_functions(planner.host)?;
    let mut units = Vec::new();
    if request.nvswitches {
        units.extend(nvswitches(planner, &functions)?);
    }
    if let Some(nics) = &request.nics {
        units.extend(nics_near(planner, &functions, nics, gpus)?);
    }
    Ok(units)
}

/// Every NVSwitch of the host: NVIDIA's fabric manager, run in the guest, brings up
/// NVLink only with all of a baseboard's switches, so a VM gets all or none.
fn nvswitches(
    planner: &Planner<'_>,
    functions: &[PciFunction],
) -> Result<Vec<Unit>, InstanceError> {
    let switches: Vec<&PciFunction> = functions.iter().filter(|f| is_nvswitch(f)).collect();
    if switches.is_empty() {
        return Err(InstanceError::DevicesUnavailable(
            "gpu_request.nvswitches asks for the host's NVSwitches, and this host has none (no NVIDIA function of class 0x0680)".into(),
        ));
    }
    switches
        .iter()
        .map(|f| {
            planner
                .companion_unit(&f.bdf)
                .map_err(|e| taken_nvswitch(f, e))
        })
        .collect()
}

fn taken_nvswitch(function: &PciFunction, e: InstanceError) -> InstanceError {
    match e {
        InstanceError::GpuInUse { owner, .. } => InstanceError::DevicesUnavailable(format!(
            "NVSwitch {} belongs to VM {owner}; full passthrough gives one VM every NVSwitch of the host",
            function.bdf
        )),
        other => other,
    }
}

/// `request.count` free NICs: behind one of the GPUs' PCIe switches first (RDMA
/// traffic to the GPUs stays below the root complex), then on one of their NUMA
/// nodes, then any; in address order within each.
fn nics_near(
    planner: &Planner<'_>,
    functions: &[PciFunction],
    request: &NicRequest,
    gpus: &[Bdf],
) -> Result<Vec<Unit>, InstanceError> {
    let host = planner.host;
    let wanted = request.model.as_deref().map(|m| m.trim().to_lowercase());
    let matching: Vec<&PciFunction> = functions
        .iter()
        .filter(|f| is_nic(f))
        .filter(|f| match &wanted {
            Some(model) => display_name(f).to_lowercase().contains(model),
            None => true,
        })
        .collect();
    if let Some(first) = matching.first() {
        if !planner.policy.class_allowed(first.class) {
            // The same refusal as naming it, so the message says how to allow it.
            planner.companion_unit(&first.bdf)?;
        }
    }
    let gpu_switches: Vec<Bdf> = gpus
        .iter()
        .filter_map(|g| switch_of(&upstream_bridges(host, g)))
        .collect();
    let gpu_nodes: Vec<u32> = gpus
        .iter()
        .filter_map(|g| PciFunction::read(host, g).ok()?.numa_node)
        .collect();
    let mut ranked: Vec<(u8, Bdf)> = matching
        .iter()
        .map(|f| {
            let switch = switch_of(&upstream_bridges(host, &f.bdf));
            let rank = if switch.is_some_and(|s| gpu_switches.contains(&s)) {
                0
            } else if f.numa_node.is_some_and(|n| gpu_nodes.contains(&n)) {
                1
            } else {
                2
            };
            (rank, f.bdf)
        })
        .collect();
    ranked.sort();
    let mut units: Vec<Unit> = Vec::new();
    for (_, bdf) in ranked {
        if units.len() == request.count as usize {
            break;
        }
        // A NIC taken, unresettable or in a group with devices the VM may not
        // have is simply not a candidate.
        if let Ok(unit) = planner.companion_unit(&bdf) {
            if !units.iter().any(|u| u.group == unit.group) {
                units.push(unit);
            }
        }
    }
    if units.len() < request.count as usize {
        return Err(InstanceError::DevicesUnavailable(format!(
            "{} free NICs{} asked for, {} available",
            request.count,
            request
                .model
                .as_ref()
                .map(|m| format!(" matching '{m}'"))
                .unwrap_or_default(),
            units.len()
        )));
    }
    debug_assert!(units.iter().all(|u| u.role == DeviceRole::Companion));
    Ok(units)
}

fn display_name(function: &PciFunction) -> String {
    let device = gpu::device_name(function.vendor_id, function.device_id).unwrap_or("");
    let vendor = gpu::vendor_name(function.vendor_id).unwrap_or("");
    format!("{vendor} {device}")
}

pub fn all_functions(host: &HostPaths) -> Result<Vec<PciFunction>, InstanceError> {
    gpu::list_functions(host)
        .and_then(|bdfs| bdfs.iter().map(|b| PciFunction::read(host, b)).collect())
        .map_err(|e| InstanceError::Internal(e.to_string()))
}
