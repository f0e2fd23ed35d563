//! GPUs by model and count: the service picks GPUs on one NUMA node, and behind one
//! PCIe switch when it can, on fixture hosts; the VM gets them through the API.

mod common;
mod support;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{hgx_h100, Function, HostBuilder};
use support::{code, have_python, Harness};

const H100: (u32, u16, u16) = (0x030200, 0x10de, 0x2330);

fn h100(address: &str, parent: &str, group: u32, node: i32) -> Function {
    Function::new(address, H100.0, H100.1, H100.2)
        .parent(parent)
        .driver("nvidia")
        .group(group)
        .numa(node)
}

/// Node 0: one H100 alone behind switch A, two behind switch B; node 1: one H100.
fn two_switches() -> HostBuilder {
    HostBuilder::new()
        .function(
            Function::bridge("0000:00:01.0", 0x8086, 0x352a)
                .group(1)
                .numa(0),
        )
        .function(
            Function::bridge("0000:01:00.0", 0x1000, 0xc030)
                .parent("0000:00:01.0")
                .group(2)
                .numa(0),
        )
        .function(
            Function::bridge("0000:02:00.0", 0x1000, 0xc030)
                .parent("0000:01:00.0")
                .group(3)
                .numa(0),
        )
        .function(h100("0000:03:00.0", "0000:02:00.0", 4, 0))
        .function(
            Function::bridge("0000:00:02.0", 0x8086, 0x352a)
                .group(5)
                .numa(0),
        )
        .function(
            Function::bridge("0000:10:00.0", 0x1000, 0xc030)
                .parent("0000:00:02.0")
                .group(6)
                .numa(0),
        )
        .function(
            Function::bridge("0000:11:00.0", 0x1000, 0xc030)
                .parent("0000:10:00.0")
                .group(7)
                .numa(0),
        )
        .function(
            Function::bridge("0000:11:01.0", 0x1000, 0xc030)
                .parent("0000:10:00.0")
                .group(8)
                .numa(0),
        )
        .function(h100("0000:12:00.0", "0000:11:00.0", 9, 0))
        .function(h100("0000:13:00.0", "0000:11:01.0", 10, 0))
        .function(
            Function::bridge("0000:80:01.0", 0x8086, 0x352a)
                .group(11)
                .numa(1),
        )
        .function(
            Function::bridge("0000:81:00.0", 0x1000, 0xc030)
                .parent("0000:80:01.0")
                .group(12)
                .numa(1),
        )
        .function(
            Function::bridge("0000:82:00.0", 0x1000, 0xc030)
                .parent("0000:81:00.0")
                .group(13)
                .numa(1),
        )
        .function(h100("0000:83:00.0", "0000:82:00.0", 14, 1))
}

async fn create_by_model(h: &Harness, name: &str, model: &str, count: u32) -> (StatusCode, Value) {
    let mut body = h.vm(name);
    body["gpu_request"] = json!({"model": model, "count": count});
    h.call(Method::POST, "/v1/vms", Some(body)).await
}

fn gpus(info: &Value) -> Vec<String> {
    let mut out: Vec<String> = info["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["bdf"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn two_gpus_come_from_one_switch() {
    if !have_python() {
        return;
    }
    let h = Harness::new(two_switches());
    let (status, info) = create_by_model(&h, "pair", "h100", 2).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(gpus(&info), ["0000:12:00.0", "0000:13:00.0"]);
    assert_eq!(info["config"]["gpu_request"]["count"], 2);
}

#[tokio::test]
async fn three_gpus_stay_on_one_node_and_the_rest_spill_over() {
    if !have_python() {
        return;
    }
    let h = Harness::new(two_switches());
    let (status, info) = create_by_model(&h, "three", "H100", 3).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(
        gpus(&info),
        ["0000:03:00.0", "0000:12:00.0", "0000:13:00.0"]
    );
    let (status, info) = create_by_model(&h, "one", "H100", 1).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(gpus(&info), ["0000:83:00.0"]);
    let (status, body) = create_by_model(&h, "none-left", "H100", 1).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&body), "gpus_unavailable");
}

#[tokio::test]
async fn hgx_requests_fill_one_socket_before_the_other() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let (status, info) = create_by_model(&h, "left", "H100 SXM5", 4).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(
        gpus(&info),
        [
            "0000:18:00.0",
            "0000:2a:00.0",
            "0000:3a:00.0",
            "0000:5d:00.0"
        ]
    );
    for gpu in info["gpus"].as_array().unwrap() {
        assert_eq!(gpu["numa_node"], 0);
    }
    let (status, info) = create_by_model(&h, "right", "h100", 2).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(gpus(&info), ["0000:9a:00.0", "0000:ab:00.0"]);
    // 2 left, on node 1; 3 cannot be had.
    let (status, body) = create_by_model(&h, "greedy", "h100", 3).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "gpus_unavailable");
    // The console VGA never matches a model request, even by its own name.
    let (status, body) = create_by_model(&h, "vga", "ASPEED", 1).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn a_request_spanning_nodes_takes_whole_nodes_first() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let (status, info) = create_by_model(&h, "six", "h100", 6).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let nodes: Vec<u64> = info["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["numa_node"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes.iter().filter(|n| **n == 0).count(), 4, "{nodes:?}");
    assert_eq!(nodes.iter().filter(|n| **n == 1).count(), 2, "{nodes:?}");
}
