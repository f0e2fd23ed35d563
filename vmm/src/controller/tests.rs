use super::testing::FakeBackend;
use super::*;
use crate::api::{self, ApiClient};
use crate::config::PayloadConfig;
use std::path::PathBuf;
use std::thread::JoinHandle;

/// A config that passes validation: the test binary stands in for the kernel file.
fn config() -> VmConfig {
    VmConfig {
        payload: PayloadConfig {
            kernel: Some(std::env::current_exe().unwrap()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `config()` with a NIC on a named tap (id eth0) and one on an fd (no id).
fn config_with_nics() -> VmConfig {
    let mut config = config();
    config.net = vec![
        crate::config::NetConfig::parse("tap=tap0,id=eth0").unwrap(),
        crate::config::NetConfig::parse("fd=7").unwrap(),
    ];
    config
}

fn create(config: VmConfig) -> ApiRequest {
    ApiRequest::VmCreate(Box::new(config))
}

fn state_of(controller: &mut Controller<FakeBackend>) -> VmState {
    match controller.handle(ApiRequest::VmInfo).unwrap() {
        ApiResponse::VmInfo(info) => info.state,
        other => panic!("vm.info answered {other:?}"),
    }
}

fn status(result: ApiResult) -> u16 {
    result.map_or_else(|e| e.status_code(), |_| 200)
}

#[test]
fn create_boot_info_shutdown_delete() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    assert_eq!(
        controller.handle(create(config())).unwrap(),
        ApiResponse::Done
    );
    assert_eq!(state_of(&mut controller), VmState::Created);

    controller.handle(ApiRequest::VmBoot).unwrap();
    match controller.handle(ApiRequest::VmInfo).unwrap() {
        ApiResponse::VmInfo(info) => {
            assert_eq!(info.state, VmState::Running);
            assert_eq!(info.config, config());
            assert_eq!(info.memory_actual_size, config().memory.size);
        }
        other => panic!("vm.info answered {other:?}"),
    }

    controller.handle(ApiRequest::VmShutdown).unwrap();
    assert_eq!(state_of(&mut controller), VmState::Shutdown);
    assert_eq!(backend.state().shut_down, 1);

    // A shut-down VM boots again from its configuration.
    controller.handle(ApiRequest::VmBoot).unwrap();
    assert_eq!(state_of(&mut controller), VmState::Running);
    assert_eq!(backend.state().created, 2);

    controller.handle(ApiRequest::VmDelete).unwrap();
    assert_eq!(backend.state().shut_down, 2);
    assert!(matches!(
        controller.handle(ApiRequest::VmInfo),
        Err(ApiError::NoVm)
    ));
}

#[test]
fn requests_without_a_vm_are_404() {
    let mut controller = Controller::new(FakeBackend::default(), None);
    for request in [
        ApiRequest::VmBoot,
        ApiRequest::VmShutdown,
        ApiRequest::VmReboot,
        ApiRequest::VmPowerButton,
        ApiRequest::VmInfo,
    ] {
        let err = controller.handle(request).unwrap_err();
        assert!(matches!(err, ApiError::NoVm), "{err}");
        assert_eq!(err.status_code(), 404);
    }
    // Deleting nothing is not an error, so clean-up scripts can always send it.
    assert_eq!(
        controller.handle(ApiRequest::VmDelete).unwrap(),
        ApiResponse::Done
    );
}

#[test]
fn requests_in_the_wrong_state_are_405() {
    let mut controller = Controller::new(FakeBackend::default(), None);
    controller.handle(create(config())).unwrap();
    for request in [
        ApiRequest::VmShutdown,
        ApiRequest::VmReboot,
        ApiRequest::VmPowerButton,
    ] {
        let err = controller.handle(request).unwrap_err();
        assert_eq!(err.status_code(), 405, "{err}");
        assert!(err.to_string().contains("the VM is Created"), "{err}");
    }
    controller.handle(ApiRequest::VmBoot).unwrap();
    let err = controller.handle(ApiRequest::VmBoot).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot boot: the VM is Running; this needs a VM that is Created or Shutdown"
    );
}

#[test]
fn create_twice_is_409() {
    let mut controller = Controller::new(FakeBackend::default(), None);
    controller.handle(create(config())).unwrap();
    assert_eq!(status(controller.handle(create(config()))), 409);
}

#[test]
fn invalid_config_is_400_and_creates_nothing() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    let mut bad = config();
    bad.cpus.boot_vcpus = 0;
    let err = controller.handle(create(bad)).unwrap_err();
    assert_eq!(err.status_code(), 400);
    assert_eq!(
        err.to_string(),
        "invalid VM configuration: at least one vCPU is required"
    );
    let mut bad = config();
    bad.payload.kernel = Some(PathBuf::from("/nonexistent/vmlinux"));
    assert_eq!(status(controller.handle(create(bad))), 400);
    assert_eq!(backend.state().created, 0);
    // The failed attempts left no VM behind, so a good one can still be created.
    controller.handle(create(config())).unwrap();
}

#[test]
fn an_invalid_guest_numa_topology_is_400_invalid_config() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    let mut bad = config();
    bad.cpus.boot_vcpus = 2;
    bad.cpus.max_vcpus = 2;
    bad.memory =
        crate::config::MemoryConfig::parse_with_zones(None, &["id=mem0,size=64M"]).unwrap();
    bad.numa = Some(vec![crate::config::NumaConfig::parse(
        "guest_numa_id=0,cpus=0,memory_zones=mem0",
    )
    .unwrap()]);
    let err = controller.handle(create(bad.clone())).unwrap_err();
    assert_eq!((err.status_code(), err.code()), (400, "invalid_config"));
    assert_eq!(
        err.to_string(),
        "invalid VM configuration: vCPU 1 is in no guest NUMA node; with numa every vCPU up to max_vcpus belongs to one"
    );
    assert_eq!(backend.state().created, 0);
    bad.numa.as_mut().unwrap()[0].cpus = Some(vec![0, 1]);
    controller.handle(create(bad)).unwrap();
}

#[test]
fn backend_failures_are_500_and_leave_no_half_made_vm() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    backend.state().fail_create = true;
    assert_eq!(status(controller.handle(create(config()))), 500);
    assert_eq!(status(controller.handle(ApiRequest::VmInfo)), 404);

    backend.state().fail_create = false;
    controller.handle(create(config())).unwrap();
    backend.state().fail_boot = true;
    assert_eq!(status(controller.handle(ApiRequest::VmBoot)), 500);
    assert_eq!(state_of(&mut controller), VmState::Shutdown);
    backend.state().fail_boot = false;
    controller.handle(ApiRequest::VmBoot).unwrap();
    assert_eq!(state_of(&mut controller), VmState::Running);
}

#[test]
fn reboot_replaces_the_vm() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    controller.handle(create(config())).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();
    controller.handle(ApiRequest::VmReboot).unwrap();
    let state = backend.state();
    assert_eq!((state.created, state.booted, state.shut_down), (2, 2, 1));
    drop(state);
    assert_eq!(state_of(&mut controller), VmState::Running);
}

#[test]
fn reboot_hands_the_old_vms_taps_to_the_new_one() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    controller.handle(create(config_with_nics())).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();
    controller.handle(ApiRequest::VmReboot).unwrap();
    {
        let state = backend.state();
        assert_eq!(state.taps_kept_from_live_vm, [true]);
        assert_eq!(
            state.taps_handed_over,
            [vec![], vec!["eth0".to_string(), "net1".to_string()]]
        );
    }
    // A shutdown lets the taps go with the VM; the next boot starts afresh.
    controller.handle(ApiRequest::VmShutdown).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();
    let state = backend.state();
    assert_eq!(state.taps_kept_from_live_vm, [true]);
    assert_eq!(state.taps_handed_over.len(), 3);
    assert!(state.taps_handed_over[2].is_empty());
}

#[test]
fn cloud_hypervisors_fds_is_taken_as_a_list_of_one() {
    let mut controller = Controller::new(FakeBackend::default(), None);
    let mut config = config();
    config.net = vec![serde_json::from_str(r#"{"fds":[7,8]}"#).unwrap()];
    let err = controller.handle(create(config.clone())).unwrap_err();
    assert_eq!(err.status_code(), 400);
    assert!(err.to_string().contains("one queue pair"), "{err}");
    config.net = vec![serde_json::from_str(r#"{"fds":[7]}"#).unwrap()];
    controller.handle(create(config)).unwrap();
}

#[test]
fn power_button_reaches_the_vm() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    controller.handle(create(config())).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();
    controller.handle(ApiRequest::VmPowerButton).unwrap();
    assert_eq!(backend.state().power_button_presses, 1);
}

#[test]
fn ping_reports_this_process() {
    let mut controller = Controller::new(FakeBackend::default(), None);
    match controller.handle(ApiRequest::VmmPing).unwrap() {
        ApiResponse::VmmPing(ping) => {
            assert_eq!(ping.pid, std::process::id());
            assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
            assert!(ping.features.is_empty());
        }
        other => panic!("vmm.ping answered {other:?}"),
    }
}

/// A controller running its loop on a thread, with an API client to drive it.
fn spawn_running(backend: &FakeBackend) -> (ApiClient, JoinHandle<Exit>) {
    spawn_running_with(backend, config())
}

fn spawn_running_with(backend: &FakeBackend, config: VmConfig) -> (ApiClient, JoinHandle<Exit>) {
    let (client, inbox) = api::channel().unwrap();
    let backend = backend.clone();
    let thread = std::thread::spawn(move || Controller::new(backend, Some(inbox)).run(None));
    client.call(create(config)).unwrap();
    client.call(ApiRequest::VmBoot).unwrap();
    (client, thread)
}

#[test]
fn guest_power_off_ends_the_loop_with_status_0() {
    let backend = FakeBackend::default();
    let (_client, thread) = spawn_running(&backend);
    backend.guest_power_off();
    let exit = thread.join().unwrap();
    assert_eq!(exit, Exit::GuestPowerOff);
    assert_eq!(exit.status(), 0);
    assert_eq!(backend.state().shut_down, 1);
}

#[test]
fn guest_crash_ends_the_loop_with_the_reason() {
    let backend = FakeBackend::default();
    let (_client, thread) = spawn_running(&backend);
    backend.guest_crash("vCPU 0: triple fault");
    let exit = thread.join().unwrap();
    assert_eq!(exit, Exit::GuestCrashed("vCPU 0: triple fault".to_string()));
    assert_ne!(exit.status(), 0);
}

#[test]
fn guest_reset_reboots_from_the_same_config() {
    let backend = FakeBackend::default();
    let (client, thread) = spawn_running_with(&backend, config_with_nics());
    backend.guest_reset();
    // The API is served in order after the reset was handled or before it; poll
    // until the reboot shows, bounded so a broken loop fails instead of hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while backend.state().created < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reboot after reset"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    match client.call(ApiRequest::VmInfo).unwrap() {
        ApiResponse::VmInfo(info) => assert_eq!(info.state, VmState::Running),
        other => panic!("vm.info answered {other:?}"),
    }
    assert_eq!(backend.state().booted, 2);
    // The NICs' taps were taken from the VM before it went, for the new one.
    assert_eq!(backend.state().taps_kept_from_live_vm, [true]);
    assert_eq!(
        backend.state().taps_handed_over[1],
        ["eth0".to_string(), "net1".to_string()]
    );
    // The new VM's fds are the ones watched now: its power-off ends the loop.
    backend.guest_power_off();
    assert_eq!(thread.join().unwrap(), Exit::GuestPowerOff);
}

#[test]
fn vmm_shutdown_answers_then_ends_the_loop() {
    let backend = FakeBackend::default();
    let (client, thread) = spawn_running(&backend);
    assert_eq!(
        client.call(ApiRequest::VmmShutdown).unwrap(),
        ApiResponse::Done
    );
    assert_eq!(thread.join().unwrap(), Exit::VmmShutdown);
    assert_eq!(backend.state().shut_down, 1);
    // The controller is gone; later calls say so instead of hanging.
    assert!(matches!(
        client.call(ApiRequest::VmmPing),
        Err(ApiError::ShuttingDown)
    ));
}

#[test]
fn failed_reboot_after_a_guest_reset_ends_the_loop() {
    let backend = FakeBackend::default();
    let (_client, thread) = spawn_running(&backend);
    backend.state().fail_create = true;
    backend.guest_reset();
    match thread.join().unwrap() {
        Exit::Failed(why) => assert!(why.starts_with("guest reboot failed: "), "{why}"),
        other => panic!("loop ended with {other:?}"),
    }
}

#[test]
fn exit_without_a_reason_counts_as_a_crash() {
    let backend = FakeBackend::default();
    let (client, thread) = spawn_running(&backend);
    // Wake the loop through the exit fd without setting a reason, as a VM that
    // died without recording why would.
    backend.signal_exit_without_reason();
    let exit = thread.join().unwrap();
    assert!(matches!(exit, Exit::GuestCrashed(_)), "{exit:?}");
    drop(client);
}

fn add_device(path: &str, id: Option<&str>) -> ApiRequest {
    ApiRequest::VmAddDevice(Box::new(crate::config::DeviceConfig {
        path: path.into(),
        id: id.map(str::to_string),
        ..Default::default()
    }))
}

fn remove_device(id: &str) -> ApiRequest {
    ApiRequest::VmRemoveDevice(api::VmRemoveDeviceData {
        id: id.into(),
        require_eject: false,
    })
}

#[test]
fn a_removal_that_needs_the_guests_eject_keeps_the_device_when_the_guest_keeps_it() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    controller.handle(create(config())).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();
    controller
        .handle(add_device(
            "/sys/bus/pci/devices/0000:01:00.0",
            Some("gpu0"),
        ))
        .unwrap();
    backend.state().guest_keeps_devices = true;
    let strict = |id: &str| {
        ApiRequest::VmRemoveDevice(api::VmRemoveDeviceData {
            id: id.into(),
            require_eject: true,
        })
    };
    let err = controller.handle(strict("gpu0")).unwrap_err();
    assert_eq!(
        (err.status_code(), err.code()),
        (409, "eject_timeout"),
        "{err}"
    );
    let ApiResponse::VmInfo(info) = controller.handle(ApiRequest::VmInfo).unwrap() else {
        panic!("vm.info answered otherwise");
    };
    assert_eq!(
        info.config.devices.len(),
        1,
        "the device stays in the config"
    );
    assert!(backend.state().removed_devices.is_empty());

    // Without require_eject the device goes whatever the guest does.
    assert_eq!(
        controller.handle(remove_device("gpu0")).unwrap(),
        ApiResponse::Done
    );
    assert_eq!(backend.state().removed_devices, ["gpu0"]);
    let err = controller.handle(strict("gpu0")).unwrap_err();
    assert_eq!(
        (err.status_code(), err.code()),
        (404, "unknown_device"),
        "{err}"
    );
}

#[test]
fn devices_come_and_go_on_a_running_vm_and_survive_a_reboot() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    assert_eq!(
        status(controller.handle(add_device("/sys/bus/pci/devices/0000:01:00.0", None))),
        404,
        "no VM yet"
    );
    controller.handle(create(config())).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();

    let added = controller
        .handle(add_device("/sys/bus/pci/devices/0000:01:00.0", None))
        .unwrap();
    let ApiResponse::PciDeviceInfo(info) = added else {
        panic!("vm.add-device answered {added:?}");
    };
    assert_eq!(info.id, "_vfio0");
    assert_eq!(info.bdf, "0000:00:01.0");
    let second = controller
        .handle(add_device(
            "/sys/bus/pci/devices/0000:02:00.0",
            Some("gpu1"),
        ))
        .unwrap();
    assert!(matches!(second, ApiResponse::PciDeviceInfo(ref i) if i.bdf == "0000:00:02.0"));

    // Duplicates are the client's mistake.
    let err = controller
        .handle(add_device(
            "/sys/bus/pci/devices/0000:03:00.0",
            Some("gpu1"),
        ))
        .unwrap_err();
    assert_eq!(err.status_code(), 400, "{err}");
    assert!(
        err.to_string().contains("\"gpu1\" is already in use"),
        "{err}"
    );
    let err = controller
        .handle(add_device("/sys/bus/pci/devices/0000:01:00.0", None))
        .unwrap_err();
    assert_eq!(err.status_code(), 400, "{err}");
    let err = controller
        .handle(ApiRequest::VmAddDevice(Box::new(
            crate::config::DeviceConfig {
                path: "/sys/bus/pci/devices/0000:04:00.0".into(),
                pci_segment: 1,
                ..Default::default()
            },
        )))
        .unwrap_err();
    assert_eq!(err.status_code(), 400, "{err}");
    assert!(err.to_string().contains("segment 0 only"), "{err}");

    backend
        .state()
        .device_counters
        .insert("mmio_reads".into(), 7);
    match controller.handle(ApiRequest::VmCounters).unwrap() {
        ApiResponse::Counters(c) => {
            assert_eq!(c.len(), 2);
            assert_eq!(c["gpu1"]["mmio_reads"], 7);
        }
        other => panic!("vm.counters answered {other:?}"),
    }

    // The configuration follows, so a reboot brings the devices back.
    let devices = |controller: &mut Controller<FakeBackend>| match controller
        .handle(ApiRequest::VmInfo)
        .unwrap()
    {
        ApiResponse::VmInfo(info) => info
            .config
            .devices
            .iter()
            .map(|d| d.id.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        other => panic!("vm.info answered {other:?}"),
    };
    assert_eq!(devices(&mut controller), ["_vfio0", "gpu1"]);
    assert_eq!(
        controller.handle(remove_device("_vfio0")).unwrap(),
        ApiResponse::Done
    );
    assert_eq!(backend.state().removed_devices, ["_vfio0"]);
    assert_eq!(devices(&mut controller), ["gpu1"]);
    let err = controller.handle(remove_device("_vfio0")).unwrap_err();
    assert_eq!(err.status_code(), 404, "{err}");
    assert!(
        err.to_string().contains("no device with id \"_vfio0\""),
        "{err}"
    );

    controller.handle(ApiRequest::VmReboot).unwrap();
    assert_eq!(devices(&mut controller), ["gpu1"]);
    match controller.handle(ApiRequest::VmCounters).unwrap() {
        ApiResponse::Counters(c) => assert_eq!(c.keys().collect::<Vec<_>>(), ["gpu1"]),
        other => panic!("vm.counters answered {other:?}"),
    }

    // A shut-down VM has no devices to change.
    controller.handle(ApiRequest::VmShutdown).unwrap();
    let err = controller.handle(remove_device("gpu1")).unwrap_err();
    assert_eq!(err.status_code(), 405, "{err}");
}

#[test]
fn devices_added_together_go_in_all_or_none() {
    let backend = FakeBackend::default();
    let mut controller = Controller::new(backend.clone(), None);
    controller.handle(create(config())).unwrap();
    controller.handle(ApiRequest::VmBoot).unwrap();
    let device = |path: &str, id: &str| crate::config::DeviceConfig {
        path: path.into(),
        id: Some(id.into()),
        ..Default::default()
    };
    let together = |devices| ApiRequest::VmAddDevices(api::VmAddDevicesData { devices });
    let err = controller.handle(together(vec![])).unwrap_err();
    assert_eq!((err.status_code(), err.code()), (400, "bad_request"));

    // The second device's id is taken by the first: neither goes in.
    let err = controller
        .handle(together(vec![
            device("/sys/bus/pci/devices/0000:01:00.0", "gpu0"),
            device("/sys/bus/pci/devices/0000:01:00.1", "gpu0"),
        ]))
        .unwrap_err();
    assert_eq!((err.status_code(), err.code()), (400, "invalid_device"));
    let ApiResponse::VmInfo(info) = controller.handle(ApiRequest::VmInfo).unwrap() else {
        panic!("vm.info answered otherwise");
    };
    assert!(info.config.devices.is_empty(), "{:?}", info.config.devices);

    let added = controller
        .handle(together(vec![
            device("/sys/bus/pci/devices/0000:01:00.0", "gpu0"),
            device("/sys/bus/pci/devices/0000:01:00.1", "gpu0-f1"),
        ]))
        .unwrap();
    let ApiResponse::PciDevices(infos) = added else {
        panic!("vm.add-devices answered {added:?}");
    };
    let ids: Vec<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["gpu0", "gpu0-f1"]);
    let ApiResponse::VmInfo(info) = controller.handle(ApiRequest::VmInfo).unwrap() else {
        panic!("vm.info answered otherwise");
    };
    assert_eq!(info.config.devices.len(), 2);
}
