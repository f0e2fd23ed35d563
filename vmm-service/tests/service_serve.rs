//! `vmm-service serve` as a process: socket permissions, the TCP token, and a service
//! killed with SIGKILL and started again finding its VM and the VMM still running;
//! idle connections that cannot starve it, nor one peer's take every connection,
//! force binding only on the unix socket,
//! plain TCP only on loopback, and a private state directory.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use common::hgx_h100;
use support::have_python;
use support::process::{
    free_port, free_port_on, read_until_closed, request, serve, token_file, unix, wait_for,
};

fn kernel(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let path = dir.join("images/vmlinux");
    std::fs::write(&path, b"not a kernel").unwrap();
    path.display().to_string()
}

#[test]
fn a_killed_service_restarts_with_its_vm_and_the_vmm_readopted() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let socket: PathBuf = dir.path().join("service.sock");
    let listen = format!("unix:{}", socket.display());
    let mut service = serve(dir.path(), &fixture, &listen, &[]);
    wait_for("the service socket", || {
        UnixStream::connect(&socket).is_ok()
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let body =
        json!({"name": "web", "kernel": kernel(dir.path()), "memory": 268435456, "boot": true});
    let (status, vm) = unix(&socket, "POST", "/v1/vms", Some(&body));
    assert_eq!(status, 201, "{vm}");
    let pid = vm["pid"].as_u64().unwrap();

    // SIGKILL: no chance to clean anything up.
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    let _service = serve(dir.path(), &fixture, &listen, &["--socket-mode", "600"]);
    wait_for("the restarted service", || {
        UnixStream::connect(&socket).is_ok()
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (status, vm) = unix(&socket, "GET", "/v1/vms/web", None);
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["pid"].as_u64(), Some(pid), "the same VMM, re-adopted");

    // The adopted VMM dies: the restarted service notices and records it.
    // SAFETY: kill(2) on the fake VMM this test started through the service.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    wait_for("the adopted VMM's death to be recorded", || {
        unix(&socket, "GET", "/v1/vms/web", None).1["state"] == "stopped"
    });
    let (_, vm) = unix(&socket, "GET", "/v1/vms/web", None);
    assert!(
        vm["last_exit"]["reason"]
            .as_str()
            .unwrap()
            .contains("adopted"),
        "{vm}"
    );
}

#[test]
fn tcp_needs_a_token_file_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("tcp:127.0.0.1:{port}");
    let mut refused = serve(dir.path(), &fixture, &listen, &[]);
    let status = refused.child.wait().unwrap();
    assert!(!status.success(), "TCP without --token-file must not start");

    let token = "0123456789abcdef-secret";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token_arg = token_file.display().to_string();
    let mut loose = serve(dir.path(), &fixture, &listen, &["--token-file", &token_arg]);
    assert!(
        !loose.child.wait().unwrap().success(),
        "a world-readable token file is refused"
    );

    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _service = serve(dir.path(), &fixture, &listen, &["--token-file", &token_arg]);
    let address = format!("127.0.0.1:{port}");
    wait_for("the TCP listener", || TcpStream::connect(&address).is_ok());
    let tcp = |token: Option<&str>| {
        let mut stream = TcpStream::connect(&address).unwrap();
        request(&mut stream, "GET", "/v1/gpus", None, token)
    };
    let (status, body) = tcp(None);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(tcp(Some("wrong-token-wrong-token")).0, 401);
    let (status, body) = tcp(Some(token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gpus"].as_array().unwrap().len(), 9);
}

#[test]
fn the_console_over_tcp_needs_the_token_and_carries_the_bytes() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let token = "console-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let listen = format!("tcp:127.0.0.1:{port}");
    let token_arg = token_file.display().to_string();
    let _service = serve(dir.path(), &fixture, &listen, &["--token-file", &token_arg]);
    let address = format!("127.0.0.1:{port}");
    wait_for("the TCP listener", || TcpStream::connect(&address).is_ok());

    let body = json!({"name": "remote", "kernel": kernel(dir.path()), "memory": 268435456});
    let mut stream = TcpStream::connect(&address).unwrap();
    let (status, vm) = request(&mut stream, "POST", "/v1/vms", Some(&body), Some(token));
    assert_eq!(status, 201, "{vm}");
    let log = PathBuf::from(vm["serial_log"].as_str().unwrap());
    std::fs::write(&log, b"ci-info: eth0 10.20.0.9\r\n\xc3").unwrap();

    let get = |token: Option<&str>| {
        let mut stream = TcpStream::connect(&address).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "GET /v1/vms/remote/console?tail=100 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(answer[..split].to_vec()).unwrap();
        (head.to_ascii_lowercase(), answer[split + 4..].to_vec())
    };
    let (head, _) = get(None);
    assert!(head.starts_with("http/1.1 401"), "{head}");
    let (head, bytes) = get(Some(token));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nx-console-offset: 26\r\n"), "{head}");
    assert!(head.contains("\r\nx-console-size: 26\r\n"), "{head}");
    assert_eq!(bytes, b"ci-info: eth0 10.20.0.9\r\n\xc3");

    // Stops the fake VMM, which would otherwise outlive the service killed on drop.
    let mut stream = TcpStream::connect(&address).unwrap();
    let (status, _) = request(&mut stream, "DELETE", "/v1/vms/remote", None, Some(token));
    assert_eq!(status, 204);
}

#[test]
fn idle_connections_cannot_starve_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let socket = dir.path().join("service.sock");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let token = "soak-token-0123456789";
    let token_arg = token_file(dir.path(), token);
    let _service = serve(
        dir.path(),
        &fixture,
        &format!("unix:{}", socket.display()),
        &[
            "--listen",
            &format!("tcp:{address}"),
            "--token-file",
            &token_arg,
            "--max-connections",
            "4",
            "--header-timeout",
            "2",
        ],
    );
    wait_for("both listeners", || {
        UnixStream::connect(&socket).is_ok() && TcpStream::connect(&address).is_ok()
    });
    std::thread::sleep(Duration::from_millis(2500)); // the probe connection timed out
                                                     // Twelve idle clients: four fill the listener, the rest are answered 503 at once.
    let mut idle: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for stream in &mut idle[4..] {
        let (answer, closed) = read_until_closed(stream, Duration::from_millis(500));
        if answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections") {
            assert!(closed, "an over-capacity connection is closed");
            refused += 1;
        }
    }
    assert_eq!(
        refused, 8,
        "connections beyond the cap are answered 503 and closed"
    );
    // The unix socket answers meanwhile.
    let (status, body) = unix(&socket, "GET", "/v1/ping", None);
    assert_eq!(status, 200, "{body}");
    // A new TCP client is refused while the idle ones hold the listener...
    let mut extra = TcpStream::connect(&address).unwrap();
    let (answer, _) = read_until_closed(&mut extra, Duration::from_millis(500));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // ...until they have sent nothing for --header-timeout and were closed.
    for stream in &mut idle[..4] {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5));
        assert!(
            closed,
            "an idle connection is closed after the header timeout"
        );
    }
    let mut stream = TcpStream::connect(&address).unwrap();
    let (status, body) = request(&mut stream, "GET", "/v1/ping", None, Some(token));
    assert_eq!(status, 200, "{body}");
    // A keep-alive connection that goes quiet after its answer is closed too.
    let mut keep = TcpStream::connect(&address).unwrap();
    let head = format!(
        "GET /v1/ping HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    keep.write_all(head.as_bytes()).unwrap();
    let (answer, closed) = read_until_closed(&mut keep, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "the idle keep-alive connection is closed");
}

/// This host's own non-loopback IPv4 address, if it has one: the per-peer cap
/// exempts loopback, and on Linux all of 127.0.0.0/8 is loopback. Connecting a UDP
/// socket sends nothing; it only has the kernel pick the source address it would use.
fn host_address() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:1").ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[test]
fn one_peer_cannot_hold_every_tcp_connection() {
    let Some(host) = host_address() else {
        let reason = "this host has no non-loopback IPv4 address to connect from, and loopback peers are not capped";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and {reason}"
        );
        eprintln!("skipping: {reason}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let socket = dir.path().join("service.sock");
    let address = SocketAddr::new(host.into(), free_port_on(host.into()));
    let loopback = format!("127.0.0.1:{}", free_port());
    let token = "peer-token-0123456789";
    let token_arg = token_file(dir.path(), token);
    // The unix socket is bound last: once it answers, both TCP listeners are
    // bound too, and no readiness probe is left counting against this host.
    let _service = serve(
        dir.path(),
        &fixture,
        &format!("tcp:{address}"),
        &[
            "--listen",
            &format!("tcp:{loopback}"),
            "--listen",
            &format!("unix:{}", socket.display()),
            "--token-file",
            &token_arg,
            "--allow-plain-tcp",
            "--max-connections-per-peer",
            "4",
        ],
    );
    wait_for("the listeners", || UnixStream::connect(&socket).is_ok());
    // A refused connection is answered and closed at once; one held open hears
    // nothing until it sends a request.
    let held_open = |stream: &mut TcpStream, within: Duration| {
        let (answer, closed) = read_until_closed(stream, within);
        answer.is_empty() && !closed
    };
    let moment = Duration::from_millis(50);

    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    // The fifth from this host is refused, with 252 of --max-connections left.
    let mut fifth = TcpStream::connect(address).unwrap();
    let (answer, closed) = read_until_closed(&mut fifth, Duration::from_secs(2));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"code\":\"too_many_connections_from_peer\""),
        "{answer}"
    );
    assert!(answer.contains("--max-connections-per-peer 4"), "{answer}");
    assert!(closed, "a connection over its peer's cap is closed");
    for stream in &mut idle {
        // Accepted before the fifth, which was refused: no wait needed.
        assert!(
            held_open(stream, moment),
            "a connection within the cap stays open"
        );
    }

    // Loopback peers are capped by the listener only: the CLI and local tunnels
    // all come from 127.0.0.1.
    let mut local: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(&loopback).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for stream in &mut local {
        assert!(
            held_open(stream, moment),
            "a loopback connection beyond 4 is held"
        );
    }
    let mut stream = TcpStream::connect(&loopback).unwrap();
    let (status, body) = request(&mut stream, "GET", "/v1/ping", None, Some(token));
    assert_eq!(status, 200, "{body}");

    // Once the host closes one of its connections, it may open another.
    drop(idle.pop());
    let mut admitted = None;
    wait_for("the closed connection to be given back to its peer", || {
        let mut probe = TcpStream::connect(address).unwrap();
        let open = held_open(&mut probe, Duration::from_millis(500));
        admitted = open.then_some(probe);
        open
    });
    let (status, body) = request(
        admitted.as_mut().unwrap(),
        "GET",
        "/v1/ping",
        None,
        Some(token),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn force_binding_is_only_for_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let socket = dir.path().join("service.sock");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let token = "force-token-0123456789";
    let token_arg = token_file(dir.path(), token);
    let _service = serve(
        dir.path(),
        &fixture,
        &format!("unix:{}", socket.display()),
        &[
            "--listen",
            &format!("tcp:{address}"),
            "--token-file",
            &token_arg,
        ],
    );
    wait_for("both listeners", || {
        UnixStream::connect(&socket).is_ok() && TcpStream::connect(&address).is_ok()
    });
    let force = json!({"force": true});
    let mut stream = TcpStream::connect(&address).unwrap();
    let (status, body) = request(
        &mut stream,
        "POST",
        "/v1/gpus/0000:18:00.0/bind",
        Some(&force),
        Some(token),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "force_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unix socket"),
        "{body}"
    );
    // The local socket passes it on to the binding (which this fixture host, with
    // no kernel behind its sysfs, cannot do).
    let (status, body) = unix(&socket, "POST", "/v1/gpus/0000:18:00.0/bind", Some(&force));
    assert_ne!(
        body["error"]["code"], "force_not_allowed",
        "{status} {body}"
    );
}

#[test]
fn plain_tcp_off_loopback_needs_the_operators_consent() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let token_arg = token_file(dir.path(), "plain-token-0123456789");
    let mut refused = serve(
        dir.path(),
        &fixture,
        "tcp:0.0.0.0:0",
        &["--token-file", &token_arg],
    );
    assert!(
        !refused.child.wait().unwrap().success(),
        "plain TCP on a non-loopback address must not start"
    );
}

#[test]
fn the_state_directory_is_private_and_loose_modes_are_fixed() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let state = dir.path().join("state");
    // A state directory from before: world-readable database.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(vmm_service::state::Store::open(&state.join("service.db")).unwrap());
    std::fs::set_permissions(
        state.join("service.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let socket = dir.path().join("service.sock");
    let _service = serve(
        dir.path(),
        &fixture,
        &format!("unix:{}", socket.display()),
        &[],
    );
    wait_for("the service socket", || {
        UnixStream::connect(&socket).is_ok()
    });
    let body = json!({
        "name": "secret", "kernel": kernel(dir.path()), "memory": 268435456,
        "cloud_init": {"user_data": "#cloud-config\npassword: hunter2\n"}
    });
    let (status, vm) = unix(&socket, "POST", "/v1/vms", Some(&body));
    assert_eq!(status, 201, "{vm}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("service.db")), 0o600);
    assert_eq!(mode(&state.join("vms")), 0o700);
    assert_eq!(mode(&state.join("vms/secret")), 0o700);
    assert_eq!(mode(&state.join("vms/secret/seed.img")), 0o600);
    assert_eq!(mode(&state.join("vms/secret/vmm.log")), 0o600);
    let (status, _) = unix(&socket, "DELETE", "/v1/vms/secret", None);
    assert_eq!(status, 204);
    assert!(!state.join("vms/secret").exists());
}
