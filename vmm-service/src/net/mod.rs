//! The host side of a VM's network interfaces: tap names and MAC addresses the
//! service derives, and attaching a tap to a Linux bridge.

mod bridge;
mod names;

pub use bridge::{attach_to_bridge, BridgeError};
pub use names::{default_mac, parse_mac, tap_name, validate_ifname, MacError, MAX_NETWORKS_PER_VM};
