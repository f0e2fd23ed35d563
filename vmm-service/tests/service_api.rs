//! The service API refusing bad requests: each answer carries a clear error with a
//! stable code, and a refused request changes nothing (no database row, no sysfs
//! write). Also: one GPU, one owner, even under concurrent creates.

mod common;
mod support;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{hgx_h100, vfio_lab, workstation};
use support::{code, have_python, Harness, HOST_MEMORY};

const H100_0: &str = "0000:18:00.0";

/// Sends a create that must be refused with `status`/`expected`, and checks that
/// nothing changed.
async fn refused(harness: &Harness, body: Value, status: StatusCode, expected: &str) -> String {
    let before = harness.db_snapshot();
    let writes_before = harness.writes().len();
    let (got, answer) = harness.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(got, status, "answer: {answer}");
    assert_eq!(code(&answer), expected, "answer: {answer}");
    let message = answer["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty());
    assert_eq!(harness.db_snapshot(), before, "the database changed");
    assert_eq!(harness.writes().len(), writes_before, "sysfs was written");
    let (_, list) = harness.call(Method::GET, "/v1/vms", None).await;
    assert_eq!(list["vms"].as_array().map(Vec::len), Some(0));
    message
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

#[tokio::test]
async fn unknown_gpu_is_refused() {
    let h = Harness::new(hgx_h100());
    let body = with(h.vm("a"), "gpu_devices", json!(["0000:77:00.0"]));
    let message = refused(&h, body, StatusCode::NOT_FOUND, "unknown_gpu").await;
    assert!(message.contains("0000:77:00.0"), "{message}");
}

#[tokio::test]
async fn malformed_bdf_is_refused() {
    let h = Harness::new(hgx_h100());
    for bad in ["0000:18:00", "zz:00.0", "0000:18:20.0", "0000:18:00.8", ""] {
        let body = with(h.vm("a"), "gpu_devices", json!([bad]));
        refused(&h, body, StatusCode::BAD_REQUEST, "invalid_device").await;
    }
}

#[tokio::test]
async fn path_traversal_in_a_sysfs_path_is_refused() {
    let h = Harness::new(hgx_h100());
    for bad in [
        "/sys/bus/pci/devices/../../../etc/passwd",
        "/sys/bus/pci/devices/0000:18:00.0/../0000:18:00.0",
        "/sys/bus/pci/devices/./0000:18:00.0",
        "/etc/0000:18:00.0",
        "../0000:18:00.0",
    ] {
        let body = with(h.vm("a"), "gpu_devices", json!([bad]));
        refused(&h, body, StatusCode::BAD_REQUEST, "invalid_device").await;
    }
}

#[tokio::test]
async fn a_device_that_is_not_a_gpu_is_refused() {
    let h = Harness::new(vfio_lab());
    // The edu device (class 0x00ff) and the e1000e NIC.
    for device in ["0000:00:03.0", "/sys/bus/pci/devices/0000:00:02.0"] {
        let body = with(h.vm("a"), "gpu_devices", json!([device]));
        refused(&h, body, StatusCode::BAD_REQUEST, "not_a_gpu").await;
    }
}

#[tokio::test]
async fn too_much_memory_and_bad_sizes_are_refused() {
    let h = Harness::new(hgx_h100());
    let message = refused(
        &h,
        with(h.vm("a"), "memory", json!(HOST_MEMORY + (1 << 30))),
        StatusCode::BAD_REQUEST,
        "insufficient_memory",
    )
    .await;
    assert!(message.contains("more than this host"), "{message}");
    for memory in [json!(0), json!((256u64 << 20) + 1), json!(1024)] {
        refused(
            &h,
            with(h.vm("a"), "memory", memory),
            StatusCode::BAD_REQUEST,
            "invalid_config",
        )
        .await;
    }
    for vcpus in [json!(0), json!(9)] {
        refused(
            &h,
            with(h.vm("a"), "vcpus", vcpus),
            StatusCode::BAD_REQUEST,
            "invalid_config",
        )
        .await;
    }
}

#[tokio::test]
async fn bad_names_payloads_and_shapes_are_refused() {
    let h = Harness::new(hgx_h100());
    let long = "a".repeat(64);
    for name in ["", "-a", "a/b", "a b", "ä", long.as_str(), "../x"] {
        refused(
            &h,
            with(h.vm("a"), "name", json!(name)),
            StatusCode::BAD_REQUEST,
            "invalid_config",
        )
        .await;
    }
    // In the image directory but missing, relative, the directory itself: unusable.
    let images = support::image_dir(h.dir.path());
    std::fs::create_dir_all(images.join("sub")).unwrap();
    let missing = images.join("nonexistent/vmlinux");
    let sub = images.join("sub");
    for kernel in [missing.to_str().unwrap(), "vmlinux", sub.to_str().unwrap()] {
        refused(
            &h,
            with(h.vm("a"), "kernel", json!(kernel)),
            StatusCode::BAD_REQUEST,
            "payload_not_found",
        )
        .await;
    }
    // Outside it: not allowed, whether or not it exists.
    for kernel in ["/nonexistent/vmlinux", "/tmp"] {
        refused(
            &h,
            with(h.vm("a"), "kernel", json!(kernel)),
            StatusCode::FORBIDDEN,
            "path_not_allowed",
        )
        .await;
    }
    refused(
        &h,
        with(h.vm("a"), "colour", json!("blue")),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    // Neither a kernel nor a disk to boot from.
    let message = refused(
        &h,
        json!({"name": "a"}),
        StatusCode::BAD_REQUEST,
        "invalid_config",
    )
    .await;
    assert!(message.contains("--image"), "{message}");
    refused(
        &h,
        with(h.vm("a"), "memory", json!("1G")),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn gpu_requests_that_cannot_be_met_are_refused() {
    let h = Harness::new(hgx_h100());
    let both = with(
        with(h.vm("a"), "gpu_devices", json!([H100_0])),
        "gpu_request",
        json!({"model": "H100", "count": 1}),
    );
    let message = refused(&h, both, StatusCode::BAD_REQUEST, "invalid_config").await;
    assert!(message.contains("not both"), "{message}");
    let twice = with(h.vm("a"), "gpu_devices", json!([H100_0, "18:00.0"]));
    refused(&h, twice, StatusCode::BAD_REQUEST, "invalid_config").await;
    let nine = with(
        h.vm("a"),
        "gpu_request",
        json!({"model": "H100", "count": 9}),
    );
    refused(&h, nine, StatusCode::CONFLICT, "gpus_unavailable").await;
    let none = with(
        h.vm("a"),
        "gpu_request",
        json!({"model": "MI300X", "count": 1}),
    );
    refused(&h, none, StatusCode::CONFLICT, "gpus_unavailable").await;
    let zero = with(
        h.vm("a"),
        "gpu_request",
        json!({"model": "H100", "count": 0}),
    );
    refused(&h, zero, StatusCode::BAD_REQUEST, "invalid_config").await;
    let clique = with(
        with(h.vm("a"), "gpu_devices", json!([H100_0])),
        "gpu_options",
        json!({"enable_nvidia_gpudirect": true, "nvidia_gpudirect_clique": 16}),
    );
    refused(&h, clique, StatusCode::BAD_REQUEST, "invalid_config").await;
}

#[tokio::test]
async fn a_console_gpu_in_a_shared_group_is_refused_before_any_write() {
    if !have_python() {
        return;
    }
    // The workstation's RTX 4090 shows the console and shares its group with the root
    // port: the binder refuses it, and the create leaves nothing behind.
    let h = Harness::new(workstation());
    let body = with(h.vm("a"), "gpu_devices", json!(["0000:01:00.0"]));
    refused(&h, body, StatusCode::CONFLICT, "gpu_not_assignable").await;
}

#[tokio::test]
async fn unknown_vms_and_bad_gpu_actions_answer_clear_errors() {
    let h = Harness::new(hgx_h100());
    for (method, path) in [
        (Method::GET, "/v1/vms/nope"),
        (Method::DELETE, "/v1/vms/nope"),
        (Method::POST, "/v1/vms/nope/boot"),
        (Method::POST, "/v1/vms/nope/shutdown"),
        (Method::POST, "/v1/vms/nope/reboot"),
    ] {
        let (status, body) = h.call(method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(code(&body), "vm_not_found");
    }
    let (status, body) = h.call(Method::GET, "/v1/gpus", None).await;
    assert_eq!(status, StatusCode::OK);
    let gpus = body["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 9, "8 H100 and the BMC's VGA: {body}");
    let first = gpus.iter().find(|g| g["bdf"] == H100_0).unwrap();
    assert_eq!(first["parent_bridge"], "0000:17:00.0");
    assert_eq!(first["numa_node"], 0);
    assert!(first["owner"].is_null());
}

#[tokio::test]
async fn duplicate_vm_name_is_refused() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let (status, body) = h.call(Method::POST, "/v1/vms", Some(h.vm("train"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "created");
    let again = with(h.vm("train"), "gpu_devices", json!([H100_0]));
    let before = h.db_snapshot();
    let writes = h.writes().len();
    let (status, body) = h.call(Method::POST, "/v1/vms", Some(again)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "vm_exists");
    assert_eq!(h.db_snapshot(), before);
    assert_eq!(h.writes().len(), writes);
    let (status, _) = h.call(Method::DELETE, "/v1/vms/train", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_for_one_gpu_have_one_winner() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let attempts = 6;
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let router = h.router.clone();
        let body = with(h.vm(&format!("vm{i}")), "gpu_devices", json!([H100_0]));
        tasks.push(tokio::spawn(async move {
            support::call(&router, Method::POST, "/v1/vms", Some(body)).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => winners += 1,
            StatusCode::CONFLICT => assert_eq!(code(&body), "gpu_in_use", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners, 1);
    let owners = h.manager.store().all_gpus().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].bdf.to_string(), H100_0);
    assert_eq!(h.driver_of(H100_0).as_deref(), Some("vfio-pci"));
    let (_, list) = h.call(Method::GET, "/v1/vms", None).await;
    assert_eq!(list["vms"].as_array().unwrap().len(), 1);
    let winner = list["vms"][0]["name"].as_str().unwrap().to_string();
    let (status, _) = h
        .call(Method::DELETE, &format!("/v1/vms/{winner}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.driver_of(H100_0).as_deref(), Some("nvidia"));
    assert!(h.manager.store().all_gpus().unwrap().is_empty());
}

#[tokio::test]
async fn free_gpus_bind_and_unbind_but_a_vms_gpu_does_not() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let path = format!("/v1/gpus/{H100_0}/bind");
    let (status, outcome) = h.call(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["moved"][0]["from"], "nvidia");
    assert_eq!(h.driver_of(H100_0).as_deref(), Some("vfio-pci"));
    let (status, body) = h
        .call(Method::POST, "/v1/gpus/0000:03:00.0/bind", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "the console VGA: {body}");
    assert_eq!(code(&body), "gpu_not_assignable");

    let mut vm = h.vm("holder");
    vm["gpu_devices"] = json!([H100_0]);
    let (status, body) = h.call(Method::POST, "/v1/vms", Some(vm)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let unbind = format!("/v1/gpus/{H100_0}/unbind");
    let (status, body) = h.call(Method::POST, &unbind, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "gpu_in_use");
    assert_eq!(h.driver_of(H100_0).as_deref(), Some("vfio-pci"));
    // Deleting the VM returns the GPU to the driver recorded by the first bind.
    let (status, _) = h.call(Method::DELETE, "/v1/vms/holder", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.driver_of(H100_0).as_deref(), Some("nvidia"));
    let (status, body) = h
        .call(Method::POST, "/v1/gpus/0000:18:00/unbind", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_device");
}
