//! Helpers shared by the API and command-line tests: a throw-away directory, a
//! minimal HTTP/1.1 client over a unix socket, and waiting with a deadline.
//! Each test target uses a different subset.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Every test binary that uses these helpers declares kvm_support too.
pub use crate::kvm_support::ScratchDir as TempDir;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" string in {:?}", self.body))
            .to_string()
    }
}

/// Sends one request on a fresh connection and reads the whole reply.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the request");
    // A server may answer (413) and close before taking all of an oversized body.
    if let Err(e) = stream.write_all(body.as_bytes()) {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "send the body: {e}"
        );
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    parse_reply(&String::from_utf8_lossy(&raw))
}

fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Polls `ready` every 10 ms until it holds, failing the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A path that exists and can stand in for a kernel where only validation runs.
pub fn existing_file() -> PathBuf {
    std::env::current_exe().expect("the test binary's path")
}

/// The form-vmm binary Cargo built for these tests.
pub fn form_vmm() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_form-vmm"))
}

/// What a finished form-vmm run left behind.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A running form-vmm whose output is collected on background threads, so a full
/// pipe can never stall it.
pub struct Running {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = pipe.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

impl Running {
    pub fn spawn(command: &mut std::process::Command) -> Running {
        Running::spawn_with_stdout(command, std::process::Stdio::piped())
    }

    /// Like [`Running::spawn`], with standard output going to `stdout` (a file the
    /// test can watch while the process runs) instead of being collected.
    pub fn spawn_with_stdout(
        command: &mut std::process::Command,
        stdout: impl Into<std::process::Stdio>,
    ) -> Running {
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start form-vmm");
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited yet.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the exit; kills the process and fails the test after `limit`.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for form-vmm") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
                panic!("form-vmm still running after {limit:?}; stderr: {stderr:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            code: status.code(),
            stdout: self
                .stdout
                .take()
                .map(|t| t.join().unwrap_or_default())
                .unwrap_or_default(),
            stderr: self
                .stderr
                .take()
                .map(|t| t.join().unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs form-vmm with `args` to completion (at most 60 s).
pub fn run_form_vmm(args: &[&str]) -> Finished {
    Running::spawn(form_vmm().args(args)).finish(Duration::from_secs(60))
}
