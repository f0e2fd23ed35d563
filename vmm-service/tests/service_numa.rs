//! NUMA-local GPU VMs: on a host of several nodes, a VM whose GPUs share a node
//! has form-vmm bind its RAM and vCPUs there (`memory.host_numa_node`), and the
//! VM's info says which node; a VM whose GPUs span nodes gets a guest node per
//! host node (memory zones bound to them, `numa`), unless it asks for `numa:
//! "flat"`; one-node hosts and `gpu_options.numa_affinity: false` send no node.
//! Huge pages are checked against the pools the VM draws on before anything is
//! bound.

mod common;
mod support;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{hgx_h100, HostBuilder};
use form_vmm_api::config::VmConfig;
use support::{code, have_python, Harness};

// HGX_GPUS: 0x18 and 0x2a on node 0, 0x9a and 0xab on node 1.
const NODE0_GPUS: [&str; 2] = ["0000:18:00.0", "0000:2a:00.0"];
const NODE1_GPUS: [&str; 2] = ["0000:9a:00.0", "0000:ab:00.0"];

const GIB: u64 = 1 << 30;

/// Creates and boots VM `name` with `gpus` on `host`; returns the harness, the
/// VM's info and the `memory` object of the vm.create body form-vmm received.
async fn boot(
    host: HostBuilder,
    name: &str,
    gpus: Value,
    options: Value,
) -> (Harness, Value, Value) {
    let (h, vm, config) = boot_with(
        host,
        name,
        json!({"gpu_devices": gpus, "gpu_options": options}),
    )
    .await;
    let memory = config["memory"].clone();
    assert_eq!(memory["size"], 256u64 << 20, "{memory}");
    (h, vm, memory)
}

/// Creates and boots VM `name` on `host` with `fields` over the harness's body;
/// returns the harness, the VM's info and the vm.create body form-vmm received.
async fn boot_with(host: HostBuilder, name: &str, fields: Value) -> (Harness, Value, Value) {
    let h = Harness::new(host);
    let (status, vm) = create(&h, name, fields).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "running", "{vm}");
    let config = sent_config(&h, name);
    (h, vm, config)
}

async fn create(h: &Harness, name: &str, fields: Value) -> (StatusCode, Value) {
    let mut body = h.vm(name);
    body["boot"] = json!(true);
    for (key, value) in fields.as_object().unwrap() {
        body[key] = value.clone();
    }
    h.call(Method::POST, "/v1/vms", Some(body)).await
}

/// The body of the VM's vm.create, as form-vmm received it.
fn sent_config(h: &Harness, name: &str) -> Value {
    let requests = h.vmm_requests(name);
    let create = requests
        .iter()
        .find(|r| r["endpoint"] == "vm.create")
        .expect("a vm.create request");
    serde_json::from_str(create["body"].as_str().unwrap()).unwrap()
}

/// Whether form-vmm's own checks take `config` (the payload made one it can open
/// here: the VMM's descriptors are not this process's).
fn form_vmm_accepts(h: &Harness, config: &Value) {
    let mut config: VmConfig = serde_json::from_value(config.clone()).unwrap();
    config.payload.kernel = Some(h.kernel.clone().into());
    config.disks.clear();
    config.validate().unwrap();
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
    assert!(memory.get("zones").is_none(), "{memory}");
    assert_eq!(vm["numa_node"], 1, "{vm}");
    assert_eq!(vm["guest_numa"], json!([]), "{vm}");
    assert_eq!(vm["config"]["gpu_options"]["numa_affinity"], true, "{vm}");
    assert!(sent_config(&h, "near").get("numa").is_none());

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
async fn gpus_across_nodes_are_not_bound_when_flat_or_too_small_to_share() {
    if !have_python() {
        return;
    }
    let gpus = json!([NODE0_GPUS[0], NODE1_GPUS[0]]);
    let flat = json!({"gpu_devices": gpus, "vcpus": 4, "numa": "flat"});
    let (_h, vm, config) = boot_with(hgx_h100().numa_nodes(2), "split", flat).await;
    assert!(config["memory"].get("host_numa_node").is_none(), "{config}");
    assert!(config["memory"].get("zones").is_none(), "{config}");
    assert!(config.get("numa").is_none(), "{config}");
    assert!(vm["numa_node"].is_null(), "{vm}");
    assert_eq!(vm["guest_numa"], json!([]), "{vm}");
    assert_eq!(vm["config"]["numa"], "flat", "{vm}");

    // One vCPU cannot be shared between two nodes: by default the VM starts as
    // it did before mirroring; asked for, mirroring is refused, naming the fix.
    let (_h, vm, memory) = boot(hgx_h100().numa_nodes(2), "one", gpus.clone(), json!({})).await;
    assert!(memory.get("zones").is_none(), "{memory}");
    assert_eq!(vm["guest_numa"], json!([]), "{vm}");
    let h = Harness::new(hgx_h100().numa_nodes(2));
    let (status, body) = create(&h, "asked", json!({"gpu_devices": gpus, "numa": "mirror"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_config"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vcpus is 1, fewer than the 2 guest NUMA nodes"),
        "{body}"
    );
    assert!(h.db_snapshot().is_empty());
}

#[tokio::test]
async fn eight_gpus_on_two_sockets_get_a_guest_node_per_socket() {
    if !have_python() {
        return;
    }
    let host = hgx_h100().numa_nodes(2).slit(&[&[10, 21], &[21, 10]]);
    let fields =
        json!({"gpu_request": {"model": "H100", "count": 8}, "vcpus": 8, "memory": 16 * GIB});
    let (h, vm, config) = boot_with(host, "hgx", fields).await;
    let memory = &config["memory"];
    assert_eq!(memory["size"], 16 * GIB, "{memory}");
    assert!(memory.get("host_numa_node").is_none(), "{memory}");
    assert_eq!(
        memory["zones"],
        json!([
            {"id": "mem0", "size": 8 * GIB, "shared": false, "hugepages": false, "host_numa_node": 0},
            {"id": "mem1", "size": 8 * GIB, "shared": false, "hugepages": false, "host_numa_node": 1},
        ]),
        "{memory}"
    );
    assert_eq!(
        config["numa"],
        json!([
            {"guest_numa_id": 0, "cpus": [0, 1, 2, 3], "distances": [{"destination": 1, "distance": 21}], "memory_zones": ["mem0"]},
            {"guest_numa_id": 1, "cpus": [4, 5, 6, 7], "memory_zones": ["mem1"]},
        ]),
        "{config}"
    );
    // Each GPU on its guest node's root bus: node 1's are placed there, node 0's
    // stay on bus 0 as every device of a one-node VM does.
    let devices = config["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    for device in devices {
        let path = device["path"].as_str().unwrap();
        let on_node1 = NODE1_GPUS
            .iter()
            .chain(&["0000:ba:00.0", "0000:db:00.0"])
            .any(|bdf| path.ends_with(bdf));
        let expected = if on_node1 { json!(1) } else { Value::Null };
        assert_eq!(
            device.get("numa_node").cloned().unwrap_or(Value::Null),
            expected,
            "{device}"
        );
    }
    form_vmm_accepts(&h, &config);

    assert!(vm["numa_node"].is_null(), "{vm}");
    let guest = vm["guest_numa"].as_array().unwrap();
    assert_eq!(guest.len(), 2, "{vm}");
    for (i, node) in guest.iter().enumerate() {
        assert_eq!(node["guest_node"], i, "{node}");
        assert_eq!(node["host_node"], i, "{node}");
        assert_eq!(node["memory"], 8 * GIB, "{node}");
        assert_eq!(
            node["vcpus"],
            json!([4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3]),
            "{node}"
        );
    }
    assert_eq!(guest[0]["distances"], json!([10, 21]));
    assert_eq!(guest[1]["distances"], json!([21, 10]));
    let node1: Vec<&str> = guest[1]["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(
        node1,
        [
            "0000:9a:00.0",
            "0000:ab:00.0",
            "0000:ba:00.0",
            "0000:db:00.0"
        ]
    );

    // Stopped, the VM has no guest nodes; booted again, they are chosen again.
    let (status, vm) = h.call(Method::POST, "/v1/vms/hgx/shutdown", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["guest_numa"], json!([]), "{vm}");
    let (status, vm) = h.call(Method::POST, "/v1/vms/hgx/boot", None).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["guest_numa"].as_array().unwrap().len(), 2, "{vm}");
}

#[tokio::test]
async fn uneven_gpus_share_by_gpus_or_by_the_clients_counts_and_the_slit_defaults() {
    if !have_python() {
        return;
    }
    // Three GPUs on node 0, one on node 1; no SLIT in sysfs.
    let gpus = json!([NODE0_GPUS[0], NODE0_GPUS[1], "0000:3a:00.0", NODE1_GPUS[0]]);
    let fields = json!({"gpu_devices": gpus, "vcpus": 8, "memory": 4 * GIB});
    let (_h, vm, config) = boot_with(hgx_h100().numa_nodes(2), "uneven", fields.clone()).await;
    let zones = &config["memory"]["zones"];
    assert_eq!(
        (&zones[0]["size"], &zones[1]["size"]),
        (&json!(3 * GIB), &json!(GIB)),
        "{zones}"
    );
    assert_eq!(
        config["numa"][0]["cpus"],
        json!([0, 1, 2, 3, 4, 5]),
        "{config}"
    );
    assert_eq!(
        config["numa"][0]["distances"],
        json!([{"destination": 1, "distance": 20}])
    );
    assert_eq!(vm["guest_numa"][1]["vcpus"], json!([6, 7]), "{vm}");

    let mut fields = fields;
    fields["numa_vcpus"] = json!([4, 4]);
    let (h, vm, config) = boot_with(hgx_h100().numa_nodes(2), "counted", fields.clone()).await;
    assert_eq!(config["numa"][1]["cpus"], json!([4, 5, 6, 7]), "{config}");
    assert_eq!(vm["config"]["numa_vcpus"], json!([4, 4]), "{vm}");
    form_vmm_accepts(&h, &config);

    fields["numa_vcpus"] = json!([2, 2, 4]);
    let h = Harness::new(hgx_h100().numa_nodes(2));
    let (status, body) = create(&h, "three", fields).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_config"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("numa_vcpus has 3 counts, but the VM's GPUs sit on 2 host NUMA nodes (0, 1)"),
        "{body}"
    );
    assert!(h.db_snapshot().is_empty());
}

/// An HGX host whose 1 GiB pools hold 1800 pages, `node1_free` of them free on
/// node 1 and plenty on node 0.
fn hugepage_host(node1_free: u64) -> HostBuilder {
    hgx_h100()
        .numa_nodes(2)
        .node_hugepages(&[(0, 1_048_576, 900, 900), (1, 1_048_576, 900, node1_free)])
}

#[tokio::test]
async fn a_short_node_pool_is_refused_before_anything_is_bound() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hugepage_host(4));
    let fields = json!({"gpu_request": {"model": "H100", "count": 8}, "vcpus": 8, "memory": 16 * GIB,
                        "hugepages": true, "hugepage_size": "1G"});
    let (status, body) = create(&h, "big", fields.clone()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "hugepages_short"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    let sysfs = h.fixture.lock().unwrap().host.sysfs.clone();
    assert_eq!(
        message,
        format!(
            "not enough huge pages for 16 GiB of guest RAM: host NUMA node 1 has 4 free 1 GiB huge pages and the VM needs 8 there (4 short); reserve them: echo 904 > {}/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages (1 GiB pages are best reserved at boot: hugepagesz=1G hugepages=N); or give the VM less memory or another hugepage_size. Nothing was changed",
            sysfs.display()
        )
    );
    assert!(h.db_snapshot().is_empty(), "nothing recorded");
    assert!(h.writes().is_empty(), "nothing bound: {:?}", h.writes());
    assert_eq!(h.driver_of(NODE1_GPUS[0]).as_deref(), Some("nvidia"));
    assert!(h.vmm_requests("big").is_empty(), "no VMM started");

    // Enough free on node 1, the same request runs, each zone on 1 GiB pages.
    let h = Harness::new(hugepage_host(8));
    let (status, vm) = create(&h, "big", fields).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    let config = sent_config(&h, "big");
    for zone in config["memory"]["zones"].as_array().unwrap() {
        assert_eq!(
            (&zone["hugepages"], &zone["hugepage_size"]),
            (&json!(true), &json!(GIB)),
            "{zone}"
        );
    }
    form_vmm_accepts(&h, &config);

    // Booting it again checks again: with node 1's pool taken meanwhile, the
    // boot is refused and the VM stays stopped with its GPUs on their drivers.
    let (status, _) = h.call(Method::POST, "/v1/vms/big/shutdown", None).await;
    assert_eq!(status, StatusCode::OK);
    let pool = sysfs_pool(&h, 1);
    std::fs::write(pool.join("free_hugepages"), "2\n").unwrap();
    h.fixture.lock().unwrap().clear_writes();
    let (status, body) = h.call(Method::POST, "/v1/vms/big/boot", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "hugepages_short"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(6 short)"),
        "{body}"
    );
    assert!(h.writes().is_empty(), "nothing bound: {:?}", h.writes());
    let (_, vm) = h.call(Method::GET, "/v1/vms/big", None).await;
    assert_eq!(vm["state"], "stopped", "{vm}");
    assert_eq!(vm["gpus"], json!([]), "{vm}");
}

fn sysfs_pool(h: &Harness, node: u32) -> std::path::PathBuf {
    h.fixture.lock().unwrap().host.sysfs.join(format!(
        "devices/system/node/node{node}/hugepages/hugepages-1048576kB"
    ))
}

#[tokio::test]
async fn a_vm_on_one_node_draws_on_that_nodes_pool_and_an_unbound_one_on_the_hosts() {
    if !have_python() {
        return;
    }
    let fields = |gpus: [&str; 2], extra: Value| {
        let mut f = json!({"gpu_devices": gpus, "vcpus": 2, "memory": 8 * GIB, "hugepages": true, "hugepage_size": "1G"});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    };
    let (_h, vm, config) = boot_with(hugepage_host(4), "near", fields(NODE0_GPUS, json!({}))).await;
    let memory = &config["memory"];
    assert_eq!(
        (
            &memory["host_numa_node"],
            &memory["hugepages"],
            &memory["hugepage_size"]
        ),
        (&json!(0), &json!(true), &json!(GIB)),
        "{memory}"
    );
    assert_eq!(vm["numa_node"], 0);

    let h = Harness::new(hugepage_host(4));
    let (status, body) = create(&h, "far", fields(NODE1_GPUS, json!({}))).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "hugepages_short"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host NUMA node 1 has 4 free 1 GiB huge pages and the VM needs 8 there"),
        "{body}"
    );
    // Unbound, the VM draws on the host's pool (1800 free) and runs.
    let (status, vm) = create(
        &h,
        "far",
        fields(NODE1_GPUS, json!({"gpu_options": {"numa_affinity": false}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    let memory = &sent_config(&h, "far")["memory"];
    assert!(memory.get("host_numa_node").is_none(), "{memory}");
    assert_eq!(memory["hugepages"], true, "{memory}");
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
