//! A stand-in for vmm-service: answers canned JSON per route on a unix socket (or TCP)
//! and records every request, so tests can check what the CLI sent and how it showed
//! the answer.

#![allow(dead_code)] // each test binary uses a different part

pub mod tls;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

#[derive(Clone)]
struct Canned {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

impl Canned {
    fn json(status: u16, body: &str, delay: Duration) -> Self {
        Self {
            status,
            body: body.as_bytes().to_vec(),
            content_type: "application/json",
            headers: Vec::new(),
            delay,
        }
    }
}

#[derive(Default)]
struct Shared {
    /// The answers of each route in turn; the last one repeats.
    routes: HashMap<(String, String), Vec<Canned>>,
    requests: Vec<Recorded>,
}

pub struct FakeService {
    shared: Arc<Mutex<Shared>>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl FakeService {
    /// A fake listening on a fresh unix socket.
    pub fn unix() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("service.sock");
        let service = Self::new(dir, socket.clone());
        let _entered = service.runtime.enter();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        service
            .runtime
            .spawn(axum::serve(listener, service.router()).into_future());
        service
    }

    /// A fake listening on TCP; returns it with its `http://127.0.0.1:PORT` URL.
    pub fn tcp() -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let unused = dir.path().join("no.sock");
        let service = Self::new(dir, unused);
        let listener = service
            .runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        service
            .runtime
            .spawn(axum::serve(listener, service.router()).into_future());
        (service, url)
    }

    /// A fake speaking TLS with `pki`'s server certificate; returns it with its
    /// `https://127.0.0.1:PORT` URL.
    pub fn tls(pki: &tls::Pki) -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let unused = dir.path().join("no.sock");
        let service = Self::new(dir, unused);
        let tcp = service
            .runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("https://{}", tcp.local_addr().unwrap());
        let listener = tls::TlsListener {
            tcp,
            acceptor: pki.acceptor(),
        };
        service
            .runtime
            .spawn(axum::serve(listener, service.router()).into_future());
        (service, url)
    }

    fn new(dir: tempfile::TempDir, socket: PathBuf) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Self {
            shared: Arc::default(),
            runtime,
            _dir: dir,
            socket,
        }
    }

    fn router(&self) -> Router {
        Router::new()
            .fallback(answer)
            .with_state(self.shared.clone())
    }

    /// Answers `method target` (path and query) with `status` and `body`.
    pub fn route(&self, method: &str, target: &str, status: u16, body: serde_json::Value) {
        self.route_raw(method, target, status, &body.to_string(), Duration::ZERO);
    }

    pub fn route_raw(&self, method: &str, target: &str, status: u16, body: &str, delay: Duration) {
        self.answer_with(method, target, Canned::json(status, body, delay), true);
    }

    /// Answers `method target` with `body` once the answers given so far were used.
    pub fn route_then(&self, method: &str, target: &str, status: u16, body: serde_json::Value) {
        let canned = Canned::json(status, &body.to_string(), Duration::ZERO);
        self.answer_with(method, target, canned, false);
    }

    /// Answers `GET target` as the service's console route does: the log's bytes as
    /// text, with the offset after them, the log's size and (when `reset`) the restart.
    /// Called again for the same target, adds the next answer, as a growing log gives.
    pub fn console(&self, target: &str, bytes: &[u8], offset: u64, size: u64, reset: bool) {
        let mut headers = vec![
            ("x-console-offset", offset.to_string()),
            ("x-console-size", size.to_string()),
        ];
        if reset {
            headers.push(("x-console-reset", "1".to_string()));
        }
        let canned = Canned {
            status: 200,
            body: bytes.to_vec(),
            content_type: "text/plain; charset=utf-8",
            headers,
            delay: Duration::ZERO,
        };
        self.answer_with("GET", target, canned, false);
    }

    fn answer_with(&self, method: &str, target: &str, canned: Canned, replace: bool) {
        let mut shared = self.shared.lock().unwrap();
        let answers = shared
            .routes
            .entry((method.to_string(), target.to_string()))
            .or_default();
        if replace {
            answers.clear();
        }
        answers.push(canned);
    }

    /// Answers with the service's error body for `code`.
    pub fn error(&self, method: &str, target: &str, status: u16, code: &str, message: &str) {
        self.route(
            method,
            target,
            status,
            serde_json::json!({"error": {"code": code, "message": message}}),
        );
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Runs the CLI against this fake's socket.
    pub fn ctl(&self, args: &[&str]) -> Run {
        let mut full = vec!["--socket", self.socket.to_str().unwrap()];
        full.extend_from_slice(args);
        ctl(&full, None)
    }
}

async fn answer(State(shared): State<Arc<Mutex<Shared>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let body = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let method = parts.method.to_string();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string());
    let canned = {
        let mut shared = shared.lock().unwrap();
        shared.requests.push(Recorded {
            method: method.clone(),
            target: target.clone(),
            authorization: header("authorization"),
            content_type: header("content-type"),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        match shared.routes.get_mut(&(method, target)) {
            Some(answers) if answers.len() > 1 => Some(answers.remove(0)),
            Some(answers) => answers.first().cloned(),
            None => None,
        }
    };
    let Some(canned) = canned else {
        // What an axum server says for a route it does not have.
        return StatusCode::NOT_FOUND.into_response();
    };
    tokio::time::sleep(canned.delay).await;
    let status = StatusCode::from_u16(canned.status).unwrap();
    if canned.body.is_empty() && canned.headers.is_empty() {
        return status.into_response();
    }
    let mut response = Response::builder()
        .status(status)
        .header("content-type", canned.content_type);
    for (name, value) in canned.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(canned.body)).unwrap()
}

/// One run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    /// stdout as written, for output that need not be UTF-8.
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stdout_bytes: output.stdout.clone(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `form-vmm-ctl` with only the environment a test names (`env`), so the
/// developer's own FORM_VMM_* settings cannot leak in.
pub fn ctl(args: &[&str], env: Option<(&str, &str)>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_form-vmm-ctl"));
    command.args(args);
    for name in [
        "FORM_VMM_SOCKET",
        "FORM_VMM_URL",
        "FORM_VMM_TOKEN",
        "FORM_VMM_TOKEN_FILE",
        "FORM_VMM_CA_FILE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        command.env_remove(name);
    }
    if let Some((name, value)) = env {
        command.env(name, value);
    }
    Run::from(command.output().expect("form-vmm-ctl runs"))
}

/// A file in a fresh directory, kept alive by the returned guard.
pub fn temp_file(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}
