//! form-vmm's sandbox: a seccomp filter per kind of thread, Landlock on the file
//! system, a mount namespace of its own (`--mount-ns`), no_new_privs, and (with `--user`/`--uid`) giving up root once the first
//! VM has opened what needs it. See docs/security.md, "form-vmm's sandbox".
//!
//! Only the `form-vmm` binary sets a sandbox up ([`setup`]); the library's own
//! tests build VMs in their test process, where [`enter`] does nothing.

pub mod landlock;
pub mod mount_ns;
pub mod privileges;
pub mod seccomp;

use crate::config::VmConfig;
use landlock::{PathRule, Rules};
use privileges::Credentials;
use seccomp::{SeccompMode, SetxidTarget};
use seccompiler::BpfProgram;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The kinds of thread form-vmm runs, each with its own seccomp filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread: command line, control loop, building VMs, hotplug.
    Main,
    /// The HTTP API thread, and the HTTP library's accept and connection threads.
    Api,
    /// A vCPU thread.
    Vcpu,
    VirtioBlock,
    VirtioNet,
    VirtioRng,
    VirtioConsole,
    /// A virtio device thread of a type not listed above.
    VirtioOther,
    /// The thread feeding stdin to COM1.
    SerialStdin,
    /// The thread mapping guest RAM for passed-through devices' DMA.
    VfioDma,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 10] = [
        ThreadKind::Main,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::VirtioBlock,
        ThreadKind::VirtioNet,
        ThreadKind::VirtioRng,
        ThreadKind::VirtioConsole,
        ThreadKind::VirtioOther,
        ThreadKind::SerialStdin,
        ThreadKind::VfioDma,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VirtioBlock => "virtio-blk",
            ThreadKind::VirtioNet => "virtio-net",
            ThreadKind::VirtioRng => "virtio-rng",
            ThreadKind::VirtioConsole => "virtio-console",
            ThreadKind::VirtioOther => "virtio",
            ThreadKind::SerialStdin => "serial-stdin",
            ThreadKind::VfioDma => "vfio-dma",
        }
    }

    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind of a virtio device's I/O thread, from the thread's name
    /// ("virtio-blk", "virtio-net-tap0", ...).
    pub fn of_device_thread(name: &str) -> ThreadKind {
        [
            ThreadKind::VirtioBlock,
            ThreadKind::VirtioNet,
            ThreadKind::VirtioRng,
            ThreadKind::VirtioConsole,
        ]
        .into_iter()
        .find(|k| name == k.name() || name.starts_with(&format!("{}-", k.name())))
        .unwrap_or(ThreadKind::VirtioOther)
    }

    pub fn is_device(self) -> bool {
        matches!(
            self,
            ThreadKind::VirtioBlock
                | ThreadKind::VirtioNet
                | ThreadKind::VirtioRng
                | ThreadKind::VirtioConsole
                | ThreadKind::VirtioOther
        )
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the command line asked of the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxConfig {
    pub seccomp: SeccompMode,
    pub landlock: bool,
    pub landlock_rules: Vec<PathRule>,
    /// A mount namespace showing only what the rules name ([`mount_ns`]).
    pub mount_ns: bool,
    pub run_as: Option<Credentials>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seccomp: SeccompMode::Kill,
            landlock: true,
            landlock_rules: Vec::new(),
            mount_ns: false,
            run_as: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::FilterError),
    #[error(transparent)]
    MountNs(#[from] mount_ns::MountNsError),
    #[error("{0}")]
    MountNsPlan(String),
    #[error("the sandbox is already set up")]
    AlreadySetUp,
}

/// The seccomp filters, compiled per thread kind when a thread of that kind first
/// needs one: a VM without disks, NICs or an API socket never pays for theirs, and
/// compiling every kind at start was a fifth of form-vmm's time to the guest's first
/// instruction (`scripts/bench-vs-ch`).
struct Filters {
    mode: SeccompMode,
    setxid: Option<SetxidTarget>,
    compiled: std::sync::Mutex<HashMap<ThreadKind, std::sync::Arc<Vec<BpfProgram>>>>,
}

impl Filters {
    fn get(
        &self,
        kind: ThreadKind,
    ) -> Result<std::sync::Arc<Vec<BpfProgram>>, seccomp::FilterError> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(programs) = compiled.get(&kind) {
            return Ok(programs.clone());
        }
        // The refusals first: installing a filter takes prctl and seccomp, which the
        // thread's own filter no longer allows once it is in. In log mode they would
        // change what runs; they are part of the enforced sandbox only.
        let mut programs = Vec::new();
        if self.mode == SeccompMode::Kill {
            programs.extend(seccomp::build_refusals(kind)?);
        }
        programs.push(seccomp::build(kind, self.mode, self.setxid)?);
        let programs = std::sync::Arc::new(programs);
        compiled.insert(kind, programs.clone());
        Ok(programs)
    }
}

/// The process's sandbox, set up once by the binary.
struct Sandbox {
    /// `None` with `--seccomp false`.
    filters: Option<Filters>,
    /// The command line's rules, until the first VM is built; `None` with
    /// `--landlock false`.
    landlock: Option<Vec<PathRule>>,
    /// What Landlock enforces, once it does.
    landlocked: OnceLock<Rules>,
    /// In a mount namespace of its own (`--mount-ns`).
    mount_ns: bool,
    run_as: Option<Credentials>,
    /// The effective uid at start, before any drop.
    start_uid: u32,
    dropped: AtomicBool,
    trip: Option<test_hook::Trip>,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Sets the process's sandbox up, from the main thread, before any other thread
/// exists: no_new_privs and the seccomp filters compiled for each thread kind. The
/// main thread's own filter is installed later, by [`enter`]`(ThreadKind::Main)`,
/// once the API socket is listening; Landlock and the privilege drop wait for the
/// first VM ([`after_vm_built`]), whose configuration says what to allow.
///
/// `api_socket` is the API's socket: its directory joins the Landlock rules, so the
/// socket can be removed at exit. `vm` is the VM given on the command line: with
/// `--mount-ns`, the namespace entered here shows what it names.
pub fn setup(
    config: &SandboxConfig,
    api_socket: Option<&std::path::Path>,
    vm: Option<&VmConfig>,
) -> Result<(), SandboxError> {
    if SANDBOX.get().is_some() {
        return Err(SandboxError::AlreadySetUp);
    }
    privileges::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let mut rules = config.landlock_rules.clone();
    if let Some(dir) = api_socket.and_then(std::path::Path::parent) {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        rules.push(PathRule {
            path: dir.to_path_buf(),
            access: landlock::PathAccess::Socket,
        });
    }
    if config.mount_ns {
        let shown: Vec<PathRule> = landlock::fixed_rules()
            .into_iter()
            .chain(rules.iter().cloned())
            .chain(vm.map(landlock::config_rules).unwrap_or_default())
            .collect();
        let binds = mount_ns::plan(&shown).map_err(SandboxError::MountNsPlan)?;
        mount_ns::enter(&binds)?;
    }
    let landlock = config.landlock.then_some(rules);
    if landlock.is_none() {
        log::info!("landlock: off (--landlock false)");
    }
    let setxid = config.run_as.map(|c| SetxidTarget {
        uid: c.uid,
        gid: c.gid,
    });
    let filters = if config.seccomp != SeccompMode::Off {
        let filters = Filters {
            mode: config.seccomp,
            setxid,
            compiled: Default::default(),
        };
        // The main thread's now, so that a filter that cannot be built stops the
        // start; the others are the same code (and every kind is compiled in tests).
        filters.get(ThreadKind::Main)?;
        Some(filters)
    } else {
        log::warn!("seccomp: off (--seccomp false): the VMM's threads may make any system call");
        None
    };
    if config.seccomp == SeccompMode::Log {
        log::warn!(
            "seccomp: log mode: calls outside a thread's filter are allowed and logged by the \
             kernel (dmesg / audit, type=1326 or SECCOMP), not refused"
        );
    }
    let sandbox = Sandbox {
        filters,
        landlock,
        landlocked: OnceLock::new(),
        mount_ns: config.mount_ns,
        run_as: config.run_as,
        // SAFETY: geteuid has no preconditions.
        start_uid: unsafe { libc::geteuid() },
        dropped: AtomicBool::new(false),
        trip: test_hook::Trip::from_env(),
    };
    SANDBOX
        .set(sandbox)
        .map_err(|_| SandboxError::AlreadySetUp)?;
    devices::virtio::worker::set_thread_start_hook(device_thread_start);
    Ok(())
}

/// Installs `kind`'s filter on the calling thread: the first thing each thread
/// does, before it reads anything a guest or a client wrote. Does nothing when the
/// process has no sandbox (the library used in-process, `--seccomp false`).
pub fn enter(kind: ThreadKind) -> Result<(), seccomp::FilterError> {
    let Some(sandbox) = SANDBOX.get() else {
        return Ok(());
    };
    if let Some(filters) = &sandbox.filters {
        for program in filters.get(kind)?.iter() {
            seccomp::install(kind, program)?;
        }
        log::debug!("seccomp: {kind} thread filtered");
    }
    // The main thread's trip waits for the lock-in (after_vm_built), so that it
    // also shows what Landlock refuses.
    if let (Some(trip), false) = (&sandbox.trip, kind == ThreadKind::Main) {
        trip.maybe(kind);
    }
    Ok(())
}

/// [`enter`] for threads that have no one to report to: a thread that cannot be
/// filtered takes the process down rather than run unfiltered.
pub fn enter_or_abort(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        log::error!("{e}");
        eprintln!("form-vmm: fatal: {e}");
        std::process::abort();
    }
}

fn device_thread_start(name: &str) {
    enter_or_abort(ThreadKind::of_device_thread(name));
}

/// How this process is confined, for `vmm.ping`; `None` without a sandbox (the
/// library used in-process).
pub fn status() -> Option<form_vmm_api::types::SandboxStatus> {
    let sandbox = SANDBOX.get()?;
    let seccomp = match &sandbox.filters {
        None => "off",
        Some(filters) if filters.mode == SeccompMode::Log => "log",
        Some(_) => "kill",
    };
    let landlock = match (&sandbox.landlock, sandbox.landlocked.get()) {
        (None, _) => "off",
        (Some(_), None) => "pending",
        (Some(_), Some(rules)) => rules.state(),
    };
    Some(form_vmm_api::types::SandboxStatus {
        seccomp: seccomp.to_string(),
        landlock: landlock.to_string(),
        mount_ns: sandbox.mount_ns,
        // Not geteuid(): the API thread that answers vmm.ping may not call it.
        uid: match sandbox.run_as {
            Some(to) if sandbox.dropped.load(Ordering::SeqCst) => to.uid,
            _ => sandbox.start_uid,
        },
    })
}

/// Refuses a configuration naming paths that Landlock would refuse to open.
pub fn check_config(config: &VmConfig) -> Result<(), String> {
    let Some(sandbox) = SANDBOX.get() else {
        return Ok(());
    };
    if sandbox.mount_ns {
        mount_ns::check_visible(&landlock::config_rules(config))?;
    }
    match sandbox.landlocked.get() {
        Some(rules) => rules.check_config(config),
        None => Ok(()),
    }
}

/// Locks the process in once its first VM is built, before any of its vCPUs runs:
/// Landlock restricts the file system to what `config` names, the command line's
/// `--landlock-rules` and the device nodes (the main thread, and every thread it
/// starts from now on: vCPUs, device threads); then root is given up if asked. So
/// everything the first build opens (/dev/kvm, VFIO groups, taps, block devices) was
/// opened with root's rights, and what later builds open (a reboot, hotplug) must be
/// allowed to the VMM's user and beneath the rules. Later calls do nothing.
pub fn after_vm_built(config: &VmConfig) -> Result<(), String> {
    let Some(sandbox) = SANDBOX.get() else {
        return Ok(());
    };
    if let Some(rules) = &sandbox.landlock {
        if sandbox.landlocked.get().is_none() {
            let mut rules = rules.clone();
            rules.extend(landlock::config_rules(config));
            let enforced = Rules::restrict_self(rules).map_err(|e| e.to_string())?;
            let _ = sandbox.landlocked.set(enforced);
        }
    }
    if let Some(to) = sandbox.run_as {
        if !sandbox.dropped.load(Ordering::SeqCst) {
            privileges::drop_to(to).map_err(|e| e.to_string())?;
            sandbox.dropped.store(true, Ordering::SeqCst);
        }
    }
    if let Some(trip) = &sandbox.trip {
        trip.maybe(ThreadKind::Main);
    }
    Ok(())
}

/// Test support: makes a thread of a given kind make a system call its filter
/// refuses right after installing it, so tests can see the filter kill the process.
/// Only in debug builds and with the `testing` feature; release builds ignore the
/// variable.
mod test_hook {
    use super::ThreadKind;

    /// `FORM_VMM_SECCOMP_TEST=KIND[:CALL]`, CALL one of `socket` (the default: a
    /// raw packet socket), `openat`, `ptrace`, `execve`, `kill` (signal 0 to init).
    pub const VARIABLE: &str = "FORM_VMM_SECCOMP_TEST";

    pub struct Trip {
        kind: ThreadKind,
        call: String,
    }

    impl Trip {
        #[cfg(any(debug_assertions, feature = "testing"))]
        pub fn from_env() -> Option<Trip> {
            let value = std::env::var(VARIABLE).ok()?;
            let (kind, call) = value.split_once(':').unwrap_or((&value, "socket"));
            let kind = ThreadKind::from_name(kind)?;
            Some(Trip {
                kind,
                call: call.to_string(),
            })
        }

        #[cfg(not(any(debug_assertions, feature = "testing")))]
        pub fn from_env() -> Option<Trip> {
            None
        }

        pub fn maybe(&self, kind: ThreadKind) {
            if kind != self.kind {
                return;
            }
            log::warn!("{VARIABLE}: the {kind} thread calls {}", self.call);
            // SAFETY: each call is made with arguments that touch no memory of ours
            // (constant strings, null pointers); the filter is expected to kill the
            // process before any of them runs.
            let rc = unsafe {
                match self.call.as_str() {
                    "openat" => libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0),
                    "ptrace" => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) as libc::c_int,
                    "kill" => libc::kill(1, 0),
                    "execve" => {
                        libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null())
                    }
                    _ => libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
                }
            };
            // Only reached when the filter allowed the call (--seccomp log/false).
            let errno = std::io::Error::last_os_error();
            let outcome = if rc < 0 {
                format!("failed: {errno}")
            } else {
                format!("returned {rc}")
            };
            eprintln!(
                "form-vmm: {VARIABLE}: the {kind} thread's {} {outcome}",
                self.call
            );
        }
    }
}
