//! The HTTP API over a real unix socket, with the controller driving a fake VM
//! backend so these run on any host.

mod api_support;
mod kvm_support;

use api_support::{existing_file, request, Reply, TempDir};
use serde_json::json;
use std::path::PathBuf;
use std::thread::JoinHandle;
use vmm::api::server::ApiServer;
use vmm::api::{self};
use vmm::controller::testing::FakeBackend;
use vmm::controller::{Controller, Exit};

struct Vmm {
    _dir: TempDir,
    socket: PathBuf,
    server: ApiServer,
    controller: Option<JoinHandle<Exit>>,
    backend: FakeBackend,
}

impl Vmm {
    fn start() -> Vmm {
        let dir = TempDir::new("api");
        let socket = dir.join("api.sock");
        let (client, inbox) = api::channel().unwrap();
        let server = ApiServer::start(&socket, client).unwrap();
        let backend = FakeBackend::default();
        let controller = {
            let backend = backend.clone();
            std::thread::spawn(move || Controller::new(backend, Some(inbox)).run(None))
        };
        Vmm {
            _dir: dir,
            socket,
            server,
            controller: Some(controller),
            backend,
        }
    }

    fn put(&self, endpoint: &str, body: Option<&str>) -> Reply {
        request(&self.socket, "PUT", &format!("/api/v1/{endpoint}"), body)
    }

    fn get(&self, endpoint: &str) -> Reply {
        request(&self.socket, "GET", &format!("/api/v1/{endpoint}"), None)
    }

    /// vmm.shutdown, then the loop's exit and the socket's removal.
    fn shutdown(mut self) -> Exit {
        let reply = self.put("vmm.shutdown", None);
        assert_eq!(reply.status, 204, "{reply:?}");
        let exit = self.controller.take().unwrap().join().unwrap();
        self.server.stop();
        assert!(!self.socket.exists(), "socket left behind after stop");
        exit
    }
}

fn vm_config() -> String {
    json!({
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
        "memory": {"size": 64u64 << 20},
        "payload": {"kernel": existing_file(), "cmdline": "hello"},
    })
    .to_string()
}

#[test]
fn create_boot_info_shutdown() {
    let vmm = Vmm::start();
    let reply = vmm.put("vm.create", Some(&vm_config()));
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(reply.body.is_empty());

    let info = vmm.get("vm.info");
    assert_eq!(info.status, 200, "{info:?}");
    assert_eq!(info.header("Content-Type"), Some("application/json"));
    assert_eq!(info.json()["state"], "Created");

    assert_eq!(vmm.put("vm.boot", None).status, 204);
    let info = vmm.get("vm.info").json();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["config"]["payload"]["cmdline"], "hello");
    assert_eq!(info["memory_actual_size"], 64u64 << 20);

    assert_eq!(vmm.put("vm.shutdown", None).status, 204);
    assert_eq!(vmm.get("vm.info").json()["state"], "Shutdown");
    assert_eq!(vmm.backend.state().shut_down, 1);

    assert_eq!(vmm.put("vm.delete", None).status, 204);
    assert_eq!(vmm.get("vm.info").status, 404);
    assert_eq!(vmm.shutdown(), Exit::VmmShutdown);
}

#[test]
fn ping_answers_with_version_and_pid() {
    let vmm = Vmm::start();
    let reply = vmm.get("vmm.ping");
    assert_eq!(reply.status, 200);
    let ping = reply.json();
    assert_eq!(ping["pid"], std::process::id());
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    assert!(ping["build_version"].is_string());
    assert_eq!(ping["features"], json!([]));
    vmm.shutdown();
}

#[test]
fn malformed_json_is_400_naming_the_parse_error() {
    let vmm = Vmm::start();
    let reply = vmm.put("vm.create", Some("{\"cpus\": {\"boot_vcpus\": 1,"));
    assert_eq!(reply.status, 400);
    let error = reply.error();
    assert!(
        error.starts_with("malformed request body for vm.create: EOF while parsing"),
        "{error}"
    );
    let reply = vmm.put(
        "vm.create",
        Some("{\"payload\": {}, \"memory\": {\"size\": \"big\"}}"),
    );
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("invalid type"), "{}", reply.error());
    assert_eq!(vmm.backend.state().created, 0);
    vmm.shutdown();
}

#[test]
fn invalid_config_is_400() {
    let vmm = Vmm::start();
    let body = json!({"payload": {"kernel": "/nonexistent/vmlinux"}}).to_string();
    let reply = vmm.put("vm.create", Some(&body));
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.error(),
        "invalid VM configuration: kernel /nonexistent/vmlinux: No such file or directory (os error 2)"
    );
    vmm.shutdown();
}

#[test]
fn unknown_path_is_404() {
    let vmm = Vmm::start();
    let reply = vmm.get("vm.frobnicate");
    assert_eq!(reply.status, 404);
    assert!(reply
        .error()
        .starts_with("unknown API path /api/v1/vm.frobnicate"));
    assert_eq!(request(&vmm.socket, "GET", "/", None).status, 404);
    vmm.shutdown();
}

#[test]
fn wrong_method_is_405_with_allow() {
    let vmm = Vmm::start();
    let reply = vmm.get("vm.boot");
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("PUT"));
    assert_eq!(
        reply.error(),
        "/api/v1/vm.boot does not accept GET; use PUT"
    );
    let reply = request(&vmm.socket, "POST", "/api/v1/vm.info", None);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("GET"));
    vmm.shutdown();
}

#[test]
fn device_endpoints_need_a_vm_and_a_well_formed_body() {
    let vmm = Vmm::start();
    let reply = vmm.put(
        "vm.add-device",
        Some("{\"path\": \"/sys/bus/pci/devices/0000:01:00.0\"}"),
    );
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(
        reply.error().contains("no VM has been created"),
        "{reply:?}"
    );
    let reply = vmm.put("vm.remove-device", Some("{\"id\": \"gpu0\"}"));
    assert_eq!(reply.status, 404, "{reply:?}");
    let reply = vmm.get("vm.counters");
    assert_eq!(reply.status, 404, "{reply:?}");
    let reply = vmm.put("vm.remove-device", Some("{\"name\": \"gpu0\"}"));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply
            .error()
            .contains("malformed request body for vm.remove-device"),
        "{reply:?}"
    );
    vmm.shutdown();
}

#[test]
fn wrong_state_follows_cloud_hypervisor_codes() {
    let vmm = Vmm::start();
    let reply = vmm.put("vm.boot", None);
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.error(),
        "no VM has been created: send vm.create first"
    );
    assert_eq!(vmm.get("vm.info").status, 404);

    assert_eq!(vmm.put("vm.create", Some(&vm_config())).status, 204);
    let reply = vmm.put("vm.create", Some(&vm_config()));
    assert_eq!(reply.status, 409);
    assert!(reply.error().starts_with("a VM already exists"));

    let reply = vmm.put("vm.shutdown", None);
    assert_eq!(reply.status, 405);
    assert!(
        reply.error().contains("the VM is Created"),
        "{}",
        reply.error()
    );
    vmm.shutdown();
}

#[test]
fn backend_failure_is_500_with_the_message() {
    let vmm = Vmm::start();
    vmm.backend.state().fail_create = true;
    let reply = vmm.put("vm.create", Some(&vm_config()));
    assert_eq!(reply.status, 500);
    assert!(!reply.error().is_empty());
    vmm.shutdown();
}

#[test]
fn guest_power_off_ends_the_controller() {
    let mut vmm = Vmm::start();
    assert_eq!(vmm.put("vm.create", Some(&vm_config())).status, 204);
    assert_eq!(vmm.put("vm.boot", None).status, 204);
    vmm.backend.guest_power_off();
    let exit = vmm.controller.take().unwrap().join().unwrap();
    assert_eq!(exit, Exit::GuestPowerOff);
    // With the controller gone, a request still gets an answer: 503.
    let reply = vmm.get("vm.info");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error(), "the VMM is shutting down");
}

#[test]
fn existing_socket_path_is_refused_and_left_alone() {
    let dir = TempDir::new("api-exists");
    let socket = dir.join("api.sock");
    std::fs::write(&socket, b"someone else's").unwrap();
    let (client, _inbox) = api::channel().unwrap();
    let err = ApiServer::start(&socket, client)
        .err()
        .expect("start refused");
    assert_eq!(
        err.to_string(),
        format!(
            "API socket {} exists: another form-vmm may be using it; remove it if stale",
            socket.display()
        )
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"someone else's");
}

#[test]
fn oversized_body_is_413() {
    let vmm = Vmm::start();
    let huge = "x".repeat(vmm::api::server::MAX_BODY_BYTES + 1);
    let reply = vmm.put("vm.create", Some(&huge));
    assert_eq!(reply.status, 413);
    vmm.shutdown();
}
