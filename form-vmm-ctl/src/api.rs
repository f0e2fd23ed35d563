//! The service's routes as calls: paths, request bodies, and error answers turned
//! into [`CtlError::Service`] with the service's stable code.

use form_service_api::types::{ErrorBody, API_PREFIX};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Client, Reply};
use crate::error::CtlError;

pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Sends a request and returns the body of a 2xx answer; any other answer becomes
    /// an error. `path` is relative to the API prefix (`/vms/vm1`).
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, CtlError> {
        self.exchange(method, path, body).map(|reply| reply.body)
    }

    pub fn get(&self, path: &str) -> Result<Vec<u8>, CtlError> {
        self.call(Method::GET, path, None::<&()>)
    }

    /// A GET whose answer's headers matter too (the console's offsets).
    pub fn get_reply(&self, path: &str) -> Result<Reply, CtlError> {
        self.exchange(Method::GET, path, None::<&()>)
    }

    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Reply, CtlError> {
        let json = match body {
            Some(body) => Some(serde_json::to_vec(body).map_err(|e| CtlError::BadResponse {
                what: path.to_string(),
                reason: format!("cannot encode the request: {e}"),
            })?),
            None => None,
        };
        let full_path = format!("{API_PREFIX}{path}");
        let reply = self.client.send(method.clone(), &full_path, json)?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(service_error(&method, &full_path, reply.status, reply.body))
        }
    }
}

/// Reads a success body as `T`.
pub fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, CtlError> {
    serde_json::from_slice(body).map_err(|e| CtlError::BadResponse {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// An error answer: the service's `{"error": {"code", "message"}}` when it sent one;
/// a code this CLI does not know keeps its message and falls back to the status.
fn service_error(method: &Method, path: &str, status: u16, body: Vec<u8>) -> CtlError {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body) {
        return CtlError::Service {
            status,
            code: Some(parsed.error.code),
            message: parsed.error.message,
            body,
        };
    }
    let untyped = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let message = untyped
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| describe_bare_status(method, path, status, &body));
    CtlError::Service {
        status,
        code: None,
        message,
        body,
    }
}

/// An answer without the service's error body: a proxy, or a route this version of
/// the service does not have.
fn describe_bare_status(method: &Method, path: &str, status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let detail = text.trim();
    match status {
        404 | 405 => format!(
            "vmm-service has no route {method} {path} (HTTP {status}); it may be older than this form-vmm-ctl"
        ),
        _ if detail.is_empty() => format!("vmm-service answered HTTP {status} to {method} {path}"),
        _ => format!("vmm-service answered HTTP {status} to {method} {path}: {detail}"),
    }
}

/// Percent-encodes one path segment, so a name can never add or climb path levels.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    // "." and ".." are path steps even when every byte is unreserved.
    match out.as_str() {
        "." => "%2E".to_string(),
        ".." => "%2E%2E".to_string(),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use form_service_api::types::ErrorCode;

    #[test]
    fn error_bodies_keep_the_services_code_and_message() {
        let body =
            br#"{"error":{"code":"gpu_in_use","message":"GPU 0000:19:00.0 belongs to VM a"}}"#;
        let err = service_error(&Method::POST, "/v1/vms", 409, body.to_vec());
        assert!(matches!(
            &err,
            CtlError::Service { code: Some(ErrorCode::GpuInUse), message, .. }
                if message == "GPU 0000:19:00.0 belongs to VM a"
        ));
        assert_eq!(err.exit(), Exit::Conflict);
    }

    #[test]
    fn unknown_codes_fall_back_to_the_status() {
        let body = br#"{"error":{"code":"quota_exceeded","message":"over quota"}}"#;
        let err = service_error(&Method::POST, "/v1/vms", 409, body.to_vec());
        assert_eq!(err.to_string(), "over quota");
        assert_eq!(err.exit(), Exit::Conflict);
    }

    #[test]
    fn bare_statuses_say_what_was_asked() {
        let err = service_error(&Method::POST, "/v1/gpus/x/bind", 404, Vec::new());
        assert!(
            err.to_string().contains("no route POST /v1/gpus/x/bind"),
            "{err}"
        );
        let err = service_error(&Method::GET, "/v1/vms", 502, b"Bad Gateway".to_vec());
        assert_eq!(
            err.to_string(),
            "vmm-service answered HTTP 502 to GET /v1/vms: Bad Gateway"
        );
        assert_eq!(err.exit(), Exit::Failure);
    }

    #[test]
    fn segments_cannot_escape_their_level() {
        assert_eq!(segment("train-1.a_b"), "train-1.a_b");
        assert_eq!(segment("0000:19:00.0"), "0000:19:00.0");
        assert_eq!(segment("a/../b"), "a%2F..%2Fb");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
