//! Maps an HTTP method, path and body to an [`ApiRequest`], or to the error the
//! client gets back. Kept apart from the server so it can be tested without sockets.

use super::{ApiError, ApiRequest, VmAddDevicesData, VmRemoveDeviceData};
use crate::config::{DeviceConfig, VmConfig};
use serde::de::DeserializeOwned;

pub const API_PREFIX: &str = "/api/v1/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// What an endpoint turns into once its method matched.
#[derive(Clone, Copy)]
enum Action {
    Plain(fn() -> ApiRequest),
    CreateVm,
    AddDevice,
    AddDevices,
    RemoveDevice,
}

struct Endpoint {
    name: &'static str,
    method: Method,
    action: Action,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        name: "vm.create",
        method: Method::Put,
        action: Action::CreateVm,
    },
    Endpoint {
        name: "vm.boot",
        method: Method::Put,
        action: Action::Plain(|| ApiRequest::VmBoot),
    },
    Endpoint {
        name: "vm.shutdown",
        method: Method::Put,
        action: Action::Plain(|| ApiRequest::VmShutdown),
    },
    Endpoint {
        name: "vm.reboot",
        method: Method::Put,
        action: Action::Plain(|| ApiRequest::VmReboot),
    },
    Endpoint {
        name: "vm.delete",
        method: Method::Put,
        action: Action::Plain(|| ApiRequest::VmDelete),
    },
    Endpoint {
        name: "vm.power-button",
        method: Method::Put,
        action: Action::Plain(|| ApiRequest::VmPowerButton),
    },
    Endpoint {
        name: "vm.info",
        method: Method::Get,
        action: Action::Plain(|| ApiRequest::VmInfo),
    },
    Endpoint {
        name: "vmm.ping",
        method: Method::Get,
        action: Action::Plain(|| ApiRequest::VmmPing),
    },
    Endpoint {
        name: "vmm.shutdown",
        method: Method::Put,
        action: Action::Plain(|| ApiRequest::VmmShutdown),
    },
    Endpoint {
        name: "vm.add-device",
        method: Method::Put,
        action: Action::AddDevice,
    },
    Endpoint {
        name: "vm.add-devices",
        method: Method::Put,
        action: Action::AddDevices,
    },
    Endpoint {
        name: "vm.remove-device",
        method: Method::Put,
        action: Action::RemoveDevice,
    },
    Endpoint {
        name: "vm.counters",
        method: Method::Get,
        action: Action::Plain(|| ApiRequest::VmCounters),
    },
];

/// Routes one request. `method` is the HTTP method as sent; `url` may carry a query
/// string, which is ignored as Cloud Hypervisor does.
pub fn route(method: &str, url: &str, body: &[u8]) -> Result<ApiRequest, ApiError> {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    let endpoint = path
        .strip_prefix(API_PREFIX)
        .and_then(|name| ENDPOINTS.iter().find(|e| e.name == name))
        .ok_or_else(|| ApiError::UnknownPath(path.to_string()))?;
    if method != endpoint.method.name() {
        return Err(ApiError::MethodNotAllowed {
            path: path.to_string(),
            method: method.to_string(),
            allowed: endpoint.method.name(),
        });
    }
    match endpoint.action {
        Action::Plain(make) => Ok(make()),
        Action::CreateVm => {
            parse::<VmConfig>(endpoint, body).map(|config| ApiRequest::VmCreate(Box::new(config)))
        }
        Action::AddDevice => parse::<DeviceConfig>(endpoint, body)
            .map(|device| ApiRequest::VmAddDevice(Box::new(device))),
        Action::AddDevices => {
            parse::<VmAddDevicesData>(endpoint, body).map(ApiRequest::VmAddDevices)
        }
        Action::RemoveDevice => {
            parse::<VmRemoveDeviceData>(endpoint, body).map(ApiRequest::VmRemoveDevice)
        }
    }
}

fn parse<T: DeserializeOwned>(endpoint: &Endpoint, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody {
        endpoint: endpoint.name,
        reason: e.to_string(),
    })
}

/// The method an existing path accepts, for the `Allow` header of a 405.
pub fn allowed_method(url: &str) -> Option<&'static str> {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    let name = path.strip_prefix(API_PREFIX)?;
    ENDPOINTS
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.method.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    type IsExpected = fn(&ApiRequest) -> bool;

    #[test]
    fn every_plain_endpoint_routes_with_its_method() {
        let cases: &[(&str, &str, IsExpected)] = &[
            ("PUT", "vm.boot", |r| matches!(r, ApiRequest::VmBoot)),
            ("PUT", "vm.shutdown", |r| {
                matches!(r, ApiRequest::VmShutdown)
            }),
            ("PUT", "vm.reboot", |r| matches!(r, ApiRequest::VmReboot)),
            ("PUT", "vm.delete", |r| matches!(r, ApiRequest::VmDelete)),
            ("PUT", "vm.power-button", |r| {
                matches!(r, ApiRequest::VmPowerButton)
            }),
            ("GET", "vm.info", |r| matches!(r, ApiRequest::VmInfo)),
            ("GET", "vmm.ping", |r| matches!(r, ApiRequest::VmmPing)),
            ("PUT", "vmm.shutdown", |r| {
                matches!(r, ApiRequest::VmmShutdown)
            }),
            ("GET", "vm.counters", |r| {
                matches!(r, ApiRequest::VmCounters)
            }),
        ];
        for (method, name, expected) in cases {
            let request = route(method, &format!("{API_PREFIX}{name}"), b"").unwrap();
            assert!(expected(&request), "{method} {name} routed to {request:?}");
        }
    }

    #[test]
    fn create_parses_the_config_body() {
        let body = br#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":2,"max_vcpus":2}}"#;
        match route("PUT", "/api/v1/vm.create", body).unwrap() {
            ApiRequest::VmCreate(config) => assert_eq!(config.cpus.boot_vcpus, 2),
            other => panic!("routed to {other:?}"),
        }
    }

    #[test]
    fn malformed_create_body_names_the_parse_error() {
        let err = route("PUT", "/api/v1/vm.create", b"{\"payload\":").unwrap_err();
        assert_eq!(err.status_code(), 400);
        assert!(
            err.to_string()
                .starts_with("malformed request body for vm.create: EOF while parsing"),
            "{err}"
        );
        let err = route("PUT", "/api/v1/vm.create", b"{}").unwrap_err();
        assert!(err.to_string().contains("missing field `payload`"), "{err}");
    }

    #[test]
    fn unknown_paths_are_404() {
        for url in ["/api/v1/vm.frobnicate", "/", "/api/v2/vm.info", "/api/v1/"] {
            let err = route("GET", url, b"").unwrap_err();
            assert!(matches!(err, ApiError::UnknownPath(_)), "{url}: {err}");
            assert_eq!(err.status_code(), 404);
        }
    }

    #[test]
    fn wrong_method_is_405_and_names_the_right_one() {
        let err = route("GET", "/api/v1/vm.boot", b"").unwrap_err();
        assert_eq!(err.status_code(), 405);
        assert_eq!(
            err.to_string(),
            "/api/v1/vm.boot does not accept GET; use PUT"
        );
        assert_eq!(allowed_method("/api/v1/vm.info"), Some("GET"));
        assert_eq!(allowed_method("/api/v1/nope"), None);
    }

    #[test]
    fn add_and_remove_device_parse_their_bodies() {
        let body = br#"{"path":"/sys/bus/pci/devices/0000:01:00.0","id":"gpu0","x_nv_gpudirect_clique":2}"#;
        match route("PUT", "/api/v1/vm.add-device", body).unwrap() {
            ApiRequest::VmAddDevice(device) => {
                assert_eq!(device.id.as_deref(), Some("gpu0"));
                assert_eq!(device.x_nv_gpudirect_clique, Some(2));
            }
            other => panic!("routed to {other:?}"),
        }
        match route("PUT", "/api/v1/vm.remove-device", br#"{"id":"gpu0"}"#).unwrap() {
            ApiRequest::VmRemoveDevice(data) => assert_eq!(data.id, "gpu0"),
            other => panic!("routed to {other:?}"),
        }
        let body = br#"{"devices":[{"path":"/sys/bus/pci/devices/0000:01:00.1","id":"gpu0-f1"},{"path":"/sys/bus/pci/devices/0000:01:00.0","id":"gpu0"}]}"#;
        match route("PUT", "/api/v1/vm.add-devices", body).unwrap() {
            ApiRequest::VmAddDevices(data) => {
                let ids: Vec<_> = data.devices.iter().map(|d| d.id.as_deref()).collect();
                assert_eq!(ids, [Some("gpu0-f1"), Some("gpu0")]);
            }
            other => panic!("routed to {other:?}"),
        }
        for (name, body) in [
            ("vm.add-device", &b"{}"[..]),
            (
                "vm.add-devices",
                br#"{"path":"/sys/bus/pci/devices/0000:01:00.0"}"#,
            ),
            ("vm.remove-device", b"{}"),
            ("vm.remove-device", br#"{"id":"a","extra":1}"#),
        ] {
            let err = route("PUT", &format!("{API_PREFIX}{name}"), body).unwrap_err();
            assert_eq!(err.status_code(), 400, "{name} {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn query_strings_are_ignored() {
        assert!(matches!(
            route("GET", "/api/v1/vm.info?verbose=1", b"").unwrap(),
            ApiRequest::VmInfo
        ));
    }
}
