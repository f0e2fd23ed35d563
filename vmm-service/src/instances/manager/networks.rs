//! The host side of a VM's interfaces around the VMM's start: tap names that must
//! not clash with another VM's, and bridges to join once form-vmm made the taps.

use crate::api::types::VmInstanceConfig;
use crate::instances::network_infos;
use crate::net::{attach_to_bridge, tap_name, BridgeError};
use crate::state::Store;

use super::InstanceError;

/// Tap names carry 32 bits of the VM's name; two names with the same hash would
/// fight over the same taps, so the second is refused while the first exists.
pub(super) fn check_tap_names(
    store: &Store,
    config: &VmInstanceConfig,
) -> Result<(), InstanceError> {
    if config.networks.is_empty() {
        return Ok(());
    }
    let ours = tap_name(&config.name, 0);
    let clash = store.instances()?.into_iter().find(|other| {
        other.config.name != config.name
            && !other.config.networks.is_empty()
            && tap_name(&other.config.name, 0) == ours
    });
    match clash {
        Some(other) => Err(InstanceError::Invalid(format!(
            "VM names {} and {} map to the same tap names ({ours}...); pick another name",
            config.name, other.config.name
        ))),
        None => Ok(()),
    }
}

/// Joins each interface's tap to its bridge, if it names one.
pub(super) fn attach_bridges(config: &VmInstanceConfig) -> Result<(), InstanceError> {
    for (i, info) in network_infos(config).iter().enumerate() {
        let Some(bridge) = &info.bridge else {
            continue;
        };
        attach_to_bridge(&info.tap, bridge).map_err(|e| bridge_error(i, e))?;
    }
    Ok(())
}

fn bridge_error(index: usize, e: BridgeError) -> InstanceError {
    if e.is_configuration() {
        InstanceError::Invalid(format!("networks[{index}].bridge: {e}"))
    } else if matches!(e, BridgeError::NoSuchTap { .. }) {
        InstanceError::Vmm(e.to_string())
    } else {
        InstanceError::Internal(e.to_string())
    }
}
