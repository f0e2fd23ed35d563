//! Routes of `docs/service-api.md`, each a thin call into the manager.

use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use super::listen::Transport;
use super::types::{
    AddDevicesRequest, AddGpuRequest, BindGpuRequest, DeviceList, DoctorFinding, DoctorResponse,
    ErrorCode, GpuList, PingResponse, ServiceLimits, VmInfo, VmInstanceConfig, VmList,
    CONSOLE_DEFAULT_TAIL, CONSOLE_MAX_BYTES, CONSOLE_OFFSET_HEADER, CONSOLE_RESET_HEADER,
    CONSOLE_SIZE_HEADER,
};
use crate::gpu::{self, DoctorInputs, MemlockLimit, Severity};
use crate::instances::{ConsoleWindow, InstanceError, Manager};

type Shared = State<Arc<Manager>>;
type Reply<T> = Result<Json<T>, ApiError>;

/// The largest body of `POST /v1/vms`: 4 MiB of `cloud_init.user_data` and 64 KiB of
/// `network_config` even if every byte is written as a six-byte JSON escape
/// (`\u0001`), and 1 MiB for the rest.
pub const CREATE_BODY_LIMIT: usize = 6 * ((4 << 20) + (64 << 10)) + (1 << 20);
/// The largest body of every other route.
pub const SMALL_BODY_LIMIT: usize = 64 << 10;
/// How long a client has to send a request's body once its headers came.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the whole body first, within its route's limit and [`BODY_TIMEOUT`], so a
/// client that sends too much or stops sending gets a coded answer and holds
/// nothing.
async fn bounded_body(request: Request, next: Next) -> Response {
    let limit = if request.method() == Method::POST && request.uri().path() == "/v1/vms" {
        CREATE_BODY_LIMIT
    } else {
        SMALL_BODY_LIMIT
    };
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "the request body is larger than the {limit} bytes {} {} takes{}",
                request.method(),
                request.uri().path(),
                if limit == CREATE_BODY_LIMIT {
                    " (cloud_init.user_data may be 4 MiB)"
                } else {
                    ""
                }
            ),
        )
        .into_response()
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let request = Request::from_parts(parts, Body::empty());
            let source = std::error::Error::source(&e);
            if source.is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                drop(request);
                return ApiError::new(
                    ErrorCode::BodyTooLarge,
                    format!("the request body is larger than the {limit} bytes this route takes"),
                )
                .into_response();
            }
            return ApiError::new(
                ErrorCode::BadRequest,
                format!("cannot read the request body: {e}"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s; send it in one go",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The API's routes, without authentication (the listener adds it for TCP, and
/// tells the routes which listener a request came through: [`Transport`]).
pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(vm_info).delete(delete_vm))
        .route("/v1/vms/{name}/boot", post(boot_vm))
        .route("/v1/vms/{name}/shutdown", post(shutdown_vm))
        .route("/v1/vms/{name}/reboot", post(reboot_vm))
        .route("/v1/vms/{name}/console", get(console))
        .route("/v1/vms/{name}/gpus", post(add_gpu))
        .route("/v1/vms/{name}/gpus/{device}", delete(remove_gpu))
        .route("/v1/vms/{name}/devices", post(add_devices))
        .route("/v1/vms/{name}/devices/{device}", delete(remove_gpu))
        .route("/v1/gpus", get(list_gpus))
        .route("/v1/devices", get(list_devices))
        .route("/v1/gpus/{device}/bind", post(bind_gpu))
        .route("/v1/gpus/{device}/unbind", post(unbind_gpu))
        .route("/v1/doctor", get(doctor))
        .with_state(manager)
        .layer(DefaultBodyLimit::max(CREATE_BODY_LIMIT))
        .layer(axum::middleware::from_fn(bounded_body))
}

/// Runs a change to its end even if the client goes away mid-request: axum drops a
/// handler's future when its connection closes, which would cut a change between
/// its steps (a GPU detached from its VM but not yet back on its driver, a VM
/// stopped but not yet forgotten).
async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, InstanceError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(change).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("the change did not finish: {e}"),
        )),
    }
}

async fn ping() -> Json<PingResponse> {
    Json(PingResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    })
}

async fn list_vms(State(manager): Shared) -> Reply<VmList> {
    Ok(Json(VmList {
        vms: manager.list()?,
    }))
}

async fn create_vm(
    State(manager): Shared,
    body: Result<Json<VmInstanceConfig>, JsonRejection>,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let Json(config) = body?;
    let info = to_completion(async move { manager.create(config).await }).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn vm_info(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(manager.info(&name)?))
}

async fn delete_vm(
    State(manager): Shared,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    to_completion(async move { manager.delete(&name).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn boot_vm(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(
        to_completion(async move { manager.boot(&name).await }).await?,
    ))
}

async fn shutdown_vm(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(
        to_completion(async move { manager.shutdown(&name).await }).await?,
    ))
}

async fn reboot_vm(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(
        to_completion(async move { manager.reboot(&name).await }).await?,
    ))
}

async fn console(
    State(manager): Shared,
    Path(name): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let window = console_window(&pairs).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let chunk = manager.console(&name, window).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONSOLE_OFFSET_HEADER, HeaderValue::from(chunk.offset));
    headers.insert(CONSOLE_SIZE_HEADER, HeaderValue::from(chunk.size));
    if chunk.reset {
        headers.insert(CONSOLE_RESET_HEADER, HeaderValue::from_static("1"));
    }
    Ok((headers, chunk.bytes).into_response())
}

/// `tail=N` or `from=OFFSET`, one of them, each at most once; anything else is refused
/// rather than ignored, so a typo cannot silently answer a different window.
fn console_window(pairs: &[(String, String)]) -> Result<ConsoleWindow, String> {
    let mut window = None;
    for (name, value) in pairs {
        let parsed = match name.as_str() {
            "tail" => {
                let count = bytes_parameter(name, value)?;
                if count > CONSOLE_MAX_BYTES {
                    return Err(format!(
                        "tail={count} is more than the {CONSOLE_MAX_BYTES} bytes one answer holds; read older output with from="
                    ));
                }
                ConsoleWindow::Tail(count)
            }
            "from" => ConsoleWindow::From(bytes_parameter(name, value)?),
            other => {
                return Err(format!(
                    "unknown query parameter '{other}'; the console takes tail=BYTES or from=OFFSET"
                ))
            }
        };
        if let Some(earlier) = window.replace(parsed) {
            let twice = matches!(
                (earlier, parsed),
                (ConsoleWindow::Tail(_), ConsoleWindow::Tail(_))
                    | (ConsoleWindow::From(_), ConsoleWindow::From(_))
            );
            return Err(if twice {
                format!("{name} is given more than once")
            } else {
                "give tail or from, not both".to_string()
            });
        }
    }
    Ok(window.unwrap_or(ConsoleWindow::Tail(CONSOLE_DEFAULT_TAIL)))
}

fn bytes_parameter(name: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{name}='{value}' is not a number of bytes (a non-negative integer)"))
}

async fn add_gpu(
    State(manager): Shared,
    Path(name): Path<String>,
    body: Result<Json<AddGpuRequest>, JsonRejection>,
) -> Reply<VmInfo> {
    let Json(request) = body?;
    Ok(Json(
        to_completion(async move { manager.add_gpu(&name, request).await }).await?,
    ))
}

async fn add_devices(
    State(manager): Shared,
    Path(name): Path<String>,
    body: Result<Json<AddDevicesRequest>, JsonRejection>,
) -> Reply<VmInfo> {
    let Json(request) = body?;
    Ok(Json(
        to_completion(async move { manager.add_devices(&name, request).await }).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveGpuQuery {
    /// Detach the GPU even if the guest does not eject it.
    #[serde(default)]
    force: bool,
}

async fn remove_gpu(
    State(manager): Shared,
    Path((name, device)): Path<(String, String)>,
    query: Result<Query<RemoveGpuQuery>, QueryRejection>,
) -> Reply<VmInfo> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    Ok(Json(
        to_completion(async move { manager.remove_gpu(&name, &device, query.force).await }).await?,
    ))
}

async fn list_gpus(State(manager): Shared) -> Reply<GpuList> {
    Ok(Json(GpuList {
        gpus: manager.gpus()?,
    }))
}

async fn list_devices(State(manager): Shared) -> Reply<DeviceList> {
    Ok(Json(DeviceList {
        devices: manager.devices()?,
    }))
}

async fn bind_gpu(
    State(manager): Shared,
    transport: Option<Extension<Transport>>,
    Path(device): Path<String>,
    body: Option<Json<BindGpuRequest>>,
) -> Reply<serde_json::Value> {
    let force = body.is_some_and(|Json(request)| request.force);
    // Forcing takes a console GPU or a group the host uses away from the host: the
    // local operator's decision, not a remote client's.
    if force && transport.map(|Extension(t)| t) != Some(Transport::Unix) {
        return Err(ApiError::new(
            ErrorCode::ForceNotAllowed,
            format!(
                "binding {device} with force (a console GPU or an IOMMU group the host uses) is allowed only on the service's local unix socket; run form-vmm-ctl gpu bind --force on the host, or vmm-service gpu bind --force"
            ),
        ));
    }
    Ok(Json(
        to_completion(async move { manager.bind_free_gpu(&device, force).await }).await?,
    ))
}

async fn unbind_gpu(
    State(manager): Shared,
    Path(device): Path<String>,
) -> Reply<serde_json::Value> {
    Ok(Json(
        to_completion(async move { manager.unbind_free_gpu(&device).await }).await?,
    ))
}

#[derive(Deserialize)]
struct DoctorQuery {
    memory: Option<u64>,
}

async fn doctor(State(manager): Shared, Query(query): Query<DoctorQuery>) -> Reply<DoctorResponse> {
    let config = manager.config();
    let host = &config.host;
    let inputs = DoctorInputs {
        vm_memory: query.memory,
        memlock: MemlockLimit::of_current_process(host),
    };
    let report = gpu::doctor(host, &inputs);
    let usage = manager.usage()?;
    let limits = ServiceLimits {
        max_vms: config.admission.max_vms,
        vms: usage.vms,
        max_memory: config.admission.max_memory,
        memory: usage.memory,
        max_vcpus: config.admission.max_vcpus,
        vcpus: usage.vcpus,
        image_dirs: config.images.dirs(),
        block_devices: config.images.block_devices(),
    };
    let mut findings: Vec<DoctorFinding> = report
        .findings
        .into_iter()
        .map(|f| DoctorFinding {
            check: f.check.to_string(),
            severity: severity_name(f.severity).to_string(),
            summary: f.summary,
            remedy: f.remedy,
        })
        .collect();
    let vmms = super::doctor::VmmConfinement {
        users: config.vmm_users.as_ref(),
        mount_ns: config.vmm_mount_ns,
        cgroups: config.cgroups.as_ref().map(|c| c.base().to_path_buf()),
    };
    findings.extend(super::doctor::service_findings(&limits, &vmms));
    let worst = ["error", "warning", "unknown", "ok"]
        .into_iter()
        .find(|s| findings.iter().any(|f| f.severity == *s))
        .unwrap_or("ok")
        .to_string();
    Ok(Json(DoctorResponse {
        worst,
        findings,
        limits: Some(limits),
    }))
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Ok => "ok",
        Severity::Unknown => "unknown",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}
