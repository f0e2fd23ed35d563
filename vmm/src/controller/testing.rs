//! A VM backend that needs no KVM, for tests of the controller and the API. It
//! records what was asked of it and lets a test play the guest: power off, reset
//! or crash, through the same event fds a real VM uses.

use super::backend::{VmBackend, VmInstance};
use crate::api::VmCounters;
use crate::config::{DeviceConfig, VmConfig};
use crate::device_manager::pci::{guest_bdf, PciDeviceInfo};
use crate::device_manager::vfio_error::VfioError;
use crate::vm::{KeptTaps, Removal, VmError, VmEvents, VmExitReason, VmState};
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
    /// Counters every device reports, by counter name.
    pub device_counters: std::collections::BTreeMap<String, u64>,
    /// Devices removed, by id, in order.
    pub removed_devices: Vec<String>,
    /// The guest never ejects: a removal that needs its eject fails.
    pub guest_keeps_devices: bool,
    /// Per `keep_taps` call: whether the VM asked was still up (not shut down),
    /// as it must be for its taps to be open.
    pub taps_kept_from_live_vm: Vec<bool>,
    /// Per `create`: the net ids it was handed a kept tap for.
    pub taps_handed_over: Vec<Vec<String>>,
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
    /// Device id → guest slot, as the real VM places them (lowest free from 1).
    slots: std::collections::BTreeMap<String, u8>,
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

    fn create(
        &mut self,
        config: &VmConfig,
        events: VmEvents,
        taps: KeptTaps,
    ) -> Result<FakeVm, VmError> {
        let mut state = self.state();
        state.taps_handed_over.push(taps.ids());
        if state.fail_create {
            return Err(VmError::NotImplemented);
        }
        state.created += 1;
        state.exit_reason = None;
        state.events = Some(events);
        let mut vm = FakeVm {
            config: config.clone(),
            vm_state: VmState::Created,
            slots: Default::default(),
            shared: Arc::clone(&self.state),
        };
        drop(state);
        let devices = std::mem::take(&mut vm.config.devices);
        vm.add_devices(devices)?;
        Ok(vm)
    }
}

impl FakeVm {
    fn unused_slot(&self) -> u8 {
        (1u8..32)
            .find(|s| !self.slots.values().any(|used| used == s))
            .unwrap_or(32)
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

    fn add_devices(&mut self, devices: Vec<DeviceConfig>) -> Result<Vec<PciDeviceInfo>, VmError> {
        // All or none, as the real device manager: check every device first.
        let mut ids = Vec::with_capacity(devices.len());
        for (index, device) in devices.iter().enumerate() {
            let bdf = pci::vfio::container::bdf_of(&device.path)
                .ok_or_else(|| VfioError::NotAPciDevice(device.path.clone()))?;
            let earlier = &devices[..index];
            let same_path = self
                .config
                .devices
                .iter()
                .chain(earlier)
                .find(|d| d.path == device.path);
            if let Some(other) = same_path {
                return Err(VfioError::DuplicateDevice {
                    path: device.path.clone(),
                    bdf,
                    id: other.id.clone().unwrap_or_default(),
                }
                .into());
            }
            let taken = |id: &String| self.slots.contains_key(id) || ids.contains(id);
            let id = match device.id.clone() {
                Some(id) if taken(&id) => return Err(VfioError::DuplicateId(id).into()),
                Some(id) => id,
                None => (0..)
                    .map(|n| format!("_vfio{n}"))
                    .find(|id| !taken(id))
                    .unwrap_or_default(),
            };
            ids.push(id);
        }
        let mut infos = Vec::with_capacity(devices.len());
        for (mut device, id) in devices.into_iter().zip(ids) {
            let slot = self.unused_slot();
            self.slots.insert(id.clone(), slot);
            device.id = Some(id.clone());
            self.config.devices.push(device);
            infos.push(PciDeviceInfo {
                id,
                bdf: guest_bdf(slot),
            });
        }
        Ok(infos)
    }

    fn remove_device(&mut self, id: &str, policy: Removal) -> Result<Vec<PciDeviceInfo>, VmError> {
        if !self.slots.contains_key(id) {
            return Err(VfioError::UnknownId(id.to_string()).into());
        }
        if policy == Removal::KeepUnlessEjected && self.shared().guest_keeps_devices {
            return Err(VfioError::NotEjected {
                id: id.to_string(),
                saw_request: true,
                waited: crate::vm::EJECT_GIVE_UP_AFTER,
            }
            .into());
        }
        let slot = self
            .slots
            .remove(id)
            .ok_or_else(|| VfioError::UnknownId(id.to_string()))?;
        self.config.devices.retain(|d| d.id.as_deref() != Some(id));
        self.shared().removed_devices.push(id.to_string());
        Ok(vec![PciDeviceInfo {
            id: id.to_string(),
            bdf: guest_bdf(slot),
        }])
    }

    /// One descriptor per NIC (on /dev/null: the fake has no taps), by the NIC's
    /// id or, without one, `net` and its index.
    fn keep_taps(&self) -> KeptTaps {
        let live = self.vm_state != VmState::Shutdown;
        self.shared().taps_kept_from_live_vm.push(live);
        let mut kept = KeptTaps::default();
        for (index, net) in self.config.net.iter().enumerate() {
            let id = net.id.clone().unwrap_or_else(|| format!("net{index}"));
            let file = std::fs::File::open("/dev/null").expect("open /dev/null");
            kept.insert(id, file.into());
        }
        kept
    }

    fn counters(&self) -> VmCounters {
        let counters = self.shared().device_counters.clone();
        self.slots
            .keys()
            .map(|id| (id.clone(), counters.clone()))
            .collect()
    }
}
