//! The OEM identification every ACPI table form-vmm builds carries.

pub(crate) const OEM_ID: [u8; 6] = *b"FORMVM";
pub(crate) const OEM_TABLE_ID: [u8; 8] = *b"FORMVMM ";
pub(crate) const OEM_REVISION: u32 = 1;
