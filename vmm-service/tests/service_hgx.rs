//! HGX full passthrough through the service: GPUs with the host's NVSwitches, and
//! GPUs with NICs placed behind their PCIe switches (GPUDirect RDMA).

mod common;
mod support;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::hgx::{gpu, hgx_full, nic, nvswitch};
use support::{code, have_python, Harness};
use vmm_service::gpu::{parse_classes, DevicePolicy};

fn allowing(classes: &str) -> DevicePolicy {
    DevicePolicy::allowing(&parse_classes(classes).unwrap())
}

async fn create(h: &Harness, name: &str, request: Value) -> (StatusCode, Value) {
    let mut body = h.vm(name);
    body["gpu_request"] = request;
    h.call(Method::POST, "/v1/vms", Some(body)).await
}

/// The addresses of the VM's functions of `role`.
fn held(info: &Value, role: &str) -> BTreeSet<String> {
    info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["role"] == role)
        .map(|d| d["bdf"].as_str().unwrap().to_string())
        .collect()
}

fn set(addresses: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    addresses.into_iter().collect()
}

#[tokio::test]
async fn eight_gpus_with_nvswitches_get_every_gpu_and_every_nvswitch() {
    if !have_python() {
        return;
    }
    let request = json!({"model": "H100", "count": 8, "nvswitches": true});
    let h = Harness::new(hgx_full());
    let (status, body) = create(&h, "full", request.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "class_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-class bridge"),
        "{body}"
    );
    assert!(h.db_snapshot().is_empty());

    let h = Harness::with_policy(hgx_full(), allowing("nvswitch"));
    let (status, info) = create(&h, "full", request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let gpus = set((0..4).flat_map(|s| (0..2).map(move |k| gpu(s, k))));
    assert_eq!(held(&info, "gpu"), gpus);
    assert_eq!(held(&info, "companion"), set((0..4).map(nvswitch)));
    let ids: Vec<&str> = info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids[..8],
        ["gpu0", "gpu1", "gpu2", "gpu3", "gpu4", "gpu5", "gpu6", "gpu7"]
    );
    assert_eq!(ids[8..], ["dev0", "dev1", "dev2", "dev3"]);
    let create_body = h
        .vmm_requests("full")
        .into_iter()
        .find(|r| r["endpoint"] == "vm.create")
        .unwrap();
    let config: Value = serde_json::from_str(create_body["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        config["devices"].as_array().unwrap().len(),
        12,
        "form-vmm gets all of them"
    );
    assert_eq!(h.driver_of(&nvswitch(3)).as_deref(), Some("vfio-pci"));

    // All of them are the first VM's: a second full-passthrough VM finds none.
    let (status, body) = create(
        &h,
        "second",
        json!({"model": "H100", "count": 1, "nvswitches": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "gpus_unavailable");
}

#[tokio::test]
async fn two_four_gpu_vms_each_get_a_node_and_the_nics_behind_their_switches() {
    if !have_python() {
        return;
    }
    let h = Harness::with_policy(hgx_full(), allowing("nic"));
    let request = json!({"model": "H100", "count": 4, "nics": {"count": 4}});
    let (status, first) = create(&h, "first", request.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, second) = create(
        &h,
        "second",
        json!({"model": "H100", "count": 4, "nics": {"model": "ConnectX-7", "count": 4}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let node = |switches: [usize; 2], of: fn(usize, usize) -> String| {
        set(switches
            .into_iter()
            .flat_map(|s| (0..2).map(move |k| of(s, k))))
    };
    assert_eq!(held(&first, "gpu"), node([0, 1], gpu));
    assert_eq!(held(&first, "companion"), node([0, 1], nic));
    assert_eq!(held(&second, "gpu"), node([2, 3], gpu));
    assert_eq!(held(&second, "companion"), node([2, 3], nic));
    assert_eq!(
        (&first["numa_node"], &second["numa_node"]),
        (&json!(0), &json!(1))
    );

    let (status, body) = create(&h, "third", json!({"model": "H100", "count": 1})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "gpus_unavailable")
    );
    let (_, list) = h.call(Method::GET, "/v1/devices", None).await;
    let entry = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == nic(2, 1))
        .unwrap()
        .clone();
    assert_eq!(entry["owner"], "second");
    assert_eq!(entry["kind"], "nic");
    assert_eq!(entry["switch"], "0000:51:00.0");
    assert_eq!(entry["numa_node"], 1);
    assert_eq!(entry["reset_method"], "flr");
}

#[tokio::test]
async fn nics_fill_from_the_gpus_switch_then_their_node() {
    if !have_python() {
        return;
    }
    let h = Harness::with_policy(hgx_full(), allowing("nic"));
    // Two GPUs fit behind one switch, so they come from switch 0; three NICs take
    // switch 0's two, then one from the same node (switch 1), not from node 1.
    let (status, info) = create(
        &h,
        "rdma",
        json!({"model": "H100", "count": 2, "nics": {"count": 3}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(held(&info, "gpu"), set([gpu(0, 0), gpu(0, 1)]));
    assert_eq!(
        held(&info, "companion"),
        set([nic(0, 0), nic(0, 1), nic(1, 0)])
    );

    let (status, body) = create(
        &h,
        "more",
        json!({"model": "H100", "count": 1, "nics": {"count": 6}}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "devices_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("6 free NICs asked for, 5 available"),
        "{body}"
    );
}
