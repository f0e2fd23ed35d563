//! What a client of the API cannot do to the host: name files outside the operator's
//! image directories, force-bind without the local socket, exceed the operator's
//! admission limits, leave directories behind, grow logs without end, or send bodies
//! past the documented limits. Every refusal is a 4xx with a stable code, and
//! changes nothing.

mod common;
mod support;

use std::os::unix::fs::symlink;
use std::path::Path;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::hgx_h100;
use support::{code, have_python, image_dir, Harness, Operator};
use vmm_service::api::{self, CREATE_BODY_LIMIT, SMALL_BODY_LIMIT};
use vmm_service::instances::{AdmissionLimits, LogLimits};

/// Sends a create that must be refused with `status`/`expected`; checks that nothing
/// changed and returns the message.
async fn refused(h: &Harness, body: Value, status: StatusCode, expected: &str) -> String {
    let before = h.db_snapshot();
    let (got, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(got, status, "answer: {answer}");
    assert_eq!(code(&answer), expected, "answer: {answer}");
    assert_eq!(h.db_snapshot(), before, "the database changed");
    assert!(h.writes().is_empty(), "sysfs was written");
    answer["error"]["message"].as_str().unwrap().to_string()
}

fn vm_dirs(h: &Harness) -> Vec<String> {
    ["state/vms", "run/vms"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(h.dir.path().join(d))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().display().to_string())
        .collect()
}

#[tokio::test]
async fn host_files_outside_the_image_directories_are_refused() {
    let h = Harness::new(hgx_h100());
    let images = image_dir(h.dir.path()).display().to_string();
    let database = h.dir.path().join("service.db").display().to_string();
    for (field, value) in [
        ("initramfs", json!("/etc/shadow")),
        ("kernel", json!("/etc/shadow")),
        ("kernel", json!(format!("{images}/../service.db"))),
        ("disks", json!([{"path": "/dev/vda"}])),
        ("disks", json!([{"path": database}])),
        ("disks", json!([{"path": "/proc/self/fd/0"}])),
    ] {
        let mut body = h.vm("t");
        body[field] = value.clone();
        body["gpu_devices"] = json!(["0000:18:00.0"]);
        let message = refused(&h, body, StatusCode::FORBIDDEN, "path_not_allowed").await;
        assert!(
            message.contains(&images) || message.contains("leads out"),
            "{field} {value}: {message}"
        );
    }
    // The message says where images may come from and how to allow more.
    let mut body = h.vm("t");
    body["initramfs"] = json!("/etc/shadow");
    let message = refused(&h, body, StatusCode::FORBIDDEN, "path_not_allowed").await;
    assert!(message.starts_with("initramfs: '/etc/shadow'"), "{message}");
    assert!(message.contains("--image-dir"), "{message}");
}

#[tokio::test]
async fn symlinks_leading_out_of_the_image_directory_are_refused() {
    let h = Harness::new(hgx_h100());
    let images = image_dir(h.dir.path());
    symlink("/etc/passwd", images.join("passwd")).unwrap();
    symlink("../service.db", images.join("db.raw")).unwrap();
    std::fs::create_dir(images.join("nested")).unwrap();
    symlink("../../state", images.join("nested/state")).unwrap();
    for (field, path) in [
        ("initramfs", images.join("passwd")),
        ("kernel", images.join("db.raw")),
        ("initramfs", images.join("nested/state/vms/x/seed.img")),
    ] {
        let mut body = h.vm("t");
        body[field] = json!(path.display().to_string());
        let message = refused(&h, body, StatusCode::FORBIDDEN, "path_not_allowed").await;
        assert!(message.contains("leads out"), "{message}");
    }
    let mut body = h.vm("t");
    body["disks"] = json!([{"path": images.join("db.raw").display().to_string()}]);
    refused(&h, body, StatusCode::FORBIDDEN, "path_not_allowed").await;
}

#[tokio::test]
async fn a_symlink_inside_the_directory_is_followed_and_the_vmm_gets_the_file() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let images = image_dir(h.dir.path());
    std::fs::create_dir(images.join("v1")).unwrap();
    std::fs::write(images.join("v1/initrd"), b"initrd").unwrap();
    symlink("v1/initrd", images.join("initrd")).unwrap();
    let mut body = h.vm("linked");
    body["initramfs"] = json!(images.join("initrd").display().to_string());
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    let opened = h.vmm_opened("linked");
    let files: Vec<&str> = opened.values().filter_map(Value::as_str).collect();
    let real = std::fs::canonicalize(images.join("v1/initrd")).unwrap();
    assert!(
        files.contains(&real.to_str().unwrap()),
        "the VMM opened {opened:?}"
    );
    // The record keeps the path the client gave.
    assert_eq!(
        vm["config"]["initramfs"],
        json!(images.join("initrd").display().to_string())
    );
}

#[tokio::test]
async fn force_binding_needs_the_local_socket() {
    let h = Harness::new(hgx_h100());
    // A router as a TCP listener serves it (no unix transport).
    let remote =
        api::router(std::sync::Arc::clone(&h.manager)).layer(axum::Extension(api::Transport::Tcp));
    let (status, body) = support::call(
        &remote,
        Method::POST,
        "/v1/gpus/0000:18:00.0/bind",
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "force_not_allowed");
    assert!(h.writes().is_empty());
    // Without force, binding stays open to remote clients.
    let (status, body) = support::call(
        &remote,
        Method::POST,
        "/v1/gpus/0000:18:00.0/bind",
        Some(json!({"force": false})),
    )
    .await;
    assert_ne!(code(&body), "force_not_allowed", "{status} {body}");
}

#[tokio::test]
async fn admission_limits_refuse_with_limit_reached_and_doctor_reports_them() {
    if !have_python() {
        return;
    }
    let h = Harness::with_operator(
        hgx_h100(),
        Operator {
            admission: AdmissionLimits {
                max_vms: Some(3),
                max_memory: Some(1 << 30),
                max_vcpus: Some(4),
            },
            ..Operator::default()
        },
    );
    let vm = |name: &str, memory: u64, vcpus: u32| {
        let mut body = h.vm(name);
        body["memory"] = json!(memory);
        body["vcpus"] = json!(vcpus);
        body
    };
    let (status, answer) = h
        .call(Method::POST, "/v1/vms", Some(vm("a", 512 << 20, 2)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let message = refused(
        &h,
        vm("b", 768 << 20, 1),
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    assert!(message.contains("--max-memory"), "{message}");
    let message = refused(
        &h,
        vm("b", 256 << 20, 3),
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    assert!(message.contains("--max-vcpus"), "{message}");
    let (status, answer) = h
        .call(Method::POST, "/v1/vms", Some(vm("b", 256 << 20, 2)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    let (status, doctor) = h.call(Method::GET, "/v1/doctor", None).await;
    assert_eq!(status, StatusCode::OK, "{doctor}");
    assert_eq!(
        doctor["limits"],
        json!({"max_vms": 3, "vms": 2, "max_memory": 1u64 << 30, "memory": 768u64 << 20,
               "max_vcpus": 4, "vcpus": 4,
               "image_dirs": [image_dir(h.dir.path()).display().to_string()],
               "block_devices": []})
    );
    let finding = doctor_finding(&doctor, "admission-limits");
    assert!(
        finding["summary"].as_str().unwrap().contains("2 of 3"),
        "{finding}"
    );
    // This service keeps its VMMs root and in its own cgroup: the doctor says so,
    // with the flags that would change it.
    let sandbox = doctor_finding(&doctor, "vmm-sandbox");
    assert_eq!(sandbox["severity"], "warning", "{sandbox}");
    assert!(
        sandbox["summary"].as_str().unwrap().contains("stays root")
            && sandbox["remedy"]
                .as_str()
                .unwrap()
                .contains("--vmm-uid-range"),
        "{sandbox}"
    );

    // A stopped VM counts towards --max-vms but not towards memory and vCPUs; it
    // boots again only if it fits.
    let (status, _) = h.call(Method::POST, "/v1/vms/a/shutdown", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = h
        .call(Method::POST, "/v1/vms", Some(vm("c", 512 << 20, 2)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let message = refused(
        &h,
        vm("d", 16 << 20, 1),
        StatusCode::CONFLICT,
        "limit_reached",
    )
    .await;
    assert!(message.contains("--max-vms"), "{message}");
    let (status, answer) = h.call(Method::POST, "/v1/vms/a/boot", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(code(&answer), "limit_reached");
    assert_eq!(
        h.manager.info("a").unwrap().state,
        vmm_service::api::types::VmState::Stopped
    );
    for name in ["a", "b", "c"] {
        let (status, _) = h
            .call(Method::DELETE, &format!("/v1/vms/{name}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn sixty_create_delete_cycles_leave_no_directory() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    for i in 0..60 {
        let name = format!("cycle{i}");
        let mut body = h.vm(&name);
        if i % 2 == 0 {
            body["cloud_init"] = json!({"hostname": "c"});
        }
        let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let (status, _) = h
            .call(Method::DELETE, &format!("/v1/vms/{name}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert_eq!(vm_dirs(&h), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_create_leaves_no_directory() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let folder = h.dir.path().join("run/vms/refused");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("refuse-create"), "").unwrap();
    let mut body = h.vm("refused");
    body["cloud_init"] = json!({});
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(vm_dirs(&h), Vec::<String>::new());
}

#[tokio::test]
async fn logs_over_their_cap_are_rotated_keeping_two() {
    if !have_python() {
        return;
    }
    let h = Harness::with_operator(
        hgx_h100(),
        Operator {
            logs: Some(LogLimits {
                max_bytes: 4096,
                keep: 2,
                interval: std::time::Duration::from_secs(3600),
            }),
            ..Operator::default()
        },
    );
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(h.vm("chatty"))).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    let serial = Path::new(vm["serial_log"].as_str().unwrap()).to_path_buf();
    let vmm_log = serial.with_file_name("vmm.log");
    for round in 0..3u8 {
        use std::io::Write;
        for log in [&serial, &vmm_log] {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            file.write_all(&[b'0' + round; 5000]).unwrap();
        }
        let rotated = h.manager.rotate_logs();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
    }
    let dir = serial.parent().unwrap();
    for name in ["serial.log", "vmm.log"] {
        assert_eq!(std::fs::metadata(dir.join(name)).unwrap().len(), 0);
        assert_eq!(
            std::fs::read(dir.join(format!("{name}.1"))).unwrap(),
            [b'2'; 5000]
        );
        assert_eq!(
            std::fs::read(dir.join(format!("{name}.2"))).unwrap(),
            [b'1'; 5000]
        );
        assert!(!dir.join(format!("{name}.3")).exists());
    }
    // The console follows the emptied log from its start.
    let (status, _) = h
        .call(Method::GET, "/v1/vms/chatty/console?from=5000", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.call(Method::DELETE, "/v1/vms/chatty", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!dir.exists());
}

#[tokio::test]
async fn user_data_of_four_mib_fits_and_larger_bodies_are_413() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    // 4 MiB of user-data, a quarter of it characters JSON writes as escapes.
    let mut user_data = String::from("#!/bin/sh\n");
    while user_data.len() < (4 << 20) - 8 {
        user_data.push_str("echo \"\t\"\n");
    }
    user_data.truncate(4 << 20);
    let mut body = h.vm("big");
    body["cloud_init"] = json!({"user_data": user_data});
    assert!(
        body.to_string().len() > 2 << 20,
        "larger than axum's default limit"
    );
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, _) = h.call(Method::DELETE, "/v1/vms/big", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // One byte over the documented 4 MiB is the service's own refusal...
    let mut body = h.vm("big");
    body["cloud_init"] = json!({"user_data": format!("#!/bin/sh\n{}", "x".repeat(4 << 20))});
    refused(&h, body, StatusCode::BAD_REQUEST, "invalid_config").await;
    // ...and a body past the route's limit is 413 with a code.
    let mut body = h.vm("big");
    body["cmdline"] = json!("x".repeat(CREATE_BODY_LIMIT));
    let message = refused(&h, body, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    assert!(
        message.contains(&CREATE_BODY_LIMIT.to_string()),
        "{message}"
    );
    let (status, answer) = h
        .call(
            Method::POST,
            "/v1/vms/big/gpus",
            Some(json!({"model": "x".repeat(SMALL_BODY_LIMIT)})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(code(&answer), "body_too_large");
}

/// The doctor finding named `check`.
fn doctor_finding<'a>(doctor: &'a Value, check: &str) -> &'a Value {
    doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding: {doctor}"))
}
