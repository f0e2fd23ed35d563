//! Stopping a vCPU from another thread.
//!
//! A vCPU thread spends its life inside `KVM_RUN`. To get it out, the kicker sets
//! `kvm_run.immediate_exit` (so a thread about to enter `KVM_RUN` returns at once
//! with EINTR) and then sends the thread a real-time signal whose handler does
//! nothing (so a thread already inside `KVM_RUN` is interrupted). Together these
//! close the window between "checked the stop flag" and "entered the guest".

use crate::error::{HypervisorError, Result};
use std::sync::{Arc, Mutex, Once};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal used to kick vCPU threads; its handler is a no-op.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

static HANDLER: Once = Once::new();

pub(crate) fn install_kick_handler() -> Result<()> {
    let mut result = Ok(());
    HANDLER.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(HypervisorError::KickSignal);
    });
    result
}

struct Target {
    /// `kvm_run.immediate_exit` of the vCPU; null once the vCPU is dropped.
    immediate_exit: *mut u8,
    /// The thread running the vCPU, once it said so.
    thread: Option<libc::pthread_t>,
}

// SAFETY: the pointer is only dereferenced under the mutex, and the vCPU clears it
// (under the same mutex) before its kvm_run mapping goes away.
unsafe impl Send for Target {}

#[derive(Clone)]
pub(crate) struct KickState(Arc<Mutex<Target>>);

impl KickState {
    pub(crate) fn new(immediate_exit: *mut u8) -> KickState {
        KickState(Arc::new(Mutex::new(Target {
            immediate_exit,
            thread: None,
        })))
    }

    fn target(&self) -> std::sync::MutexGuard<'_, Target> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn bind_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        self.target().thread = Some(unsafe { libc::pthread_self() });
    }

    pub(crate) fn unbind_thread(&self) {
        self.target().thread = None;
    }

    pub(crate) fn rearm(&self) {
        let target = self.target();
        if !target.immediate_exit.is_null() {
            // SAFETY: non-null means the kvm_run mapping is alive (see `detach`).
            unsafe { std::ptr::write_volatile(target.immediate_exit, 0) };
        }
    }

    pub(crate) fn detach(&self) {
        let mut target = self.target();
        target.immediate_exit = std::ptr::null_mut();
        target.thread = None;
    }
}

/// A handle that makes one vCPU leave `KVM_RUN` (its `run` returns
/// [`VmExit::Interrupted`](crate::VmExit::Interrupted)). Cheap to clone; harmless
/// after the vCPU is gone.
#[derive(Clone)]
pub struct VcpuKicker {
    state: KickState,
}

impl VcpuKicker {
    pub(crate) fn new(state: KickState) -> VcpuKicker {
        VcpuKicker { state }
    }

    /// Set whatever "please stop" flag the vCPU loop checks before calling this.
    pub fn kick(&self) {
        let target = self.state.target();
        if target.immediate_exit.is_null() {
            return;
        }
        // SAFETY: non-null means the vCPU (and its kvm_run mapping) is alive; the
        // lock keeps it from being dropped meanwhile. The kernel reads this byte on
        // KVM_RUN entry, so a volatile store is the right access.
        unsafe { std::ptr::write_volatile(target.immediate_exit, 1) };
        if let Some(thread) = target.thread {
            // SAFETY: the vCPU thread unbinds itself before it exits, so the id is live.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}
