//! The binary against a fake service: what it sends, what it prints, how it exits.

mod common;

use std::time::Duration;

use common::tls::Pki;
use common::{ctl, temp_file, FakeService};
use serde_json::json;

fn vm(name: &str, state: &str) -> serde_json::Value {
    json!({
        "name": name,
        "state": state,
        "config": {"name": name, "kernel": "/srv/vmlinux", "vcpus": 4, "memory": 17179869184u64,
                   "gpu_devices": ["0000:19:00.0", "0000:3b:00.0"],
                   "gpu_options": {"enable_nvidia_gpudirect": false, "nvidia_gpudirect_clique": 0,
                                   "unbind_on_shutdown": true},
                   "boot": false},
        "gpus": [
            {"bdf": "0000:19:00.0", "device_id": "gpu0", "name": "NVIDIA H100", "numa_node": 0},
            {"bdf": "0000:3b:00.0", "device_id": "gpu1", "name": "NVIDIA H100", "numa_node": 1}
        ],
        "pid": if state == "stopped" { json!(null) } else { json!(4242) },
        "api_socket": null,
        "serial_log": format!("/var/lib/form-vmm/vms/{name}/serial.log"),
        "last_exit": null,
        "created_at": 1790000000u64,
        "updated_at": 1790000000u64
    })
}

fn gpus() -> serde_json::Value {
    json!({"gpus": [
        {"bdf": "0000:19:00.0", "name": "NVIDIA GH100 [H100 SXM5 80GB]", "vendor_id": 4318,
         "device_id": 8996, "driver": "vfio-pci", "iommu_group": 12, "numa_node": 0,
         "parent_bridge": "0000:18:00.0", "boot_vga": false, "owner": "train-1"},
        {"bdf": "0000:3b:00.0", "name": "NVIDIA GH100 [H100 SXM5 80GB]", "vendor_id": 4318,
         "device_id": 8996, "driver": "nvidia", "iommu_group": 30, "numa_node": 1,
         "parent_bridge": null, "boot_vga": false, "owner": null}
    ]})
}

#[test]
fn gpu_list_prints_a_table_and_json_verbatim() {
    let service = FakeService::unix();
    service.route("GET", "/v1/gpus", 200, gpus());

    let run = service.ctl(&["gpu", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "BDF           NAME                           DRIVER    IOMMU  NUMA  OWNER\n\
         0000:19:00.0  NVIDIA GH100 [H100 SXM5 80GB]  vfio-pci  12     0     train-1\n\
         0000:3b:00.0  NVIDIA GH100 [H100 SXM5 80GB]  nvidia    30     1     -\n"
    );

    let run = service.ctl(&["gpu", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{}\n", gpus()));

    let requests = service.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests
        .iter()
        .all(|r| r.method == "GET" && r.target == "/v1/gpus" && r.body.is_empty()));
}

#[test]
fn create_sends_the_whole_configuration() {
    let service = FakeService::unix();
    service.route("POST", "/v1/vms", 201, vm("vm1", "running"));

    let run = service.ctl(&[
        "create",
        "--name",
        "vm1",
        "--kernel",
        "/srv/vmlinux",
        "--initramfs",
        "relative/initrd",
        "--cmdline",
        "console=ttyS0",
        "--cpus",
        "4",
        "--memory",
        "16G",
        "--gpu",
        "19:00.0",
        "--gpu",
        "/sys/bus/pci/devices/0000:3b:00.0",
        "--nvidia-gpudirect-clique",
        "2",
        "--no-unbind-on-shutdown",
        "--no-numa-affinity",
        "--boot",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("created vm1\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("state:              running\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("  gpu1    0000:3b:00.0  NVIDIA H100  1\n"),
        "{}",
        run.stdout
    );

    let requests = service.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(
        (sent.method.as_str(), sent.target.as_str()),
        ("POST", "/v1/vms")
    );
    assert_eq!(sent.content_type.as_deref(), Some("application/json"));
    assert_eq!(sent.authorization, None, "no token over the socket");
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        sent.json(),
        json!({
            "name": "vm1",
            "kernel": "/srv/vmlinux",
            "initramfs": cwd.join("relative/initrd").to_str().unwrap(),
            "cmdline": "console=ttyS0",
            "vcpus": 4,
            "memory": 17179869184u64,
            "gpu_devices": ["0000:19:00.0", "0000:3b:00.0"],
            "gpu_options": {"enable_nvidia_gpudirect": true, "nvidia_gpudirect_clique": 2,
                            "unbind_on_shutdown": false, "numa_affinity": false},
            "boot": true
        })
    );
}

#[test]
fn create_sends_disks_networks_and_the_files_cloud_init_needs() {
    let service = FakeService::unix();
    service.route("POST", "/v1/vms", 201, vm("gpu-vm", "running"));
    let (dir, key) = temp_file(
        "id_ed25519.pub",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA ops@lab\n",
    );
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#cloud-config\nruncmd: [\"true\"]\n").unwrap();

    let run = service.ctl(&[
        "create",
        "--name",
        "gpu-vm",
        "--kernel",
        "/srv/vmlinux",
        "--disk",
        "/srv/root.raw",
        "--disk",
        "relative/data.raw,readonly=on",
        "--net",
        "bridge=br0",
        "--net",
        "--ssh-key",
        key.to_str().unwrap(),
        "--user-data",
        user_data.to_str().unwrap(),
        "--hostname",
        "gpu-1",
        "--package",
        "htop",
        "--run",
        "nvidia-smi -pm 1",
        "--package",
        "nvidia-driver-550",
        "--run",
        "echo \"ready: yes\" > /run/ready",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let cwd = std::env::current_dir().unwrap();
    let sent = service.requests()[0].json();
    assert_eq!(
        sent["disks"],
        json!([
            {"path": "/srv/root.raw", "readonly": false},
            {"path": cwd.join("relative/data.raw").to_str().unwrap(), "readonly": true}
        ])
    );
    assert_eq!(sent["networks"], json!([{"bridge": "br0"}, {}]));
    assert_eq!(
        sent["cloud_init"],
        json!({
            "hostname": "gpu-1",
            "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA ops@lab"],
            "packages": ["htop", "nvidia-driver-550"],
            "runcmd": ["nvidia-smi -pm 1", "echo \"ready: yes\" > /run/ready"],
            "user_data": "#cloud-config\nruncmd: [\"true\"]\n"
        })
    );
}

#[test]
fn unreadable_cloud_init_files_exit_2_before_any_request() {
    let service = FakeService::unix();
    service.route("POST", "/v1/vms", 201, vm("x", "created"));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pub");
    for flag in ["--ssh-key", "--user-data"] {
        let run = service.ctl(&[
            "create",
            "--name",
            "x",
            "--kernel",
            "/k",
            flag,
            missing.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 2, "{flag}: {}", run.stderr);
        assert!(
            run.stderr.contains(flag) && run.stderr.contains("nope.pub"),
            "{flag}: {}",
            run.stderr
        );
    }
    assert!(service.requests().is_empty());
}

#[test]
fn create_by_model_uses_the_defaults_the_service_documents() {
    let service = FakeService::unix();
    service.route("POST", "/v1/vms", 201, vm("t", "created"));
    let run = service.ctl(&[
        "create",
        "--name",
        "t",
        "--kernel",
        "/k",
        "--gpu-model",
        "h100",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{}\n", vm("t", "created")));
    assert_eq!(
        service.requests()[0].json(),
        json!({
            "name": "t", "kernel": "/k", "vcpus": 1, "memory": 536870912u64,
            "gpu_request": {"model": "h100", "count": 1},
            "gpu_options": {"enable_nvidia_gpudirect": false, "nvidia_gpudirect_clique": 0,
                            "unbind_on_shutdown": true, "numa_affinity": true},
            "boot": false
        })
    );
}

#[test]
fn create_sends_huge_pages_and_the_numa_choice_and_shows_the_guest_nodes() {
    let service = FakeService::unix();
    let mut answer = vm("hgx", "running");
    answer["config"]["hugepages"] = json!(true);
    answer["config"]["hugepage_size"] = json!("1G");
    answer["guest_numa"] = json!([
        {"guest_node": 0, "host_node": 0, "vcpus": [0, 1, 2, 3, 4, 5], "memory": 8589934592u64,
         "gpus": ["0000:19:00.0"], "distances": [10, 21]},
        {"guest_node": 1, "host_node": 1, "vcpus": [6, 7], "memory": 8589934592u64,
         "gpus": ["0000:3b:00.0"], "distances": [21, 10]}
    ]);
    service.route("POST", "/v1/vms", 201, answer);
    let run = service.ctl(&[
        "create",
        "--name",
        "hgx",
        "--kernel",
        "/k",
        "--cpus",
        "8",
        "--memory",
        "16G",
        "--gpu-model",
        "h100",
        "--gpu-count",
        "2",
        "--hugepages",
        "--hugepage-size",
        "1G",
        "--numa",
        "mirror",
        "--numa-vcpus",
        "6,2",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in [
        "numa node:          mirrored on host nodes 0, 1\n",
        "hugepages:          1G\n",
        "  0     0          0-5    8 GiB   1     10 21\n",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in\n{}",
            run.stdout
        );
    }
    assert_eq!(
        service.requests()[0].json(),
        json!({
            "name": "hgx", "kernel": "/k", "vcpus": 8, "memory": 17179869184u64,
            "gpu_request": {"model": "h100", "count": 2},
            "gpu_options": {"enable_nvidia_gpudirect": false, "nvidia_gpudirect_clique": 0,
                            "unbind_on_shutdown": true, "numa_affinity": true},
            "hugepages": true, "hugepage_size": "1G", "numa": "mirror", "numa_vcpus": [6, 2],
            "boot": false
        })
    );

    // A short pool is a conflict: exit 5 and the service's message.
    let service = FakeService::unix();
    service.route(
        "POST",
        "/v1/vms",
        409,
        json!({"error": {"code": "hugepages_short", "message": "host NUMA node 1 has 4 free 1 GiB huge pages and the VM needs 8 there (4 short)"}}),
    );
    let run = service.ctl(&["create", "--name", "a", "--kernel", "/k", "--hugepages"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("(4 short)"), "{}", run.stderr);
    assert_eq!(service.requests()[0].json()["hugepages"], true);
    let flat = service.ctl(&["create", "--name", "a", "--kernel", "/k", "--numa", "flat"]);
    assert_eq!(
        service.requests()[1].json()["numa"],
        "flat",
        "{}",
        flat.stderr
    );
}

#[test]
fn bad_input_fails_before_any_request() {
    let service = FakeService::unix();
    for (args, says) in [
        (
            &["create", "--name", "a", "--kernel", "/k", "--gpu", "1:00.0"][..],
            "not a PCI address",
        ),
        (
            &[
                "create",
                "--name",
                "a",
                "--kernel",
                "/k",
                "--gpu-count",
                "2",
            ],
            "--gpu-model",
        ),
        (
            &["create", "--name", "a", "--kernel", "/k", "--memory", "12X"],
            "unknown unit",
        ),
        (
            &["create", "--name", "a", "--kernel", "/k", "--package", ""],
            "--package",
        ),
        (
            &["create", "--name", "a", "--kernel", "/k", "--run", ""],
            "give a shell command",
        ),
        (&["gpu", "bind", "0000:01:00.9"], "out of range"),
        (&["frobnicate"], "unrecognized subcommand"),
    ] {
        let run = service.ctl(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    assert!(service.requests().is_empty());
}

#[test]
fn service_errors_map_to_exit_statuses() {
    let service = FakeService::unix();
    service.error(
        "GET",
        "/v1/vms/ghost",
        404,
        "vm_not_found",
        "no VM named ghost",
    );
    service.error(
        "POST",
        "/v1/vms/vm1/boot",
        409,
        "invalid_state",
        "vm1 is running",
    );
    service.error(
        "POST",
        "/v1/vms/vm1/reboot",
        502,
        "vmm_failed",
        "form-vmm refused vm.reboot",
    );
    service.error(
        "POST",
        "/v1/vms",
        400,
        "payload_not_found",
        "/k does not exist",
    );
    for (args, code, message) in [
        (&["info", "ghost"][..], 4, "error: no VM named ghost\n"),
        (&["boot", "vm1"], 5, "error: vm1 is running\n"),
        (&["reboot", "vm1"], 1, "error: form-vmm refused vm.reboot\n"),
        (
            &["create", "--name", "vm1", "--kernel", "/k"],
            2,
            "error: /k does not exist\n",
        ),
    ] {
        let run = service.ctl(args);
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr, message, "{args:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }

    // Scripts using --json get the error body on stdout too.
    let run = service.ctl(&["--json", "info", "ghost"]);
    assert_eq!(run.code, 4);
    let body: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["error"]["code"], "vm_not_found");
}

#[test]
fn conflicts_exit_5() {
    let service = FakeService::unix();
    service.error(
        "POST",
        "/v1/vms",
        409,
        "gpu_in_use",
        "GPU 0000:19:00.0 belongs to VM train-1",
    );
    let run = service.ctl(&[
        "create", "--name", "b", "--kernel", "/k", "--gpu", "19:00.0",
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("belongs to VM train-1"),
        "{}",
        run.stderr
    );
}

#[test]
fn vm_lifecycle_commands_hit_their_routes() {
    let service = FakeService::unix();
    service.route(
        "GET",
        "/v1/vms",
        200,
        json!({"vms": [vm("vm1", "running"), vm("old", "stopped")]}),
    );
    service.route("GET", "/v1/vms/vm1", 200, vm("vm1", "running"));
    service.route("POST", "/v1/vms/vm1/boot", 200, vm("vm1", "running"));
    service.route("POST", "/v1/vms/vm1/shutdown", 200, vm("vm1", "stopped"));
    service.route("POST", "/v1/vms/vm1/reboot", 200, vm("vm1", "running"));
    service.route_raw("DELETE", "/v1/vms/vm1", 204, "", Duration::ZERO);

    let run = service.ctl(&["list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "NAME  STATE    VCPUS  MEMORY  GPUS  DISKS  NETS  PID\n\
         vm1   running  4      16 GiB  2     0      0     4242\n\
         old   stopped  4      16 GiB  2     0      0     -\n"
    );
    let run = service.ctl(&["info", "vm1"]);
    assert!(
        run.stdout
            .contains("serial log:         /var/lib/form-vmm/vms/vm1/serial.log\n"),
        "{}",
        run.stdout
    );
    for (command, printed) in [
        ("boot", "vm1: running\n"),
        ("shutdown", "vm1: stopped\n"),
        ("reboot", "vm1: running\n"),
        ("delete", "deleted vm1\n"),
    ] {
        let run = service.ctl(&[command, "vm1"]);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (0, printed),
            "{command}: {}",
            run.stderr
        );
    }
    let run = service.ctl(&["--json", "delete", "vm1"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, ""),
        "204 prints nothing"
    );

    let sent: Vec<(String, String)> = service
        .requests()
        .into_iter()
        .map(|r| (r.method, r.target))
        .collect();
    let expected = [
        ("GET", "/v1/vms"),
        ("GET", "/v1/vms/vm1"),
        ("POST", "/v1/vms/vm1/boot"),
        ("POST", "/v1/vms/vm1/shutdown"),
        ("POST", "/v1/vms/vm1/reboot"),
        ("DELETE", "/v1/vms/vm1"),
        ("DELETE", "/v1/vms/vm1"),
    ]
    .map(|(m, t)| (m.to_string(), t.to_string()));
    assert_eq!(sent, expected);
}

#[test]
fn names_cannot_reach_other_routes() {
    let service = FakeService::unix();
    let run = service.ctl(&["info", "../gpus"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(service.requests()[0].target, "/v1/vms/..%2Fgpus");
}

#[test]
fn device_commands_send_addresses() {
    let service = FakeService::unix();
    service.route("POST", "/v1/vms/vm1/gpus", 200, vm("vm1", "created"));
    service.route("GET", "/v1/vms/vm1", 200, vm("vm1", "created"));
    service.route(
        "DELETE",
        "/v1/vms/vm1/gpus/0000:3b:00.0",
        200,
        vm("vm1", "created"),
    );

    let run = service.ctl(&["add-device", "vm1", "--gpu", "3b:00.0"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("gpus:\n  DEVICE  BDF"),
        "{}",
        run.stdout
    );
    let run = service.ctl(&[
        "add-device",
        "vm1",
        "--gpu-model",
        "H100",
        "--gpu-count",
        "2",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = service.ctl(&["remove-device", "vm1", "--id", "gpu1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = service.ctl(&["remove-device", "vm1", "--gpu", "0000:3b:00.0"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = service.ctl(&["remove-device", "vm1", "--id", "gpu7"]);
    assert_eq!(run.code, 4);
    assert!(
        run.stderr.contains(
            "no GPU with device id 'gpu7'; it has: gpu0 (0000:19:00.0), gpu1 (0000:3b:00.0)"
        ),
        "{}",
        run.stderr
    );

    let requests = service.requests();
    assert_eq!(requests[0].json(), json!({"device": "0000:3b:00.0"}));
    assert_eq!(requests[1].json(), json!({"model": "H100", "count": 2}));
    let targets: Vec<&str> = requests.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/v1/vms/vm1/gpus",
            "/v1/vms/vm1/gpus",
            "/v1/vms/vm1",
            "/v1/vms/vm1/gpus/0000:3b:00.0",
            "/v1/vms/vm1/gpus/0000:3b:00.0",
            "/v1/vms/vm1",
        ]
    );
}

#[test]
fn a_gpu_the_guest_keeps_is_a_conflict_and_force_asks_for_detach() {
    let service = FakeService::unix();
    service.error(
        "DELETE",
        "/v1/vms/vm1/gpus/0000:3b:00.0",
        409,
        "eject_timeout",
        "the guest of VM vm1 did not eject GPU 0000:3b:00.0 within 10s",
    );
    service.route(
        "DELETE",
        "/v1/vms/vm1/gpus/0000:3b:00.0?force=true",
        200,
        vm("vm1", "running"),
    );
    let run = service.ctl(&["remove-device", "vm1", "--gpu", "3b:00.0"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("did not eject GPU"), "{}", run.stderr);
    let run = service.ctl(&["remove-device", "vm1", "--gpu", "3b:00.0", "--force"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let targets: Vec<String> = service
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/v1/vms/vm1/gpus/0000:3b:00.0",
            "/v1/vms/vm1/gpus/0000:3b:00.0?force=true"
        ]
    );
}

#[test]
fn doctor_passes_memory_and_exits_1_on_errors() {
    let service = FakeService::unix();
    let report = json!({"worst": "error", "findings": [
        {"check": "iommu", "severity": "ok", "summary": "IOMMU groups present", "remedy": null},
        {"check": "memlock", "severity": "error", "summary": "locked memory limit 8 MiB",
         "remedy": "raise LimitMEMLOCK"}
    ]});
    service.route("GET", "/v1/doctor?memory=68719476736", 200, report.clone());
    service.route(
        "GET",
        "/v1/doctor",
        200,
        json!({"worst": "warning", "findings": [
            {"check": "hugepages", "severity": "warning", "summary": "none reserved", "remedy": null}
        ]}),
    );

    let run = service.ctl(&["doctor", "--memory", "64G"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "[  ok   ] iommu: IOMMU groups present\n\
         [ ERROR ] memlock: locked memory limit 8 MiB\n\
         \x20         fix: raise LimitMEMLOCK\n"
    );
    let run = service.ctl(&["doctor", "--memory", "64G", "--json"]);
    assert_eq!((run.code, run.stdout), (1, format!("{report}\n")));
    let run = service.ctl(&["doctor"]);
    assert_eq!(run.code, 0, "warnings alone pass");
    assert!(
        run.stdout.contains("[WARNING] hugepages: none reserved"),
        "{}",
        run.stdout
    );
}

#[test]
fn gpu_bind_and_unbind() {
    let service = FakeService::unix();
    service.route("POST", "/v1/gpus/0000:19:00.0/bind", 200, json!({}));
    let run = service.ctl(&["gpu", "bind", "19:00.0", "--force"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "0000:19:00.0: bound to vfio-pci\n"),
        "{}",
        run.stderr
    );
    assert_eq!(service.requests()[0].json(), json!({"force": true}));

    // A service without the route: exit 4 and a pointer to the local command.
    let run = service.ctl(&["gpu", "unbind", "0000:19:00.0"]);
    assert_eq!(run.code, 4);
    assert!(
        run.stderr
            .contains("no route POST /v1/gpus/0000:19:00.0/unbind"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("`vmm-service gpu unbind 0000:19:00.0`"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_service_exits_3_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let run = ctl(&["--socket", socket.to_str().unwrap(), "list"], None);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(
        run.stderr.contains("start it with `vmm-service serve`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("socket: {}", socket.display())),
        "{}",
        run.stderr
    );

    // The socket comes from the environment when --socket is not given.
    let run = ctl(
        &["list"],
        Some(("FORM_VMM_SOCKET", socket.to_str().unwrap())),
    );
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains(socket.to_str().unwrap()),
        "{}",
        run.stderr
    );

    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let run = ctl(&["--socket", stale.to_str().unwrap(), "list"], None);
    assert_eq!(run.code, 3);
    assert!(
        run.stderr.contains("nothing is listening"),
        "{}",
        run.stderr
    );
}

#[test]
fn tcp_sends_the_token_and_a_refused_token_exits_6() {
    let (service, url) = FakeService::tcp();
    service.route("GET", "/v1/vms", 200, json!({"vms": []}));
    let (_dir, token_file) = temp_file("token", "s3cret\n");

    let run = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            token_file.to_str().unwrap(),
            "list",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("no VMs"), "{}", run.stdout);
    let run = ctl(
        &["--url", &url, "list"],
        Some(("FORM_VMM_TOKEN", "from-env")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let tokens: Vec<Option<String>> = service
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        tokens,
        [
            Some("Bearer s3cret".to_string()),
            Some("Bearer from-env".to_string())
        ]
    );

    service.error(
        "GET",
        "/v1/gpus",
        401,
        "unauthorized",
        "missing or wrong bearer token",
    );
    let run = ctl(
        &["--url", &url, "gpu", "list"],
        Some(("FORM_VMM_TOKEN", "wrong")),
    );
    assert_eq!(run.code, 6, "{}", run.stderr);

    let run = ctl(&["--url", &url, "list"], None);
    assert_eq!(run.code, 2, "no token is a usage error");
    assert!(run.stderr.contains("--token-file"), "{}", run.stderr);
    let (_empty_dir, empty) = temp_file("token", "\n");
    let run = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            empty.to_str().unwrap(),
            "list",
        ],
        None,
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is empty"), "{}", run.stderr);
    let run = ctl(
        &["--url", "ftp://h:1", "list"],
        Some(("FORM_VMM_TOKEN", "t")),
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("https://HOST:PORT"), "{}", run.stderr);
}

#[test]
fn slow_and_broken_answers_exit_1() {
    let service = FakeService::unix();
    service.route_raw(
        "GET",
        "/v1/vms",
        200,
        "{\"vms\": []}",
        Duration::from_secs(5),
    );
    service.route_raw(
        "GET",
        "/v1/gpus",
        200,
        "{\"not\": \"a gpu list\"}",
        Duration::ZERO,
    );
    service.route_raw("GET", "/v1/doctor", 500, "oops", Duration::ZERO);

    let run = service.ctl(&["--timeout", "1", "list"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("no answer from vmm-service"),
        "{}",
        run.stderr
    );
    let run = service.ctl(&["gpu", "list"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot read"), "{}", run.stderr);
    let run = service.ctl(&["doctor"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("HTTP 500 to GET /v1/doctor: oops"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_closed_stdout_is_not_a_failure() {
    let service = FakeService::unix();
    service.route("GET", "/v1/gpus", 200, gpus());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_form-vmm-ctl"))
        .args(["--socket", service.socket.to_str().unwrap(), "gpu", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the answer can have arrived, as with `| head -0`.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(service.requests().len(), 1);
}

#[test]
fn console_prints_the_log_as_the_guest_wrote_it() {
    let service = FakeService::unix();
    // CRLF, an escape sequence and bytes that are not UTF-8, with no final newline: a
    // serial port's output, which must reach stdout unchanged.
    let log = b"[    0.000000] Linux\r\n\x1b[1mci-info\x1b[0m: 10.0.0.7 \xff\xfe\r\nlogin: ";
    service.console("/v1/vms/vm1/console", log, 47, 47, false);
    service.console(
        "/v1/vms/vm1/console?tail=1048576",
        b"login: ",
        47,
        47,
        false,
    );
    service.error(
        "GET",
        "/v1/vms/ghost/console",
        404,
        "vm_not_found",
        "no VM named ghost",
    );

    let run = service.ctl(&["console", "vm1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout_bytes, log);
    let run = service.ctl(&["console", "vm1", "--tail", "1M"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "login: "));
    let run = service.ctl(&["console", "ghost"]);
    assert_eq!(run.code, 4);
    assert_eq!(run.stderr, "error: no VM named ghost\n");

    let targets: Vec<String> = service.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/vms/vm1/console",
            "/v1/vms/vm1/console?tail=1048576",
            "/v1/vms/ghost/console"
        ]
    );
}

#[test]
fn console_refuses_json_and_tails_beyond_the_cap_before_any_request() {
    let service = FakeService::unix();
    for (args, says) in [
        (&["--json", "console", "vm1"][..], "--json does not apply"),
        (&["console", "vm1", "--tail", "5M"], "more than the 4 MiB"),
        (&["console", "vm1", "--tail", "lots"], "--tail"),
    ] {
        let run = service.ctl(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    assert!(service.requests().is_empty());
}

#[test]
fn console_follow_reads_on_from_each_offset_and_ends_when_the_vm_stops() {
    let service = FakeService::unix();
    service.route("GET", "/v1/vms/vm1", 200, vm("vm1", "running"));
    service.route_then("GET", "/v1/vms/vm1", 200, vm("vm1", "stopped"));
    service.console("/v1/vms/vm1/console?tail=5", b"boot\n", 5, 5, false);
    service.console("/v1/vms/vm1/console?from=5", b"login: ", 12, 12, false);
    // The VM was started again meanwhile: form-vmm truncated the log to a new boot's.
    service.console("/v1/vms/vm1/console?from=12", b"again\n", 6, 6, true);
    service.console("/v1/vms/vm1/console?from=6", b"", 6, 6, false);
    service.console("/v1/vms/vm1/console?from=6", b"power off\n", 16, 16, false);

    let run = service.ctl(&["console", "vm1", "--tail", "5", "-f"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "boot\nlogin: again\npower off\n");
    assert_eq!(
        run.stderr.matches("started over").count(),
        1,
        "one note for the one reset: {}",
        run.stderr
    );
    assert!(run.stderr.contains("vm1"), "{}", run.stderr);

    let targets: Vec<String> = service.requests().into_iter().map(|r| r.target).collect();
    let state_checks = targets.iter().filter(|t| *t == "/v1/vms/vm1").count();
    assert_eq!(state_checks, 2, "running, then stopped: {targets:?}");
    assert_eq!(targets.first().map(String::as_str), Some("/v1/vms/vm1"));
    // After the VM was seen stopped, the log is read once more for what is left (the
    // final "power off"), and that read, which reached the end, is the last request.
    let last_check = targets.iter().rposition(|t| t == "/v1/vms/vm1").unwrap();
    assert_eq!(
        &targets[last_check + 1..],
        ["/v1/vms/vm1/console?from=6"],
        "{targets:?}"
    );
}

#[test]
fn console_follow_of_a_stopped_vm_prints_its_log_and_ends() {
    let service = FakeService::unix();
    service.route("GET", "/v1/vms/old", 200, vm("old", "stopped"));
    service.console(
        "/v1/vms/old/console",
        b"reboot: Power down\n",
        19,
        19,
        false,
    );
    let started = std::time::Instant::now();
    let run = service.ctl(&["console", "old", "--follow"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "reboot: Power down\n");
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_millis(450), "no poll");
    let targets: Vec<String> = service.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/v1/vms/old", "/v1/vms/old/console"]);
}

#[test]
fn https_trusts_the_ca_file_and_names_the_host_when_verification_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "service");
    let other = Pki::new(dir.path(), "other");
    let (service, url) = FakeService::tls(&pki);
    service.route("GET", "/v1/vms", 200, json!({"vms": []}));
    let (_token_dir, token_file) = temp_file("token", "s3cret\n");
    let token = token_file.to_str().unwrap();
    let ca = pki.ca_cert.to_str().unwrap();

    let localhost = url.replace("127.0.0.1", "localhost");
    for url in [&url, &localhost] {
        let run = ctl(
            &["--url", url, "--token-file", token, "--ca-file", ca, "list"],
            None,
        );
        assert_eq!(run.code, 0, "{url}: {}", run.stderr);
        assert!(run.stdout.contains("no VMs"), "{}", run.stdout);
    }
    let run = ctl(
        &["--url", &url, "--token-file", token, "list"],
        Some(("FORM_VMM_CA_FILE", ca)),
    );
    assert_eq!(
        run.code, 0,
        "the CA file from the environment: {}",
        run.stderr
    );
    let tokens: Vec<Option<String>> = service
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(tokens, vec![Some("Bearer s3cret".to_string()); 3]);

    // Without --ca-file the system's store is used: here, one with another CA only.
    let other_ca = other.ca_cert.to_str().unwrap();
    for (args, env) in [
        (vec![], Some(("SSL_CERT_FILE", other_ca))),
        (vec!["--ca-file", other_ca], None),
    ] {
        let mut full = vec!["--url", url.as_str(), "--token-file", token];
        full.extend(args);
        full.push("list");
        let run = ctl(&full, env);
        assert_eq!(run.code, 3, "{}", run.stderr);
        for says in [
            "the TLS certificate of 127.0.0.1",
            "is not signed by a CA this client trusts",
            "--ca-file FILE",
            &format!("url: {url}"),
        ] {
            assert!(run.stderr.contains(says), "want {says:?}: {}", run.stderr);
        }
    }
    assert_eq!(
        service.requests().len(),
        3,
        "no request without a trusted peer"
    );

    // A CA file that holds no certificate is a usage error naming it.
    let (_garbage_dir, garbage) = temp_file("ca.pem", "not PEM\n");
    let garbage = garbage.to_str().unwrap();
    let run = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            token,
            "--ca-file",
            garbage,
            "list",
        ],
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("--ca-file {garbage}: holds no PEM certificate")),
        "{}",
        run.stderr
    );
}

#[test]
fn https_to_a_plain_listener_and_ca_file_with_http_are_explained() {
    let (service, http_url) = FakeService::tcp();
    service.route("GET", "/v1/vms", 200, json!({"vms": []}));
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "service");
    let ca = pki.ca_cert.to_str().unwrap();
    let (_token_dir, token_file) = temp_file("token", "s3cret\n");
    let token = token_file.to_str().unwrap();

    let https_url = http_url.replace("http://", "https://");
    let run = ctl(
        &[
            "--url",
            &https_url,
            "--token-file",
            token,
            "--ca-file",
            ca,
            "list",
        ],
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("does not speak TLS on this port"),
        "{}",
        run.stderr
    );
    let run = ctl(
        &[
            "--url",
            &http_url,
            "--token-file",
            token,
            "--ca-file",
            ca,
            "list",
        ],
        None,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--ca-file is for https://"),
        "{}",
        run.stderr
    );
    assert!(service.requests().is_empty());
}

/// An address of this host other than loopback, if it has one (a route out).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route's source.
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn the_token_goes_over_plain_http_only_to_loopback() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut bytes);
            seen.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        seen
    });
    let run = ctl(
        &["--url", &url, "list"],
        Some(("FORM_VMM_TOKEN", "s3cret-token")),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("refusing to send the bearer token in clear text"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("https://"), "{}", run.stderr);
    // With the operator's consent it goes (and this listener never answers).
    let run = ctl(
        &[
            "--url",
            &url,
            "--allow-plain-http",
            "--timeout",
            "1",
            "list",
        ],
        Some(("FORM_VMM_TOKEN", "s3cret-token")),
    );
    assert_ne!(run.code, 0);
    let seen = received.join().unwrap();
    assert_eq!(seen[0], "", "nothing was sent without consent");
    assert!(
        seen[1].contains("Bearer s3cret-token"),
        "sent with --allow-plain-http: {:?}",
        seen[1]
    );
}
