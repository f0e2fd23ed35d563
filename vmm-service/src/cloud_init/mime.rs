//! user-data holding both the cloud-config generated from the request's fields and
//! the operator's own user-data: a MIME multipart/mixed archive. cloud-init reads
//! such an archive part by part, each by its Content-Type, and merges the
//! cloud-config parts into one configuration.

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};

pub(super) const CLOUD_CONFIG: &str = "text/cloud-config";

/// Makes the operator's list keys (`ssh_authorized_keys`, `packages`, `runcmd`,
/// `users`, ...) extend the generated ones; cloud-init's default would replace them.
pub(super) const APPEND_LISTS: &str = "list(append)+dict(recurse_array)+str()";

/// How user-data begins, and the part type cloud-init gives such content; `None`
/// for formats that cannot sit in a part beside the generated cloud-config. Longer
/// prefixes come before the shorter ones they extend, so that `#include-once` or
/// `#cloud-config-archive` are not taken for `#include` or `#cloud-config`.
const STARTS: [(&str, Option<&str>); 10] = [
    ("#cloud-config-archive", None),
    ("#cloud-config-jsonp", None),
    ("#cloud-config", Some(CLOUD_CONFIG)),
    ("#cloud-boothook", Some("text/cloud-boothook")),
    ("#include-once", Some("text/x-include-once-url")),
    ("#include", Some("text/x-include-url")),
    ("## template: jinja", Some("text/jinja2")),
    ("#part-handler", None),
    ("#upstart-job", None),
    ("#!", Some("text/x-shellscript")),
];

/// What the first line of a part must be for it to be combined, for messages.
pub(super) const ACCEPTED_STARTS: &str =
    "#cloud-config, #! (a script), #include, #include-once, #cloud-boothook or ## template: jinja";

/// Why user-data cannot be a part of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotAPart {
    /// It is a MIME message already.
    Mime,
    /// It begins with this line, which names no type that can be combined.
    Start(String),
}

/// The Content-Type cloud-init would give `text` by how it begins. cloud-init
/// compares case-insensitively after leading white space, and so does this, so
/// that the archive says what cloud-init would have read from the bare file.
pub(super) fn content_type(text: &str) -> Result<&'static str, NotAPart> {
    let head: String = text
        .trim_start()
        .chars()
        .take(64)
        .flat_map(char::to_lowercase)
        .collect();
    if head.starts_with("content-type:") || head.starts_with("mime-version:") {
        return Err(NotAPart::Mime);
    }
    for (start, kind) in STARTS {
        if head.starts_with(start) {
            if let Some(kind) = kind {
                return Ok(kind);
            }
            break;
        }
    }
    let first_line = text.trim_start().lines().next().unwrap_or("");
    let shown: String = first_line.chars().take(40).collect();
    Err(NotAPart::Start(shown.escape_default().to_string()))
}

/// One part of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part<'a> {
    pub content_type: &'a str,
    /// cloud-init names the files it keeps of each part (scripts among them) by this.
    pub filename: &'a str,
    pub merge_type: Option<&'a str>,
    pub body: &'a str,
}

/// The archive of `parts`, in order.
pub(super) fn multipart(parts: &[Part]) -> String {
    let bodies: Vec<String> = parts.iter().map(|part| encode(part.body)).collect();
    let boundary = pick_boundary(&bodies, hashed_boundary(&bodies));
    let mut out =
        format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\n\n");
    for (part, body) in parts.iter().zip(&bodies) {
        let (charset, encoding) = if is_plain(part.body) {
            ("us-ascii", "7bit")
        } else {
            ("utf-8", "base64")
        };
        let _ = write!(
            out,
            "--{boundary}\nContent-Type: {}; charset=\"{charset}\"\nContent-Transfer-Encoding: {encoding}\nContent-Disposition: attachment; filename=\"{}\"\n",
            part.content_type, part.filename
        );
        if let Some(merge_type) = part.merge_type {
            let _ = writeln!(out, "Merge-Type: {merge_type}");
        }
        // The line break before a boundary belongs to the boundary, so a body keeps
        // its own last line break, or its lack of one.
        let _ = write!(out, "\n{body}\n");
    }
    let _ = writeln!(out, "--{boundary}--");
    out
}

/// Text that passes through MIME parsers unchanged as it is: printable ASCII, tabs
/// and line feeds, lines within RFC 5322's 998 bytes. Python's email package (which
/// cloud-init uses) would mangle anything else in an unencoded part: non-ASCII
/// becomes `\uXXXX` escapes or Latin-1 when the part is decoded.
fn is_plain(text: &str) -> bool {
    text.split('\n').all(|line| {
        line.len() <= 998
            && line
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    })
}

fn encode(body: &str) -> String {
    if is_plain(body) {
        body.to_string()
    } else {
        base64_lines(body.as_bytes())
    }
}

/// Boundaries derived from the parts, so that the same request writes the same file.
fn hashed_boundary(bodies: &[String]) -> impl Fn(u64) -> String {
    let mut hasher = DefaultHasher::new();
    bodies.hash(&mut hasher);
    let seed = hasher.finish();
    move |attempt| {
        let mut hasher = DefaultHasher::new();
        (seed, attempt).hash(&mut hasher);
        format!("form-vmm-{:016x}", hasher.finish())
    }
}

/// The first candidate found in no body. Finding it anywhere, not only at the start
/// of a line where a parser would take it for a delimiter, is stricter than MIME
/// needs and just as cheap.
fn pick_boundary(bodies: &[String], candidate: impl Fn(u64) -> String) -> String {
    let mut attempt = 0;
    loop {
        let boundary = candidate(attempt);
        if !bodies.iter().any(|body| body.contains(&boundary)) {
            return boundary;
        }
        attempt += 1;
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 in lines of 76 characters, as MIME limits them.
fn base64_lines(bytes: &[u8]) -> String {
    let mut flat = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                flat.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                flat.push('=');
            }
        }
    }
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for (i, c) in flat.chars().enumerate() {
        if i > 0 && i % 76 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A part of an archive as read back by [`parse`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ParsedPart {
        /// Header lines as `(lowercased name, value)`, in order.
        pub headers: Vec<(String, String)>,
        /// The body, base64 decoded where the part says so.
        pub body: String,
    }

    impl ParsedPart {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Reads an archive back by RFC 2046's rules, independently of how
    /// [`multipart`] writes it: the boundary from the top Content-Type, parts
    /// between `--boundary` lines, each line break before a delimiter belonging to
    /// the delimiter. Returns the boundary and the parts.
    pub fn parse(archive: &str) -> (String, Vec<ParsedPart>) {
        let (top, body) = archive
            .split_once("\n\n")
            .expect("a blank line after the headers");
        let top: Vec<&str> = top.lines().collect();
        assert_eq!(top[0], "MIME-Version: 1.0");
        let content_type = top[1]
            .strip_prefix("Content-Type: multipart/mixed; boundary=\"")
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not a multipart/mixed header: {}", top[1]));
        let boundary = content_type.to_string();
        let delimiter = format!("--{boundary}");
        let body = body
            .strip_prefix(&format!("{delimiter}\n"))
            .expect("the body begins with the first delimiter");
        let closed = format!("\n{delimiter}--\n");
        let body = body
            .strip_suffix(&closed)
            .expect("the closing delimiter ends it");
        let parts = body
            .split(&format!("\n{delimiter}\n"))
            .map(|raw| {
                let (head, payload) = raw.split_once("\n\n").expect("a part's headers end");
                let headers: Vec<(String, String)> = head
                    .lines()
                    .map(|line| {
                        let (name, value) = line.split_once(": ").expect("name: value");
                        (name.to_ascii_lowercase(), value.to_string())
                    })
                    .collect();
                let encoding = headers
                    .iter()
                    .find(|(n, _)| n == "content-transfer-encoding")
                    .map(|(_, v)| v.as_str());
                let body = match encoding {
                    Some("base64") => String::from_utf8(base64_decode(payload)).unwrap(),
                    Some("7bit") => payload.to_string(),
                    other => panic!("unexpected encoding {other:?}"),
                };
                ParsedPart { headers, body }
            })
            .collect();
        (boundary, parts)
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        let sextets: Vec<u32> = text
            .bytes()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
            .map(|b| BASE64.iter().position(|&c| c == b).expect("base64") as u32)
            .collect();
        let mut out = Vec::new();
        for group in sextets.chunks(4) {
            let n = group
                .iter()
                .enumerate()
                .fold(0, |n, (i, s)| n | (s << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..group.len() - 1]);
        }
        out
    }

    #[test]
    fn each_beginning_gets_cloud_inits_type() {
        for (text, kind) in [
            ("#cloud-config\npackages: [htop]\n", "text/cloud-config"),
            ("#!/bin/bash\necho hi\n", "text/x-shellscript"),
            ("#!/usr/bin/env python3\n", "text/x-shellscript"),
            ("#include\nhttps://example.com/ud\n", "text/x-include-url"),
            (
                "#include-once\nhttps://example.com/ud\n",
                "text/x-include-once-url",
            ),
            ("#cloud-boothook\n#!/bin/sh\n", "text/cloud-boothook"),
            ("## template: jinja\n#cloud-config\n", "text/jinja2"),
            // cloud-init's own detection ignores case and leading blank lines.
            ("\n  #Cloud-Config\n", "text/cloud-config"),
        ] {
            assert_eq!(content_type(text), Ok(kind), "{text:?}");
        }
    }

    #[test]
    fn other_beginnings_are_not_parts() {
        for text in [
            "Content-Type: multipart/mixed; boundary=x\n",
            "MIME-Version: 1.0\n",
            "mime-version: 1.0\n",
        ] {
            assert_eq!(content_type(text), Err(NotAPart::Mime), "{text:?}");
        }
        for (text, shown) in [
            ("packages: [htop]\n", "packages: [htop]"),
            (
                "#cloud-config-archive\n- type: x\n",
                "#cloud-config-archive",
            ),
            ("#part-handler\n", "#part-handler"),
            ("", ""),
            ("echo \"hi\"\tthere\n", "echo \\\"hi\\\"\\tthere"),
        ] {
            assert_eq!(
                content_type(text),
                Err(NotAPart::Start(shown.to_string())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_archive_holds_each_part_with_its_headers_and_exact_body() {
        let parts = [
            Part {
                content_type: CLOUD_CONFIG,
                filename: "generated.cfg",
                merge_type: None,
                body: "#cloud-config\nruncmd:\n  - \"true\"\n",
            },
            Part {
                content_type: "text/x-shellscript",
                filename: "user-data",
                merge_type: Some(APPEND_LISTS),
                // No last line break: it must not gain one.
                body: "#!/bin/sh\necho done",
            },
        ];
        let archive = multipart(&parts);
        let (boundary, read) = parse(&archive);
        assert!(
            boundary.starts_with("form-vmm-") && boundary.len() == 25,
            "{boundary}"
        );
        assert_eq!(read.len(), 2);
        for (part, read) in parts.iter().zip(&read) {
            assert_eq!(read.body, part.body);
            assert_eq!(
                read.header("content-type"),
                Some(format!("{}; charset=\"us-ascii\"", part.content_type).as_str())
            );
            assert_eq!(read.header("content-transfer-encoding"), Some("7bit"));
            assert_eq!(
                read.header("content-disposition"),
                Some(format!("attachment; filename=\"{}\"", part.filename).as_str())
            );
            assert_eq!(read.header("merge-type"), part.merge_type);
        }
        // The same parts make the same file.
        assert_eq!(multipart(&parts), archive);
    }

    #[test]
    fn text_mime_would_mangle_is_base64_encoded() {
        let long_line = format!("#!/bin/sh\necho {}\n", "x".repeat(1000));
        for body in [
            "#!/bin/sh\necho héllo ✓ 🦀\n",
            "#!/bin/sh\r\necho crlf\r\n",
            "#cloud-config\x0c\n",
            long_line.as_str(),
        ] {
            let archive = multipart(&[Part {
                content_type: "text/x-shellscript",
                filename: "user-data",
                merge_type: None,
                body,
            }]);
            assert!(archive.is_ascii());
            assert!(archive
                .lines()
                .all(|line| line.len() <= 76 || line.starts_with("Content-")));
            let (_, read) = parse(&archive);
            assert_eq!(read[0].body, body);
            assert_eq!(
                read[0].header("content-type"),
                Some("text/x-shellscript; charset=\"utf-8\"")
            );
            assert_eq!(read[0].header("content-transfer-encoding"), Some("base64"));
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64_lines(b""), "");
        assert_eq!(base64_lines(b"f"), "Zg==");
        assert_eq!(base64_lines(b"fo"), "Zm8=");
        assert_eq!(base64_lines(b"foo"), "Zm9v");
        assert_eq!(base64_lines(b"foob"), "Zm9vYg==");
        assert_eq!(base64_lines(&[0xfb, 0xff, 0xbf]), "+/+/");
        let lines = base64_lines(&[0u8; 100]);
        assert_eq!(lines.lines().map(str::len).collect::<Vec<_>>(), [76, 60]);
        assert_eq!(base64_decode(&lines), vec![0u8; 100]);
    }

    #[test]
    fn a_boundary_found_in_a_body_is_replaced() {
        let bodies = ["echo b0 b1".to_string(), "b3".to_string()];
        let picked = pick_boundary(&bodies, |attempt| format!("b{attempt}"));
        assert_eq!(picked, "b2");

        // The derived candidates too: each attempt gives a new one.
        let candidate = hashed_boundary(&["#cloud-config\n".to_string()]);
        let bodies = [format!("#!/bin/sh\necho --{}\n", candidate(0))];
        assert_eq!(pick_boundary(&bodies, &candidate), candidate(1));
        assert_ne!(candidate(0), candidate(1));
    }
}
