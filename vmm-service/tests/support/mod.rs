//! A service on a fixture host: the manager with a simulated kernel, the API router,
//! and the fake form-vmm (`tests/support/fake-form-vmm`) as its VMM.

#![allow(dead_code)] // each test binary uses a different part

pub mod process;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

use vmm_service::api;
use vmm_service::gpu::{BindOptions, DevicePolicy, SysfsWriter};
use vmm_service::instances::{
    AdmissionLimits, HostLimits, ImagePolicy, LogLimits, Manager, ServiceConfig,
};
use vmm_service::state::Store;
use vmm_service::vmm_client::VmmDeadlines;

use crate::common::{Fixture, HostBuilder};

/// The simulated kernel behind a lock, so the manager can share it across tasks.
#[derive(Clone)]
pub struct SharedKernel(pub Arc<Mutex<Fixture>>);

impl SysfsWriter for SharedKernel {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().kernel.write(path, value)
    }
}

pub const HOST_MEMORY: u64 = 64 << 30;
pub const HOST_CPUS: u32 = 8;

pub struct Harness {
    pub fixture: Arc<Mutex<Fixture>>,
    pub manager: Arc<Manager>,
    pub router: Router,
    pub dir: TempDir,
    pub kernel: String,
}

/// The service's one image directory in tests: `<dir>/images`, apart from its
/// database (`<dir>/service.db`) and state (`<dir>/state`).
pub fn image_dir(dir: &Path) -> PathBuf {
    dir.join("images")
}

/// What the operator set, beyond the device policy.
#[derive(Clone, Default)]
pub struct Operator {
    pub admission: AdmissionLimits,
    pub logs: Option<LogLimits>,
    pub block_devices: Vec<PathBuf>,
    /// Who VMMs give up root for.
    pub vmm_users: Option<vmm_service::vmm_user::VmmUsers>,
}

/// Deadlines short enough for tests to reach a VMM that does not answer; the
/// fake VMM answers everything else at once.
pub fn test_deadlines() -> VmmDeadlines {
    VmmDeadlines {
        remove_device: Duration::from_secs(2),
        // The deadlines the tests time against stay as given, whatever the RAM.
        pin_per_gib: Duration::ZERO,
        ..VmmDeadlines::default()
    }
}

pub fn fake_vmm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake-form-vmm")
}

/// Whether python3 (which runs the fake VMM) is here; prints why not, fails under CI.
pub fn have_python() -> bool {
    let found = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is needed for the fake form-vmm"
        );
        eprintln!("skipping: python3 (the fake form-vmm's interpreter) not found");
    }
    found
}

impl Harness {
    pub fn new(host: HostBuilder) -> Self {
        Self::with_policy(host, DevicePolicy::default())
    }

    /// A service whose operator set `policy` (allowed classes, devices without reset).
    pub fn with_policy(host: HostBuilder, policy: DevicePolicy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::build(host.build(), dir, fake_vmm(), policy)
    }

    /// A service on `fixture`, keeping its database and files in `dir`.
    pub fn with_dir(fixture: Fixture, dir: TempDir, vmm_binary: PathBuf) -> Self {
        Self::build(fixture, dir, vmm_binary, DevicePolicy::default())
    }

    /// A service on `dir` running `vmm_binary`, as `operator` configured it.
    pub fn with_dir_as(
        fixture: Fixture,
        dir: TempDir,
        vmm_binary: PathBuf,
        operator: Operator,
    ) -> Self {
        Self::build_with(fixture, dir, vmm_binary, DevicePolicy::default(), operator)
    }

    /// A service whose operator set limits.
    pub fn with_operator(host: HostBuilder, operator: Operator) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::build_with(
            host.build(),
            dir,
            fake_vmm(),
            DevicePolicy::default(),
            operator,
        )
    }

    fn build(fixture: Fixture, dir: TempDir, vmm_binary: PathBuf, policy: DevicePolicy) -> Self {
        Self::build_with(fixture, dir, vmm_binary, policy, Operator::default())
    }

    fn build_with(
        fixture: Fixture,
        dir: TempDir,
        vmm_binary: PathBuf,
        policy: DevicePolicy,
        operator: Operator,
    ) -> Self {
        std::fs::create_dir_all(image_dir(dir.path())).unwrap();
        let kernel = image_dir(dir.path()).join("vmlinux");
        if !kernel.exists() {
            std::fs::write(&kernel, b"\x7fELF not really").unwrap();
        }
        let host = fixture.host.clone();
        let fixture = Arc::new(Mutex::new(fixture));
        let manager = Self::manager_on(&fixture, dir.path(), host, vmm_binary, policy, &operator);
        Self {
            // As the local unix socket serves it: the operator's own client.
            router: api::router(Arc::clone(&manager)).layer(axum::Extension(api::Transport::Unix)),
            fixture,
            manager,
            kernel: kernel.display().to_string(),
            dir,
        }
    }

    fn manager_on(
        fixture: &Arc<Mutex<Fixture>>,
        dir: &Path,
        host: vmm_service::gpu::HostPaths,
        vmm_binary: PathBuf,
        policy: DevicePolicy,
        operator: &Operator,
    ) -> Arc<Manager> {
        let store = Store::open(&dir.join("service.db")).unwrap();
        let config = ServiceConfig {
            host,
            state_dir: dir.join("state"),
            run_dir: dir.join("run"),
            vmm_binary,
            limits: HostLimits {
                memory_bytes: HOST_MEMORY,
                cpus: HOST_CPUS,
            },
            bind: BindOptions {
                force: false,
                vfio_node_timeout: Duration::from_millis(200),
            },
            policy,
            vmm_deadlines: test_deadlines(),
            hold_check: Duration::from_millis(1500),
            images: ImagePolicy::new(vec![image_dir(dir)], operator.block_devices.clone()),
            admission: operator.admission,
            logs: operator.logs.unwrap_or_default(),
            vmm_users: operator.vmm_users.clone(),
            cgroups: None,
            // form-vmm needs root for it; the fake VMM ignores it.
            // SAFETY: geteuid has no preconditions.
            vmm_mount_ns: unsafe { libc::geteuid() } == 0,
        };
        Manager::new(config, store, Box::new(SharedKernel(Arc::clone(fixture))))
    }

    /// A second service on the same database and host, as after a restart.
    pub fn restarted(&self) -> Arc<Manager> {
        let host = self.fixture.lock().unwrap().host.clone();
        let config = self.manager.config();
        let operator = Operator {
            admission: config.admission,
            logs: Some(config.logs),
            block_devices: Vec::new(),
            vmm_users: config.vmm_users.clone(),
        };
        let policy = config.policy.clone();
        Self::manager_on(
            &self.fixture,
            self.dir.path(),
            host,
            fake_vmm(),
            policy,
            &operator,
        )
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.router, method, path, body).await
    }

    /// A create body with this service's kernel.
    pub fn vm(&self, name: &str) -> Value {
        serde_json::json!({"name": name, "kernel": self.kernel, "memory": 256u64 << 20})
    }

    /// Every row of every table, to show that a refused request changed nothing.
    pub fn db_snapshot(&self) -> Vec<String> {
        let store = self.manager.store();
        let conn = store.connection();
        let mut rows = Vec::new();
        for table in ["instances", "gpu_assignments", "driver_records"] {
            let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
            let columns = statement.column_count();
            let mut query = statement.query([]).unwrap();
            while let Some(row) = query.next().unwrap() {
                let cells: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                rows.push(format!("{table}: {}", cells.join(" | ")));
            }
        }
        rows
    }

    /// The files behind the `/proc/self/fd/N` paths of the VM's first vm.create, as
    /// the fake VMM opened them: `{path: real path}` ("ERROR: ..." for a descriptor
    /// it did not inherit).
    pub fn vmm_opened(&self, name: &str) -> serde_json::Map<String, Value> {
        let request = self
            .vmm_requests(name)
            .into_iter()
            .find(|r| r["endpoint"] == "vm.create")
            .expect("a vm.create request");
        request["opened"].as_object().cloned().unwrap_or_default()
    }

    /// The real file the VMM opened for `path` of a vm.create body.
    pub fn vmm_file(&self, name: &str, path: &Value) -> String {
        let path = path.as_str().expect("a path");
        assert!(
            path.starts_with("/proc/self/fd/"),
            "{path}: not a descriptor"
        );
        self.vmm_opened(name)[path]
            .as_str()
            .unwrap_or("<missing>")
            .to_string()
    }

    pub fn writes(&self) -> Vec<(String, String)> {
        self.fixture.lock().unwrap().writes()
    }

    pub fn driver_of(&self, address: &str) -> Option<String> {
        self.fixture.lock().unwrap().driver_of(address)
    }

    /// Waits until `check` holds, for up to 10 s.
    pub async fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The requests the fake VMM of `name` received, oldest first.
    pub fn vmm_requests(&self, name: &str) -> Vec<Value> {
        let path = self.dir.path().join(format!("run/vms/{name}.requests"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

impl Drop for Harness {
    /// Stops the VMMs the test left running: nobody else would.
    fn drop(&mut self) {
        let Ok(instances) = self.manager.store().instances() else {
            return;
        };
        for vmm in instances.into_iter().filter_map(|r| r.vmm) {
            if vmm_service::supervisor::is_alive(vmm.pid, vmm.start_time) {
                // SAFETY: kill(2) on a pid whose start time matched just now.
                unsafe { libc::kill(vmm.pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

pub async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    let body = match body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let response = router
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

/// The error code of an error response.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
