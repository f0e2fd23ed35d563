//! NUMA-local GPU VMs: on a host of several nodes, a VM whose GPUs share a node
//! has form-vmm bind its RAM and vCPUs there (`memory.host_numa_node`), and the
//! VM's info says which node; GPUs across nodes, one-node hosts and
//! `gpu_options.numa_affinity: false` send no node.

mod common;
mod support;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{hgx_h100, HostBuilder};
use support::{have_python, Harness};

// HGX_GPUS: 0x18 and 0x2a on node 0, 0x9a and 0xab on node 1.
const NODE0_GPUS: [&str; 2] = ["0000:18:00.0", "0000:2a:00.0"];
const NODE1_GPUS: [&str; 2] = ["0000:9a:00.0", "0000:ab:00.0"];

/// Creates and boots VM `name` with `gpus` on `host`; returns the harness, the
/// VM's info and the `memory` object of the vm.create body form-vmm received.
async fn boot(
    host: HostBuilder,
    name: &str,
    gpus: Value,
    options: Value,
) -> (Harness, Value, Value) {
    let h = Harness::new(host);
    let mut body = h.vm(name);
    body["gpu_devices"] = gpus;
    body["gpu_options"] = options;
    body["boot"] = json!(true);
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "running", "{vm}");
    let requests = h.vmm_requests(name);
    let create = requests
        .iter()
        .find(|r| r["endpoint"] == "vm.create")
        .expect("a vm.create request");
    let config: Value = serde_json::from_str(create["body"].as_str().unwrap()).unwrap();
    let memory = config["memory"].clone();
    assert_eq!(memory["size"], 256u64 << 20, "{memory}");
    (h, vm, memory)
}

#[tokio::test]
async fn gpus_sharing_a_node_bind_the_vm_to_it() {
    if !have_python() {
        return;
    }
    let (h, vm, memory) = boot(
        hgx_h100().numa_nodes(2),
        "near",
        json!(NODE1_GPUS),
        json!({}),
    )
    .await;
    assert_eq!(memory["host_numa_node"], 1, "{memory}");
    assert_eq!(vm["numa_node"], 1, "{vm}");
    assert_eq!(vm["config"]["gpu_options"]["numa_affinity"], true, "{vm}");

    // A stopped VM is bound nowhere; booting it again chooses again.
    let (status, vm) = h.call(Method::POST, "/v1/vms/near/shutdown", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert!(vm["numa_node"].is_null(), "{vm}");
    let (status, vm) = h.call(Method::POST, "/v1/vms/near/boot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["numa_node"], 1, "{vm}");
}

#[tokio::test]
async fn a_model_request_lands_on_one_node_and_is_bound_to_it() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100().numa_nodes(2));
    let mut body = h.vm("model");
    body["gpu_request"] = json!({"model": "H100", "count": 2});
    body["boot"] = json!(true);
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    let node = vm["gpus"][0]["numa_node"].clone();
    assert_eq!(vm["gpus"][1]["numa_node"], node, "{vm}");
    assert_eq!(vm["numa_node"], node, "{vm}");
    let create = h
        .vmm_requests("model")
        .into_iter()
        .find(|r| r["endpoint"] == "vm.create")
        .unwrap();
    let config: Value = serde_json::from_str(create["body"].as_str().unwrap()).unwrap();
    assert_eq!(config["memory"]["host_numa_node"], node, "{config}");
}

#[tokio::test]
async fn gpus_across_nodes_are_not_bound() {
    if !have_python() {
        return;
    }
    let gpus = json!([NODE0_GPUS[0], NODE1_GPUS[0]]);
    let (_h, vm, memory) = boot(hgx_h100().numa_nodes(2), "split", gpus, json!({})).await;
    assert!(memory.get("host_numa_node").is_none(), "{memory}");
    assert!(vm["numa_node"].is_null(), "{vm}");
}

#[tokio::test]
async fn a_one_node_host_binds_nothing() {
    if !have_python() {
        return;
    }
    for host in [hgx_h100().numa_nodes(1), hgx_h100()] {
        let (_h, vm, memory) = boot(host, "single", json!(NODE0_GPUS), json!({})).await;
        assert!(memory.get("host_numa_node").is_none(), "{memory}");
        assert!(vm["numa_node"].is_null(), "{vm}");
    }
}

#[tokio::test]
async fn numa_affinity_off_binds_nothing() {
    if !have_python() {
        return;
    }
    let options = json!({"numa_affinity": false});
    let (_h, vm, memory) = boot(hgx_h100().numa_nodes(2), "free", json!(NODE0_GPUS), options).await;
    assert!(memory.get("host_numa_node").is_none(), "{memory}");
    assert!(vm["numa_node"].is_null(), "{vm}");
    assert_eq!(vm["config"]["gpu_options"]["numa_affinity"], false, "{vm}");
}

#[tokio::test]
async fn node_zero_is_sent_too() {
    if !have_python() {
        return;
    }
    let (_h, vm, memory) = boot(
        hgx_h100().numa_nodes(2),
        "zero",
        json!(NODE0_GPUS),
        json!({}),
    )
    .await;
    assert_eq!(memory["host_numa_node"], 0, "{memory}");
    assert_eq!(vm["numa_node"], 0, "{vm}");
}
