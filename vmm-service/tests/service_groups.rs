//! IOMMU groups as the unit of assignment, through the service with the fake
//! form-vmm: a GPU's audio function goes with it (one guest slot), a group member
//! in another slot only when its class is allowed, a group part of which a VM holds
//! goes to no other VM, devices are reset when released, and form-vmm's refusals
//! are the client's 4xx with nothing left bound.

mod common;
mod support;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::{Function, HostBuilder};
use support::{code, have_python, Harness};
use vmm_service::gpu::{parse_classes, DevicePolicy};

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";
const GPU_B: &str = "0000:04:00.0";
const NIC_B: &str = "0000:05:00.0";

/// A display GPU and its HDMI audio function in one slot and one group (not the
/// console); a 3D GPU sharing group 30 with a NIC in another slot behind a switch
/// without ACS.
fn host() -> HostBuilder {
    HostBuilder::new()
        .function(Function::bridge("0000:00:01.0", 0x8086, 0xa70d).group(1))
        .function(
            Function::new(GPU, 0x030000, 0x10de, 0x2684)
                .parent("0000:00:01.0")
                .driver("nvidia")
                .group(2)
                .mem32(0, 0x6e00_0000, 16 << 20),
        )
        .function(
            Function::new(AUDIO, 0x040300, 0x10de, 0x22ba)
                .parent("0000:00:01.0")
                .driver("snd_hda_intel")
                .group(2)
                .mem32(0, 0x6f08_0000, 16 << 10),
        )
        .function(Function::bridge("0000:03:00.0", 0x10b5, 0x8747).group(30))
        .function(
            Function::new(GPU_B, 0x030200, 0x10de, 0x1eb8)
                .parent("0000:03:00.0")
                .driver("nvidia")
                .group(30)
                .mem32(0, 0xfa00_0000, 16 << 20),
        )
        .function(
            Function::new(NIC_B, 0x020000, 0x8086, 0x1521)
                .parent("0000:03:00.0")
                .driver("igb")
                .group(30)
                .mem32(0, 0xf900_0000, 1 << 20),
        )
}

fn allowing(classes: &str) -> DevicePolicy {
    DevicePolicy::allowing(&parse_classes(classes).unwrap())
}

async fn create(h: &Harness, name: &str, extra: Value) -> (StatusCode, Value) {
    let mut body = h.vm(name);
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    h.call(Method::POST, "/v1/vms", Some(body)).await
}

fn switch(h: &Harness, vm: &str, name: &str, contents: &str) {
    let folder = h.dir.path().join(format!("run/vms/{vm}"));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(name), contents).unwrap();
}

/// The `devices` form-vmm got in `endpoint` requests of VM `vm`: (id, host address).
fn sent(h: &Harness, vm: &str, endpoint: &str) -> Vec<Vec<(String, String)>> {
    h.vmm_requests(vm)
        .into_iter()
        .filter(|r| r["endpoint"] == endpoint)
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            let devices = match &body["devices"] {
                Value::Array(list) => list.clone(),
                _ => vec![body.clone()],
            };
            devices
                .iter()
                .map(|d| {
                    let path = d["path"].as_str().unwrap();
                    (
                        d["id"].as_str().unwrap().to_string(),
                        path.rsplit('/').next().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn pair(id: &str, bdf: &str) -> (String, String) {
    (id.to_string(), bdf.to_string())
}

/// (device_id, bdf, role, unit) of every function VmInfo lists.
fn devices(info: &Value) -> Vec<(String, String, String, String)> {
    info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap().to_string();
            (s("device_id"), s("bdf"), s("role"), s("unit"))
        })
        .collect()
}

fn resets(h: &Harness) -> Vec<String> {
    h.writes()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/reset"))
        .map(|(path, value)| {
            assert_eq!(value, "1");
            path.split('/').nth(3).unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_gpu_goes_with_its_audio_function_and_the_vm_shows_both() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    let (status, info) = create(&h, "vm1", json!({"gpu_devices": [GPU]})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(
        sent(&h, "vm1", "vm.create"),
        [vec![pair("gpu0", GPU), pair("gpu0-f1", AUDIO)]],
        "both functions in one vm.create, so form-vmm puts them in one guest slot"
    );
    assert_eq!(info["gpus"][0]["bdf"], GPU);
    assert_eq!(info["gpus"][0]["functions"], json!([AUDIO]));
    assert_eq!(
        devices(&info),
        [
            ("gpu0".into(), GPU.into(), "gpu".into(), "gpu0".into()),
            (
                "gpu0-f1".into(),
                AUDIO.into(),
                "function".into(),
                "gpu0".into()
            )
        ]
    );
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(h.driver_of(AUDIO).as_deref(), Some("vfio-pci"));
    let (_, list) = h.call(Method::GET, "/v1/devices", None).await;
    let owner = |bdf: &str| {
        list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["bdf"] == bdf)
            .map(|d| d["owner"].clone())
    };
    assert_eq!(owner(AUDIO), Some(json!("vm1")));
    assert_eq!(owner(NIC_B), Some(Value::Null));
    assert_eq!(owner("0000:00:01.0"), None, "bridges are not listed");
}

#[tokio::test]
async fn naming_the_audio_function_or_both_gets_the_group_once() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    for (name, named) in [("audio", json!([AUDIO])), ("both", json!([AUDIO, GPU]))] {
        let (status, info) = create(&h, name, json!({"gpu_devices": named})).await;
        assert_eq!(status, StatusCode::CREATED, "{info}");
        assert_eq!(
            sent(&h, name, "vm.create"),
            [vec![pair("gpu0", GPU), pair("gpu0-f1", AUDIO)]]
        );
        assert_eq!(info["gpus"].as_array().unwrap().len(), 1, "{info}");
        let (status, _) = h
            .call(Method::DELETE, &format!("/v1/vms/{name}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(h.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
    }
}

#[tokio::test]
async fn a_function_another_vm_holds_is_refused_naming_the_owner() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    let (status, _) = create(&h, "first", json!({"gpu_devices": [GPU]})).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = h.db_snapshot();
    let (status, body) = create(&h, "second", json!({"gpu_devices": [AUDIO]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "gpu_in_use");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("first"),
        "{body}"
    );
    assert_eq!(h.db_snapshot(), before, "a refused create records nothing");
}

#[tokio::test]
async fn a_member_of_another_class_in_another_slot_is_refused_unless_allowed() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    let (status, body) = create(&h, "vm1", json!({"gpu_devices": [GPU_B]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "gpu_not_assignable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(NIC_B) && message.contains("--allow-class"),
        "{message}"
    );
    assert!(h.writes().is_empty(), "nothing was touched");

    let h = Harness::with_policy(host(), allowing("nic"));
    let (status, info) = create(&h, "vm1", json!({"gpu_devices": [GPU_B]})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(
        sent(&h, "vm1", "vm.create"),
        [vec![pair("gpu0", GPU_B), pair("gpu0-m1", NIC_B)]]
    );
    assert_eq!(
        h.driver_of(NIC_B).as_deref(),
        Some("vfio-pci"),
        "taken from igb"
    );
}

#[tokio::test]
async fn a_form_vmm_refusal_is_a_4xx_and_leaves_nothing_bound() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    switch(
        &h,
        "bad",
        "refuse-create",
        "IOMMU group 2 of 0000:01:00.0 also holds [0000:01:00.1]",
    );
    let (status, body) = create(&h, "bad", json!({"gpu_devices": [GPU]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "vmm_refused");
    assert_eq!(body["error"]["vmm_code"], "invalid_device");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("also holds"),
        "{body}"
    );
    assert!(h.db_snapshot().is_empty(), "{:?}", h.db_snapshot());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert_eq!(h.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(
        resets(&h),
        [GPU, AUDIO],
        "bound, never opened by a VM: reset by the service"
    );
}

#[tokio::test]
async fn a_companion_of_a_class_not_allowed_is_refused_with_its_code() {
    if !have_python() {
        return;
    }
    let nic = "0000:07:00.0";
    let host = || {
        host().function(
            Function::new(nic, 0x020700, 0x15b3, 0x1021)
                .driver("mlx5_core")
                .group(40),
        )
    };
    let h = Harness::new(host());
    let (status, body) = create(&h, "vm1", json!({"devices": [nic]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "class_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-class nic"),
        "{body}"
    );

    let h = Harness::with_policy(host(), allowing("0x0207"));
    let (status, info) = create(&h, "vm1", json!({"devices": [nic]})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(sent(&h, "vm1", "vm.create"), [vec![pair("dev0", nic)]]);
    assert_eq!(devices(&info)[0].2, "companion");
    assert!(info["gpus"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_device_without_a_reset_method_is_refused_unless_allowed() {
    if !have_python() {
        return;
    }
    let unresettable = || {
        host().function(
            Function::new("0000:09:00.0", 0x030200, 0x10de, 0x20b0)
                .driver("nvidia")
                .group(50)
                .no_reset(),
        )
    };
    let h = Harness::new(unresettable());
    let (status, body) = create(&h, "vm1", json!({"gpu_devices": ["0000:09:00.0"]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "no_reset_method");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-no-reset 0000:09:00.0"),
        "{body}"
    );
    let (_, list) = h.call(Method::GET, "/v1/gpus", None).await;
    let gpu = list["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["bdf"] == "0000:09:00.0")
        .unwrap();
    assert_eq!(gpu["reset_method"], Value::Null);
    let other = list["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["bdf"] == GPU)
        .unwrap();
    assert_eq!(other["reset_method"], "flr");

    let policy = DevicePolicy {
        allow_no_reset: vec!["0000:09:00.0".parse().unwrap()],
        ..DevicePolicy::default()
    };
    let h = Harness::with_policy(unresettable(), policy);
    let (status, info) = create(&h, "vm1", json!({"gpu_devices": ["0000:09:00.0"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
}

#[tokio::test]
async fn release_resets_every_function_after_the_vmm_let_go() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    let (status, info) = create(&h, "vm1", json!({"gpu_devices": [GPU], "boot": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let pid = info["pid"].as_u64().unwrap() as i32;
    h.fixture.lock().unwrap().clear_writes();
    let (status, info) = h.call(Method::POST, "/v1/vms/vm1/shutdown", None).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    // SAFETY: kill with signal 0 only asks whether the process exists.
    assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the VMM is gone");
    let writes = h.writes();
    let position = |wanted: &str| writes.iter().position(|(path, _)| path.ends_with(wanted));
    let reset = position(&format!("{GPU}/reset")).expect("the GPU was reset");
    assert!(position(&format!("{AUDIO}/reset")).is_some(), "{writes:?}");
    let unbind = position("drivers/vfio-pci/unbind").expect("unbound");
    assert!(
        reset < unbind,
        "reset on vfio-pci, before the host driver gets it: {writes:?}"
    );
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert!(info["devices"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_reset_is_a_warning_and_the_release_goes_on() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    let (status, _) = create(&h, "vm1", json!({"gpu_devices": [GPU]})).await;
    assert_eq!(status, StatusCode::CREATED);
    h.fixture
        .lock()
        .unwrap()
        .kernel
        .fail_write(&format!("{GPU}/reset"), None);
    let (status, _) = h.call(Method::DELETE, "/v1/vms/vm1", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert_eq!(h.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
}

#[tokio::test]
async fn a_hotplugged_group_is_one_request_and_leaves_as_one_slot() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    switch(&h, "hot", "hotplug", "");
    let (status, _) = create(&h, "hot", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, info) = h
        .call(
            Method::POST,
            "/v1/vms/hot/gpus",
            Some(json!({"device": AUDIO})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(
        sent(&h, "hot", "vm.add-devices"),
        [vec![pair("gpu0", GPU), pair("gpu0-f1", AUDIO)]]
    );
    assert!(sent(&h, "hot", "vm.add-device").is_empty());
    assert_eq!(info["gpus"][0]["functions"], json!([AUDIO]));

    let (status, info) = h
        .call(Method::DELETE, &format!("/v1/vms/hot/gpus/{AUDIO}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let removed: Vec<String> = h
        .vmm_requests("hot")
        .into_iter()
        .filter(|r| r["endpoint"] == "vm.remove-device")
        .map(|r| {
            serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(removed, ["gpu0"], "the slot goes with its GPU's id");
    assert!(info["devices"].as_array().unwrap().is_empty(), "{info}");
    assert_eq!(h.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
    assert_eq!(resets(&h), [GPU, AUDIO]);
}

#[tokio::test]
async fn a_refused_hotplug_is_a_4xx_and_gives_the_group_back() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    switch(&h, "hot", "hotplug", "");
    switch(&h, "hot", "refuse-add", "");
    let (status, _) = create(&h, "hot", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = h.db_snapshot();
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/vms/hot/gpus",
            Some(json!({"device": GPU})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        (code(&body), &body["error"]["vmm_code"]),
        ("vmm_refused", &json!("invalid_device"))
    );
    assert_eq!(h.db_snapshot(), before);
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
    assert_eq!(h.driver_of(AUDIO).as_deref(), Some("snd_hda_intel"));
}

#[tokio::test]
async fn a_member_still_held_keeps_its_group_bound_and_from_other_vms() {
    if !have_python() {
        return;
    }
    let h = Harness::with_policy(host(), allowing("nic"));
    switch(&h, "a", "hotplug", "");
    let (status, _) = create(&h, "a", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, info) = h
        .call(
            Method::POST,
            "/v1/vms/a/gpus",
            Some(json!({"device": GPU_B})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(
        sent(&h, "a", "vm.add-devices"),
        [vec![pair("gpu0", GPU_B), pair("gpu0-m1", NIC_B)]]
    );
    // The guest ejects the GPU's slot but keeps the NIC's.
    switch(&h, "a", "guest-keeps-ids", "gpu0-m1\n");
    h.fixture.lock().unwrap().clear_writes();
    let path = format!("/v1/vms/a/gpus/{GPU_B}");
    let removing = h.call(Method::DELETE, &path, None);
    let listing = async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        h.call(Method::GET, "/v1/vms/a", None).await
    };
    let ((status, body), (list_status, _)) = tokio::join!(removing, listing);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "eject_timeout");
    assert_eq!(list_status, StatusCode::OK, "the API answers meanwhile");
    assert!(
        h.writes().is_empty(),
        "nothing unbound or reset under the VMM: {:?}",
        h.writes()
    );
    assert_eq!(h.driver_of(GPU_B).as_deref(), Some("vfio-pci"));
    assert_eq!(h.driver_of(NIC_B).as_deref(), Some("vfio-pci"));
    let (_, info) = h.call(Method::GET, "/v1/vms/a", None).await;
    assert_eq!(
        devices(&info),
        [(
            "gpu0-m1".into(),
            NIC_B.into(),
            "group_member".into(),
            "gpu0".into()
        )]
    );

    // The GPU is no VM's now, but its group is still partly VM a's.
    let (status, body) = create(&h, "b", json!({"gpu_devices": [GPU_B]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "group_in_use");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(NIC_B) && message.contains("VM a"),
        "{message}"
    );
    // Nor may the operator release it: that resets and unbinds the whole group.
    let (status, body) = h
        .call(Method::POST, &format!("/v1/gpus/{GPU_B}/unbind"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "group_in_use");
    assert!(
        h.writes().is_empty(),
        "nothing reset or unbound: {:?}",
        h.writes()
    );

    std::fs::remove_file(h.dir.path().join("run/vms/a/guest-keeps-ids")).unwrap();
    let (status, info) = h
        .call(Method::DELETE, &format!("/v1/vms/a/devices/{NIC_B}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert!(info["devices"].as_array().unwrap().is_empty());
    assert_eq!(h.driver_of(GPU_B).as_deref(), Some("nvidia"));
    assert_eq!(h.driver_of(NIC_B).as_deref(), Some("igb"));
    assert_eq!(resets(&h), [GPU_B, NIC_B], "the whole group, once free");
}

#[tokio::test]
async fn devices_the_vmm_let_go_of_on_its_own_are_released() {
    if !have_python() {
        return;
    }
    let h = Harness::new(host());
    let (status, info) = create(&h, "vm1", json!({"gpu_devices": [GPU]})).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert!(
        h.manager.sync_devices().await.is_empty(),
        "form-vmm still holds everything"
    );
    assert_eq!(h.driver_of(GPU).as_deref(), Some("vfio-pci"));

    // The host takes the audio function back: form-vmm ejects its whole slot.
    h.fixture.lock().unwrap().clear_writes();
    switch(&h, "vm1", "let-go-ids", "gpu0-f1\n");
    let released: Vec<String> = h
        .manager
        .sync_devices()
        .await
        .into_iter()
        .map(|a| a.device_id)
        .collect();
    assert_eq!(released, ["gpu0", "gpu0-f1"]);
    let (_, info) = h.call(Method::GET, "/v1/vms/vm1", None).await;
    assert!(info["devices"].as_array().unwrap().is_empty(), "{info}");
    assert_eq!(resets(&h), [GPU, AUDIO], "reset before they go back");
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}
