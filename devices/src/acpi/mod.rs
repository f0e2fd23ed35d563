//! Hardware-reduced ACPI devices: the sleep control/reset register and the Generic
//! Event Device. The DSDT and FADT that describe them are written by the VMM from the
//! constants exported here, so both sides agree on ports, offsets and bit values.

mod ged;
mod pm;

pub use ged::{
    Ged, GedEvent, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON, GED_EVENT_REG_OFFSET,
    GED_EVENT_REG_SIZE, GED_MMIO_SIZE,
};
pub use pm::{
    AcpiPmDevice, ACPI_PM_PORT, ACPI_PM_PORT_LEN, ACPI_RESET_VALUE, SLEEP_CONTROL_S5, SLP_EN_BIT,
    SLP_TYP_S5,
};
