//! A VM backend that needs no KVM, for tests of the controller and the API. It
//! records what was asked of it and lets a test play the guest: power off, reset
//! or crash, through the same event fds a real VM uses.

use super::backend::{VmBackend, VmInstance};
use crate::config::VmConfig;
use crate::vm::{VmError, VmEvents, VmExitReason, VmState};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the fake saw and how it should behave; shared between the backend, its VMs
/// and the test.
#[derive(Default)]
pub struct FakeState {
    pub created: usize,
    pub booted: usize,
    pub shut_down: usize,
    pub power_button_presses: usize,
    /// `create` fails while set.
    pub fail_create: bool,
    /// `boot` fails while set.
    pub fail_boot: bool,
    exit_reason: Option<VmExitReason>,
    events: Option<VmEvents>,
}

#[derive(Clone, Default)]
pub struct FakeBackend {
    state: Arc<Mutex<FakeState>>,
}

impl FakeBackend {
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has already failed.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The guest powers off, as a write to the newest VM's exit fd.
    pub fn guest_power_off(&self) {
        self.guest_exit(VmExitReason::PowerOff);
    }

    /// The guest crashes with `why`.
    pub fn guest_crash(&self, why: &str) {
        self.guest_exit(VmExitReason::Crashed(why.to_string()));
    }

    /// The guest asks for a reboot on the reset fd.
    pub fn guest_reset(&self) {
        let state = self.state();
        if let Some(events) = &state.events {
            events.reset.write(1).expect("write the fake VM's reset fd");
        }
    }

    /// Writes the exit fd without recording a reason, as a VM that stopped without
    /// saying why.
    pub fn signal_exit_without_reason(&self) {
        let state = self.state();
        if let Some(events) = &state.events {
            events.exit.write(1).expect("write the fake VM's exit fd");
        }
    }

    fn guest_exit(&self, reason: VmExitReason) {
        let mut state = self.state();
        state.exit_reason = Some(reason);
        if let Some(events) = &state.events {
            events.exit.write(1).expect("write the fake VM's exit fd");
        }
    }
}

pub struct FakeVm {
    config: VmConfig,
    vm_state: VmState,
    shared: Arc<Mutex<FakeState>>,
}

impl FakeVm {
    fn shared(&self) -> MutexGuard<'_, FakeState> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl VmBackend for FakeBackend {
    type Vm = FakeVm;

    fn create(&mut self, config: &VmConfig, events: VmEvents) -> Result<FakeVm, VmError> {
        let mut state = self.state();
        if state.fail_create {
            return Err(VmError::NotImplemented);
        }
        state.created += 1;
        state.exit_reason = None;
        state.events = Some(events);
        Ok(FakeVm {
            config: config.clone(),
            vm_state: VmState::Created,
            shared: Arc::clone(&self.state),
        })
    }
}

impl VmInstance for FakeVm {
    fn boot(&mut self) -> Result<(), VmError> {
        let mut shared = self.shared();
        if shared.fail_boot {
            return Err(VmError::NotImplemented);
        }
        shared.booted += 1;
        drop(shared);
        self.vm_state = VmState::Running;
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), VmError> {
        if self.vm_state != VmState::Shutdown {
            self.shared().shut_down += 1;
        }
        self.vm_state = VmState::Shutdown;
        Ok(())
    }

    fn power_button(&self) -> Result<(), VmError> {
        self.shared().power_button_presses += 1;
        Ok(())
    }

    fn state(&self) -> VmState {
        self.vm_state
    }

    fn config(&self) -> &VmConfig {
        &self.config
    }

    fn exit_reason(&self) -> Option<VmExitReason> {
        self.shared().exit_reason.clone()
    }

    fn memory_actual_size(&self) -> u64 {
        self.config.memory.size
    }
}
