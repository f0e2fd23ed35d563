//! The VMM's HTTP API: Cloud Hypervisor's paths and JSON shapes on a unix socket.
//!
//! The HTTP thread ([`server`]) turns each request into an [`ApiRequest`] ([`routes`])
//! and hands it to the controller over a channel, waking it with an EventFd; the
//! controller owns the VM and answers on a per-request reply channel. Nothing here
//! touches the VM directly.

pub mod routes;
pub mod server;

use crate::config::{ConfigError, DeviceConfig, VmConfig};
use crate::device_manager::pci::PciDeviceInfo;
use crate::device_manager::vfio_error::VfioError;
use crate::vm::{VmError, VmState};
pub use form_vmm_api::types::{VmAddDevicesData, VmInfo, VmRemoveDeviceData, VmmPing};
use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a client asked the VMM to do.
#[derive(Debug)]
pub enum ApiRequest {
    VmCreate(Box<VmConfig>),
    VmBoot,
    VmShutdown,
    VmReboot,
    VmDelete,
    VmPowerButton,
    VmInfo,
    VmmPing,
    VmmShutdown,
    VmAddDevice(Box<DeviceConfig>),
    VmAddDevices(VmAddDevicesData),
    VmRemoveDevice(VmRemoveDeviceData),
    VmCounters,
}

/// vm.counters: device id → counter name → value.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// A successful answer; each variant has one HTTP rendering.
#[derive(Debug, PartialEq, Eq)]
pub enum ApiResponse {
    /// 204 No Content.
    Done,
    VmInfo(Box<VmInfo>),
    VmmPing(VmmPing),
    /// 200 with the device's id and guest address (vm.add-device).
    PciDeviceInfo(PciDeviceInfo),
    /// 200 with each device's id and guest address (vm.add-devices).
    PciDevices(Vec<PciDeviceInfo>),
    /// 200 with every device's counters (vm.counters).
    Counters(VmCounters),
}

/// What `vmm.ping` says about this process.
pub fn ping_this_process() -> VmmPing {
    VmmPing {
        build_version: concat!("form-vmm ", env!("CARGO_PKG_VERSION")).to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        features: Vec::new(),
        sandbox: crate::sandbox::status(),
    }
}

/// Everything a request can fail with. Each variant maps to one HTTP status, chosen
/// to follow Cloud Hypervisor's API description: 404 when there is no VM, 405 when
/// the VM is in the wrong state, 409 when a VM already exists.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no VM has been created: send vm.create first")]
    NoVm,
    #[error("a VM already exists: send vm.delete first to replace it")]
    AlreadyCreated,
    #[error("cannot {action}: the VM is {state:?}; this needs a VM that is {needed}")]
    WrongState {
        action: &'static str,
        state: VmState,
        needed: &'static str,
    },
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("{0}")]
    Vm(#[from] VmError),
    #[error("cannot create the VM's event fds: {0}")]
    EventFd(String),
    #[error("unknown API path {0}; paths are /api/v1/vm.* and /api/v1/vmm.*")]
    UnknownPath(String),
    #[error("{path} does not accept {method}; use {allowed}")]
    MethodNotAllowed {
        path: String,
        method: String,
        allowed: &'static str,
    },
    #[error("malformed request body for {endpoint}: {reason}")]
    BadBody {
        endpoint: &'static str,
        reason: String,
    },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the VMM is shutting down")]
    ShuttingDown,
    /// A path the VMM's Landlock rules do not let it open (400 `path_not_allowed`).
    #[error("{0}")]
    PathNotAllowed(String),
    /// The sandbox failed (a privilege drop): 500 `sandbox`.
    #[error("sandbox: {0}")]
    Sandbox(String),
}

impl ApiError {
    pub fn status_code(&self) -> u16 {
        match self {
            ApiError::InvalidConfig(_) | ApiError::BadBody { .. } | ApiError::PathNotAllowed(_) => {
                400
            }
            ApiError::Vm(VmError::Vfio(VfioError::UnknownId(_))) => 404,
            ApiError::Vm(VmError::Vfio(e)) if e.is_bad_request() => 400,
            ApiError::Vm(VmError::Virtio(e)) if e.is_bad_request() => 400,
            ApiError::Vm(VmError::Numa(e)) if e.is_bad_request() => 400,
            ApiError::Vm(VmError::BootDisk(e)) if e.is_bad_request() => 400,
            ApiError::Vm(VmError::Config(_)) => 400,
            ApiError::NoVm | ApiError::UnknownPath(_) => 404,
            ApiError::WrongState { .. } | ApiError::MethodNotAllowed { .. } => 405,
            ApiError::AlreadyCreated
            | ApiError::Vm(VmError::Vfio(VfioError::NotEjected { .. })) => 409,
            ApiError::Vm(VmError::Vfio(e)) if e.is_busy() => 409,
            ApiError::BodyTooLarge { .. } => 413,
            ApiError::Vm(_) | ApiError::EventFd(_) | ApiError::Sandbox(_) => 500,
            ApiError::ShuttingDown => 503,
        }
    }

    /// A stable, machine-readable name for the error, beside the message in every
    /// error body, so that clients need not parse messages.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NoVm => "no_vm",
            ApiError::AlreadyCreated => "vm_exists",
            ApiError::WrongState { .. } => "invalid_state",
            ApiError::InvalidConfig(_) => "invalid_config",
            ApiError::Vm(VmError::Vfio(VfioError::NotEjected { .. })) => "eject_timeout",
            ApiError::Vm(VmError::Vfio(VfioError::UnknownId(_))) => "unknown_device",
            ApiError::Vm(VmError::Vfio(e)) if e.is_bad_request() => "invalid_device",
            ApiError::Vm(VmError::Vfio(e)) if e.is_busy() => "device_busy",
            ApiError::Vm(_) if self.status_code() == 400 => "invalid_config",
            ApiError::Vm(_) | ApiError::EventFd(_) => "internal",
            ApiError::UnknownPath(_) => "unknown_path",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::BadBody { .. } => "bad_request",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::PathNotAllowed(_) => "path_not_allowed",
            ApiError::Sandbox(_) => "sandbox",
        }
    }
}

pub type ApiResult = Result<ApiResponse, ApiError>;

/// One request in flight to the controller, with the channel its answer goes back on.
pub struct ApiMessage {
    pub request: ApiRequest,
    pub reply: Sender<ApiResult>,
}

/// The HTTP side of the channel to the controller.
pub struct ApiClient {
    requests: Sender<ApiMessage>,
    wake: EventFd,
}

/// The controller side: requests arrive on `requests`; `wake` becomes readable when
/// there are some, so the controller can poll it with the VM's own event fds.
pub struct ApiInbox {
    pub requests: Receiver<ApiMessage>,
    pub wake: EventFd,
}

/// A connected client/inbox pair.
pub fn channel() -> io::Result<(ApiClient, ApiInbox)> {
    let (requests, inbox) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let client = ApiClient {
        requests,
        wake: wake.try_clone()?,
    };
    Ok((
        client,
        ApiInbox {
            requests: inbox,
            wake,
        },
    ))
}

impl ApiClient {
    /// Sends `request` to the controller and waits for its answer. If the controller
    /// has stopped, the answer is [`ApiError::ShuttingDown`].
    pub fn call(&self, request: ApiRequest) -> ApiResult {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(ApiMessage { request, reply })
            .map_err(|_| ApiError::ShuttingDown)?;
        if let Err(e) = self.wake.write(1) {
            // The request is queued; the controller finds it on its next wake-up.
            log::warn!("could not wake the controller: {e}");
        }
        answer.recv().unwrap_or(Err(ApiError::ShuttingDown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_delivers_the_request_and_returns_the_reply() {
        let (client, inbox) = channel().unwrap();
        let controller = std::thread::spawn(move || {
            let message = inbox.requests.recv().unwrap();
            assert!(matches!(message.request, ApiRequest::VmmPing));
            message.reply.send(Ok(ApiResponse::Done)).unwrap();
        });
        assert_eq!(client.call(ApiRequest::VmmPing).unwrap(), ApiResponse::Done);
        controller.join().unwrap();
        // The controller was woken for the one request.
        let wake = client.wake.try_clone().unwrap();
        assert_eq!(wake.read().unwrap(), 1);
    }

    #[test]
    fn call_reports_shutting_down_when_the_controller_is_gone() {
        let (client, inbox) = channel().unwrap();
        drop(inbox);
        assert!(matches!(
            client.call(ApiRequest::VmInfo),
            Err(ApiError::ShuttingDown)
        ));
    }

    #[test]
    fn every_error_has_a_client_or_server_status() {
        let errors = [
            ApiError::NoVm,
            ApiError::AlreadyCreated,
            ApiError::WrongState {
                action: "boot",
                state: VmState::Running,
                needed: "not running",
            },
            ApiError::InvalidConfig(ConfigError::NoVcpus),
            ApiError::Vm(VmError::NotImplemented),
            ApiError::Vm(VmError::Vfio(VfioError::DuplicateId("gpu0".into()))),
            ApiError::Vm(VmError::Vfio(VfioError::UnknownId("gpu0".into()))),
            ApiError::Vm(VmError::Vfio(VfioError::Unavailable(
                "/dev/vfio/vfio".into(),
            ))),
            ApiError::ShuttingDown,
            ApiError::Vm(VmError::Numa(crate::numa::NumaError::NoSuchNode {
                node: 99,
                path: "/sys/devices/system/node/node99".into(),
                online: "0".into(),
            })),
            ApiError::Vm(VmError::Numa(crate::numa::NumaError::Bind {
                node: 0,
                len: 4096,
                source: io::Error::from_raw_os_error(libc::EIO),
            })),
        ];
        let codes: Vec<u16> = errors.iter().map(ApiError::status_code).collect();
        assert_eq!(
            codes,
            [404, 409, 405, 400, 500, 400, 404, 500, 503, 400, 500]
        );
        let names: Vec<&str> = errors.iter().map(ApiError::code).collect();
        assert_eq!(
            names,
            [
                "no_vm",
                "vm_exists",
                "invalid_state",
                "invalid_config",
                "internal",
                "invalid_device",
                "unknown_device",
                "internal",
                "shutting_down",
                "invalid_config",
                "internal"
            ]
        );
    }

    #[test]
    fn devices_refused_for_what_they_are_are_client_errors() {
        use pci::vfio::config::VfioConfigError;
        use pci::vfio::container::ContainerError;
        use pci::vfio::group::GroupError;
        let vfio = |e| ApiError::Vm(VmError::Vfio(e));
        let refusals = [
            vfio(VfioError::Container(ContainerError::Group(
                GroupError::NotViable {
                    bdf: "0000:01:00.0".into(),
                    group: 7,
                    member: "0000:01:00.1".into(),
                    driver: "snd_hda_intel".into(),
                },
            ))),
            vfio(VfioError::Device {
                id: "nic0".into(),
                source: pci::vfio::VfioPciError::Config(VfioConfigError::CliqueNotNvidia(0x8086)),
            }),
            vfio(VfioError::Bars {
                id: "gpu0".into(),
                source: pci::vfio::bars::BarError::Bar64AtEnd { index: 5 },
            }),
        ];
        for error in &refusals {
            assert_eq!(
                (error.status_code(), error.code()),
                (400, "invalid_device"),
                "{error}"
            );
        }
        let busy = vfio(VfioError::Container(ContainerError::GroupBusy {
            bdf: "0000:01:00.0".into(),
            group: 7,
        }));
        assert_eq!((busy.status_code(), busy.code()), (409, "device_busy"));
        assert!(busy.to_string().contains("another process"), "{busy}");
        let host = vfio(VfioError::Device {
            id: "gpu0".into(),
            source: pci::vfio::VfioPciError::NoConfigRegion,
        });
        assert_eq!(
            host.status_code(),
            500,
            "a host failure stays a server error"
        );
    }

    #[test]
    fn a_guest_that_keeps_a_device_is_a_conflict_named_eject_timeout() {
        let error = ApiError::Vm(VmError::Vfio(VfioError::NotEjected {
            id: "gpu0".into(),
            saw_request: true,
            waited: std::time::Duration::from_secs(10),
        }));
        assert_eq!(error.status_code(), 409);
        assert_eq!(error.code(), "eject_timeout");
        let message = error.to_string();
        assert!(
            message.contains("gpu0") && message.contains("still attached"),
            "{message}"
        );
    }

    #[test]
    fn remove_device_takes_cloud_hypervisors_body_and_require_eject() {
        let plain: VmRemoveDeviceData = serde_json::from_str(r#"{"id":"gpu0"}"#).unwrap();
        assert!(!plain.require_eject);
        let strict: VmRemoveDeviceData =
            serde_json::from_str(r#"{"id":"gpu0","require_eject":true}"#).unwrap();
        assert!(strict.require_eject);
        assert!(
            serde_json::from_str::<VmRemoveDeviceData>(r#"{"id":"gpu0","force":true}"#).is_err()
        );
    }
}
