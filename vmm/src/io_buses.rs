//! The VM's two I/O buses, which every device is placed on and every vCPU thread
//! dispatches its trapped port and MMIO accesses to.

use devices::Bus;
use std::sync::Arc;

/// The buses trapped accesses go to.
#[derive(Clone)]
pub struct IoBuses {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
}
