//! Boot Loader Specification entries (`/boot/loader/entries/*.conf`, Fedora,
//! RHEL and their kin): `title`, `version`, `linux`, `initrd` (repeatable),
//! `options` (repeatable, `$var` taken from grubenv: RHEL 8's `$kernelopts`).
//! The default is grubenv's `saved_entry`, else loader.conf's `default` (a glob
//! on the entry's id), else the first in systemd-boot's order: newest version
//! first.

use crate::version;
use std::collections::HashMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The file name without `.conf`.
    pub id: String,
    pub title: String,
    pub version: String,
    pub sort_key: String,
    pub machine_id: String,
    pub linux: String,
    pub initrd: Vec<String>,
    pub options: String,
}

/// Most lines read from one entry.
const MAX_LINES: usize = 1024;

/// `$name` and `${name}` replaced from `vars` (undefined: nothing).
pub fn expand(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, next) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
        } else if let Some(v) = vars.get(name) {
            out.push_str(v);
        }
        rest = next;
    }
    out.push_str(rest);
    out
}

/// One entry file; None when it names no Linux kernel (an `efi` entry).
pub fn parse(id: &str, text: &str, vars: &HashMap<String, String>) -> Option<Entry> {
    let mut e = Entry {
        id: id.to_string(),
        ..Default::default()
    };
    let mut options = Vec::new();
    for line in text.lines().take(MAX_LINES) {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        match key {
            "title" => e.title = value.to_string(),
            "version" => e.version = value.to_string(),
            "sort-key" => e.sort_key = value.to_string(),
            "machine-id" => e.machine_id = value.to_string(),
            "linux" => e.linux = value.to_string(),
            "initrd" => e.initrd.extend(
                expand(value, vars)
                    .split_ascii_whitespace()
                    .map(str::to_string),
            ),
            "options" => options.push(expand(value, vars)),
            _ => {}
        }
    }
    if e.linux.is_empty() {
        return None;
    }
    if e.title.is_empty() {
        e.title = e.id.clone();
    }
    e.options = options
        .iter()
        .flat_map(|o| o.split_ascii_whitespace())
        .collect::<Vec<_>>()
        .join(" ");
    Some(e)
}

/// systemd-boot's order: entries with a sort-key first (by it, then machine id),
/// newest version first, then by id, newest first.
pub fn sort(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        let keyed = |e: &Entry| !e.sort_key.is_empty();
        keyed(b)
            .cmp(&keyed(a))
            .then_with(|| a.sort_key.cmp(&b.sort_key))
            .then_with(|| a.machine_id.cmp(&b.machine_id))
            .then_with(|| version::compare(&b.version, &a.version))
            .then_with(|| version::compare(&b.id, &a.id))
    });
}

/// `*` and `?` globbing, iterative (no backtracking blow-up: one star at a time).
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The default among sorted `entries`: `saved` (grubenv's saved_entry) if it
/// names one, else loader.conf's `default` pattern, else the first.
pub fn default_index(
    entries: &[Entry],
    saved: Option<&str>,
    loader_default: Option<&str>,
) -> usize {
    if let Some(saved) = saved.filter(|s| !s.is_empty()) {
        if let Some(i) = entries.iter().position(|e| e.id == saved) {
            return i;
        }
    }
    if let Some(pattern) = loader_default.filter(|p| !p.is_empty() && !p.starts_with('@')) {
        let hit = entries
            .iter()
            .position(|e| glob(pattern, &e.id) || glob(pattern, &format!("{}.conf", e.id)));
        if let Some(i) = hit {
            return i;
        }
    }
    0
}

/// loader.conf's `default` value.
pub fn loader_default(text: &str) -> Option<String> {
    text.lines().take(MAX_LINES).find_map(|l| {
        let (k, v) = l.trim().split_once(|c: char| c.is_ascii_whitespace())?;
        (k == "default").then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedora_entries() {
        let vars: HashMap<String, String> =
            [("kernelopts".to_string(), "root=UUID=abc ro".to_string())].into();
        let a = parse(
            "m-6.9.1-200.fc40.x86_64",
            "title Fedora Linux (6.9.1-200.fc40.x86_64) 40\nversion 6.9.1-200.fc40.x86_64\nlinux /vmlinuz-6.9.1-200.fc40.x86_64\ninitrd /initramfs-6.9.1-200.fc40.x86_64.img $tuned_initrd\noptions $kernelopts rhgb\noptions quiet\n",
            &vars,
        )
        .unwrap();
        assert_eq!(a.options, "root=UUID=abc ro rhgb quiet");
        assert_eq!(a.initrd, ["/initramfs-6.9.1-200.fc40.x86_64.img"]);
        let b = parse(
            "m-6.10.3-200.fc40.x86_64",
            "title New\nversion 6.10.3-200.fc40.x86_64\nlinux /vmlinuz-6.10.3\n",
            &vars,
        )
        .unwrap();
        let rescue = parse(
            "m-0-rescue",
            "title Rescue\nversion 0-rescue\nlinux /vmlinuz-0-rescue\n",
            &vars,
        )
        .unwrap();
        let mut all = vec![a.clone(), rescue, b];
        sort(&mut all);
        assert_eq!(all[0].title, "New");
        assert_eq!(all[2].title, "Rescue");
        assert_eq!(default_index(&all, None, None), 0);
        assert_eq!(default_index(&all, Some(&a.id), None), 1);
        assert_eq!(default_index(&all, Some("gone"), Some("m-0-*")), 2);
        assert_eq!(default_index(&all, None, Some("*6.9.1*.conf")), 1);
        assert!(parse("efi", "title x\nefi /EFI/x.efi\n", &vars).is_none());
    }

    #[test]
    fn globs() {
        assert!(glob("a*b?d", "aXXXbcd"));
        assert!(!glob("a*b?d", "aXXXbd"));
        assert!(glob("*", ""));
        assert!(glob(&"*".repeat(100), &"a".repeat(1000)));
        assert!(!glob(&"*a".repeat(50), &"a".repeat(49)));
    }

    #[test]
    fn expansion() {
        let vars: HashMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$a ${a}y $b ${ $", &vars), "x1 1y  ${ $");
    }
}
