//! Disks, networks and cloud-init through the API with a fake form-vmm: what is
//! recorded, what form-vmm is asked for, the seed disk's contents and its life, and
//! refusals that name the field at fault.

mod common;
mod support;

use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::hgx_h100;
use support::{code, have_python, Harness};
use vmm_service::cloud_init::{read_seed_image, SEED_LABEL};
use vmm_service::net::{default_mac, tap_name};

const GPU: &str = "0000:18:00.0";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@lab";

fn image(h: &Harness, name: &str) -> String {
    let path = support::image_dir(h.dir.path()).join(name);
    std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
    path.display().to_string()
}

fn seed_path(h: &Harness, vm: &str) -> PathBuf {
    h.dir.path().join(format!("state/vms/{vm}/seed.img"))
}

/// The body of the vm.create the fake VMM of `vm` received.
fn vm_create_body(h: &Harness, vm: &str) -> Value {
    let request = h
        .vmm_requests(vm)
        .into_iter()
        .find(|r| r["endpoint"] == "vm.create")
        .expect("a vm.create request");
    serde_json::from_str(request["body"].as_str().unwrap()).unwrap()
}

fn full_body(h: &Harness, name: &str) -> Value {
    let mut body = h.vm(name);
    body["disks"] = json!([
        {"path": image(h, "root.raw"), "readonly": false},
        {"path": image(h, "data.raw"), "readonly": true}
    ]);
    body["networks"] = json!([{"mac": "52:54:00:AA:00:01"}, {}]);
    body["cloud_init"] = json!({
        "hostname": "gpu-1",
        "user": "ops",
        "ssh_authorized_keys": [KEY],
        "packages": ["htop"],
        "runcmd": ["echo \"up: yes\" > /run/up"]
    });
    body
}

#[tokio::test]
async fn disks_networks_and_cloud_init_reach_form_vmm_and_persist() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let body = full_body(&h, "full");
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");

    // The configuration comes back as given (defaults filled in), each disk with
    // the format read from the image at create and kept from then on.
    for field in ["networks", "cloud_init"] {
        assert_eq!(vm["config"][field], body[field], "{field}");
    }
    let mut disks = body["disks"].clone();
    for disk in disks.as_array_mut().unwrap() {
        disk["format"] = serde_json::json!("raw");
    }
    assert_eq!(vm["config"]["disks"], disks);
    let seed = seed_path(&h, "full");
    assert_eq!(vm["seed_image"], seed.display().to_string());
    assert_eq!(
        vm["networks"],
        json!([
            {"id": "net0", "tap": tap_name("full", 0), "mac": "52:54:00:aa:00:01", "bridge": null},
            {"id": "net1", "tap": tap_name("full", 1), "mac": default_mac("full", 1), "bridge": null}
        ])
    );

    // form-vmm is given the disks in order, the seed last and read-only, and the taps.
    // (`direct` is form-vmm's own DiskConfig field, which the service leaves off.)
    // The operator's images reach it as descriptors it inherited, which name the
    // files the service checked.
    let config = vm_create_body(&h, "full");
    let disks = config["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3, "{config}");
    for (i, (readonly, id)) in [(false, "disk0"), (true, "disk1")].into_iter().enumerate() {
        assert_eq!(disks[i]["readonly"], readonly);
        assert_eq!(disks[i]["id"], id);
        assert_eq!(disks[i]["format"], "raw", "the format recorded at create");
        assert_eq!(
            h.vmm_file("full", &disks[i]["path"]),
            body["disks"][i]["path"]
        );
    }
    assert_eq!(
        disks[2],
        json!({"path": seed.display().to_string(), "readonly": true, "direct": false, "id": "cidata"})
    );
    assert_eq!(h.vmm_file("full", &config["payload"]["kernel"]), h.kernel);
    assert_eq!(
        config["net"],
        json!([
            {"tap": tap_name("full", 0), "mac": "52:54:00:aa:00:01", "id": "net0"},
            {"tap": tap_name("full", 1), "mac": default_mac("full", 1), "id": "net1"}
        ])
    );
    // Every VM gets an entropy device, so first-boot key generation does not wait.
    assert_eq!(config["rng"], json!({"src": "/dev/urandom"}));

    // The seed disk says what the configuration asked for.
    let image = read_seed_image(&seed).unwrap();
    assert_eq!(image.label, SEED_LABEL);
    let file = |name: &str| {
        image
            .files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, text)| text.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", image.files))
    };
    assert_eq!(
        file("meta-data"),
        "instance-id: \"full\"\nlocal-hostname: \"gpu-1\"\n"
    );
    let user_data = file("user-data");
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    for line in [
        "hostname: \"gpu-1\"\n",
        "  - name: \"ops\"\n",
        &format!("      - \"{KEY}\"\n"),
        "  - \"htop\"\n",
        "  - \"echo \\\"up: yes\\\" > /run/up\"\n",
    ] {
        assert!(user_data.contains(line), "missing {line:?} in\n{user_data}");
    }
    assert!(file("network-config").contains("dhcp4: true"));

    // A restarted service reads the same configuration back.
    let restarted = h.restarted();
    let again = restarted.info("full").unwrap();
    assert_eq!(serde_json::to_value(&again.config).unwrap(), vm["config"]);
    assert_eq!(
        serde_json::to_value(&again.networks).unwrap(),
        vm["networks"]
    );

    // Deleting the VM removes its seed disk; the operator's images stay.
    let (status, _) = h.call(Method::DELETE, "/v1/vms/full", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!seed.exists());
    assert!(Path::new(body["disks"][0]["path"].as_str().unwrap()).exists());
}

#[tokio::test]
async fn a_vm_without_cloud_init_gets_no_seed_and_form_vmm_no_device_lists() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let (status, vm) = h.call(Method::POST, "/v1/vms", Some(h.vm("bare"))).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert!(vm["seed_image"].is_null());
    assert_eq!(vm["networks"], json!([]));
    let config = vm_create_body(&h, "bare");
    assert!(config.get("disks").is_none(), "{config}");
    assert!(config.get("net").is_none(), "{config}");
    assert!(!seed_path(&h, "bare").exists());
}

#[tokio::test]
async fn bad_disks_networks_and_keys_are_400s_naming_the_field() {
    let h = Harness::new(hgx_h100());
    let missing = support::image_dir(h.dir.path())
        .join("missing.raw")
        .display()
        .to_string();
    for (field, value, names) in [
        ("disks", json!([{"path": missing}]), "disks[0].path"),
        ("disks", json!([{"path": "relative.raw"}]), "disks[0].path"),
        (
            "networks",
            json!([{}, {"bridge": "no such bridge"}]),
            "networks[1].bridge",
        ),
        ("networks", json!([{"mac": "01:02:03"}]), "networks[0].mac"),
        (
            "cloud_init",
            json!({"ssh_authorized_keys": ["AAAA not a key"]}),
            "cloud_init.ssh_authorized_keys[0]",
        ),
        (
            "cloud_init",
            json!({"hostname": "under_score"}),
            "cloud_init.hostname",
        ),
    ] {
        let mut body = h.vm("bad");
        body[field] = value;
        body["gpu_devices"] = json!([GPU]);
        let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(code(&answer), "invalid_config", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(names), "{names}: {message}");
        assert!(h.db_snapshot().is_empty());
        assert!(h.writes().is_empty(), "nothing bound for a refused VM");
    }
    // Unknown fields are refused too, so a typo is not silently dropped.
    let mut body = h.vm("bad");
    body["disks"] = json!([{"path": "/x", "read_only": true}]);
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

#[tokio::test]
async fn a_refused_create_removes_the_seed_and_gives_the_gpu_back() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let folder = h.dir.path().join("run/vms/refused");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("refuse-create"), "").unwrap();
    let mut body = full_body(&h, "refused");
    body["gpu_devices"] = json!([GPU]);
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(code(&answer), "vmm_refused");
    // The seed was built and handed over before form-vmm refused.
    let config = vm_create_body(&h, "refused");
    assert_eq!(config["disks"][2]["id"], "cidata");
    assert!(!seed_path(&h, "refused").exists());
    assert!(h.db_snapshot().is_empty(), "{:?}", h.db_snapshot());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

#[tokio::test]
async fn a_missing_bridge_fails_the_create_after_vm_create_and_rolls_back() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let mut body = full_body(&h, "nobridge");
    body["gpu_devices"] = json!([GPU]);
    body["networks"] = json!([{"bridge": "fvnobridge9"}]);
    body["boot"] = json!(true);
    let (status, answer) = h.call(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(code(&answer), "invalid_config");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("networks[0].bridge: bridge fvnobridge9 does not exist"),
        "{message}"
    );
    // form-vmm created the VM (and its tap) but was never asked to boot it.
    let endpoints: Vec<String> = h
        .vmm_requests("nobridge")
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert!(
        endpoints.contains(&"vm.create".to_string()),
        "{endpoints:?}"
    );
    assert!(!endpoints.contains(&"vm.boot".to_string()), "{endpoints:?}");
    assert!(!seed_path(&h, "nobridge").exists());
    assert!(h.db_snapshot().is_empty(), "{:?}", h.db_snapshot());
    assert_eq!(h.driver_of(GPU).as_deref(), Some("nvidia"));
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole path with a real bridge, in a network namespace of the test's own
/// thread (the host's interfaces are never touched): the tap form-vmm would create
/// joins the bridge before the guest boots. Needs root.
#[test]
fn a_bridged_interface_joins_its_bridge_before_boot() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: a bridge in a private network namespace needs root");
        return;
    }
    if !have_python() {
        return;
    }
    let shown = std::thread::spawn(|| {
        // SAFETY: unshare(2) with CLONE_NEWNET affects only this thread, whose
        // namespace dies with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tap = tap_name("bridged", 0);
        ip(&["link", "add", "fvtestbr", "type", "bridge"]);
        // The fake form-vmm makes no taps; form-vmm makes this one during vm.create.
        ip(&["tuntap", "add", &tap, "mode", "tap"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let h = Harness::new(hgx_h100());
            let mut body = h.vm("bridged");
            body["networks"] = json!([{"bridge": "fvtestbr"}]);
            body["boot"] = json!(true);
            let (status, vm) = h.call(Method::POST, "/v1/vms", Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{vm}");
            assert_eq!(vm["networks"][0]["bridge"], "fvtestbr");
            assert_eq!(vm["state"], "running");
        });
        Ok(ip(&["-o", "link", "show", &tap]))
    })
    .join()
    .unwrap();
    match shown {
        Ok(shown) => {
            assert!(shown.contains("master fvtestbr"), "{shown}");
            assert!(shown.contains(",UP"), "{shown}");
        }
        Err(e) => eprintln!("skipping: cannot make a network namespace here: {e}"),
    }
}
