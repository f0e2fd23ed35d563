//! VMs through their lives with a fake form-vmm: what the service sends the VMM, GPUs
//! bound while a VMM runs and returned when it ends for any reason, shutdown, boot
//! again, hotplug refused cleanly, and restarts of the service itself.

mod common;
mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::hgx_h100;
use support::{code, have_python, Harness};
use vmm_service::api::types::{GpuOptions, VmInstanceConfig, VmState};
use vmm_service::gpu::{BindOptions, GpuBinder};
use vmm_service::state::{now, GpuAssignment, InstanceRecord, VmmProcess};
use vmm_service::supervisor;

const GPU: &str = "0000:18:00.0";

async fn create(h: &Harness, body: Value) -> Value {
    let (status, info) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    info
}

async fn info(h: &Harness, name: &str) -> Value {
    let (status, info) = h.call(Method::GET, &format!("/v1/vms/{name}"), None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    info
}

fn kill(pid: u64, signal: i32) {
    // SAFETY: kill(2) on a VMM this test started.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

#[tokio::test]
async fn a_vm_gets_its_gpu_and_loses_it_when_the_vmm_is_killed() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let mut body = h.vm("train");
    body["gpu_devices"] = json!(["/sys/bus/pci/devices/0000:18:00.0"]);
    body["gpu_options"] = json!({"enable_nvidia_gpudirect": true, "nvidia_gpudirect_clique": 3});
    body["vcpus"] = json!(2);
    body["cmdline"] = json!("console=ttyS0");
    body["boot"] = json!(true);
    let vm = create(&h, body).await;
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["gpus"][0]["bdf"], GPU);
    assert_eq!(vm["gpus"][0]["device_id"], "gpu0");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));

    let requests = h.vmm_requests("train");
    let endpoints: Vec<&str> = requests
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints.last(), Some(&"vm.boot"), "{endpoints:?}");
    let create_request = requests
        .iter()
        .find(|r| r["endpoint"] == "vm.create")
        .unwrap();
    let config: Value = serde_json::from_str(create_request["body"].as_str().unwrap()).unwrap();
    let sysfs = h.fixture.lock().unwrap().host.sysfs.display().to_string();
    assert_eq!(
        config["devices"],
        json!([{"path": format!("{sysfs}/bus/pci/devices/{GPU}"), "id": "gpu0", "x_nv_gpudirect_clique": 3,
                "iommu": false, "pci_segment": 0}])
    );
    assert_eq!(config["cpus"], json!({"boot_vcpus": 2, "max_vcpus": 2}));
    assert_eq!(config["memory"]["size"], 256u64 << 20);
    assert_eq!(config["payload"]["cmdline"], "console=ttyS0");
    assert_eq!(config["serial"]["mode"], "File");
    assert_eq!(config["serial"]["file"], vm["serial_log"]);

    let (_, gpus) = h.call(Method::GET, "/v1/gpus", None).await;
    let entry = gpus["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["bdf"] == GPU)
        .unwrap()
        .clone();
    assert_eq!(entry["owner"], "train");

    kill(vm["pid"].as_u64().unwrap(), libc::SIGKILL);
    h.eventually("the VM to be stopped", || {
        h.manager.store().instance("train").unwrap().unwrap().state == VmState::Stopped
    })
    .await;
    let vm = info(&h, "train").await;
    assert_eq!(vm["last_exit"]["signal"], 9, "{vm}");
    assert!(vm["pid"].is_null());
    assert_eq!(vm["gpus"], json!([]));
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert!(h.manager.store().all_gpus().unwrap().is_empty());
    assert!(h
        .db_snapshot()
        .iter()
        .all(|row| !row.starts_with("driver_records")));
}

#[tokio::test]
async fn shutdown_boot_and_delete_move_the_gpu_each_time() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let mut body = h.vm("svc");
    body["gpu_devices"] = json!([GPU]);
    let vm = create(&h, body).await;
    assert_eq!(vm["state"], "created");
    let (status, vm) = h.call(Method::POST, "/v1/vms/svc/boot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["state"], "running");
    let (status, again) = h.call(Method::POST, "/v1/vms/svc/boot", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&again), "invalid_state");
    let (status, _) = h.call(Method::POST, "/v1/vms/svc/reboot", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, vm) = h.call(Method::POST, "/v1/vms/svc/shutdown", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["state"], "stopped");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    let (status, body) = h.call(Method::POST, "/v1/vms/svc/reboot", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "invalid_state");

    // Booting a stopped VM takes its GPU again, in a new VMM.
    let (status, vm) = h.call(Method::POST, "/v1/vms/svc/boot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["gpus"][0]["bdf"], GPU);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
    let pid = vm["pid"].as_u64().unwrap();

    let (status, _) = h.call(Method::DELETE, "/v1/vms/svc", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert!(
        supervisor::start_time(pid as u32).is_none(),
        "the VMM still runs"
    );
    let (status, _) = h.call(Method::GET, "/v1/vms/svc", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(h.db_snapshot().is_empty(), "{:?}", h.db_snapshot());
}

#[tokio::test]
async fn unbind_on_shutdown_off_leaves_the_gpu_on_vfio() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let mut body = h.vm("keep");
    body["gpu_devices"] = json!([GPU]);
    body["gpu_options"] = json!({"unbind_on_shutdown": false});
    create(&h, body).await;
    let (status, _) = h.call(Method::POST, "/v1/vms/keep/shutdown", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
    assert!(
        h.manager.store().all_gpus().unwrap().is_empty(),
        "the GPU is free for others"
    );
}

#[tokio::test]
async fn a_vmm_that_refuses_the_vm_leaves_nothing_behind() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let folder = h.dir.path().join("run/vms/bad");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("refuse-create"), "").unwrap();
    let mut body = h.vm("bad");
    body["gpu_devices"] = json!([GPU]);
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(code(&answer), "vmm_refused");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fake refusal"),
        "{answer}"
    );
    assert!(h.db_snapshot().is_empty(), "{:?}", h.db_snapshot());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn a_missing_vmm_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_dir(hgx_h100().build(), dir, "/nonexistent/form-vmm".into());
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(h.vm("x"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--vmm-binary"),
        "{answer}"
    );
    assert!(h.db_snapshot().is_empty());
}

#[tokio::test]
async fn hotplug_is_refused_until_the_vmm_supports_it_and_works_when_it_does() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    create(&h, h.vm("hot")).await;
    let before = h.db_snapshot();
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/vms/hot/gpus",
            Some(json!({"device": GPU})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(code(&body), "not_supported");
    assert_eq!(h.db_snapshot(), before);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));

    // A VMM that can hotplug gets the GPU as a device and gives it back on removal.
    let folder = h.dir.path().join("run/vms/hot2");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("hotplug"), "").unwrap();
    create(&h, h.vm("hot2")).await;
    let (status, vm) = h
        .call(
            Method::POST,
            "/v1/vms/hot2/gpus",
            Some(json!({"model": "h100", "count": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
    let added: Vec<Value> = h
        .vmm_requests("hot2")
        .into_iter()
        .filter(|r| r["endpoint"] == "vm.add-device")
        .collect();
    assert_eq!(added.len(), 2);
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/vms/hot/gpus",
            Some(json!({"device": GPU})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "gpu_in_use");
    let (status, vm) = h
        .call(Method::DELETE, &format!("/v1/vms/hot2/gpus/{GPU}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["gpus"].as_array().unwrap().len(), 1);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

/// Records a VM with `GPU` bound to vfio-pci and a VMM `pid` as a crashed service
/// would have left it.
fn leave_running_vm(h: &Harness, name: &str, pid: u32, start_time: u64) {
    let config: VmInstanceConfig = serde_json::from_value(h.vm(name)).unwrap();
    let config = VmInstanceConfig {
        gpu_devices: vec![GPU.into()],
        gpu_options: GpuOptions::default(),
        ..config
    };
    let record = InstanceRecord {
        config,
        state: VmState::Stopped,
        vmm: None,
        serial_log: "/dev/null".into(),
        last_exit: None,
        created_at: now(),
        updated_at: now(),
    };
    let gpu = GpuAssignment::gpu(GPU.parse().unwrap(), name, "gpu0");
    let mut store = h.manager.store();
    store.insert_instance(&record, &[gpu]).unwrap();
    let vmm = VmmProcess {
        pid,
        start_time,
        api_socket: h.dir.path().join("gone.sock").display().to_string(),
    };
    store.set_running(name, VmState::Running, &vmm).unwrap();
    let fixture = h.fixture.lock().unwrap();
    let mut records = store.driver_records();
    GpuBinder::new(&fixture.host, &fixture.kernel, &mut records)
        .bind(
            &GPU.parse().unwrap(),
            &BindOptions {
                force: false,
                vfio_node_timeout: Duration::from_millis(200),
            },
        )
        .unwrap();
}

#[tokio::test]
async fn restart_releases_the_gpus_of_a_dead_vmm() {
    let h = Harness::new(hgx_h100());
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let start = supervisor::start_time(pid).unwrap_or(1);
    child.wait().unwrap();
    leave_running_vm(&h, "ghost", pid, start);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));

    let restarted = h.restarted();
    let adopted = restarted.reconcile().await.unwrap();
    assert!(adopted.is_empty());
    let record = restarted.store().instance("ghost").unwrap().unwrap();
    assert_eq!(record.state, VmState::Stopped);
    assert!(record.last_exit.unwrap().reason.contains("not running"));
    assert_eq!(record.config.gpu_devices, [GPU]);
    assert!(restarted.store().all_gpus().unwrap().is_empty());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn restart_readopts_a_live_vmm_and_releases_its_gpu_when_it_dies() {
    let h = Harness::new(hgx_h100());
    let mut child = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = supervisor::start_time(pid).unwrap();
    leave_running_vm(&h, "alive", pid, start);

    let restarted = h.restarted();
    assert_eq!(restarted.reconcile().await.unwrap(), ["alive"]);
    let record = restarted.store().instance("alive").unwrap().unwrap();
    assert_eq!(record.state, VmState::Running);
    assert_eq!(record.vmm.as_ref().map(|v| v.pid), Some(pid));
    assert_eq!(restarted.store().all_gpus().unwrap().len(), 1);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));

    child.kill().unwrap();
    child.wait().unwrap();
    h.eventually("the adopted VMM's exit to be noticed", || {
        restarted.store().instance("alive").unwrap().unwrap().state == VmState::Stopped
    })
    .await;
    assert!(restarted.store().all_gpus().unwrap().is_empty());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn restart_readopts_a_vmm_the_service_started() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let mut body = h.vm("kept");
    body["gpu_devices"] = json!([GPU]);
    body["boot"] = json!(true);
    let vm = create(&h, body).await;
    let restarted = h.restarted();
    assert_eq!(restarted.reconcile().await.unwrap(), ["kept"]);
    let record = restarted.store().instance("kept").unwrap().unwrap();
    assert_eq!(record.state, VmState::Running);
    assert_eq!(record.vmm.map(|v| u64::from(v.pid)), vm["pid"].as_u64());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
}

#[tokio::test]
async fn a_failed_boot_of_a_stopped_vm_releases_its_gpu_and_says_why() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let mut body = h.vm("again");
    body["gpu_devices"] = json!([GPU]);
    create(&h, body).await;
    let (status, _) = h.call(Method::POST, "/v1/vms/again/shutdown", None).await;
    assert_eq!(status, StatusCode::OK);
    std::fs::write(h.dir.path().join("run/vms/again/refuse-create"), "").unwrap();
    let (status, body) = h.call(Method::POST, "/v1/vms/again/boot", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "vmm_refused");
    let vm = info(&h, "again").await;
    assert_eq!(vm["state"], "stopped");
    assert!(vm["pid"].is_null());
    let reason = vm["last_exit"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("start failed"), "{reason}");
    assert_eq!(vm["gpus"], json!([]));
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}
