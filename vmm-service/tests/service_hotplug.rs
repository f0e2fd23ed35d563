//! GPUs added to and removed from running VMs through the service, with a fake
//! form-vmm whose guest ejects, keeps, or already ejected the device: the service
//! unbinds a GPU only once form-vmm let go of it, and its record says so.

mod common;
mod support;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::hgx_h100;
use support::{code, have_python, Harness};

const GPU: &str = "0000:18:00.0";

/// A VM `name` whose fake VMM hotplugs, holding `GPU` through add-device.
async fn vm_with_hotplugged_gpu(h: &Harness, name: &str) {
    let folder = h.dir.path().join(format!("run/vms/{name}"));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("hotplug"), "").unwrap();
    let (status, info) = h.call(Method::POST, "/v1/vms", Some(h.vm(name))).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let (status, vm) = h
        .call(
            Method::POST,
            &format!("/v1/vms/{name}/gpus"),
            Some(json!({"device": GPU})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
}

fn behave(h: &Harness, name: &str, switch: &str, contents: &str) {
    let path = h.dir.path().join(format!("run/vms/{name}/{switch}"));
    std::fs::write(path, contents).unwrap();
}

fn removals(h: &Harness, name: &str) -> Vec<Value> {
    h.vmm_requests(name)
        .into_iter()
        .filter(|r| r["endpoint"] == "vm.remove-device")
        .map(|r| serde_json::from_str(r["body"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_gpu_the_guest_keeps_stays_the_vms_until_removed_with_force() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "keep").await;
    behave(&h, "keep", "guest-keeps-devices", "");
    let before = h.db_snapshot();

    let path = format!("/v1/vms/keep/gpus/{GPU}");
    let (status, body) = h.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "eject_timeout");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(GPU) && message.contains("force"),
        "{message}"
    );
    assert_eq!(
        h.db_snapshot(),
        before,
        "the GPU is still recorded as the VM's"
    );
    assert_eq!(
        h.driver_of(GPU).as_deref(),
        Some("vfio-pci"),
        "never unbound under the VMM"
    );
    assert_eq!(
        removals(&h, "keep"),
        [json!({"id": "gpu0", "require_eject": true})]
    );

    let (status, body) = h
        .call(Method::DELETE, &format!("{path}?force=maybe"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "bad_request");
    assert_eq!(h.db_snapshot(), before);

    let (status, vm) = h
        .call(Method::DELETE, &format!("{path}?force=true"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["gpus"], json!([]));
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert_eq!(removals(&h, "keep")[1], json!({"id": "gpu0"}));
}

#[tokio::test]
async fn gpu_list_is_answered_while_a_removal_waits_for_the_guest() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "slow").await;
    // The fake's guest takes a second to (not) eject.
    behave(&h, "slow", "guest-keeps-devices", "1");
    let path = format!("/v1/vms/slow/gpus/{GPU}");
    let removal = async {
        let answer = h.call(Method::DELETE, &path, None).await;
        (answer, std::time::Instant::now())
    };
    let listing = async {
        // Long enough for the removal to be waiting on the VMM.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let answer = h.call(Method::GET, "/v1/gpus", None).await;
        (answer, std::time::Instant::now())
    };
    let (((status, body), removed_at), ((list_status, list), listed_at)) =
        tokio::join!(removal, listing);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(list_status, StatusCode::OK, "{list}");
    assert!(listed_at < removed_at, "gpu list waited for the removal");
    let owner = list["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["bdf"] == GPU)
        .map(|g| g["owner"].clone());
    assert_eq!(owner, Some(json!("slow")));
}

#[tokio::test]
async fn a_gpu_the_guest_ejected_on_its_own_is_released_on_removal() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "gone").await;
    behave(&h, "gone", "guest-ejected", "");
    let (status, vm) = h
        .call(Method::DELETE, &format!("/v1/vms/gone/gpus/{GPU}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["gpus"], json!([]));
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn a_vm_whose_guest_keeps_its_gpu_can_still_be_deleted() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "stuck").await;
    behave(&h, "stuck", "guest-keeps-devices", "");
    let (status, _) = h
        .call(Method::DELETE, &format!("/v1/vms/stuck/gpus/{GPU}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = h.call(Method::DELETE, "/v1/vms/stuck", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert!(h.db_snapshot().iter().all(|row| !row.contains("stuck")));
}

#[tokio::test]
async fn gpu_list_is_answered_while_a_bind_waits_on_the_kernel() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    // The bind waits its whole vfio_node_timeout for a group node that never comes.
    h.fixture.lock().unwrap().kernel.no_vfio_nodes();
    let mut body = h.vm("waits");
    body["gpu_devices"] = json!([GPU]);
    let creating = async {
        let answer = h.call(Method::POST, "/v1/vms", Some(body)).await;
        (answer, std::time::Instant::now())
    };
    let listing = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let answer = h.call(Method::GET, "/v1/gpus", None).await;
        (answer, std::time::Instant::now())
    };
    let (((status, created), created_at), ((list_status, list), listed_at)) =
        tokio::join!(creating, listing);
    assert!(status.is_server_error(), "{status} {created}");
    assert_eq!(list_status, StatusCode::OK, "{list}");
    assert!(
        listed_at < created_at,
        "gpu list waited for the bind (it must not hold the store lock or the worker)"
    );
    assert!(h.db_snapshot().iter().all(|row| !row.contains("waits")));
}

#[tokio::test]
async fn a_removal_form_vmm_finishes_late_is_confirmed_through_vm_info() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "late").await;
    // Past the test deadline for vm.remove-device (2 s), within the hold check
    // that follows it.
    behave(&h, "late", "slow-remove", "2.6");
    let (status, vm) = h
        .call(Method::DELETE, &format!("/v1/vms/late/gpus/{GPU}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["gpus"], json!([]));
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    let asked: Vec<Value> = h
        .vmm_requests("late")
        .into_iter()
        .filter(|r| r["endpoint"] == "vm.info")
        .collect();
    assert!(!asked.is_empty(), "the service asked vm.info");
}

#[tokio::test]
async fn a_vmm_that_does_not_answer_a_removal_keeps_the_gpu_recorded_and_bound() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "mute").await;
    let before = h.db_snapshot();
    behave(&h, "mute", "slow-remove", "8");
    let (status, body) = h
        .call(Method::DELETE, &format!("/v1/vms/mute/gpus/{GPU}"), None)
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(code(&body), "vmm_unresponsive");
    assert_eq!(h.db_snapshot(), before, "still the VM's GPU");
    assert_eq!(
        h.driver_of(GPU).as_deref(),
        Some("vfio-pci"),
        "never unbound while the VMM may hold it"
    );
    // Deleting the VM stops the VMM and frees the GPU.
    let (status, body) = h.call(Method::DELETE, "/v1/vms/mute", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn a_vmm_from_before_require_eject_is_told_to_use_force() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    vm_with_hotplugged_gpu(&h, "old").await;
    behave(&h, "old", "before-require-eject", "");
    let before = h.db_snapshot();
    let path = format!("/v1/vms/old/gpus/{GPU}");
    let (status, body) = h.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(code(&body), "not_supported");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("force"),
        "{body}"
    );
    assert_eq!(h.db_snapshot(), before);
    let (status, vm) = h
        .call(Method::DELETE, &format!("{path}?force=true"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn a_gpu_given_at_create_is_one_form_vmm_holds() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let folder = h.dir.path().join("run/vms/cold");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("hotplug"), "").unwrap();
    let mut body = h.vm("cold");
    body["gpu_devices"] = json!([GPU]);
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    // The removal of a cold-plugged GPU that form-vmm answers late is confirmed
    // against vm.info, which lists the devices given at create.
    behave(&h, "cold", "slow-remove", "8");
    let (status, body) = h
        .call(Method::DELETE, &format!("/v1/vms/cold/gpus/{GPU}"), None)
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
}
