//! Every failure leaves as `{"error": {"code": "...", "message": "..."}}` with the
//! status its code implies.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::types::{ErrorBody, ErrorCode, ErrorDetail};
use crate::instances::InstanceError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// form-vmm's code, when it refused the request.
    pub vmm_code: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            vmm_code: None,
        }
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        Self {
            vmm_code: e.vmm_code(),
            ..Self::new(e.code(), e.to_string())
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(ErrorCode::BodyTooLarge, e.body_text());
        }
        Self::new(ErrorCode::BadRequest, e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                vmm_code: self.vmm_code,
            },
        };
        (status, Json(body)).into_response()
    }
}
