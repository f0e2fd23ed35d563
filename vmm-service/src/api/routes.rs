//! Routes of `docs/service-api.md`, each a thin call into the manager.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::error::ApiError;
use super::types::{
    AddGpuRequest, BindGpuRequest, DoctorFinding, DoctorResponse, GpuList, PingResponse, VmInfo,
    VmInstanceConfig, VmList,
};
use crate::gpu::{self, DoctorInputs, MemlockLimit, Severity};
use crate::instances::Manager;

type Shared = State<Arc<Manager>>;
type Reply<T> = Result<Json<T>, ApiError>;

/// The API's routes, without authentication (the listener adds it for TCP).
pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/ping", get(ping))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(vm_info).delete(delete_vm))
        .route("/v1/vms/{name}/boot", post(boot_vm))
        .route("/v1/vms/{name}/shutdown", post(shutdown_vm))
        .route("/v1/vms/{name}/reboot", post(reboot_vm))
        .route("/v1/vms/{name}/gpus", post(add_gpu))
        .route("/v1/vms/{name}/gpus/{device}", delete(remove_gpu))
        .route("/v1/gpus", get(list_gpus))
        .route("/v1/gpus/{device}/bind", post(bind_gpu))
        .route("/v1/gpus/{device}/unbind", post(unbind_gpu))
        .route("/v1/doctor", get(doctor))
        .with_state(manager)
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
    let info = manager.create(config).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn vm_info(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(manager.info(&name)?))
}

async fn delete_vm(
    State(manager): Shared,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    manager.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn boot_vm(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(manager.boot(&name).await?))
}

async fn shutdown_vm(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(manager.shutdown(&name).await?))
}

async fn reboot_vm(State(manager): Shared, Path(name): Path<String>) -> Reply<VmInfo> {
    Ok(Json(manager.reboot(&name).await?))
}

async fn add_gpu(
    State(manager): Shared,
    Path(name): Path<String>,
    body: Result<Json<AddGpuRequest>, JsonRejection>,
) -> Reply<VmInfo> {
    let Json(request) = body?;
    Ok(Json(manager.add_gpu(&name, request).await?))
}

async fn remove_gpu(
    State(manager): Shared,
    Path((name, device)): Path<(String, String)>,
) -> Reply<VmInfo> {
    Ok(Json(manager.remove_gpu(&name, &device).await?))
}

async fn list_gpus(State(manager): Shared) -> Reply<GpuList> {
    Ok(Json(GpuList {
        gpus: manager.gpus()?,
    }))
}

async fn bind_gpu(
    State(manager): Shared,
    Path(device): Path<String>,
    body: Option<Json<BindGpuRequest>>,
) -> Reply<serde_json::Value> {
    let force = body.is_some_and(|Json(request)| request.force);
    Ok(Json(manager.bind_free_gpu(&device, force).await?))
}

async fn unbind_gpu(
    State(manager): Shared,
    Path(device): Path<String>,
) -> Reply<serde_json::Value> {
    Ok(Json(manager.unbind_free_gpu(&device).await?))
}

#[derive(Deserialize)]
struct DoctorQuery {
    memory: Option<u64>,
}

async fn doctor(State(manager): Shared, Query(query): Query<DoctorQuery>) -> Json<DoctorResponse> {
    let host = &manager.config().host;
    let inputs = DoctorInputs {
        vm_memory: query.memory,
        memlock: MemlockLimit::of_current_process(host),
    };
    let report = gpu::doctor(host, &inputs);
    Json(DoctorResponse {
        worst: severity_name(report.worst()).to_string(),
        findings: report
            .findings
            .into_iter()
            .map(|f| DoctorFinding {
                check: f.check.to_string(),
                severity: severity_name(f.severity).to_string(),
                summary: f.summary,
                remedy: f.remedy,
            })
            .collect(),
    })
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Ok => "ok",
        Severity::Unknown => "unknown",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}
