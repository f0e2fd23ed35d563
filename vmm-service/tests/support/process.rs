//! `vmm-service serve` as a process on a fixture host, and raw HTTP/1 over whatever
//! stream a test opens to it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake_vmm;
use crate::common::Fixture;

/// A running service, killed when dropped.
pub struct Service {
    pub child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `serve` command on `fixture`, with its state under `dir`.
pub fn serve_command(dir: &Path, fixture: &Fixture, listen: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vmm-service"));
    command
        .arg("serve")
        .args(["--listen", listen])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--image-dir")
        .arg(dir.join("images"))
        .arg("--vmm-binary")
        .arg(fake_vmm())
        .arg("--sysfs-root")
        .arg(&fixture.host.sysfs)
        .arg("--proc-root")
        .arg(&fixture.host.procfs)
        .args(extra);
    command
}

pub fn serve(dir: &Path, fixture: &Fixture, listen: &str, extra: &[&str]) -> Service {
    let child = serve_command(dir, fixture, listen, extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Service { child }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One request over a fresh connection; returns the status and the JSON body.
pub fn request(
    stream: &mut dyn ReadWrite,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = answer
        .split_once("\r\n\r\n")
        .map(|(_, rest)| rest)
        .and_then(|rest| {
            // The body may be chunked; take the JSON object inside.
            let start = rest.find(['{', '['])?;
            let end = rest.rfind(['}', ']'])?;
            serde_json::from_str(&rest[start..=end]).ok()
        })
        .unwrap_or(Value::Null);
    (status, json)
}

pub fn unix(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = UnixStream::connect(socket).unwrap();
    request(&mut stream, method, path, body, None)
}

pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST.into())
}

/// A port nothing listens on at `ip` (one of this host's addresses).
pub fn free_port_on(ip: IpAddr) -> u16 {
    let probe = std::net::TcpListener::bind((ip, 0)).unwrap();
    probe.local_addr().unwrap().port()
}

pub fn token_file(dir: &Path, token: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Reads until the peer closes (or `within` passes); returns what came and whether
/// it closed.
pub fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&answer).into(), true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&answer).into(), true)
            }
            Err(_) => return (String::from_utf8_lossy(&answer).into(), false),
        }
    }
}
