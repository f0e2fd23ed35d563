//! `GET /v1/vms/{name}/console`: a VM's serial log as form-vmm wrote it, by tail or from
//! an offset, with the headers a client follows it by. The fake form-vmm writes no
//! serial output, so each test writes the log the service named, as form-vmm would.

mod common;
mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use common::hgx_h100;
use support::{code, have_python, Harness};

const MAX: u64 = 4 << 20;

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    offset: Option<u64>,
    size: Option<u64>,
    reset: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

async fn console(h: &Harness, name: &str, query: &str) -> Answer {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("/v1/vms/{name}/console{query}"))
        .body(Body::empty())
        .unwrap();
    let response = h.router.clone().oneshot(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let number = |name: &str| header(name).map(|v| v.parse::<u64>().unwrap());
    Answer {
        status: response.status(),
        content_type: header("content-type"),
        offset: number("x-console-offset"),
        size: number("x-console-size"),
        reset: header("x-console-reset"),
        body: response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    }
}

/// Creates VM `name` (not booted) and returns the serial log path the service gave it.
async fn vm(h: &Harness, name: &str) -> PathBuf {
    let (status, info) = h.call(Method::POST, "/v1/vms", Some(h.vm(name))).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    PathBuf::from(info["serial_log"].as_str().unwrap())
}

fn append(path: &PathBuf, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
}

#[tokio::test]
async fn a_vm_that_never_ran_has_an_empty_console() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "fresh").await;
    assert!(!log.exists(), "the fake VMM writes no serial log");
    let answer = console(&h, "fresh", "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!((answer.offset, answer.size), (Some(0), Some(0)));
    assert!(answer.body.is_empty());
    assert_eq!(answer.reset, None);
}

#[tokio::test]
async fn tail_answers_the_end_of_the_log_byte_for_byte() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "web").await;
    // A serial port carries whatever the guest sends: CRLF, escape sequences, and
    // bytes that are not UTF-8 must come back unchanged.
    let boot =
        b"[    0.000000] Linux version 6.8\r\n\x1b[32mOK\x1b[0m \xff\xfe ci-info: 10.0.0.7\r\n";
    append(&log, boot);

    let whole = console(&h, "web", "").await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, boot);
    let size = boot.len() as u64;
    assert_eq!((whole.offset, whole.size), (Some(size), Some(size)));

    let last = console(&h, "web", "?tail=12").await;
    assert_eq!(last.body, &boot[boot.len() - 12..]);
    assert_eq!(
        last.offset,
        Some(size),
        "the offset is past the end, not 12"
    );

    let none = console(&h, "web", "?tail=0").await;
    assert!(none.body.is_empty());
    assert_eq!(none.offset, Some(size), "tail=0 is where to follow from");
}

#[tokio::test]
async fn without_parameters_the_last_64_kib_are_answered() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "chatty").await;
    let mut content: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    content.extend_from_slice(b"login: ");
    append(&log, &content);
    let answer = console(&h, "chatty", "").await;
    assert_eq!(answer.body.len(), 65536);
    assert_eq!(answer.body, &content[content.len() - 65536..]);
    assert_eq!(answer.offset, Some(content.len() as u64));
}

#[tokio::test]
async fn following_with_from_sees_every_write_once() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "follow").await;
    append(&log, b"first line\n");
    let start = console(&h, "follow", "?tail=0").await;
    let mut offset = start.offset.unwrap();
    assert_eq!(offset, 11);

    let mut seen = Vec::new();
    for write in [&b"cloud-init: ssh host key SHA256:abc\n"[..], b"login: "] {
        append(&log, write);
        let answer = console(&h, "follow", &format!("?from={offset}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, write, "exactly the new bytes");
        assert_eq!(answer.reset, None);
        offset = answer.offset.unwrap();
        assert_eq!(answer.size, Some(offset));
        seen.extend_from_slice(&answer.body);
    }
    assert_eq!(seen, b"cloud-init: ssh host key SHA256:abc\nlogin: ");

    let idle = console(&h, "follow", &format!("?from={offset}")).await;
    assert!(idle.body.is_empty());
    assert_eq!(idle.offset, Some(offset));
}

#[tokio::test]
async fn a_log_truncated_under_the_client_starts_over_with_a_reset() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "again").await;
    append(
        &log,
        b"the first boot, which printed a lot more than the second\n",
    );
    let before = console(&h, "again", "").await.offset.unwrap();
    // What form-vmm does when the VM is created again: the same file, truncated.
    std::fs::write(&log, b"second boot\n").unwrap();

    let answer = console(&h, "again", &format!("?from={before}")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.reset.as_deref(), Some("1"));
    assert_eq!(answer.body, b"second boot\n");
    assert_eq!((answer.offset, answer.size), (Some(12), Some(12)));

    let next = console(&h, "again", "?from=12").await;
    assert_eq!(
        next.reset, None,
        "only the answer that started over says so"
    );
}

#[tokio::test]
async fn large_logs_come_in_capped_answers() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "big").await;
    let mut content = vec![b'.'; MAX as usize];
    content.extend_from_slice(b"the end\n");
    append(&log, &content);
    let total = content.len() as u64;

    let first = console(&h, "big", "?from=0").await;
    assert_eq!(first.body.len() as u64, MAX);
    assert_eq!((first.offset, first.size), (Some(MAX), Some(total)));
    let rest = console(&h, "big", &format!("?from={MAX}")).await;
    assert_eq!(rest.body, b"the end\n");
    assert_eq!(rest.offset, Some(total));

    let tail = console(&h, "big", &format!("?tail={MAX}")).await;
    assert_eq!(tail.status, StatusCode::OK);
    assert_eq!(tail.body, &content[content.len() - MAX as usize..]);
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_the_parameter() {
    if !have_python() {
        return;
    }
    let h = Harness::new(hgx_h100());
    let log = vm(&h, "strict").await;
    append(&log, b"boot\n");
    let too_many = format!("?tail={}", MAX + 1);
    for (query, names) in [
        (too_many.as_str(), &["tail", "4194304"][..]),
        ("?tail=lots", &["tail", "lots"]),
        ("?tail=-1", &["tail"]),
        ("?from=1.5", &["from"]),
        ("?from=", &["from"]),
        ("?tail=5&from=0", &["tail", "from", "not both"]),
        ("?from=0&from=2", &["from", "more than once"]),
        ("?lines=20", &["lines", "tail", "from"]),
    ] {
        let answer = console(&h, "strict", query).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(code(&answer.json()), "bad_request", "{query}");
        let message = answer.message();
        for name in names {
            assert!(message.contains(name), "{query}: {message}");
        }
    }
}

#[tokio::test]
async fn an_unknown_vm_has_no_console() {
    let h = Harness::new(hgx_h100());
    let answer = console(&h, "ghost", "?tail=10").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&answer.json()), "vm_not_found");
    assert!(answer.message().contains("ghost"), "{}", answer.message());
    // A bad parameter on an unknown VM is still the parameter's fault.
    let answer = console(&h, "ghost", "?tail=x").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}
