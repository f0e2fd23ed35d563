//! One virtual machine: guest memory, the loaded payload, devices and vCPUs.
//!
//! This is the seam between the VMM's control loop (API, CLI) and everything that
//! touches KVM. CONTRACT (filled in by the boot path; signatures are fixed):
//! - `Vm::new` validates against the host (memory, vCPU limits, kernel format), builds
//!   memory, loads the payload, creates devices and vCPUs; nothing runs yet.
//! - `Vm::boot` starts one thread per vCPU.
//! - The VM writes to `VmEvents::exit` when the guest powers off or a vCPU fails
//!   fatally, and to `VmEvents::reset` when the guest asks to reboot; `exit_reason`
//!   then says which.
//! - `Vm::shutdown` stops and joins the vCPU threads; calling it twice is harmless.

use crate::config::VmConfig;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExitReason {
    PowerOff,
    Reset,
    Crashed(String),
}

pub struct VmEvents {
    pub exit: EventFd,
    pub reset: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("the VM boot path is not built yet")]
    NotImplemented,
}

pub struct Vm {
    config: VmConfig,
    state: VmState,
    _events: VmEvents,
}

impl Vm {
    pub fn new(config: &VmConfig, events: VmEvents) -> Result<Vm, VmError> {
        let _ = (config, events);
        Err(VmError::NotImplemented)
    }

    pub fn boot(&mut self) -> Result<(), VmError> {
        Err(VmError::NotImplemented)
    }

    pub fn shutdown(&mut self) -> Result<(), VmError> {
        self.state = VmState::Shutdown;
        Ok(())
    }

    /// Presses the ACPI power button: a graceful shutdown request to the guest.
    pub fn power_button(&self) -> Result<(), VmError> {
        Err(VmError::NotImplemented)
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    pub fn exit_reason(&self) -> Option<VmExitReason> {
        None
    }

    /// Bytes of guest RAM actually mapped.
    pub fn memory_actual_size(&self) -> u64 {
        self.config.memory.size
    }
}
