//! The HTTP/1.1 server on the API unix socket. One thread takes requests from
//! tiny_http, routes them and waits for the controller's answer, so requests are
//! answered in the order they arrived.

use super::routes::{allowed_method, route};
use super::{ApiClient, ApiError, ApiResponse, ApiResult};
use form_vmm_api::types::ErrorBody;
use serde::Serialize;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tiny_http::{Header, Request, Response, Server};

/// Bodies are VM configurations: a few KiB. The cap keeps a client from making the
/// VMM buffer arbitrary amounts of memory.
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("API socket {0} exists: another form-vmm may be using it; remove it if stale")]
    SocketExists(PathBuf),
    #[error("cannot listen on API socket {path}: {reason}")]
    Bind { path: PathBuf, reason: String },
    #[error("cannot start the API thread: {0}")]
    Thread(io::Error),
}

/// A running API server. Dropping it (or [`ApiServer::stop`]) finishes the request
/// being answered, stops the thread and removes the socket file.
pub struct ApiServer {
    server: Arc<Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ApiServer {
    /// Listens on `path`, which must not exist yet: a leftover socket may belong to a
    /// live VMM, and silently replacing it would cut that VMM off from its clients.
    pub fn start(path: &Path, client: ApiClient) -> Result<ApiServer, ServerError> {
        if path.symlink_metadata().is_ok() {
            return Err(ServerError::SocketExists(path.to_path_buf()));
        }
        let listener =
            std::os::unix::net::UnixListener::bind(path).map_err(|e| ServerError::Bind {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let stopping = Arc::new(AtomicBool::new(false));
        // The HTTP library starts its own threads (an accept thread, a pool of
        // connection threads) from the thread that builds the server, and they
        // inherit that thread's seccomp filter: so the API thread builds it, after
        // installing its filter.
        let (built, server) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("api".to_string())
                .spawn(move || {
                    crate::sandbox::enter_or_abort(crate::sandbox::ThreadKind::Api);
                    let server = match Server::from_listener(listener, None) {
                        Ok(server) => Arc::new(server),
                        Err(e) => {
                            let _ = built.send(Err(e.to_string()));
                            return;
                        }
                    };
                    if built.send(Ok(Arc::clone(&server))).is_ok() {
                        serve(&server, &stopping, &client);
                    }
                })
        };
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(ServerError::Thread(e));
            }
        };
        let server = match server.recv() {
            Ok(Ok(server)) => server,
            outcome => {
                let _ = thread.join();
                let _ = std::fs::remove_file(path);
                return Err(ServerError::Bind {
                    path: path.to_path_buf(),
                    reason: match outcome {
                        Ok(Err(reason)) => reason,
                        _ => "the API thread ended before it served".to_string(),
                    },
                });
            }
        };
        log::info!("API listening on {}", path.display());
        Ok(ApiServer {
            server,
            stopping,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and removes the socket; idempotent.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if thread.join().is_err() {
            log::error!("the API thread panicked");
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove API socket {}: {e}", self.path.display());
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(server: &Server, stopping: &AtomicBool, client: &ApiClient) {
    loop {
        match server.recv() {
            Ok(request) => answer(request, client),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => log::warn!("API connection failed: {e}"),
        }
    }
}

fn answer(mut request: Request, client: &ApiClient) {
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let result = read_body(&mut request)
        .and_then(|body| route(&method, &url, &body))
        .and_then(|api_request| client.call(api_request));
    let status = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{} {e}", e.status_code()),
    };
    log::debug!("API {method} {url}: {status}");
    let response = render(&url, result);
    if let Err(e) = request.respond(response) {
        log::warn!("cannot answer API {method} {url}: {e}");
    }
}

fn read_body(request: &mut Request) -> Result<Vec<u8>, ApiError> {
    let too_large = ApiError::BodyTooLarge {
        limit: MAX_BODY_BYTES,
    };
    if request.body_length().is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    // One byte past the cap tells an oversized chunked body from one exactly at it.
    let limit = MAX_BODY_BYTES as u64 + 1;
    request
        .as_reader()
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadBody {
            endpoint: "request",
            reason: format!("cannot read the body: {e}"),
        })?;
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large);
    }
    Ok(body)
}

fn json_header() -> Option<Header> {
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).ok()
}

fn json_response<T: Serialize>(status: u16, value: &T) -> Response<io::Cursor<Vec<u8>>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(r#"{{"error":"cannot encode the response: {e}"}}"#).into_bytes()
    });
    let mut response = Response::from_data(body).with_status_code(status);
    if let Some(header) = json_header() {
        response.add_header(header);
    }
    response
}

fn render(url: &str, result: ApiResult) -> Response<io::Cursor<Vec<u8>>> {
    match result {
        Ok(ApiResponse::Done) => Response::from_data(Vec::new()).with_status_code(204),
        Ok(ApiResponse::VmInfo(info)) => json_response(200, &info),
        Ok(ApiResponse::VmmPing(ping)) => json_response(200, &ping),
        Ok(ApiResponse::PciDeviceInfo(info)) => json_response(200, &info),
        Ok(ApiResponse::PciDevices(infos)) => json_response(200, &infos),
        Ok(ApiResponse::Counters(counters)) => json_response(200, &counters),
        Err(error) => {
            let mut response = json_response(
                error.status_code(),
                &ErrorBody {
                    error: error.to_string(),
                    code: Some(error.code().to_string()),
                },
            );
            if let ApiError::MethodNotAllowed { .. } = error {
                let allow = allowed_method(url)
                    .and_then(|method| Header::from_bytes(&b"Allow"[..], method.as_bytes()).ok());
                if let Some(allow) = allow {
                    response.add_header(allow);
                }
            }
            response
        }
    }
}
