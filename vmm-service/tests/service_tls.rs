//! `vmm-service serve --tls-cert --tls-key`: the TCP listener speaks TLS and only
//! TLS, to clients that trust its CA; a network address needs no --allow-plain-tcp;
//! handshakes count against the connection cap and the header timeout; bad
//! certificate files stop the start, naming the file.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{hgx_h100, Fixture};
use support::process::{
    free_port, read_until_closed, request, serve, serve_command, token_file, unix, wait_for,
};
use support::tls::{client_config, connect, Pki};

const TOKEN: &str = "tls-token-0123456789";

/// A TLS service on `tcp:<address>` (and a unix socket), with `extra` options.
fn serve_tls(
    dir: &Path,
    fixture: &Fixture,
    pki: &Pki,
    listen: &str,
    extra: &[&str],
) -> support::process::Service {
    let token_arg = token_file(dir, TOKEN);
    let socket = dir.join("service.sock");
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("tcp:{listen}"),
        "--token-file".into(),
        token_arg,
    ];
    args.extend(pki.serve_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve(dir, fixture, &format!("unix:{}", socket.display()), &args)
}

#[test]
fn tls_serves_clients_that_trust_its_ca_and_only_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let pki = Pki::new(dir.path(), "service");
    let address = format!("127.0.0.1:{}", free_port());
    let _service = serve_tls(dir.path(), &fixture, &pki, &address, &[]);
    wait_for("the TLS listener", || TcpStream::connect(&address).is_ok());

    let trusting = client_config(std::slice::from_ref(&pki.ca_der));
    for name in ["127.0.0.1", "localhost"] {
        let mut stream = connect(&trusting, &address, name).unwrap();
        let (status, body) = request(&mut stream, "GET", "/v1/gpus", None, Some(TOKEN));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["gpus"].as_array().unwrap().len(), 9);
    }
    // The token is still needed over TLS.
    let mut stream = connect(&trusting, &address, "localhost").unwrap();
    let (status, body) = request(&mut stream, "GET", "/v1/gpus", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    // A client trusting another CA refuses the service's certificate.
    let other = Pki::new(dir.path(), "other");
    let stranger = client_config(std::slice::from_ref(&other.ca_der));
    let Err(err) = connect(&stranger, &address, "localhost") else {
        panic!("a certificate from an unknown CA is refused");
    };
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Plain HTTP to the TLS port gets no HTTP answer, and the connection is closed.
    let mut plain = TcpStream::connect(&address).unwrap();
    plain
        .write_all(
            format!(
                "GET /v1/ping HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let (answer, closed) = read_until_closed(&mut plain, Duration::from_secs(5));
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
    assert!(closed, "a plain-HTTP client is closed");

    // The service is unharmed by the failed handshakes.
    let mut stream = connect(&trusting, &address, "localhost").unwrap();
    let (status, body) = request(&mut stream, "GET", "/v1/ping", None, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn tls_on_a_network_address_needs_no_allow_plain_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let pki = Pki::new(dir.path(), "service");
    let port = free_port();
    let mut service = serve_tls(dir.path(), &fixture, &pki, &format!("0.0.0.0:{port}"), &[]);
    let address = format!("127.0.0.1:{port}");
    wait_for("the TLS listener on 0.0.0.0", || {
        assert!(
            service.child.try_wait().unwrap().is_none(),
            "TLS on 0.0.0.0 must start without --allow-plain-tcp"
        );
        TcpStream::connect(&address).is_ok()
    });
    let trusting = client_config(std::slice::from_ref(&pki.ca_der));
    let mut stream = connect(&trusting, &address, "127.0.0.1").unwrap();
    let (status, body) = request(&mut stream, "GET", "/v1/ping", None, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
}

/// The first bytes of a ClientHello: a handshake record that never gets its body.
const HANDSHAKE_START: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01];

#[test]
fn unfinished_handshakes_hold_a_slot_no_longer_than_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let pki = Pki::new(dir.path(), "service");
    let address = format!("127.0.0.1:{}", free_port());
    let socket = dir.path().join("service.sock");
    let _service = serve_tls(
        dir.path(),
        &fixture,
        &pki,
        &address,
        &["--max-connections", "3", "--header-timeout", "2"],
    );
    wait_for("both listeners", || {
        UnixStream::connect(&socket).is_ok() && TcpStream::connect(&address).is_ok()
    });
    // The probes closed at once, so their handshakes failed and freed their slots.
    std::thread::sleep(Duration::from_millis(300));
    let trusting = client_config(std::slice::from_ref(&pki.ca_der));

    // Three clients take the slots: one silent, one with half a ClientHello, one
    // with a finished handshake and no request.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(&address).unwrap();
    let mut stalled = TcpStream::connect(&address).unwrap();
    stalled.write_all(HANDSHAKE_START).unwrap();
    let mut idle = connect(&trusting, &address, "localhost").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Beyond the cap a client is closed at once, with no handshake.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&address).unwrap();
        let (answer, closed) = read_until_closed(&mut extra, Duration::from_millis(500));
        assert!(closed && answer.is_empty(), "{closed} {answer:?}");
    }
    assert!(
        connect(&trusting, &address, "localhost").is_err(),
        "no handshake beyond the cap"
    );
    // The unix socket answers meanwhile.
    let (status, body) = unix(&socket, "GET", "/v1/ping", None);
    assert_eq!(status, 200, "{body}");

    // The header timeout closes all three.
    for (what, stream) in [("silent", &mut silent), ("stalled", &mut stalled)] {
        let (answer, closed) = read_until_closed(stream, Duration::from_secs(5));
        assert!(
            closed,
            "the {what} client is closed after the header timeout"
        );
        assert!(!answer.contains("HTTP/1.1"), "{what}: {answer:?}");
    }
    idle.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    match idle.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "the idle TLS client is closed, not left waiting: {e}"
        ),
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "closed after {waited:?}, not about the 2s header timeout"
    );

    // The slots are free again.
    for _ in 0..4 {
        let mut stream = connect(&trusting, &address, "localhost").unwrap();
        let (status, body) = request(&mut stream, "GET", "/v1/ping", None, Some(TOKEN));
        assert_eq!(status, 200, "{body}");
    }
}

/// Starts the service expecting it to refuse; returns what it wrote to stderr.
fn start_fails(dir: &Path, fixture: &Fixture, extra: &[&str]) -> (i32, String) {
    let log = dir.join("refused.log");
    let address = format!("tcp:127.0.0.1:{}", free_port());
    let token_arg = token_file(dir, TOKEN);
    let mut args = vec!["--token-file", &token_arg];
    args.extend_from_slice(extra);
    let mut child = serve_command(dir, fixture, &address, &args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service started with {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&log).unwrap(),
    )
}

#[test]
fn bad_certificate_files_stop_the_start_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = hgx_h100().build();
    let pki = Pki::new(dir.path(), "service");
    let other = Pki::new(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let path = |p: &Path| p.display().to_string();
    let (cert, key) = (path(&pki.server_cert), path(&pki.server_key));
    let (missing, garbage) = (path(&missing), path(&garbage));
    let other_key = path(&other.server_key);

    for (args, says) in [
        (
            ["--tls-cert", &missing, "--tls-key", &key],
            vec![format!("--tls-cert {missing}"), "No such file".to_string()],
        ),
        (
            ["--tls-cert", &garbage, "--tls-key", &key],
            vec![
                format!("--tls-cert {garbage}"),
                "holds no PEM certificate".to_string(),
            ],
        ),
        (
            ["--tls-cert", &cert, "--tls-key", &garbage],
            vec![
                format!("--tls-key {garbage}"),
                "holds no PEM private key".to_string(),
            ],
        ),
        (
            ["--tls-cert", &key, "--tls-key", &cert],
            vec![format!("--tls-cert {key}"), "swapped".to_string()],
        ),
        (
            ["--tls-cert", &cert, "--tls-key", &other_key],
            vec![
                format!("--tls-key {other_key} does not belong to --tls-cert {cert}"),
                "not the one in the certificate".to_string(),
            ],
        ),
    ] {
        let (code, stderr) = start_fails(dir.path(), &fixture, &args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        for text in says {
            assert!(
                stderr.contains(&text),
                "{args:?}: want {text:?} in {stderr}"
            );
        }
    }
    // One without the other is a usage error.
    let (code, stderr) = start_fails(dir.path(), &fixture, &["--tls-cert", &cert]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}
