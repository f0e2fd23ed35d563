//! Putting the payload in guest memory and the boot vCPU's initial state.
//!
//! Three ways in (see `docs/platform.md`): an ELF with a PVH note (32-bit entry
//! with `hvm_start_info`), an ELF without one, and a bzImage (both through Linux's
//! 64-bit boot protocol with `boot_params`).

mod cpu_state;
pub mod disk;
mod e820;
pub mod kernel;
mod pvh;
mod reset_vector;
mod zero_page;

pub use cpu_state::{setup_boot_vcpu, BootCpuError};
pub use e820::{e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use kernel::{
    load_payload, BootError, KernelFormat, LoadedPayload, PayloadFile, PayloadRequest,
};

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux 64-bit boot protocol: long mode, `%rsi` = boot_params.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode, `%ebx` = hvm_start_info.
    Pvh { entry: u64 },
}
pub use pvh::write_start_info;
pub use reset_vector::write_reset_stub;
pub use zero_page::write_zero_page;
