//! A client for form-vmm's HTTP API on its unix socket (`docs/api.md`).
//!
//! One connection per request: form-vmm answers requests one at a time anyway, and a
//! fresh connection cannot be left half-read by an earlier failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use form_vmm_api::config::{DeviceConfig, VmConfig};
use form_vmm_api::types::{
    ErrorBody, PciDeviceInfo, VmAddDevicesData, VmInfo, VmRemoveDeviceData, VmmPing,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixStream;

/// How long form-vmm waits for a guest to eject a device.
pub use form_vmm_api::types::EJECT_GIVE_UP_AFTER as GUEST_EJECT_WAIT;

/// How long each call to form-vmm may take before the service stops waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmDeadlines {
    /// `vm.boot`, `vm.reboot`, `vmm.shutdown`.
    pub request: Duration,
    /// `vm.create` and `vm.add-device`: a VM's first passthrough device maps (pins)
    /// all of its RAM for DMA, which takes long for a large VM.
    pub pin_memory: Duration,
    /// `vm.remove-device`: the guest's eject wait, then the detach, which unpins all
    /// of a large VM's RAM with its last device.
    pub remove_device: Duration,
    /// Questions that need no work from form-vmm (`vm.info`, `vmm.ping`).
    pub query: Duration,
    /// What `pin_memory` and `remove_device` grow by per GiB of the VM's RAM
    /// ([`VmmDeadlines::for_memory`]); [`PIN_PER_GIB`] by default.
    pub pin_per_gib: Duration,
}

/// What pinning and IOMMU-mapping guest RAM may take per GiB, on top of
/// [`VmmDeadlines::pin_memory`]: 2.5 times the slowest rate measured, 1.2 s per
/// GiB to map and unmap in the TCG lab (docs/performance.md), so a 1 TiB GPU VM
/// gets 53 minutes rather than being killed half way through its start.
pub const PIN_PER_GIB: Duration = Duration::from_secs(3);

impl VmmDeadlines {
    /// The deadlines for a VM of `memory` bytes: the calls that pin or unpin all of
    /// its RAM get `pin_per_gib` for each GiB of it, rounded up.
    pub fn for_memory(self, memory: u64) -> Self {
        let gib = u32::try_from(memory.div_ceil(1 << 30)).unwrap_or(u32::MAX);
        let extra = self.pin_per_gib.saturating_mul(gib);
        Self {
            pin_memory: self.pin_memory.saturating_add(extra),
            remove_device: self.remove_device.saturating_add(extra),
            ..self
        }
    }
}

impl Default for VmmDeadlines {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(60),
            pin_memory: Duration::from_secs(120),
            remove_device: GUEST_EJECT_WAIT + Duration::from_secs(30),
            query: Duration::from_secs(5),
            pin_per_gib: PIN_PER_GIB,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmClientError {
    #[error("cannot connect to the VMM's API socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the VMM's API socket {path}: {reason}")]
    Http { path: PathBuf, reason: String },
    #[error("the VMM answered {endpoint} with {status}: {message}")]
    Refused {
        endpoint: String,
        status: u16,
        /// form-vmm's error code (`eject_timeout`, `unknown_device`, ...).
        code: Option<String>,
        message: String,
    },
    #[error("the VMM did not answer {endpoint} within {}s", limit.as_secs())]
    Timeout { endpoint: String, limit: Duration },
}

impl VmmClientError {
    /// form-vmm's error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the request certainly changed nothing in form-vmm: it refused it, or
    /// it never reached form-vmm (no connection). After anything else (no answer in
    /// time, a broken connection) what form-vmm did is unknown.
    pub fn changed_nothing(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::Connect { .. })
    }

    /// Whether form-vmm refused the request for what it asked (a 4xx): a device it
    /// cannot take, a configuration it finds wrong. Not a failure of form-vmm.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if (400..500).contains(status))
    }
}

#[derive(Debug, Clone)]
pub struct VmmClient {
    socket: PathBuf,
    deadlines: VmmDeadlines,
}

impl VmmClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self::with_deadlines(socket, VmmDeadlines::default())
    }

    pub fn with_deadlines(socket: impl Into<PathBuf>, deadlines: VmmDeadlines) -> Self {
        Self {
            socket: socket.into(),
            deadlines,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn ping(&self) -> Result<VmmPing, VmmClientError> {
        let body = self
            .request(Method::GET, "vmm.ping", None, self.deadlines.query)
            .await?;
        serde_json::from_slice(&body).map_err(|e| self.http_error(format!("vmm.ping answer: {e}")))
    }

    pub async fn create(&self, config: &VmConfig) -> Result<(), VmmClientError> {
        self.put_json("vm.create", config, self.deadlines.pin_memory)
            .await
    }

    pub async fn boot(&self) -> Result<(), VmmClientError> {
        self.request(Method::PUT, "vm.boot", None, self.deadlines.request)
            .await
            .map(drop)
    }

    pub async fn reboot(&self) -> Result<(), VmmClientError> {
        self.request(Method::PUT, "vm.reboot", None, self.deadlines.request)
            .await
            .map(drop)
    }

    pub async fn shutdown_vmm(&self) -> Result<(), VmmClientError> {
        self.request(Method::PUT, "vmm.shutdown", None, self.deadlines.request)
            .await
            .map(drop)
    }

    pub async fn add_device(&self, device: &DeviceConfig) -> Result<(), VmmClientError> {
        self.put_json("vm.add-device", device, self.deadlines.pin_memory)
            .await
    }

    /// Hot-plugs `devices` together, all or none: form-vmm puts the functions of one
    /// host slot into one guest slot (a GPU and its audio function), which one
    /// `vm.add-device` per function cannot. The answer is where each landed, in order.
    pub async fn add_devices(
        &self,
        devices: &[DeviceConfig],
    ) -> Result<Vec<PciDeviceInfo>, VmmClientError> {
        let body = VmAddDevicesData {
            devices: devices.to_vec(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| self.http_error(e.to_string()))?;
        let answer = self
            .request(
                Method::PUT,
                "vm.add-devices",
                Some(body),
                self.deadlines.pin_memory,
            )
            .await?;
        serde_json::from_slice(&answer)
            .map_err(|e| self.http_error(format!("vm.add-devices answer: {e}")))
    }

    /// Takes device `id` out of the VM. With `require_eject`, a guest that does not
    /// eject it within [`GUEST_EJECT_WAIT`] keeps it, and form-vmm answers 409
    /// `eject_timeout`; without, form-vmm detaches it anyway.
    pub async fn remove_device(&self, id: &str, require_eject: bool) -> Result<(), VmmClientError> {
        let body = VmRemoveDeviceData {
            id: id.to_string(),
            require_eject,
        };
        self.put_json("vm.remove-device", &body, self.deadlines.remove_device)
            .await
    }

    /// The ids of the devices passed through to the VM, as form-vmm's `vm.info`
    /// reports them: a device is in this list exactly while form-vmm holds it.
    pub async fn device_ids(&self) -> Result<Vec<String>, VmmClientError> {
        let body = self
            .request(Method::GET, "vm.info", None, self.deadlines.query)
            .await?;
        let info: VmInfo = serde_json::from_slice(&body)
            .map_err(|e| self.http_error(format!("vm.info answer: {e}")))?;
        Ok(info
            .config
            .devices
            .into_iter()
            .filter_map(|d| d.id)
            .collect())
    }

    async fn put_json<T: Serialize>(
        &self,
        endpoint: &str,
        body: &T,
        limit: Duration,
    ) -> Result<(), VmmClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.http_error(e.to_string()))?;
        self.request(Method::PUT, endpoint, Some(body), limit)
            .await
            .map(drop)
    }

    async fn request(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Bytes, VmmClientError> {
        tokio::time::timeout(limit, self.exchange(method, endpoint, body))
            .await
            .unwrap_or_else(|_| {
                Err(VmmClientError::Timeout {
                    endpoint: endpoint.to_string(),
                    limit,
                })
            })
    }

    async fn exchange(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, VmmClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| VmmClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("/api/v1/{endpoint}"))
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.http_error(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.http_error(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http_error(e.to_string()))?
            .to_bytes();
        driver.abort();
        if status.is_success() {
            return Ok(bytes);
        }
        let (message, code) = error_message(status, &bytes);
        Err(VmmClientError::Refused {
            endpoint: endpoint.to_string(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    fn http_error(&self, reason: String) -> VmmClientError {
        VmmClientError::Http {
            path: self.socket.clone(),
            reason,
        }
    }
}

/// form-vmm's error body, or else the raw text.
fn error_message(status: StatusCode, body: &[u8]) -> (String, Option<String>) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => (parsed.error, parsed.code),
        Err(_) if body.is_empty() => (
            status.canonical_reason().unwrap_or("error").to_string(),
            None,
        ),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_that_pin_guest_ram_wait_longer_for_bigger_vms() {
        let base = VmmDeadlines::default();
        let small = base.for_memory(512 << 20);
        assert_eq!(small.pin_memory, base.pin_memory + PIN_PER_GIB);
        let big = base.for_memory(1 << 40);
        assert_eq!(big.pin_memory, base.pin_memory + PIN_PER_GIB * 1024);
        assert_eq!(big.remove_device, base.remove_device + PIN_PER_GIB * 1024);
        assert_eq!(
            (big.request, big.query),
            (base.request, base.query),
            "calls that touch no RAM keep theirs"
        );
        assert!(big.pin_memory > Duration::from_secs(50 * 60));
    }
}
