//! The contract between `vmm-service` and its clients (`form-vmm-ctl`, and anything
//! else that speaks the service's API).
//!
//! - [`types`]: the JSON request and response bodies of `docs/service-api.md`, the
//!   route prefix, the console route's limits and headers, and the stable error codes
//!   ([`types::ErrorCode`]) with the HTTP status each is answered with.
//! - [`Bdf`]: a PCI function address as operators write it and the API carries it.
//! - [`parse_mac`], [`validate_ifname`]: the checks a VM's network interfaces must pass,
//!   so a client refuses what the service would.
//! - [`format_bytes`], [`parse_size`]: byte sizes as people write and read them.
//!
//! Everything here is plain data and pure functions on serde and the standard library:
//! a client links no server, runtime or database to use it.

mod bdf;
mod devices;
mod net;
pub mod types;
mod units;

pub use bdf::{Bdf, BdfError};
pub use net::{parse_mac, validate_ifname, MacError, MAX_IFNAME_LEN};
pub use units::{format_bytes, parse_size};
