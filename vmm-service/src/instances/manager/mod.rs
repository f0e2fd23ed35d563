//! The manager: the one place that changes VMs. Every change to who owns what runs
//! under one async lock, so two requests can never pick the same GPU; the database's
//! constraints back that up.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::api::types::{DiskFormat, ExitInfo, VmInfo, VmInstanceConfig, VmState};
use crate::cloud_init::{self, SeedFiles};
use crate::gpu::{BindOptions, DevicePolicy, HostPaths, SysfsWriter};
use crate::state::{now, InstanceRecord, Store, VmmProcess};
use crate::supervisor::{self, VmPaths};
use crate::vmm_client::{VmmClient, VmmClientError, VmmDeadlines};
use crate::vmm_user::{UidPool, VmmUsers};

mod cgroups;
mod console;
mod device_sync;
mod drivers;
mod gpus;
mod inventory;
mod logs;
mod networks;
mod pick;
mod placement;
mod removal;
mod users;
mod vmm_config;
mod watch;

use super::attachments::network_infos;
use super::error::InstanceError;
use super::guest_numa::Placement;
use super::images::{ImagePolicy, OpenedImages};
use super::limits::{AdmissionLimits, LogLimits, Usage};
use super::validate::{parse_companions, validate, HostLimits};
use drivers::{blocking, Release};
use vmm_config::vmm_config;

pub use console::{ConsoleChunk, ConsoleWindow};

/// How long a VMM has to exit after `vmm.shutdown` before it gets SIGTERM, then SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often an adopted VMM (not our child, so no exit notification) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// What the service runs with.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub host: HostPaths,
    /// Logs of each VM (`<state_dir>/vms/<name>/`).
    pub state_dir: PathBuf,
    /// API sockets of each VMM (`<run_dir>/vms/<name>/api.sock`).
    pub run_dir: PathBuf,
    pub vmm_binary: PathBuf,
    pub limits: HostLimits,
    pub bind: BindOptions,
    /// Which device classes may go to VMs, and which devices without a reset.
    pub policy: DevicePolicy,
    /// How long each call to a VMM may take.
    pub vmm_deadlines: VmmDeadlines,
    /// After a call that got no answer, how long to keep asking the VMM (`vm.info`)
    /// whether it holds a device.
    pub hold_check: Duration,
    /// Where kernels, initramfs and disk images may come from.
    pub images: ImagePolicy,
    /// How many VMs, how much RAM and how many vCPUs VMs may take.
    pub admission: AdmissionLimits,
    /// How large each VM's logs may grow.
    pub logs: LogLimits,
    /// Who VMMs become once their VM is built; `None`: they stay root (sandboxed).
    pub vmm_users: Option<VmmUsers>,
    /// Where each VMM gets a cgroup of its VM's; `None`: they stay in the service's.
    pub cgroups: Option<crate::cgroups::CgroupTree>,
    /// Each VMM in a mount namespace of its own that shows only its VM's
    /// directories, the image directories and the device nodes (`--mount-ns`).
    pub vmm_mount_ns: bool,
}

/// The default of [`ServiceConfig::hold_check`].
pub const HOLD_CHECK_DEADLINE: Duration = Duration::from_secs(5);

pub struct Manager {
    config: ServiceConfig,
    store: Mutex<Store>,
    writer: Box<dyn SysfsWriter + Send + Sync>,
    changes: tokio::sync::Mutex<()>,
    /// The uid of each running VM's VMM (with [`ServiceConfig::vmm_users`]).
    uids: Mutex<UidPool>,
}

impl Manager {
    pub fn new(
        config: ServiceConfig,
        store: Store,
        writer: Box<dyn SysfsWriter + Send + Sync>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            store: Mutex::new(store),
            writer,
            changes: tokio::sync::Mutex::new(()),
            uids: Mutex::new(UidPool::default()),
        })
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// A client of the VMM listening on `socket`, with this service's deadlines.
    fn vmm(&self, socket: impl Into<PathBuf>) -> VmmClient {
        VmmClient::with_deadlines(socket, self.config.vmm_deadlines)
    }

    /// As [`Self::vmm`], for calls that pin or unpin the RAM of a VM of `memory`
    /// bytes: their deadlines grow with it.
    fn vmm_for(&self, socket: impl Into<PathBuf>, memory: u64) -> VmmClient {
        VmmClient::with_deadlines(socket, self.config.vmm_deadlines.for_memory(memory))
    }

    /// The database, for callers that only read (and tests).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the database consistent (transactions),
        // so a poisoned lock is still usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- reading ------------------------------------------------------------------

    pub fn list(&self) -> Result<Vec<VmInfo>, InstanceError> {
        let records = self.store().instances()?;
        records.into_iter().map(|r| self.describe(r)).collect()
    }

    pub fn info(&self, name: &str) -> Result<VmInfo, InstanceError> {
        let record = self.record(name)?;
        self.describe(record)
    }

    /// What the VMs use now, as the admission limits count it.
    pub fn usage(&self) -> Result<Usage, InstanceError> {
        Ok(Usage::of(&self.store().instances()?))
    }

    fn record(&self, name: &str) -> Result<InstanceRecord, InstanceError> {
        self.store()
            .instance(name)?
            .ok_or_else(|| InstanceError::NotFound(name.to_string()))
    }

    fn describe(&self, record: InstanceRecord) -> Result<VmInfo, InstanceError> {
        let rows = self.store().gpus_of(&record.config.name)?;
        let (gpus, devices) = self.assigned(&rows);
        let seed_image = record.config.cloud_init.as_ref().map(|_| {
            self.paths(&record.config.name)
                .seed_image
                .display()
                .to_string()
        });
        let numa_node = self.store().numa_node_of(&record.config.name)?;
        let guest_numa = self.store().guest_numa_of(&record.config.name)?;
        let pid = record.vmm.as_ref().map(|v| v.pid);
        let procfs = &self.config.host.procfs;
        Ok(VmInfo {
            vmm_uid: pid.and_then(|pid| crate::vmm_user::process_uid(procfs, pid)),
            vmm_cgroup: pid.and_then(|pid| crate::cgroups::process_cgroup(procfs, pid)),
            networks: network_infos(&record.config),
            seed_image,
            numa_node,
            guest_numa,
            name: record.config.name.clone(),
            state: record.state,
            pid,
            api_socket: record.vmm.map(|v| v.api_socket),
            serial_log: record.serial_log,
            last_exit: record.last_exit,
            created_at: record.created_at,
            updated_at: record.updated_at,
            config: record.config,
            gpus,
            devices,
        })
    }

    // ----- creating and starting ----------------------------------------------------

    /// Checks `config`, records the VM with its GPUs, and starts its VMM; on any
    /// failure nothing stays changed.
    pub async fn create(
        self: &Arc<Self>,
        config: VmInstanceConfig,
    ) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let selection = validate(&config, &self.config.limits)?;
        // Checked here so a refusal changes nothing; opened again (and handed to the
        // VMM) when it starts. Each disk's format is recorded now, before any guest
        // has written to it.
        let mut config = config;
        let images = self.config.images.open_all(&config)?;
        record_disk_formats(&mut config, &images)?;
        drop(images);
        let name = config.name.clone();
        let paths = self.paths(&name);
        let placement = {
            let mut store = self.store();
            if store.instance(&name)?.is_some() {
                return Err(InstanceError::Exists(name));
            }
            let usage = Usage::of(&store.instances()?);
            self.config.admission.admit(&usage, &config, true)?;
            networks::check_tap_names(&store, &config)?;
            let companions = parse_companions(&config.devices)?;
            let gpus = self.pick(&store, &name, &selection, &companions)?;
            let placement = self.placement(&config, &gpus)?;
            let now = now();
            let record = InstanceRecord {
                config: config.clone(),
                state: VmState::Stopped,
                vmm: None,
                serial_log: paths.serial_log.display().to_string(),
                last_exit: None,
                created_at: now,
                updated_at: now,
            };
            store.insert_instance(&record, &gpus)?;
            placement
        };
        if let Err(e) = self.start(&config, &paths, config.boot, &placement).await {
            remove_seed(&name, &paths);
            // The directories go whatever the database says: a failed create
            // leaves nothing behind on disk.
            if let Err(db) = self.store().delete_instance(&name) {
                log::error!("{name}: forgetting the VM after its failed start: {db}");
            }
            remove_vm_dirs(&name, &paths);
            return Err(e);
        }
        self.info(&name)
    }

    /// Boots a created VM, or restarts a stopped one with its GPUs.
    pub async fn boot(self: &Arc<Self>, name: &str) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        match (record.state, &record.vmm) {
            (VmState::Created, Some(vmm)) => {
                self.vmm(&vmm.api_socket).boot().await.map_err(vmm_error)?;
                self.store().set_state(name, VmState::Running)?;
            }
            (VmState::Stopped, _) => {
                let selection = validate(&record.config, &self.config.limits)?;
                drop(self.config.images.open_all(&record.config)?);
                let placement = {
                    let mut store = self.store();
                    let usage = Usage::of(&store.instances()?);
                    self.config.admission.admit(&usage, &record.config, false)?;
                    let companions = parse_companions(&record.config.devices)?;
                    let gpus = self.pick(&store, name, &selection, &companions)?;
                    let placement = self.placement(&record.config, &gpus)?;
                    store.assign_gpus(&gpus)?;
                    placement
                };
                let paths = self.paths(name);
                self.start(&record.config, &paths, true, &placement).await?;
            }
            (state, _) => {
                return Err(InstanceError::InvalidState(format!(
                    "VM {name} is {}; only a created or stopped VM boots",
                    state_word(state)
                )))
            }
        }
        self.info(name)
    }

    pub async fn reboot(self: &Arc<Self>, name: &str) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        match (record.state, &record.vmm) {
            (VmState::Running, Some(vmm)) => self
                .vmm(&vmm.api_socket)
                .reboot()
                .await
                .map_err(vmm_error)?,
            (state, _) => {
                return Err(InstanceError::InvalidState(format!(
                    "VM {name} is {}; only a running VM reboots",
                    state_word(state)
                )))
            }
        }
        self.info(name)
    }

    /// Binds the GPUs recorded for the VM, starts its VMM, creates (and boots) the VM.
    /// On failure the VMM is gone, the GPUs are released and the VM is recorded as
    /// stopped, with why.
    async fn start(
        self: &Arc<Self>,
        config: &VmInstanceConfig,
        paths: &VmPaths,
        boot: bool,
        placement: &Placement,
    ) -> Result<(), InstanceError> {
        let result = self.try_start(config, paths, boot, placement).await;
        if let Err(e) = &result {
            let name = &config.name;
            let how = Release::after_vmm(config.gpu_options.unbind_on_shutdown);
            self.release_gpus(name, how).await;
            self.take_back(config);
            self.remove_cgroup(name);
            let exit = ExitInfo {
                code: None,
                signal: None,
                reason: format!("start failed: {e}"),
                at: now(),
            };
            if let Err(e) = self.store().record_exit(name, &exit) {
                log::error!("VM {name}: cannot record the failed start: {e}");
            }
        }
        result
    }

    async fn try_start(
        self: &Arc<Self>,
        config: &VmInstanceConfig,
        paths: &VmPaths,
        boot: bool,
        placement: &Placement,
    ) -> Result<(), InstanceError> {
        let name = &config.name;
        // Opened before anything is bound: the VMM inherits these descriptors and
        // opens the files through them, never by the paths the client gave.
        let images = self.config.images.open_all(config)?;
        if let Some(cloud_init) = &config.cloud_init {
            // Written on every start, so the guest always gets what the VM's
            // configuration says, even if the file was removed meanwhile.
            let files = SeedFiles::for_vm(name, cloud_init);
            let seed_image = paths.seed_image.clone();
            blocking(move || cloud_init::write_seed_image(&seed_image, &files))
                .await
                .map_err(|e| InstanceError::Internal(e.to_string()))?;
        }
        // Before the binds: each group's node goes to the VMM's uid as it appears.
        let identity = self.vmm_identity(name)?;
        let gpus = self.store().gpus_of(name)?;
        for head in gpus.iter().filter(|a| a.heads_unit()) {
            self.bind_unit(&gpus, head).await?;
        }
        let args = self.vmm_args(identity, paths, &images)?;
        let mut started =
            supervisor::start(&self.config.vmm_binary, paths, &images.raw_fds(), &args)
                .await
                .map_err(|e| InstanceError::Vmm(e.to_string()))?;
        // Recorded before the VMM gets the GPUs: a service killed from here on finds
        // the process on restart instead of releasing GPUs a live VMM holds.
        let vmm = VmmProcess {
            pid: started.pid,
            start_time: started.start_time,
            api_socket: paths.api_socket.display().to_string(),
        };
        let recorded = self.store().set_running(name, VmState::Created, &vmm);
        if let Err(e) = recorded {
            supervisor::stop_child(&mut started.child).await;
            return Err(e.into());
        }
        if let Some(identity) = identity {
            // Before vm.create: the VMM drops root as soon as the VM is built.
            if let Err(e) = self.hand_over(config, paths, &images, identity) {
                supervisor::stop_child(&mut started.child).await;
                return Err(e);
            }
        }
        let client = self.vmm_for(&paths.api_socket, config.memory);
        let recorded =
            self.store()
                .set_placement(name, placement.numa_node(), &placement.guest_nodes());
        if let Err(e) = recorded {
            supervisor::stop_child(&mut started.child).await;
            return Err(e.into());
        }
        // Before vm.create allocates the guest's RAM, which is then charged here. A
        // VM spread over several host nodes gets no cpuset (numa_node is None).
        self.confine(config, placement.numa_node(), started.pid);
        let vm_config = vmm_config(config, paths, &gpus, &self.config.host, placement, &images);
        let setup = async {
            client.create(&vm_config).await.map_err(vmm_error)?;
            // form-vmm made the taps during vm.create; they join their bridges before
            // the guest runs, so its first DHCP request goes out on the bridge.
            networks::attach_bridges(config)?;
            if boot {
                client.boot().await.map_err(vmm_error)?;
            }
            Ok::<(), InstanceError>(())
        };
        if let Err(e) = setup.await {
            supervisor::stop_child(&mut started.child).await;
            return Err(e);
        }
        if boot {
            self.store().set_state(name, VmState::Running)?;
        }
        self.watch_child(name.clone(), started.pid, started.child);
        Ok(())
    }

    // ----- stopping -----------------------------------------------------------------

    /// Stops the VM's VMM and releases its GPUs; the VM stays recorded, stopped.
    pub async fn shutdown(self: &Arc<Self>, name: &str) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        let Some(vmm) = record.vmm.clone() else {
            return Err(InstanceError::InvalidState(format!(
                "VM {name} is stopped already"
            )));
        };
        self.stop_vmm(name, &vmm).await;
        self.info(name)
    }

    /// Stops the VM if it runs, releases its GPUs and forgets it.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        if let Some(vmm) = record.vmm.clone() {
            self.stop_vmm(name, &vmm).await;
        }
        let how = Release::after_vmm(record.config.gpu_options.unbind_on_shutdown);
        self.release_gpus(name, how).await;
        self.store().delete_instance(name)?;
        let paths = self.paths(name);
        remove_seed(name, &paths);
        remove_vm_dirs(name, &paths);
        Ok(())
    }

    async fn stop_vmm(self: &Arc<Self>, name: &str, vmm: &VmmProcess) {
        let client = self.vmm(&vmm.api_socket);
        if let Err(e) = client.shutdown_vmm().await {
            log::warn!("VM {name}: vmm.shutdown failed ({e}); terminating the process");
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while supervisor::is_alive(vmm.pid, vmm.start_time)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        supervisor::terminate(vmm.pid, vmm.start_time, SHUTDOWN_GRACE).await;
        // SIGKILLed, a VMM still unpinning a large VM's RAM lives on in the kernel,
        // holding its VFIO devices: their GPUs are let go of but left on vfio-pci,
        // where no host driver probes a device a process still owns.
        let lingering = supervisor::is_alive(vmm.pid, vmm.start_time);
        if lingering {
            log::error!(
                "VM {name}: its VMM (pid {}) is still exiting after SIGKILL; its GPUs stay on vfio-pci",
                vmm.pid
            );
        }
        let exit = ExitInfo {
            code: None,
            signal: None,
            reason: "shut down through the service".to_string(),
            at: now(),
        };
        self.finish_as(name, vmm.pid, exit, !lingering).await;
    }

    /// Records that the VMM `pid` of VM `name` ended and releases its GPUs; nothing
    /// if the record already moved on (another path handled the same exit).
    async fn finish(self: &Arc<Self>, name: &str, pid: u32, exit: ExitInfo) {
        self.finish_as(name, pid, exit, true).await
    }

    /// [`Manager::finish`], returning the GPUs to their drivers only if `may_unbind`
    /// (and the VM asks for it).
    async fn finish_as(self: &Arc<Self>, name: &str, pid: u32, exit: ExitInfo, may_unbind: bool) {
        let record = match self.store().instance(name) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                log::error!("VM {name}: cannot read its record after its VMM ended: {e}");
                return;
            }
        };
        if record.vmm.as_ref().map(|v| v.pid) != Some(pid) {
            return;
        }
        log::info!("VM {name}: {}", exit.reason);
        let how = if may_unbind {
            Release::after_vmm(record.config.gpu_options.unbind_on_shutdown)
        } else {
            Release::Forget
        };
        self.release_gpus(name, how).await;
        self.take_back(&record.config);
        self.remove_cgroup(name);
        if let Err(e) = self.store().record_exit(name, &exit) {
            log::error!("VM {name}: cannot record how its VMM ended: {e}");
        }
        let _ = std::fs::remove_file(self.paths(name).api_socket);
    }

    fn paths(&self, name: &str) -> VmPaths {
        VmPaths::new(&self.config.run_dir, &self.config.state_dir, name)
    }
}

/// Removes a VM's seed image; a failure leaves a stray file, which is logged.
fn remove_seed(name: &str, paths: &VmPaths) {
    if let Err(e) = cloud_init::remove_seed_image(&paths.seed_image) {
        log::warn!(
            "VM {name}: cannot remove its seed image {}: {e}",
            paths.seed_image.display()
        );
    }
}

/// Removes a forgotten VM's directories (its logs, its socket's directory); a
/// failure leaves them, which is logged.
fn remove_vm_dirs(name: &str, paths: &VmPaths) {
    for file in [&paths.serial_log, &paths.api_socket] {
        let Some(dir) = file.parent() else { continue };
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                log::warn!("VM {name}: cannot remove {}: {e}", dir.display());
            }
            _ => {}
        }
    }
}

fn state_word(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Created => "created, not booted",
        VmState::Running => "running",
    }
}

/// Fills in the format of every disk the client left it out for, read from the
/// image; a format the client gave must match the image.
fn record_disk_formats(
    config: &mut VmInstanceConfig,
    images: &OpenedImages,
) -> Result<(), InstanceError> {
    for (i, (disk, opened)) in config.disks.iter_mut().zip(&images.disks).enumerate() {
        let found = opened.probe_format().map_err(|e| {
            InstanceError::Invalid(format!(
                "disks[{i}].path: '{}' cannot be read: {e}",
                disk.path
            ))
        })?;
        match disk.format {
            None => disk.format = Some(found),
            Some(DiskFormat::Qcow2) if found != DiskFormat::Qcow2 => {
                return Err(InstanceError::Invalid(format!(
                    "disks[{i}].format is qcow2, but '{}' does not start with the qcow2 magic; give format raw or leave it out",
                    disk.path
                )))
            }
            // A raw disk may hold anything, a qcow2 header included.
            Some(_) => {}
        }
    }
    Ok(())
}

/// form-vmm's answer as the service's error: a refusal for the request's content
/// (4xx) is the client's to fix, so it is a 4xx here too; only a form-vmm that
/// failed (5xx, no answer, gone) is `vmm_failed`.
fn vmm_error(e: VmmClientError) -> InstanceError {
    match e {
        VmmClientError::Refused {
            status: 501,
            message,
            ..
        } => InstanceError::NotSupported(format!(
            "the VMM cannot do this yet: {message}; nothing was changed"
        )),
        // Another process holds the device's IOMMU group (a VMM the service lost
        // track of, or one still exiting): a conflict, as for a group a VM holds.
        VmmClientError::Refused {
            status: 409,
            code: Some(code),
            message,
            ..
        } if code == "device_busy" => {
            InstanceError::GroupInUse(format!("{message}; nothing was changed"))
        }
        VmmClientError::Refused {
            endpoint,
            status,
            code,
            message,
        } if (400..500).contains(&status) => InstanceError::VmmRefused {
            endpoint,
            message,
            code,
        },
        other => InstanceError::Vmm(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::ErrorCode;

    fn refused(status: u16, code: Option<&str>) -> VmmClientError {
        VmmClientError::Refused {
            endpoint: "vm.create".into(),
            status,
            code: code.map(str::to_string),
            message: "IOMMU group 7 of 0000:01:00.0 is held by another process".into(),
        }
    }

    #[test]
    fn form_vmm_answers_become_the_services_codes() {
        let code = |e| vmm_error(e).code();
        assert_eq!(
            code(refused(409, Some("device_busy"))),
            ErrorCode::GroupInUse
        );
        assert_eq!(
            code(refused(400, Some("invalid_device"))),
            ErrorCode::VmmRefused
        );
        assert_eq!(code(refused(501, None)), ErrorCode::NotSupported);
        assert_eq!(code(refused(500, Some("internal"))), ErrorCode::VmmFailed);
    }
}
