//! The manager: the one place that changes VMs. Every change to who owns what runs
//! under one async lock, so two requests can never pick the same GPU; the database's
//! constraints back that up.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::Child;

use crate::api::types::{
    AddGpuRequest, AssignedGpu, ExitInfo, GpuEntry, GpuRequest, VmInfo, VmInstanceConfig, VmState,
};
use crate::gpu::{self, Bdf, BindOptions, GpuBinder, GpuError, GpuInfo, HostPaths, SysfsWriter};
use crate::state::{now, GpuAssignment, InstanceRecord, Store, VmmProcess};
use crate::supervisor::{self, VmPaths};
use crate::vmm_client::{ConsoleConfig, CpusConfig, MemoryConfig, PayloadConfig};
use crate::vmm_client::{DeviceConfig, VmConfig, VmmClient, VmmClientError};

use super::allocate::{choose, matches_model, Candidate};
use super::error::InstanceError;
use super::validate::{parse_devices, validate, validate_request, GpuSelection, HostLimits};

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
}

pub struct Manager {
    config: ServiceConfig,
    store: Mutex<Store>,
    writer: Box<dyn SysfsWriter + Send + Sync>,
    changes: tokio::sync::Mutex<()>,
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
        })
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
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

    pub fn gpus(&self) -> Result<Vec<GpuEntry>, InstanceError> {
        let assignments = self.store().all_gpus()?;
        let owners = |bdf: &Bdf| {
            assignments
                .iter()
                .find(|a| a.bdf == *bdf)
                .map(|a| a.instance.clone())
        };
        let gpus = gpu::list_gpus(&self.config.host, &owners)
            .map_err(|e| InstanceError::Internal(e.to_string()))?;
        Ok(gpus
            .iter()
            .map(|info| GpuEntry {
                bdf: info.bdf().to_string(),
                name: info.display_name(),
                vendor_id: info.function.vendor_id,
                device_id: info.function.device_id,
                driver: info.function.driver.clone(),
                iommu_group: info.function.iommu_group,
                numa_node: info.function.numa_node,
                parent_bridge: super::upstream_bridges(&self.config.host, &info.bdf())
                    .last()
                    .map(Bdf::to_string),
                boot_vga: info.function.boot_vga,
                owner: info.owner.clone(),
            })
            .collect())
    }

    fn record(&self, name: &str) -> Result<InstanceRecord, InstanceError> {
        self.store()
            .instance(name)?
            .ok_or_else(|| InstanceError::NotFound(name.to_string()))
    }

    fn describe(&self, record: InstanceRecord) -> Result<VmInfo, InstanceError> {
        let gpus = self.store().gpus_of(&record.config.name)?;
        let gpus = gpus
            .into_iter()
            .map(|a| {
                let info = gpu::gpu_info(&self.config.host, &a.bdf, &gpu::NoOwners).ok();
                AssignedGpu {
                    bdf: a.bdf.to_string(),
                    device_id: a.device_id,
                    name: info.as_ref().map(GpuInfo::display_name),
                    numa_node: info.and_then(|i| i.function.numa_node),
                }
            })
            .collect();
        Ok(VmInfo {
            name: record.config.name.clone(),
            state: record.state,
            pid: record.vmm.as_ref().map(|v| v.pid),
            api_socket: record.vmm.map(|v| v.api_socket),
            serial_log: record.serial_log,
            last_exit: record.last_exit,
            created_at: record.created_at,
            updated_at: record.updated_at,
            config: record.config,
            gpus,
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
        let name = config.name.clone();
        let paths = self.paths(&name);
        {
            let mut store = self.store();
            if store.instance(&name)?.is_some() {
                return Err(InstanceError::Exists(name));
            }
            let gpus = self.pick_gpus(&store, &name, &selection, 0)?;
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
        }
        if let Err(e) = self.start(&config, &paths, config.boot).await {
            self.store().delete_instance(&name)?;
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
                VmmClient::new(&vmm.api_socket)
                    .boot()
                    .await
                    .map_err(vmm_error)?;
                self.store().set_state(name, VmState::Running)?;
            }
            (VmState::Stopped, _) => {
                let selection = validate(&record.config, &self.config.limits)?;
                {
                    let mut store = self.store();
                    let gpus = self.pick_gpus(&store, name, &selection, 0)?;
                    store.assign_gpus(&gpus)?;
                }
                let paths = self.paths(name);
                self.start(&record.config, &paths, true).await?;
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
            (VmState::Running, Some(vmm)) => VmmClient::new(&vmm.api_socket)
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
    ) -> Result<(), InstanceError> {
        let result = self.try_start(config, paths, boot).await;
        if let Err(e) = &result {
            let name = &config.name;
            self.release_gpus(name, config.gpu_options.unbind_on_shutdown);
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
    ) -> Result<(), InstanceError> {
        let name = &config.name;
        let gpus = self.store().gpus_of(name)?;
        for assignment in &gpus {
            self.bind(&assignment.bdf)?;
        }
        let mut started = supervisor::start(&self.config.vmm_binary, paths)
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
        let client = VmmClient::new(&paths.api_socket);
        let vm_config = vmm_config(config, paths, &gpus, &self.config.host);
        let setup = async {
            client.create(&vm_config).await?;
            if boot {
                client.boot().await?;
            }
            Ok::<(), VmmClientError>(())
        };
        if let Err(e) = setup.await {
            supervisor::stop_child(&mut started.child).await;
            return Err(vmm_error(e));
        }
        if boot {
            self.store().set_state(name, VmState::Running)?;
        }
        self.watch_child(name.clone(), started.pid, started.child);
        Ok(())
    }

    /// Chooses GPUs for `selection` among those nobody holds, numbering their device
    /// ids from `first_id`.
    fn pick_gpus(
        &self,
        store: &Store,
        name: &str,
        selection: &GpuSelection,
        first_id: usize,
    ) -> Result<Vec<GpuAssignment>, InstanceError> {
        let bdfs = match selection {
            GpuSelection::None => Vec::new(),
            GpuSelection::Devices(bdfs) => {
                for bdf in bdfs {
                    self.check_gpu(bdf)?;
                    if let Some(owner) = store.owner_of(bdf)? {
                        return Err(InstanceError::GpuInUse { bdf: *bdf, owner });
                    }
                }
                bdfs.clone()
            }
            GpuSelection::Model(request) => self.pick_by_model(store, request)?,
        };
        Ok(bdfs
            .into_iter()
            .enumerate()
            .map(|(i, bdf)| GpuAssignment {
                bdf,
                instance: name.to_string(),
                device_id: format!("gpu{}", first_id + i),
            })
            .collect())
    }

    fn check_gpu(&self, bdf: &Bdf) -> Result<GpuInfo, InstanceError> {
        gpu::gpu_info(&self.config.host, bdf, &gpu::NoOwners).map_err(|e| match e {
            GpuError::NoSuchDevice { bdf, .. } => InstanceError::UnknownGpu(bdf),
            GpuError::NotAGpu { bdf, class } => InstanceError::NotAGpu { bdf, class },
            other => InstanceError::Internal(other.to_string()),
        })
    }

    fn pick_by_model(
        &self,
        store: &Store,
        request: &GpuRequest,
    ) -> Result<Vec<Bdf>, InstanceError> {
        let all = gpu::list_gpus(&self.config.host, &gpu::NoOwners)
            .map_err(|e| InstanceError::Internal(e.to_string()))?;
        let taken: Vec<Bdf> = store.all_gpus()?.into_iter().map(|a| a.bdf).collect();
        // The console GPU is never picked by model: taking it blanks the host's display.
        let candidates: Vec<Candidate> = all
            .iter()
            .filter(|info| matches_model(info, &request.model))
            .filter(|info| !info.function.boot_vga && !taken.contains(&info.bdf()))
            .map(|info| Candidate::of(&self.config.host, info))
            .collect();
        let count = request.count as usize;
        choose(&candidates, count).ok_or_else(|| InstanceError::GpusUnavailable {
            model: request.model.clone(),
            asked: request.count,
            free: candidates.len(),
        })
    }

    fn bind(&self, bdf: &Bdf) -> Result<(), InstanceError> {
        let mut store = self.store();
        let mut records = store.driver_records();
        GpuBinder::new(&self.config.host, self.writer.as_ref(), &mut records)
            .bind(bdf, &self.config.bind)
            .map(drop)
            .map_err(InstanceError::from_bind)
    }

    /// Gives the VM's GPUs back to their drivers (when asked to) and forgets the
    /// assignments. Failures to unbind are logged: the GPU is free for another VM
    /// either way, as it is still on vfio-pci.
    fn release_gpus(&self, name: &str, unbind: bool) {
        let mut store = self.store();
        let gpus = match store.gpus_of(name) {
            Ok(gpus) => gpus,
            Err(e) => {
                log::error!("cannot read the GPUs of VM {name}: {e}");
                return;
            }
        };
        for assignment in gpus {
            if unbind {
                self.unbind(&mut store, &assignment.bdf);
            }
            if let Err(e) = store.unassign_gpu(&assignment.bdf) {
                log::error!("cannot forget GPU {} of VM {name}: {e}", assignment.bdf);
            }
        }
    }

    fn unbind(&self, store: &mut Store, bdf: &Bdf) {
        let mut records = store.driver_records();
        match GpuBinder::new(&self.config.host, self.writer.as_ref(), &mut records).release(bdf) {
            Ok(outcome) => {
                for warning in outcome.warnings {
                    log::warn!("releasing {bdf}: {warning}");
                }
            }
            Err(e) => log::error!("cannot return GPU {bdf} to its driver: {e}"),
        }
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
        self.release_gpus(name, record.config.gpu_options.unbind_on_shutdown);
        self.store().delete_instance(name)?;
        Ok(())
    }

    async fn stop_vmm(&self, name: &str, vmm: &VmmProcess) {
        let client = VmmClient::new(&vmm.api_socket);
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
        let exit = ExitInfo {
            code: None,
            signal: None,
            reason: "shut down through the service".to_string(),
            at: now(),
        };
        self.finish(name, vmm.pid, exit);
    }

    /// Records that the VMM `pid` of VM `name` ended and releases its GPUs; nothing
    /// if the record already moved on (another path handled the same exit).
    fn finish(&self, name: &str, pid: u32, exit: ExitInfo) {
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
        self.release_gpus(name, record.config.gpu_options.unbind_on_shutdown);
        if let Err(e) = self.store().record_exit(name, &exit) {
            log::error!("VM {name}: cannot record how its VMM ended: {e}");
        }
        let _ = std::fs::remove_file(self.paths(name).api_socket);
    }

    fn watch_child(self: &Arc<Self>, name: String, pid: u32, mut child: Child) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => supervisor::describe_exit(status),
                Err(e) => ExitInfo {
                    code: None,
                    signal: None,
                    reason: format!("waiting for the VMM failed: {e}"),
                    at: now(),
                },
            };
            let _changes = manager.changes.lock().await;
            manager.finish(&name, pid, exit);
        });
    }

    fn watch_adopted(self: &Arc<Self>, name: String, vmm: VmmProcess) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            while supervisor::is_alive(vmm.pid, vmm.start_time) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            let exit = ExitInfo {
                code: None,
                signal: None,
                reason:
                    "the VMM ended (adopted after a service restart, so its exit status is unknown)"
                        .to_string(),
                at: now(),
            };
            let _changes = manager.changes.lock().await;
            manager.finish(&name, vmm.pid, exit);
        });
    }

    // ----- restart ------------------------------------------------------------------

    /// After a (re)start: adopts every recorded VMM that still runs, and for those that
    /// do not, records the exit and releases their GPUs. Returns the names adopted.
    pub async fn reconcile(self: &Arc<Self>) -> Result<Vec<String>, InstanceError> {
        let _changes = self.changes.lock().await;
        let records = self.store().instances()?;
        let mut adopted = Vec::new();
        for record in records {
            let name = record.config.name.clone();
            match record.vmm.clone() {
                Some(vmm) if self.vmm_alive(&vmm).await => {
                    log::info!("VM {name}: re-adopting VMM pid {}", vmm.pid);
                    self.watch_adopted(name.clone(), vmm);
                    adopted.push(name);
                }
                Some(vmm) => {
                    let exit = ExitInfo {
                        code: None,
                        signal: None,
                        reason: "the VMM ended while the service was not running".to_string(),
                        at: now(),
                    };
                    self.finish(&name, vmm.pid, exit);
                }
                // Stopped, but GPUs still recorded: the service died mid-create or
                // mid-release.
                None => self.release_gpus(&name, record.config.gpu_options.unbind_on_shutdown),
            }
        }
        Ok(adopted)
    }

    /// The recorded process runs (same pid, same start time), or, if the start time was
    /// not known, its socket answers.
    async fn vmm_alive(&self, vmm: &VmmProcess) -> bool {
        if vmm.start_time != 0 {
            return supervisor::is_alive(vmm.pid, vmm.start_time);
        }
        matches!(VmmClient::new(&vmm.api_socket).ping().await, Ok(ping) if ping.pid.is_none_or(|p| p == vmm.pid))
    }

    // ----- GPUs on a running VM -----------------------------------------------------

    pub async fn add_gpu(
        self: &Arc<Self>,
        name: &str,
        request: AddGpuRequest,
    ) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        let Some(vmm) = record.vmm.clone() else {
            return Err(InstanceError::InvalidState(format!(
                "VM {name} is stopped; GPUs are added to a VM whose VMM runs"
            )));
        };
        let selection = match (request.device, request.model) {
            (Some(device), None) if request.count.is_none() => {
                GpuSelection::Devices(parse_devices(&[device])?)
            }
            (None, Some(model)) => {
                let request = GpuRequest {
                    model,
                    count: request.count.unwrap_or(1),
                };
                validate_request(&request)?;
                GpuSelection::Model(request)
            }
            _ => {
                return Err(InstanceError::Invalid(
                    "give either device, or model (with an optional count)".into(),
                ))
            }
        };
        let gpus = {
            let mut store = self.store();
            let first_id = next_device_index(&store.gpus_of(name)?);
            let gpus = self.pick_gpus(&store, name, &selection, first_id)?;
            store.assign_gpus(&gpus)?;
            gpus
        };
        let client = VmmClient::new(&vmm.api_socket);
        let unbind = record.config.gpu_options.unbind_on_shutdown;
        for (index, assignment) in gpus.iter().enumerate() {
            let result = match self.bind(&assignment.bdf) {
                Ok(()) => client
                    .add_device(&device_config(
                        assignment,
                        &record.config,
                        &self.config.host,
                    ))
                    .await
                    .map_err(vmm_error),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Give back this GPU and the ones not yet handed over; earlier ones are
                // in the guest now and stay.
                let mut store = self.store();
                for rest in gpus.iter().skip(index) {
                    if unbind {
                        self.unbind(&mut store, &rest.bdf);
                    }
                    store.unassign_gpu(&rest.bdf)?;
                }
                return Err(e);
            }
        }
        self.info(name)
    }

    pub async fn remove_gpu(
        self: &Arc<Self>,
        name: &str,
        device: &str,
    ) -> Result<VmInfo, InstanceError> {
        let _changes = self.changes.lock().await;
        let record = self.record(name)?;
        let bdf = parse_devices(&[device.to_string()])?
            .into_iter()
            .next()
            .ok_or_else(|| InstanceError::Invalid("no GPU given".into()))?;
        let assignment = self
            .store()
            .gpus_of(name)?
            .into_iter()
            .find(|a| a.bdf == bdf)
            .ok_or_else(|| InstanceError::Invalid(format!("VM {name} does not hold GPU {bdf}")))?;
        let Some(vmm) = record.vmm else {
            return Err(InstanceError::InvalidState(format!("VM {name} is stopped")));
        };
        VmmClient::new(&vmm.api_socket)
            .remove_device(&assignment.device_id)
            .await
            .map_err(vmm_error)?;
        let mut store = self.store();
        if record.config.gpu_options.unbind_on_shutdown {
            self.unbind(&mut store, &bdf);
        }
        store.unassign_gpu(&bdf)?;
        drop(store);
        self.info(name)
    }

    // ----- GPUs no VM holds -----------------------------------------------------------

    /// Binds a GPU that no VM holds to vfio-pci (operators do this ahead of time to
    /// check a host); the driver it leaves is recorded like a VM's.
    pub async fn bind_free_gpu(
        &self,
        device: &str,
        force: bool,
    ) -> Result<serde_json::Value, InstanceError> {
        let _changes = self.changes.lock().await;
        let bdf = self.free_gpu(device)?;
        let mut store = self.store();
        let mut records = store.driver_records();
        let options = BindOptions {
            force,
            ..self.config.bind
        };
        let outcome = GpuBinder::new(&self.config.host, self.writer.as_ref(), &mut records)
            .bind(&bdf, &options)
            .map_err(InstanceError::from_bind)?;
        serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
    }

    /// Returns a GPU that no VM holds from vfio-pci to its recorded driver.
    pub async fn unbind_free_gpu(&self, device: &str) -> Result<serde_json::Value, InstanceError> {
        let _changes = self.changes.lock().await;
        let bdf = self.free_gpu(device)?;
        let mut store = self.store();
        let mut records = store.driver_records();
        let outcome = GpuBinder::new(&self.config.host, self.writer.as_ref(), &mut records)
            .release(&bdf)
            .map_err(InstanceError::from_bind)?;
        serde_json::to_value(outcome).map_err(|e| InstanceError::Internal(e.to_string()))
    }

    fn free_gpu(&self, device: &str) -> Result<Bdf, InstanceError> {
        let bdf = parse_devices(&[device.to_string()])?
            .into_iter()
            .next()
            .ok_or_else(|| InstanceError::Invalid("no GPU given".into()))?;
        self.check_gpu(&bdf)?;
        if let Some(owner) = self.store().owner_of(&bdf)? {
            return Err(InstanceError::GpuInUse { bdf, owner });
        }
        Ok(bdf)
    }

    fn paths(&self, name: &str) -> VmPaths {
        VmPaths::new(&self.config.run_dir, &self.config.state_dir, name)
    }
}

fn next_device_index(gpus: &[GpuAssignment]) -> usize {
    gpus.iter()
        .filter_map(|a| a.device_id.strip_prefix("gpu")?.parse::<usize>().ok())
        .max()
        .map_or(0, |max| max + 1)
}

fn state_word(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Created => "created, not booted",
        VmState::Running => "running",
    }
}

fn vmm_error(e: VmmClientError) -> InstanceError {
    match e {
        VmmClientError::Refused {
            status: 501,
            message,
            ..
        } => InstanceError::NotSupported(format!(
            "the VMM cannot do this yet: {message}; nothing was changed"
        )),
        other => InstanceError::Vmm(other.to_string()),
    }
}

fn device_config(
    assignment: &GpuAssignment,
    config: &VmInstanceConfig,
    host: &HostPaths,
) -> DeviceConfig {
    let options = &config.gpu_options;
    DeviceConfig {
        // The canonical sysfs path on the real host, never one the user typed.
        path: format!("/sys/bus/pci/devices/{}", assignment.bdf),
        id: assignment.device_id.clone(),
        x_nv_gpudirect_clique: options
            .enable_nvidia_gpudirect
            .then_some(options.nvidia_gpudirect_clique),
    }
    .relative_to(host)
}

impl DeviceConfig {
    /// Points the device path at the service's sysfs root (a fixture tree in tests).
    fn relative_to(mut self, host: &HostPaths) -> Self {
        if let Some(rest) = self.path.strip_prefix("/sys") {
            self.path = format!("{}{rest}", host.sysfs.display());
        }
        self
    }
}

fn vmm_config(
    config: &VmInstanceConfig,
    paths: &VmPaths,
    gpus: &[GpuAssignment],
    host: &HostPaths,
) -> VmConfig {
    VmConfig {
        cpus: CpusConfig {
            boot_vcpus: config.vcpus,
            max_vcpus: config.vcpus,
        },
        memory: MemoryConfig {
            size: config.memory,
        },
        payload: PayloadConfig {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            cmdline: config.cmdline.clone(),
        },
        serial: ConsoleConfig {
            mode: "File".into(),
            file: Some(paths.serial_log.display().to_string()),
        },
        console: ConsoleConfig {
            mode: "Off".into(),
            file: None,
        },
        devices: gpus
            .iter()
            .map(|a| device_config(a, config, host))
            .collect(),
    }
}
