//! The host side of a VM's network interfaces: tap names and MAC addresses the
//! service derives, and attaching a tap to a Linux bridge.

mod bridge;
mod names;

pub use bridge::{attach_to_bridge, BridgeError};
pub use form_service_api::{parse_mac, validate_ifname, MacError};
pub use names::{default_mac, tap_name, MAX_NETWORKS_PER_VM};
