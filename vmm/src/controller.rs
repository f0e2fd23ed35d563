//! The VMM's control loop. It owns the VM (at most one) and is the only place that
//! changes it: API requests, the guest's power-off and reset, and stop signals all
//! arrive here as readable fds and are handled one at a time.

pub mod backend;
pub mod signals;
#[doc(hidden)]
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod testing;

use crate::api::{ApiError, ApiInbox, ApiRequest, ApiResponse, ApiResult, VmInfo};
use crate::config::{DeviceConfig, VmConfig};
use crate::device_manager::pci::PciDeviceInfo;
use crate::vm::{KeptTaps, Removal, VmEvents, VmExitReason, VmState};
use backend::{VmBackend, VmInstance};
use signals::StopSignals;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::TryRecvError;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the control loop ended; decides the process's exit status.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered itself off.
    GuestPowerOff,
    /// A client sent vmm.shutdown.
    VmmShutdown,
    /// A vCPU failed fatally or the guest stopped in a way that is not a power-off.
    GuestCrashed(String),
    /// SIGINT or SIGTERM.
    Signal(libc::c_int),
    /// The VMM itself failed (a reboot that could not create the new VM, a broken fd).
    Failed(String),
}

impl Exit {
    pub fn status(&self) -> i32 {
        match self {
            Exit::GuestPowerOff | Exit::VmmShutdown => 0,
            Exit::GuestCrashed(_) | Exit::Failed(_) => 1,
            // The shell's convention for "killed by signal N".
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

/// A live VM with the controller's ends of its exit and reset fds.
struct ManagedVm<V> {
    vm: V,
    exit: EventFd,
    reset: EventFd,
}

pub struct Controller<B: VmBackend> {
    backend: B,
    /// The configuration from vm.create; present from vm.create until vm.delete.
    config: Option<VmConfig>,
    /// The VM built from `config`; absent after a shutdown, so its memory is freed
    /// while the configuration stays around for the next vm.boot.
    vm: Option<ManagedVm<B::Vm>>,
    inbox: Option<ApiInbox>,
    /// Set by vmm.shutdown; the loop ends once the reply is sent.
    exit_requested: bool,
}

/// Fds the loop waits on, in poll order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Signal,
    VmExit,
    VmReset,
    VmDevices,
    Api,
}

impl<B: VmBackend> Controller<B> {
    /// A controller with no VM. `inbox` is where API requests arrive; without one
    /// the controller only runs the VM it is given through [`Controller::handle`].
    pub fn new(backend: B, inbox: Option<ApiInbox>) -> Controller<B> {
        Controller {
            backend,
            config: None,
            vm: None,
            inbox,
            exit_requested: false,
        }
    }

    /// Carries out one request. The command line uses this too, so a VM booted with
    /// --kernel goes through the same checks as one created over the API.
    pub fn handle(&mut self, request: ApiRequest) -> ApiResult {
        match request {
            ApiRequest::VmCreate(config) => self.create(*config),
            ApiRequest::VmBoot => self.boot(),
            ApiRequest::VmShutdown => {
                self.require_state("shut down", VmState::Running, "Running")?;
                self.stop_vm()?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::VmReboot => {
                self.require_state("reboot", VmState::Running, "Running")?;
                self.restart()?;
                Ok(ApiResponse::Done)
            }
            ApiRequest::VmPowerButton => {
                self.require_state("press the power button", VmState::Running, "Running")?;
                if let Some(managed) = &self.vm {
                    managed.vm.power_button()?;
                }
                Ok(ApiResponse::Done)
            }
            ApiRequest::VmDelete => {
                if let Err(e) = self.stop_vm() {
                    log::warn!("deleting the VM: its shutdown failed: {e}");
                }
                self.config = None;
                Ok(ApiResponse::Done)
            }
            ApiRequest::VmInfo => {
                let config = self.config.clone().ok_or(ApiError::NoVm)?;
                Ok(ApiResponse::VmInfo(Box::new(VmInfo {
                    config,
                    state: self.state()?,
                    memory_actual_size: self
                        .vm
                        .as_ref()
                        .map_or(0, |managed| managed.vm.memory_actual_size()),
                    pci_devices: self
                        .vm
                        .as_ref()
                        .map(|managed| managed.vm.pci_devices())
                        .unwrap_or_default(),
                    boot_source: self
                        .vm
                        .as_ref()
                        .and_then(|managed| managed.vm.boot_source()),
                })))
            }
            ApiRequest::VmAddDevice(device) => {
                let mut infos = self.add_devices(vec![*device])?;
                let info = infos.pop().ok_or(ApiError::NoVm)?;
                Ok(ApiResponse::PciDeviceInfo(info))
            }
            ApiRequest::VmAddDevices(data) => {
                if data.devices.is_empty() {
                    return Err(ApiError::BadBody {
                        endpoint: "vm.add-devices",
                        reason: "`devices` is empty; give at least one device".into(),
                    });
                }
                let infos = self.add_devices(data.devices)?;
                Ok(ApiResponse::PciDevices(infos))
            }
            ApiRequest::VmRemoveDevice(data) => {
                let managed = self.live_vm("remove a device")?;
                let policy = if data.require_eject {
                    Removal::KeepUnlessEjected
                } else {
                    Removal::DetachAnyway
                };
                managed.vm.remove_device(&data.id, policy)?;
                self.config = Some(managed.vm.config().clone());
                Ok(ApiResponse::Done)
            }
            ApiRequest::VmCounters => {
                self.state()?;
                Ok(ApiResponse::Counters(
                    self.vm
                        .as_ref()
                        .map(|managed| managed.vm.counters())
                        .unwrap_or_default(),
                ))
            }
            ApiRequest::VmmPing => Ok(ApiResponse::VmmPing(crate::api::ping_this_process())),
            ApiRequest::VmmShutdown => {
                if let Err(e) = self.stop_vm() {
                    log::warn!("VMM shutdown: the VM's shutdown failed: {e}");
                }
                self.exit_requested = true;
                Ok(ApiResponse::Done)
            }
        }
    }

    fn add_devices(&mut self, devices: Vec<DeviceConfig>) -> Result<Vec<PciDeviceInfo>, ApiError> {
        let numa = self.config.as_ref().and_then(|c| c.numa.as_deref());
        for device in &devices {
            device.validate()?;
            device.validate_hotplug(numa)?;
        }
        crate::sandbox::check_config(&VmConfig {
            devices: devices.clone(),
            ..Default::default()
        })
        .map_err(ApiError::PathNotAllowed)?;
        let managed = self.live_vm("add a device")?;
        let infos = managed.vm.add_devices(devices)?;
        self.config = Some(managed.vm.config().clone());
        Ok(infos)
    }

    /// The VM's state: `Shutdown` once stopped, until it is booted again.
    fn state(&self) -> Result<VmState, ApiError> {
        if self.config.is_none() {
            return Err(ApiError::NoVm);
        }
        Ok(self
            .vm
            .as_ref()
            .map_or(VmState::Shutdown, |managed| managed.vm.state()))
    }

    /// The VM, when one is built (created or running): devices are added to and
    /// removed from a live VM, whose configuration then follows.
    fn live_vm(&mut self, action: &'static str) -> Result<&mut ManagedVm<B::Vm>, ApiError> {
        let state = self.state()?;
        match self.vm.as_mut() {
            Some(managed) if state != VmState::Shutdown => Ok(managed),
            _ => Err(ApiError::WrongState {
                action,
                state,
                needed: "Created or Running",
            }),
        }
    }

    fn require_state(
        &self,
        action: &'static str,
        wanted: VmState,
        needed: &'static str,
    ) -> Result<(), ApiError> {
        let state = self.state()?;
        if state != wanted {
            return Err(ApiError::WrongState {
                action,
                state,
                needed,
            });
        }
        Ok(())
    }

    fn create(&mut self, config: VmConfig) -> ApiResult {
        if self.config.is_some() {
            return Err(ApiError::AlreadyCreated);
        }
        crate::sandbox::check_config(&config).map_err(ApiError::PathNotAllowed)?;
        config.validate()?;
        let mut managed = self.build_vm(&config, KeptTaps::default())?;
        // The first VM opened what needs root: lock the process in (Landlock, the
        // privilege drop) before any vCPU runs.
        if let Err(e) = crate::sandbox::after_vm_built(managed.vm.config()) {
            if let Err(stop) = managed.vm.shutdown() {
                log::warn!("tearing down the VM after the sandbox failed: {stop}");
            }
            return Err(ApiError::Sandbox(e));
        }
        // With the ids and MAC addresses the VM chose, so vm.info shows them and a
        // reboot rebuilds the same devices.
        self.config = Some(managed.vm.config().clone());
        self.vm = Some(managed);
        Ok(ApiResponse::Done)
    }

    fn boot(&mut self) -> ApiResult {
        self.boot_with(KeptTaps::default())
    }

    /// Boots the VM, building it first if there is none; a VM built here gets
    /// `taps` for its NICs.
    fn boot_with(&mut self, taps: KeptTaps) -> ApiResult {
        let state = self.state()?;
        if state == VmState::Running {
            return Err(ApiError::WrongState {
                action: "boot",
                state,
                needed: "Created or Shutdown",
            });
        }
        if self.vm.is_none() {
            let config = self.config.clone().ok_or(ApiError::NoVm)?;
            self.vm = Some(self.build_vm(&config, taps)?);
        }
        if let Some(managed) = &mut self.vm {
            if let Err(e) = managed.vm.boot() {
                // A VM that failed half-way through booting is not bootable again;
                // drop it so the next vm.boot starts from a fresh one.
                self.stop_vm().ok();
                return Err(e.into());
            }
        }
        Ok(ApiResponse::Done)
    }

    fn build_vm(
        &mut self,
        config: &VmConfig,
        taps: KeptTaps,
    ) -> Result<ManagedVm<B::Vm>, ApiError> {
        let events = || -> io::Result<(VmEvents, EventFd, EventFd)> {
            let exit = EventFd::new(EFD_NONBLOCK)?;
            let reset = EventFd::new(EFD_NONBLOCK)?;
            let events = VmEvents {
                exit: exit.try_clone()?,
                reset: reset.try_clone()?,
            };
            Ok((events, exit, reset))
        };
        let (events, exit, reset) = events().map_err(|e| ApiError::EventFd(e.to_string()))?;
        let vm = self.backend.create(config, events, taps)?;
        Ok(ManagedVm { vm, exit, reset })
    }

    /// Shuts the VM down and frees it; the configuration stays. No VM is not an error.
    fn stop_vm(&mut self) -> Result<(), ApiError> {
        match self.vm.take() {
            Some(mut managed) => managed.vm.shutdown().map_err(ApiError::from),
            None => Ok(()),
        }
    }

    /// A reboot: the old VM is shut down and freed before the new one is built from
    /// the same configuration, so guest memory is never held twice. Its NICs' taps
    /// are kept open in between and handed over, so the guest comes back on the
    /// same host interfaces (bridge ports, addresses) rather than on taps created
    /// anew under the same names.
    fn restart(&mut self) -> Result<(), ApiError> {
        let taps = self
            .vm
            .as_ref()
            .map(|managed| managed.vm.keep_taps())
            .unwrap_or_default();
        if let Err(e) = self.stop_vm() {
            log::warn!("reboot: the old VM's shutdown failed: {e}");
        }
        self.boot_with(taps).map(|_| ())
    }

    /// Waits for and handles events until the VMM should exit. `signals`, when given,
    /// ends the loop on SIGINT/SIGTERM after shutting the VM down. Consumes the
    /// controller: dropping its inbox on return fails any request still queued, so
    /// the API thread answers 503 instead of waiting forever for a reply.
    pub fn run(mut self, signals: Option<&StopSignals>) -> Exit {
        loop {
            let ready = match self.wait(signals) {
                Ok(ready) => ready,
                Err(e) => {
                    self.stop_vm().ok();
                    return Exit::Failed(format!("waiting for events failed: {e}"));
                }
            };
            for source in ready {
                if let Some(exit) = self.dispatch(source, signals) {
                    if let Err(e) = self.stop_vm() {
                        log::warn!("shutting the VM down on exit failed: {e}");
                    }
                    return exit;
                }
            }
        }
    }

    fn sources(&self, signals: Option<&StopSignals>) -> Vec<(Source, RawFd)> {
        let mut sources = Vec::with_capacity(4);
        if let Some(signals) = signals {
            sources.push((Source::Signal, signals.as_raw_fd()));
        }
        if let Some(managed) = &self.vm {
            sources.push((Source::VmExit, managed.exit.as_raw_fd()));
            sources.push((Source::VmReset, managed.reset.as_raw_fd()));
            for fd in managed.vm.device_event_fds() {
                sources.push((Source::VmDevices, fd));
            }
        }
        if let Some(inbox) = &self.inbox {
            sources.push((Source::Api, inbox.wake.as_raw_fd()));
        }
        sources
    }

    /// Blocks until at least one source is readable. The fd set is rebuilt each time
    /// because a reboot replaces the VM's fds.
    fn wait(&self, signals: Option<&StopSignals>) -> io::Result<Vec<Source>> {
        let sources = self.sources(signals);
        if sources.is_empty() {
            return Err(io::Error::other(
                "nothing to wait for: no VM, no API socket and no signals",
            ));
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|&(_, fd)| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(sources
            .iter()
            .zip(&fds)
            .filter(|(_, pollfd)| pollfd.revents != 0)
            .map(|(&(source, _), _)| source)
            .collect())
    }

    fn dispatch(&mut self, source: Source, signals: Option<&StopSignals>) -> Option<Exit> {
        match source {
            Source::Signal => match signals.map(StopSignals::take) {
                Some(Ok(Some(signal))) => {
                    log::info!("signal {signal}: shutting down");
                    Some(Exit::Signal(signal))
                }
                Some(Ok(None)) | None => None,
                Some(Err(e)) => Some(Exit::Failed(format!("reading signals failed: {e}"))),
            },
            Source::VmExit | Source::VmReset => self.on_vm_event(source),
            Source::VmDevices => {
                if let Some(managed) = self.vm.as_mut() {
                    if managed.vm.handle_device_events() {
                        self.config = Some(managed.vm.config().clone());
                    }
                }
                None
            }
            Source::Api => self.serve_api(),
        }
    }

    fn on_vm_event(&mut self, source: Source) -> Option<Exit> {
        let managed = self.vm.as_ref()?;
        let fd = match source {
            Source::VmReset => &managed.reset,
            _ => &managed.exit,
        };
        if fd.read().is_err() {
            // Spurious wake-up (EAGAIN): nothing was signalled.
            return None;
        }
        let reason = match (source, managed.vm.exit_reason()) {
            (Source::VmReset, _) => VmExitReason::Reset,
            (_, Some(reason)) => reason,
            (_, None) => VmExitReason::Crashed("the VM stopped without saying why".to_string()),
        };
        match reason {
            VmExitReason::PowerOff => {
                log::info!("the guest powered off");
                Some(Exit::GuestPowerOff)
            }
            VmExitReason::Crashed(why) => Some(Exit::GuestCrashed(why)),
            VmExitReason::Failed(why) => Some(Exit::Failed(why)),
            VmExitReason::Reset => {
                log::info!("the guest asked for a reset: rebooting");
                match self.restart() {
                    Ok(()) => None,
                    Err(e) => Some(Exit::Failed(format!("guest reboot failed: {e}"))),
                }
            }
        }
    }

    /// Answers every queued request. Returns an exit once vmm.shutdown was answered.
    fn serve_api(&mut self) -> Option<Exit> {
        let inbox = self.inbox.as_ref()?;
        // The count is irrelevant: the channel holds the requests themselves.
        let _ = inbox.wake.read();
        loop {
            let message = match self.inbox.as_ref()?.requests.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    // The API thread is gone; keep running the VM without it.
                    log::warn!("the API server stopped; no more API requests");
                    self.inbox = None;
                    return None;
                }
            };
            let result = self.handle(message.request);
            if message.reply.send(result).is_err() {
                log::warn!("an API client left before its answer was ready");
            }
            if self.exit_requested {
                return Some(Exit::VmmShutdown);
            }
        }
    }

    /// Shuts the VM down, if there is one; for the caller's error paths.
    pub fn shutdown_vm(&mut self) {
        if let Err(e) = self.stop_vm() {
            log::warn!("shutting the VM down failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
