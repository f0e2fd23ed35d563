//! Starting form-vmm processes, telling whether one still runs, and how one ended.

mod logs;
mod process;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::api::types::ExitInfo;
use crate::state::now;
use crate::vmm_client::VmmClient;

pub use logs::{rotate_log, LOG_MODE};
pub use process::{is_alive, start_time, terminate};

/// How long a new form-vmm has to answer `vmm.ping`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the VMM {binary}: {source}; set --vmm-binary to form-vmm's path")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the VMM exited during start-up ({reason}); its log {log} ends: {tail}")]
    EarlyExit {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the VMM did not answer on {socket} within {0:?}; its log {log} ends: {tail}",
        READY_TIMEOUT
    )]
    NotReady {
        socket: PathBuf,
        log: PathBuf,
        tail: String,
    },
}

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub api_socket: PathBuf,
    pub serial_log: PathBuf,
    /// form-vmm's own standard output and error.
    pub vmm_log: PathBuf,
    /// The cloud-init seed disk, for VMs with `cloud_init`.
    pub seed_image: PathBuf,
}

impl VmPaths {
    pub fn new(run_dir: &Path, state_dir: &Path, name: &str) -> Self {
        let logs = state_dir.join("vms").join(name);
        Self {
            api_socket: run_dir.join("vms").join(name).join("api.sock"),
            serial_log: logs.join("serial.log"),
            vmm_log: logs.join("vmm.log"),
            seed_image: logs.join("seed.img"),
        }
    }
}

/// A started form-vmm that answers on its socket.
#[derive(Debug)]
pub struct StartedVmm {
    pub child: Child,
    pub pid: u32,
    pub start_time: u64,
}

/// Where form-vmm is: next to this executable, else on PATH.
pub fn default_vmm_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("form-vmm")));
    match sibling {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("form-vmm"),
    }
}

/// Starts `binary --api-socket <socket> <args>` in its own process group (so signals
/// meant for the service do not reach VMs) and waits until it answers `vmm.ping`.
/// `args` are the sandbox's (`--uid`, `--landlock-rules`: [`crate::vmm_user`]). The
/// descriptors in `inherit` stay open in it at the same numbers (the VM's checked
/// images, which it opens as `/proc/self/fd/N`); every other one of the service's
/// is closed on exec.
pub async fn start(
    binary: &Path,
    paths: &VmPaths,
    inherit: &[RawFd],
    args: &[OsString],
) -> Result<StartedVmm, SupervisorError> {
    for dir in [paths.api_socket.parent(), paths.vmm_log.parent()]
        .into_iter()
        .flatten()
    {
        // Only the service (and the VMMs it starts) reads a VM's logs, seed disk
        // and socket.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SupervisorError::Prepare {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    // A socket left by a VMM that was killed: form-vmm refuses to start over one, and
    // the caller knows no VMM of this VM is alive.
    match fs::remove_file(&paths.api_socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SupervisorError::Prepare {
                path: paths.api_socket.clone(),
                source: e,
            })
        }
        _ => {}
    }
    let log = open_log(&paths.vmm_log)?;
    let log_err = log.try_clone().map_err(|source| SupervisorError::Prepare {
        path: paths.vmm_log.clone(),
        source,
    })?;
    let mut command = Command::new(binary);
    command
        .arg("--api-socket")
        .arg(&paths.api_socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .kill_on_drop(false);
    let inherit = inherit.to_vec();
    // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe, on
    // descriptors the caller keeps open until spawn returns.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| SupervisorError::Spawn {
        binary: binary.to_path_buf(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let client = VmmClient::new(&paths.api_socket);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SupervisorError::EarlyExit {
                reason: describe_exit(status).reason,
                log: paths.vmm_log.clone(),
                tail: log_tail(&paths.vmm_log),
            });
        }
        if client.ping().await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            stop_child(&mut child).await;
            return Err(SupervisorError::NotReady {
                socket: paths.api_socket.clone(),
                log: paths.vmm_log.clone(),
                tail: log_tail(&paths.vmm_log),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
    let start_time = start_time(pid).unwrap_or(0);
    Ok(StartedVmm {
        child,
        pid,
        start_time,
    })
}

/// Kills a child the caller still owns and reaps it.
pub async fn stop_child(child: &mut Child) {
    if let Err(e) = child.kill().await {
        log::warn!("cannot kill VMM process: {e}");
    }
}

/// How a process ended, for the record.
pub fn describe_exit(status: ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = (status.code(), status.signal());
    let reason = match (code, signal) {
        (Some(0), _) => {
            "the VMM exited with status 0 (guest powered off or VMM shut down)".to_string()
        }
        (Some(code), _) => format!("the VMM exited with status {code}; see its log"),
        (None, Some(signal)) => format!("the VMM was killed by signal {signal}"),
        (None, None) => "the VMM ended for an unknown reason".to_string(),
    };
    ExitInfo {
        code,
        signal,
        reason,
        at: now(),
    }
}

/// The last bytes of a VMM's log, for the error of a start that failed: a failed
/// create removes the VM's directory, log included.
fn log_tail(path: &Path) -> String {
    const TAIL: usize = 1024;
    let bytes = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(TAIL)..]);
    let text = text.trim();
    if text.is_empty() {
        "(nothing)".to_string()
    } else {
        text.replace('\n', " | ")
    }
}

fn open_log(path: &Path) -> Result<File, SupervisorError> {
    // Appended to (O_APPEND), so rotation by copy and truncate leaves no hole.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .open(path)
        .map_err(|source| SupervisorError::Prepare {
            path: path.to_path_buf(),
            source,
        })
}
