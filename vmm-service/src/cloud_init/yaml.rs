//! Just enough YAML to write cloud-init's three files: mappings, lists and strings.
//!
//! Every string is written double-quoted with escapes, so no value the operator gives
//! (a runcmd with `: ` or `#`, a host name like `no` or `123`, a newline) can change
//! the document's structure or type. A generic YAML library would do the same with a
//! dependency; the schema here is fixed and small.

use std::fmt::Write as _;

/// A YAML document built line by line; nesting is by the caller's indent level.
#[derive(Debug, Default)]
pub(super) struct YamlDoc {
    text: String,
}

impl YamlDoc {
    /// A document whose first line is `header` (e.g. `#cloud-config`).
    pub fn with_header(header: &str) -> Self {
        Self {
            text: format!("{header}\n"),
        }
    }

    /// `key: "value"`.
    pub fn string(&mut self, indent: usize, key: &str, value: &str) -> &mut Self {
        self.line(indent, &format!("{key}: {}", quote(value)))
    }

    /// `key: raw`, for the few values that are not strings (`true`, `2`).
    pub fn plain(&mut self, indent: usize, key: &str, raw: &str) -> &mut Self {
        self.line(indent, &format!("{key}: {raw}"))
    }

    /// `key:`, opening a nested mapping or list.
    pub fn open(&mut self, indent: usize, key: &str) -> &mut Self {
        self.line(indent, &format!("{key}:"))
    }

    /// `- "item"` for each item, under a key opened at `indent - 1`.
    pub fn items<S: AsRef<str>>(&mut self, indent: usize, items: &[S]) -> &mut Self {
        for item in items {
            self.line(indent, &format!("- {}", quote(item.as_ref())));
        }
        self
    }

    /// `- raw`: a list item that is not a string (`- default`).
    pub fn plain_item(&mut self, indent: usize, raw: &str) -> &mut Self {
        self.line(indent, &format!("- {raw}"))
    }

    /// `- key: "value"`: the first entry of a mapping that is a list item; its
    /// further entries go at `indent + 1`.
    pub fn item_string(&mut self, indent: usize, key: &str, value: &str) -> &mut Self {
        self.line(indent, &format!("- {key}: {}", quote(value)))
    }

    /// `key:` followed by the items, or nothing when there are none (an empty list
    /// would be `null` in YAML, which cloud-init reads differently from absent).
    pub fn list<S: AsRef<str>>(&mut self, indent: usize, key: &str, items: &[S]) -> &mut Self {
        if !items.is_empty() {
            self.open(indent, key);
            self.items(indent + 1, items);
        }
        self
    }

    pub fn finish(&self) -> String {
        self.text.clone()
    }

    fn line(&mut self, indent: usize, content: &str) -> &mut Self {
        for _ in 0..indent {
            self.text.push_str("  ");
        }
        self.text.push_str(content);
        self.text.push('\n');
        self
    }
}

/// A double-quoted YAML scalar. Characters outside YAML's printable set, and the
/// ones that end lines in YAML but not in most editors (NEL, LS, PS), are escaped,
/// so the value always stays on one line.
pub(super) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_printable(c) => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// YAML's printable characters, less the line breaks NEL, LS and PS.
fn is_printable(c: char) -> bool {
    matches!(u32::from(c),
        0x20..=0x7e | 0xa0..=0x2027 | 0x202a..=0xd7ff | 0xe000..=0xfefe | 0xff00..=0xfffd
            | 0x1_0000..=0x10_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_escaped() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("no"), "\"no\"");
        assert_eq!(quote("a: b # c"), "\"a: b # c\"");
        assert_eq!(quote("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(quote("two\nlines\t\r"), "\"two\\nlines\\t\\r\"");
        assert_eq!(
            quote("\u{0}\u{7f}\u{85}\u{2028}\u{feff}"),
            "\"\\u0000\\u007F\\u0085\\u2028\\uFEFF\""
        );
        assert_eq!(quote("héllo ✓ 🦀"), "\"héllo ✓ 🦀\"");
    }

    #[test]
    fn documents_nest_by_indent_and_skip_empty_lists() {
        let mut doc = YamlDoc::with_header("#cloud-config");
        doc.string(0, "hostname", "vm1")
            .list(0, "packages", &["htop"])
            .list::<&str>(0, "runcmd", &[])
            .open(0, "users")
            .plain_item(1, "default")
            .item_string(1, "name", "ops")
            .plain(2, "lock_passwd", "true");
        assert_eq!(
            doc.finish(),
            "#cloud-config\nhostname: \"vm1\"\npackages:\n  - \"htop\"\nusers:\n  - default\n  - name: \"ops\"\n    lock_passwd: true\n"
        );
    }
}
